"""S3 access through boto3: URI parsing, a per-node cached download of an object or a prefix, and uploads.

The endpoint and credentials come only from boto3's own configuration chain (AWS_ENDPOINT_URL, AWS_PROFILE,
~/.aws/config and credentials, instance roles...), so the same code talks to AWS or to any S3-compatible server.
"""

import concurrent.futures
import contextlib
import hashlib
import json
from pathlib import Path, PurePosixPath

from detfuse.data.cache import build_once, cache_root
from detfuse.errors import UserError

_DOWNLOAD_THREADS = 8
_CREDENTIALS_HELP = (
    "boto3 looks for credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials "
    "and instance roles"
)


def is_s3_uri(value) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split 's3://bucket/some/key' into ('bucket', 'some/key'); the key may be empty."""
    if not is_s3_uri(uri):
        raise UserError(f"{uri!r} is not an S3 URI: write it as s3://BUCKET/KEY")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise UserError(f"{uri!r} names no bucket: write it as s3://BUCKET/KEY")
    return bucket, key


def s3_client():
    try:
        import boto3
        import botocore.config
    except ImportError:
        raise UserError("S3 URIs need boto3: pip install 'detfuse[s3]'") from None
    return boto3.client("s3", config=botocore.config.Config(connect_timeout=10))


@contextlib.contextmanager
def _explained_errors(uri: str, client):
    """Turn boto3's errors into UserErrors that name the URI, the endpoint and what to check."""
    import botocore.exceptions

    endpoint = client.meta.endpoint_url
    try:
        yield
    except botocore.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        bucket, key = parse_s3_uri(uri)
        if code == "NoSuchBucket":
            raise UserError(f"{uri}: bucket '{bucket}' does not exist at {endpoint}") from None
        if code in ("NoSuchKey", "404"):
            raise UserError(f"{uri}: no object '{key}' in bucket '{bucket}' at {endpoint}") from None
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise UserError(f"{uri}: access denied by {endpoint} ({code}); {_CREDENTIALS_HELP}") from None
        raise UserError(f"{uri}: S3 request to {endpoint} failed: {error}") from None
    except botocore.exceptions.NoCredentialsError:
        raise UserError(f"{uri}: no AWS credentials found; {_CREDENTIALS_HELP}") from None
    except botocore.exceptions.BotoCoreError as error:
        raise UserError(
            f"{uri}: cannot reach S3 at {endpoint}: {error}. Set the endpoint with AWS_ENDPOINT_URL or "
            "endpoint_url in ~/.aws/config"
        ) from None


def _list_objects(client, bucket: str, prefix: str) -> list[dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [entry for page in pages for entry in page.get("Contents", [])]


def _relative_path(key: str, prefix: str) -> PurePosixPath:
    relative = PurePosixPath(key[len(prefix):])
    if relative.is_absolute() or ".." in relative.parts:
        raise UserError(f"s3 key {key!r} would be written outside the download directory; rename the object")
    return relative


def fetch(uri: str) -> Path:
    """Local copy of an S3 object (returns the file) or of every object under a prefix (returns the directory).

    Downloaded once per node into the detfuse cache, keyed by the objects' keys, sizes and ETags, so several
    trials starting at once share one download and changed data on S3 is fetched again.
    """
    bucket, key = parse_s3_uri(uri)
    client = s3_client()
    with _explained_errors(uri, client):
        listed = _list_objects(client, bucket, key)
        single = [entry for entry in listed if entry["Key"] == key and key and not key.endswith("/")]
        if single:
            prefix = key.rpartition("/")[0] + "/" if "/" in key else ""
            objects = single
        else:
            prefix = key if not key or key.endswith("/") else key + "/"
            objects = [entry for entry in listed if entry["Key"].startswith(prefix) and not entry["Key"].endswith("/")]
        if not objects:
            raise UserError(f"{uri}: no objects at this URI in bucket '{bucket}' at {client.meta.endpoint_url}")
        identity = [client.meta.endpoint_url, bucket] + sorted(
            (entry["Key"], entry["Size"], entry.get("ETag", "")) for entry in objects
        )
        digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]
        files = [(entry["Key"], _relative_path(entry["Key"], prefix)) for entry in objects]

        def download(target_dir: Path):
            def download_one(key_and_path):
                object_key, relative = key_and_path
                destination = target_dir / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, object_key, str(destination))

            with concurrent.futures.ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
                list(pool.map(download_one, files))

        entry_dir = build_once(cache_root() / "s3" / digest, download)
    return entry_dir / files[0][1] if single else entry_dir


def upload_file(path, uri: str) -> None:
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise UserError(f"{uri}: name the object key to upload {path} to, e.g. {uri.rstrip('/')}/{Path(path).name}")
    client = s3_client()
    with _explained_errors(uri, client):
        client.upload_file(str(path), bucket, key)


def upload_directory(local_dir, uri: str) -> None:
    """Upload every file under `local_dir` below the prefix `uri`, keeping relative paths."""
    bucket, key = parse_s3_uri(uri)
    prefix = key if not key or key.endswith("/") else key + "/"
    local_dir = Path(local_dir)
    files = [path for path in sorted(local_dir.rglob("*")) if path.is_file()]
    client = s3_client()
    with _explained_errors(uri, client):
        with concurrent.futures.ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
            list(pool.map(
                lambda path: client.upload_file(str(path), bucket, prefix + path.relative_to(local_dir).as_posix()),
                files,
            ))
