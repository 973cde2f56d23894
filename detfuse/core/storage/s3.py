"""S3 access through boto3: URI parsing, settings, clients and a per-node cached download of an object or a prefix.

Credentials come only from boto3's own configuration chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws/credentials,
instance roles...), so no detfuse file or log ever holds one. The endpoint and region come from the same chain
(AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ~/.aws/config) unless S3Settings name them, so the same code talks to AWS
or to any S3-compatible server.
"""

import concurrent.futures
import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from detfuse.core.node_cache import build_once, cache_root
from detfuse.core.errors import UserError

_DOWNLOAD_THREADS = 8
RETRY_MODES = ("standard", "adaptive")  # botocore's modes that back off exponentially on throttling and
# connection errors; "adaptive" also slows the client down while the server keeps throttling
SSE_MODES = ("AES256", "aws:kms")
MIN_PART_MB = 5  # S3 refuses multipart parts below 5 MiB (except the last)
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
    if "@" in bucket or ":" in bucket:
        # s3://KEY:SECRET@bucket works in some tools; here it would end up in logs and manifests
        raise UserError("an S3 URI must not carry credentials (s3://...@bucket): write s3://BUCKET/KEY and let "
                        f"boto3 find them; {_CREDENTIALS_HELP}")
    return bucket, key


@dataclass(frozen=True)
class S3Settings:
    """What a command may set on top of boto3's own configuration. An endpoint or region of None leaves boto3's
    choice (environment, ~/.aws/config); retries are always set, so every request backs off on throttling and
    connection errors. Credentials are deliberately not among them."""

    endpoint_url: str | None = None
    region: str | None = None
    sse: str | None = None  # server-side encryption of uploads: AES256 (SSE-S3) or aws:kms (SSE-KMS)
    sse_kms_key_id: str | None = None  # the KMS key for aws:kms; None: the bucket's or account's default key
    retry_mode: str = "standard"
    max_attempts: int = 5  # per request, the first try included
    part_size_mb: int = 8  # files above this size are uploaded in parts of this size, several at once

    def __post_init__(self):
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise UserError(f"--endpoint-url {self.endpoint_url}: write it as http(s)://HOST[:PORT]")
        if self.sse not in (None, *SSE_MODES):
            raise UserError(f"--sse {self.sse}: valid values are {', '.join(SSE_MODES)}")
        if self.sse_kms_key_id is not None and self.sse != "aws:kms":
            raise UserError("--sse-kms-key-id applies only with --sse aws:kms")
        if self.retry_mode not in RETRY_MODES:
            raise UserError(f"--retry-mode {self.retry_mode}: valid modes are {', '.join(RETRY_MODES)}")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise UserError(f"--max-attempts {self.max_attempts}: give a whole number >= 1")
        if isinstance(self.part_size_mb, bool) or not isinstance(self.part_size_mb, int) \
                or self.part_size_mb < MIN_PART_MB:
            raise UserError(f"--part-size-mb {self.part_size_mb}: S3 needs parts of at least {MIN_PART_MB} MiB")

    def upload_arguments(self) -> dict:
        """boto3 ExtraArgs for the configured server-side encryption."""
        arguments = {} if self.sse is None else {"ServerSideEncryption": self.sse}
        if self.sse_kms_key_id is not None:
            arguments["SSEKMSKeyId"] = self.sse_kms_key_id
        return arguments

    def transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        part = self.part_size_mb * 1024 * 1024
        return TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=_DOWNLOAD_THREADS)


def s3_client(settings: S3Settings | None = None):
    try:
        import boto3
        import botocore.config
    except ImportError:
        raise UserError("S3 URIs need boto3: pip install 'detfuse[s3]'") from None
    settings = settings or S3Settings()
    # up to _DOWNLOAD_THREADS files at once, each in up to _DOWNLOAD_THREADS parts at once
    config = botocore.config.Config(connect_timeout=10, max_pool_connections=_DOWNLOAD_THREADS ** 2,
                                    retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts})
    return boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config)


@contextlib.contextmanager
def explained_errors(uri: str, client):
    """Turn boto3's errors into UserErrors that name the URI, the endpoint and what to check."""
    import boto3.exceptions
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
            f"{uri}: cannot reach S3 at {endpoint}: {error}. Check that the server is up and the endpoint is right "
            "(AWS_ENDPOINT_URL, endpoint_url in ~/.aws/config, or --endpoint-url where a command has it)"
        ) from None
    except boto3.exceptions.S3UploadFailedError as error:  # a transfer's parts failed after botocore's retries
        raise UserError(f"{uri}: upload to {endpoint} failed: {error}") from None


def _list_objects(client, bucket: str, prefix: str) -> list[dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [entry for page in pages for entry in page.get("Contents", [])]


def _relative_path(key: str, prefix: str) -> PurePosixPath:
    relative = PurePosixPath(key[len(prefix):])
    if relative.is_absolute() or ".." in relative.parts:
        raise UserError(f"s3 key {key!r} would be written outside the download directory; rename the object")
    return relative


def local_path(path_or_uri) -> Path:
    """A local path for a file or directory given as a path or an s3:// URI (fetched once per node: `fetch`)."""
    return fetch(path_or_uri) if is_s3_uri(path_or_uri) else Path(path_or_uri).expanduser()


def fetch(uri: str, settings: S3Settings | None = None) -> Path:
    """Local copy of an S3 object (returns the file) or of every object under a prefix (returns the directory).

    Downloaded once per node into the detfuse cache, keyed by the objects' keys, sizes and ETags, so several
    trials starting at once share one download and changed data on S3 is fetched again.
    """
    bucket, key = parse_s3_uri(uri)
    client = s3_client(settings)
    transfer_config = (settings or S3Settings()).transfer_config()
    with explained_errors(uri, client):
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
                client.download_file(bucket, object_key, str(destination), Config=transfer_config)

            with concurrent.futures.ThreadPoolExecutor(_DOWNLOAD_THREADS) as pool:
                list(pool.map(download_one, files))

        entry_dir = build_once(cache_root() / "s3" / digest, download)
    return entry_dir / files[0][1] if single else entry_dir
