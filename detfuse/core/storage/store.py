"""The one storage interface: a local directory or an S3 prefix, behind the same few operations (read, atomic
write, exists, list, delete, put a file with its sha256). Experiment storage (experiment_storage.py), export
destinations and bundles all go through it.

Every file is stored with its sha256 beside it (S3: object metadata `sha256`; a local file is simply hashed), so a
re-run can tell a file that already arrived intact from one that is missing, partial or different, and skip only
the first kind. Local files are written to a temporary name and renamed, so a reader never sees half a file.
"""

import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath

from detfuse.core.errors import UserError
from detfuse.core.storage.s3 import S3Settings, explained_errors, is_s3_uri, parse_s3_uri, s3_client

HASH_CHUNK = 1024 * 1024


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# a written file gets the mode a plain open() would give it (mkstemp's temporary is private, 0600): a report page or
# an exported bundle on shared storage is meant to be read by others
FILE_MODE = 0o666 & ~_umask()


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_key(key):
    parts = PurePosixPath(key).parts
    if not parts or PurePosixPath(key).is_absolute() or ".." in parts:
        raise ValueError(f"{key!r} is not a relative path inside the destination")


def _write_atomically(target, chunks, progress=None):
    """Write `chunks` to a temporary file beside `target`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        try:
            os.fchmod(descriptor, FILE_MODE)
        except OSError:  # storage that keeps no modes (some FUSE mounts of object stores): the file stays private
            pass
        with os.fdopen(descriptor, "wb") as copy:
            for chunk in chunks:
                copy.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            copy.flush()
            os.fsync(copy.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _file_chunks(path):
    with open(path, "rb") as source:
        while chunk := source.read(HASH_CHUNK):
            yield chunk


class LocalDirectory:
    def __init__(self, root):
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def uri_of(self, key):
        return str(self.root / key)

    def names(self):
        """The names of the entries directly under the root."""
        return sorted(entry.name for entry in self.root.iterdir()) if self.root.is_dir() else []

    def matches(self, key, size, sha256):
        """Whether the file at `key` holds exactly these bytes."""
        _check_key(key)
        path = self.root / key
        # hashing only when the size agrees keeps a re-run of a large export cheap where files differ
        return path.is_file() and path.stat().st_size == size and sha256_of(path) == sha256

    def put(self, path, key, sha256, progress=None):
        """Copy the file `path` to `key` (locally the content is its own checksum: `matches` re-hashes it)."""
        _check_key(key)
        try:
            _write_atomically(self.root / key, _file_chunks(path), progress)
        except OSError as error:
            raise UserError(f"{self.root / key}: cannot write ({error})") from None

    def write_bytes(self, key, data):
        """Write `data` to `key` whole: a reader sees the old file or the new one, never half of one."""
        _check_key(key)
        try:
            _write_atomically(self.root / key, [data])
        except OSError as error:
            raise UserError(f"{self.root / key}: cannot write ({error})") from None

    def exists(self, key):
        _check_key(key)
        return (self.root / key).exists()

    def delete(self, key):
        _check_key(key)
        (self.root / key).unlink(missing_ok=True)

    def read_bytes(self, key):
        _check_key(key)
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None


class S3Prefix:
    def __init__(self, uri, settings: S3Settings):
        self.bucket, key = parse_s3_uri(uri)
        self.prefix = key.strip("/") + "/" if key.strip("/") else ""
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.settings = settings
        self.client = s3_client(settings)
        self.transfer_config = settings.transfer_config()

    def uri_of(self, key):
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def names(self):
        with explained_errors(self.uri, self.client):
            pages = list(self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"))
            return sorted(
                [entry["Prefix"][len(self.prefix):].rstrip("/") for page in pages
                 for entry in page.get("CommonPrefixes", [])]
                + [entry["Key"][len(self.prefix):] for page in pages for entry in page.get("Contents", [])])

    def matches(self, key, size, sha256):
        """Whether the object at `key` has this size and was uploaded with this sha256 (a HEAD request)."""
        import botocore.exceptions

        _check_key(key)
        with explained_errors(self.uri_of(key), self.client):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            except botocore.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return head["ContentLength"] == size and head.get("Metadata", {}).get("sha256") == sha256

    def put(self, path, key, sha256, progress=None):
        """Upload `path` (in parts above the part size), recording its sha256 as object metadata."""
        _check_key(key)
        extra = {"Metadata": {"sha256": sha256}, **self.settings.upload_arguments()}
        with explained_errors(self.uri_of(key), self.client):
            self.client.upload_file(str(path), self.bucket, self.prefix + key, ExtraArgs=extra,
                                    Config=self.transfer_config, Callback=progress)

    def write_bytes(self, key, data):
        """Write `data` to `key` (an S3 put is atomic: readers see the old object or the new one)."""
        _check_key(key)
        with explained_errors(self.uri_of(key), self.client):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data,
                                   **self.settings.upload_arguments())

    def exists(self, key):
        """Whether an object, or a prefix holding objects, is at `key`."""
        _check_key(key)
        full = self.prefix + key
        with explained_errors(self.uri_of(key), self.client):
            first = self.client.list_objects_v2(Bucket=self.bucket, Prefix=full, MaxKeys=1)
            if any(entry["Key"] == full for entry in first.get("Contents", [])):
                return True
            # listed by `key` alone, a sibling may come first ("run-old/x" sorts before "run/x")
            below = self.client.list_objects_v2(Bucket=self.bucket, Prefix=full + "/", MaxKeys=1)
        return bool(below.get("Contents"))

    def delete(self, key):
        _check_key(key)
        with explained_errors(self.uri_of(key), self.client):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def read_bytes(self, key):
        import botocore.exceptions

        _check_key(key)
        with explained_errors(self.uri_of(key), self.client):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
            except botocore.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise


def open_store(uri, settings: S3Settings | None = None):
    """A LocalDirectory or S3Prefix for `uri` (a directory path or s3://bucket/prefix)."""
    if is_s3_uri(uri):
        return S3Prefix(uri, settings or S3Settings())
    if Path(uri).expanduser().exists() and not Path(uri).expanduser().is_dir():
        raise UserError(f"{uri} is a file, not a directory (created when missing) or an s3:// prefix")
    return LocalDirectory(uri)

