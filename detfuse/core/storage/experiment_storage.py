"""Files on experiment storage (a local directory or s3://) by URI: the JSON and text documents the stages hand
on (experiment.json, leaderboard.json, the ensemble's outputs, pipeline markers), through the one store interface
(store.py). S3 endpoint and credentials come from boto3's chain, the environment Ray Tune's own storage reads too.
"""

import json

from detfuse.core.errors import UserError
from detfuse.core.storage.store import open_store


def join(uri, *parts):
    return "/".join([uri.rstrip("/"), *parts])


def _store_and_key(uri):
    parent, _, name = uri.rstrip("/").rpartition("/")
    return open_store(parent or "."), name


def write_text(uri, text):
    """Write `text` to `uri` whole (atomically: a reader never sees half of it)."""
    write_bytes(uri, text.encode())


def write_bytes(uri, data):
    """Write `data` to `uri` whole (atomically: a reader never sees half of it)."""
    store, key = _store_and_key(uri)
    store.write_bytes(key, data)


def read_text(uri):
    store, key = _store_and_key(uri)
    data = store.read_bytes(key)
    if data is None:
        raise UserError(f"{uri} does not exist")
    return data.decode()


def read_json(uri, hint=""):
    """The JSON document at `uri`; a UserError naming it (and `hint`, what to check) when missing or not JSON."""
    try:
        return json.loads(read_text(uri))
    except ValueError as error:
        raise UserError(f"{uri}: not valid JSON ({error}){'; ' + hint if hint else ''}") from None


def exists(uri):
    store, key = _store_and_key(uri)
    return store.exists(key)


def check_writable(uri, where):
    """Write and delete a probe file under `uri`: storage problems surface before any trial runs."""
    probe = join(uri, ".detfuse-write-probe")
    try:
        store, key = _store_and_key(probe)
        store.write_bytes(key, b"ok")
        store.delete(key)
    except (OSError, UserError) as error:
        raise UserError(f"{where}: storage {uri} is not writable: {error}") from None
