"""Small files on experiment storage (a local directory or s3://), through pyarrow.fs as Ray Tune itself does.

Using the same filesystem layer as Tune means whatever storage Tune can write to, so can every stage here
(S3 endpoint and credentials come from the environment: AWS_ENDPOINT_URL, the instance profile, ...).
"""

import json
from pathlib import Path

import pyarrow.fs

from detfuse.core.errors import UserError


def _resolve(uri):
    if uri.startswith("s3://"):
        return pyarrow.fs.FileSystem.from_uri(uri)
    return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())


def join(uri, *parts):
    return "/".join([uri.rstrip("/"), *parts])


def write_text(uri, text):
    """Write `text` to `uri` whole: a temporary file renamed into place (locally; S3 puts are atomic already)."""
    filesystem, path = _resolve(uri)
    parent = path.rsplit("/", 1)[0]
    filesystem.create_dir(parent, recursive=True)
    temporary = path if uri.startswith("s3://") else f"{path}.tmp"
    with filesystem.open_output_stream(temporary) as stream:
        stream.write(text.encode())
    if temporary != path:
        filesystem.move(temporary, path)


def read_text(uri):
    filesystem, path = _resolve(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read().decode()
    except FileNotFoundError:
        raise UserError(f"{uri} does not exist") from None


def read_json(uri, hint=""):
    """The JSON document at `uri`; a UserError naming it (and `hint`, what to check) when missing or not JSON."""
    try:
        return json.loads(read_text(uri))
    except ValueError as error:
        raise UserError(f"{uri}: not valid JSON ({error}){'; ' + hint if hint else ''}") from None


def exists(uri):
    filesystem, path = _resolve(uri)
    return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def check_writable(uri, where):
    """Write and delete a probe file under `uri`: storage problems surface before any trial runs."""
    probe = join(uri, ".detfuse-write-probe")
    try:
        write_text(probe, "ok")
        filesystem, path = _resolve(probe)
        filesystem.delete_file(path)
    except (OSError, pyarrow.lib.ArrowException) as error:
        raise UserError(f"{where}: storage {uri} is not writable: {error}") from None
