"""Putting test data on the test S3 server (the package itself only downloads and exports; see s3_server.py)."""

from pathlib import Path

from detfuse.core.storage.s3 import parse_s3_uri, s3_client


def upload_file(path, uri):
    """Upload the file `path` to the object `uri`."""
    bucket, key = parse_s3_uri(uri)
    s3_client().upload_file(str(path), bucket, key)


def upload_directory(local_dir, uri):
    """Upload every file under `local_dir` below the prefix `uri`, keeping relative paths."""
    bucket, key = parse_s3_uri(uri)
    prefix = key if not key or key.endswith("/") else key + "/"
    client = s3_client()
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, prefix + path.relative_to(local_dir).as_posix())
