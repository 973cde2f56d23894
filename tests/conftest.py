"""Shared fixtures, defined in their own modules and imported here so every test sees them:
a real S3 server (s3_server.py), a real multi-node Ray cluster with a small dataset (ray_cluster.py) and a real
headless browser (headless_browser.py)."""

from headless_browser import chromium  # noqa: F401
from ray_cluster import cluster, small_dataset  # noqa: F401
from s3_server import s3_bucket, s3_server  # noqa: F401
