"""Export bundles: their layout, the manifest of checksums that makes them verifiable, and the `latest.json` pointer.

    <destination>/                  a local directory or s3://bucket/prefix
      latest.json                   {"format", "bundle": ID, "manifest": "ID/manifest.json", "manifest_sha256",
                                     "created_at"}; written last, only after every file of ID was verified
      ID/                           ID = <experiment>-<UTC time yyyymmddTHHMMSSZ>-<12 hex of the content hash>
        manifest.json               {"format", "bundle", "created_at", "content_sha256",
                                     "files": [{"path", "size", "sha256"}, ...]}: every other file of the bundle
        bundle.json                 what the bundle holds: experiment, dataset fingerprint, classes, ensemble
                                    members, best checkpoint per family, package versions
        fusion.json                 the fitted ensemble (detfuse-fusion/1), member checkpoints relative to ID/
        metrics.json                the experiment's leaderboard and the ensemble job's summary
        checkpoints/<trial_id>/     each exported trial's checkpoint: the files its family's predictor reads
                                    (`inference_files()`: detfuse.json and the weights), as the family wrote
                                    them; the training state only resuming needs stays in the experiment

The content hash covers every file but the manifest (whose only other content is the id and time), so exporting
the same experiment again finds its earlier bundle by that hash and completes or re-verifies it instead of
starting another. A reader trusts nothing it has not checked: `open_bundle` compares the manifest with the
pointer's sha256 and every file with the manifest before anything is loaded.
"""

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from detfuse.core.errors import UserError
from detfuse.core.storage.store import open_store, sha256_of
from detfuse.core.storage.s3 import is_s3_uri

MANIFEST_FORMAT = "detfuse-manifest/1"
LATEST_FORMAT = "detfuse-latest/1"
BUNDLE_FORMAT = "detfuse-bundle/1"
MANIFEST = "manifest.json"
LATEST = "latest.json"
DESCRIPTION = "bundle.json"
FUSION = "fusion.json"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
TIME_FORMAT = "%Y%m%dT%H%M%SZ"
HASH_CHARS = 12
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FileEntry(NamedTuple):
    path: str  # relative to the bundle directory, POSIX separators
    size: int
    sha256: str


def safe_name(text):
    """`text` reduced to characters safe in file names and S3 keys everywhere."""
    return _SAFE_NAME.sub("-", str(text)).strip("-.") or "unnamed"


def describe_files(files):
    """Manifest entries for {bundle path: local file}, sorted by path."""
    return [FileEntry(path, Path(source).stat().st_size, sha256_of(source)) for path, source in sorted(files.items())]


def content_hash(entries):
    return hashlib.sha256(json.dumps([list(entry) for entry in entries]).encode()).hexdigest()


def new_bundle_id(experiment_name, created_at, content_sha256):
    return f"{safe_name(experiment_name)}-{created_at.strftime(TIME_FORMAT)}-{content_sha256[:HASH_CHARS]}"


def find_bundle(names, experiment_name, content_sha256):
    """The newest bundle id among `names` with this experiment and content hash, or None."""
    pattern = re.compile(re.escape(safe_name(experiment_name)) + r"-(\d{8}T\d{6}Z)-" + content_sha256[:HASH_CHARS])
    matching = [name for name in names if pattern.fullmatch(name)]
    return max(matching, key=lambda name: pattern.fullmatch(name).group(1)) if matching else None


def created_at_of(bundle_id):
    stamp = bundle_id.rsplit("-", 2)[-2]
    return datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=timezone.utc)


def _iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest_document(bundle_id, entries):
    return {"format": MANIFEST_FORMAT, "bundle": bundle_id, "created_at": _iso(created_at_of(bundle_id)),
            "content_sha256": content_hash(entries), "files": [entry._asdict() for entry in entries]}


def latest_document(bundle_id, manifest_bytes):
    return {"format": LATEST_FORMAT, "bundle": bundle_id, "manifest": f"{bundle_id}/{MANIFEST}",
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
            "created_at": _iso(created_at_of(bundle_id))}


def _load_json(data, where, what):
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{where}: not valid JSON ({error}); is it a detfuse {what}?") from None
    if not isinstance(document, dict):
        raise UserError(f"{where}: not a detfuse {what} (expected a JSON object)")
    return document


def parse_latest(data, where):
    """(bundle id, manifest sha256) from the bytes of a latest.json."""
    latest = _load_json(data, where, "latest.json")
    bundle_id, manifest_sha = latest.get("bundle"), latest.get("manifest_sha256")
    if latest.get("format") != LATEST_FORMAT or not isinstance(bundle_id, str) or safe_name(bundle_id) != bundle_id \
            or not (isinstance(manifest_sha, str) and _SHA256.fullmatch(manifest_sha)):
        raise UserError(f"{where}: not a detfuse latest.json (expected \"format\": \"{LATEST_FORMAT}\" with a bundle "
                        f"id and the manifest's sha256); it is written by `detfuse export`")
    return bundle_id, manifest_sha


