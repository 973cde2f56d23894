"""Shared fixtures. The S3 server lives in s3_server.py; importing its fixtures here makes them visible to all tests."""

from s3_server import s3_bucket, s3_server  # noqa: F401
