"""`detfuse weights fetch NAME... --to DIR_OR_S3`: stage pretrained weights for a cluster without internet access.

Run on a machine that has internet access: each NAME (a URL, a detectron2:// model-zoo name, an Ultralytics
release name, an s3:// URI or a local file) is fetched exactly as a trial would fetch it (detfuse.core.
weights_source), verified, and copied to a directory or S3 prefix with the cache's layout (detectron2/...,
ultralytics/..., url/HOST/...). It prints the `weights:` line to paste into a search space or trial config for
each file, with its sha256. A directory staged this way is also a ready-made cache: copied to
$DETFUSE_CACHE/weights on a node, it lets the original names work there without any download.
"""

import sys
from pathlib import PurePosixPath

import trainables
from detfuse.core.errors import UserError
from detfuse.core.storage.store import open_store, sha256_of
from detfuse.core.weights_source import fetch_weights, is_url, parse_weights, pinned_local_source, url_cache_key


def staged_key(source, named):
    """Where a file goes under the destination: its cache path for names and URLs, else its file name."""
    if named is not None:
        return named.cache_key
    if is_url(source):
        return url_cache_key(source)
    return PurePosixPath(source.rstrip("/")).name


def run_weights_fetch(names, destination, sha256s=(), settings=None, stream=None):
    """Fetch, verify and stage every name; print the `weights:` lines. `sha256s`: none, or one per name."""
    stream = stream or sys.stdout
    if sha256s and len(sha256s) != len(names):
        raise UserError(f"--sha256 was given {len(sha256s)} times for {len(names)} names: give one per NAME, in "
                        "the same order, or none")
    store = open_store(destination, settings)
    by_file_name = {}  # key -> the local file or S3 object staged there in this run
    for name, sha256 in zip(names, sha256s or [None] * len(names)):
        where = f"detfuse weights fetch {name}"
        spec = pinned_local_source(parse_weights({"source": name, "sha256": sha256}, where, trainables.weights_forms()))
        family, named = trainables.named_weights(spec.source, where)
        key = staged_key(spec.source, named)
        if named is None and not is_url(spec.source) and by_file_name.setdefault(key, spec.source) != spec.source:
            raise UserError(f"{where}: it would be staged as {key}, where {by_file_name[key]} goes: local files and "
                            "S3 objects are staged under their file name; stage them in separate runs to different "
                            "destinations, or rename one")
        path = fetch_weights(spec, named, where)
        if not path.is_file():
            raise UserError(f"{where}: {path} is a directory; name a weights file")
        digest = spec.sha256 or sha256_of(path)
        if not store.matches(key, path.stat().st_size, digest):
            store.put(path, key, digest)
        print(f"# {name}" + (f" ({family} family)" if family else ""), file=stream)
        print(f"weights: {{source: {store.uri_of(key)}, sha256: {digest}}}", file=stream, flush=True)
    print("# or copy the staged files to $DETFUSE_CACHE/weights/ (default ~/.cache/detfuse/weights/) on every node "
          "and keep the names: a pre-seeded cache is never downloaded again", file=stream)
    return 0