def parse_manifest(data, where):
    """(bundle id, [FileEntry]) from the bytes of a manifest.json, every entry checked for shape."""
    manifest = _load_json(data, where, "bundle manifest")
    files = manifest.get("files")
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, list):
        raise UserError(f"{where}: not a detfuse bundle manifest (expected \"format\": \"{MANIFEST_FORMAT}\" and "
                        f"a list of files)")
    entries = []
    for index, item in enumerate(files):
        path = item.get("path") if isinstance(item, dict) else None
        size = item.get("size") if isinstance(item, dict) else None
        sha = item.get("sha256") if isinstance(item, dict) else None
        parts = PurePosixPath(path).parts if isinstance(path, str) else ()
        if not parts or PurePosixPath(path).is_absolute() or ".." in parts or path in (MANIFEST, LATEST) \
                or isinstance(size, bool) or not isinstance(size, int) or size < 0 \
                or not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise UserError(f"{where}: files[{index}] must be {{\"path\": a relative path inside the bundle, "
                            f"\"size\": bytes, \"sha256\": 64 hex digits}}, got {item!r}")
        entries.append(FileEntry(path, size, sha))
    if len({entry.path for entry in entries}) != len(entries):
        raise UserError(f"{where}: a path is listed twice")
    return manifest.get("bundle"), entries


def verify_files(directory, entries, bundle_uri):
    """Check every manifest entry against the file under `directory`; the error names the file at `bundle_uri`."""
    for entry in entries:
        path = Path(directory) / entry.path
        where = f"{bundle_uri}/{entry.path}"
        if not path.is_file():
            raise UserError(f"{where}: listed in the bundle's manifest but missing; copy or download the whole "
                            f"bundle again (or re-export it)")
        size = path.stat().st_size
        if size != entry.size:
            raise UserError(f"{where}: {size} bytes, but the manifest says {entry.size}: the file is truncated or was "
                            f"changed after export; refusing to load it. Copy or download the bundle again (or "
                            f"re-export it)")
        actual = sha256_of(path)
        if actual != entry.sha256:
            raise UserError(f"{where}: sha256 {actual[:16]}... does not match the manifest's {entry.sha256[:16]}...: "
                            f"the file was changed or damaged after export; refusing to load it. Copy or download "
                            f"the bundle again (or re-export it)")


class VerifiedBundle(NamedTuple):
    uri: str  # where it was read from
    bundle_id: str
    directory: Path  # a local directory holding every file of the manifest, each checked
    entries: list


def _locate(uri, settings):
    """(store, bundle key prefix ('' for a bundle at the store's root), expected manifest sha256 or None)."""
    pointer_name = None
    base = uri
    if uri.endswith(".json"):
        base, _, pointer_name = uri.rstrip("/").rpartition("/")
    store = open_store(base or ".", settings)
    if pointer_name is None:
        if store.read_bytes(MANIFEST) is not None:
            return store, "", None
        pointer_name = LATEST
    pointer = store.read_bytes(pointer_name)
    if pointer is None:
        raise UserError(f"{uri}: no bundle here: name a bundle (the folder or prefix holding {MANIFEST}), its "
                        f"{LATEST}, or the export destination that holds {LATEST}")
    bundle_id, manifest_sha = parse_latest(pointer, store.uri_of(pointer_name))
    return store, bundle_id, manifest_sha


def open_bundle(uri, settings=None) -> VerifiedBundle:
    """The bundle named by `uri` (local or s3://: a bundle, a latest.json, or the destination holding latest.json),
    as a local directory whose every file matched the manifest. S3 bundles are downloaded once per node."""
    store, bundle_id, manifest_sha = _locate(uri, settings)
    bundle_uri = store.uri_of(bundle_id).rstrip("/") if bundle_id else store.uri
    if is_s3_uri(bundle_uri):
        from detfuse.core.storage.s3 import fetch

        directory = fetch(bundle_uri + "/", settings)
    else:
        directory = Path(bundle_uri)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{bundle_uri}/{MANIFEST}: missing; the export that wrote {bundle_id or bundle_uri} did not "
                        f"finish. Use the destination's {LATEST}, which only ever names complete bundles")
    manifest_bytes = manifest_path.read_bytes()
    if manifest_sha is not None and hashlib.sha256(manifest_bytes).hexdigest() != manifest_sha:
        raise UserError(f"{bundle_uri}/{MANIFEST}: its sha256 does not match the one {LATEST} recorded: the manifest "
                        f"was changed after export; refusing to load the bundle")
    named_id, entries = parse_manifest(manifest_bytes, f"{bundle_uri}/{MANIFEST}")
    if bundle_id and named_id != bundle_id:
        raise UserError(f"{bundle_uri}/{MANIFEST}: describes bundle {named_id!r}, not {bundle_id!r}")
    verify_files(directory, entries, bundle_uri)
    return VerifiedBundle(bundle_uri, named_id, directory, entries)
