"""Where a trial's starting weights come from, and their verified local copy on this node.

A trial config's `weights` is a source, or a mapping with the source and the file's expected sha256:

    weights: detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl
    weights: {source: https://models.example.com/detector.pt, sha256: 9f86d081884c7d65...}

A source is a local path, an s3:// URI, an http(s):// URL, or a name under which a detector family publishes
weights (a detectron2:// model-zoo name, an Ultralytics release file such as yolov5su.pt): the family resolves it
to a `NamedWeights` (trainables.named_weights). Nothing is downloaded that the user did not name.

Remote files are fetched once per node into the cache (detfuse.core.node_cache), at a path that depends only on
the name, so a cache can be pre-seeded by copying files there:

    $DETFUSE_CACHE/weights/detectron2/<model-zoo path>     detectron2://<model-zoo path>
    $DETFUSE_CACHE/weights/ultralytics/<file>              an Ultralytics release file
    $DETFUSE_CACHE/weights/url/<host[:port]>/<path>        http(s)://host[:port]/path
    $DETFUSE_CACHE/weights/url/<host[:port]>/<dir>/<stem>@<q><suffix>    the same with a query (<q>: its sha256's
                                                           first 8 hex digits), as URLs differing in it may differ

s3:// sources use the S3 cache (detfuse.core.storage.s3.fetch). With a sha256, a download is checked before it
counts as cached, and every cached, pre-seeded, S3 or local file is checked before a trial uses it. A download
with another sha256 is kept beside its entry as `<entry>.sha256-<actual>`: every later trial on the node fails at
once instead of downloading it again, and correcting weights.sha256 to that value uses it without a download.
"""

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from detfuse.core.downloads import download_into
from detfuse.core.errors import UserError
from detfuse.core.node_cache import cache_root, file_once
from detfuse.core.storage.s3 import fetch as fetch_s3
from detfuse.core.storage.s3 import is_s3_uri
from detfuse.core.storage.store import sha256_of

SOURCE_FORMS = ("a local path", "an s3:// URI", "an http(s):// URL")  # the families add the names they publish under
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class WeightsSpec:
    """A validated `weights` setting; `as_config()` is its form in a resolved trial config."""

    source: str
    sha256: str | None = None

    def as_config(self):
        return {"source": self.source, "sha256": self.sha256}


@dataclass(frozen=True)
class NamedWeights:
    """A file a family publishes under a name: where to download it, its path under the weights cache, and the
    architecture it was trained as when the name says (a release of one YOLO scale loads little into another)."""

    url: str
    cache_key: str
    architecture: str | None = None


def parse_weights(value, where, forms) -> WeightsSpec | None:
    """The `weights` setting of a trial config (a source string or {source, sha256}); None when unset. `forms`:
    how a source may name its file, for the message (trainables.weights_forms())."""
    if value is None:
        return None
    shape = f"{where}: 'weights' must be {forms}, or a mapping {{source: ..., sha256: ...}}"
    if isinstance(value, str):
        value = {"source": value}
    if not isinstance(value, dict):
        raise UserError(f"{shape}; got {value!r}")
    unknown = sorted(set(value) - {"source", "sha256"})
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} in 'weights'; valid keys: source, sha256")
    source, sha256 = value.get("source"), value.get("sha256")
    if not isinstance(source, str) or not source.strip():
        raise UserError(f"{shape}; 'source' is missing or empty")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower())):
        raise UserError(f"{where}: weights.sha256 must be 64 hexadecimal digits (as `sha256sum FILE` prints), "
                        f"got {sha256!r}")
    return WeightsSpec(source.strip(), None if sha256 is None else sha256.lower())


def is_url(source) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def is_remote(source) -> bool:
    """Fetched into the node's cache rather than read where it is."""
    return is_url(source) or is_s3_uri(source)


def safe_relative_path(path, where) -> str:
    """`path` as a relative path that stays inside the directory it is joined to."""
    parts = [part for part in PurePosixPath(path).parts if part not in ("", "/")]
    if not parts or ".." in parts:
        raise UserError(f"{where}: {path!r} is not a file path (empty, or with '..')")
    return "/".join(parts)


def published_url(base, variable, path):
    """The URL of a family's published file `path`: under `base`, or under the mirror the environment variable
    `variable` names (an air-gapped cluster's copy of the same paths)."""
    mirror = os.environ.get(variable)
    if mirror:
        parts = urlsplit(mirror)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"${variable} = {mirror!r} is not an http(s) URL: set it to the mirror's base URL "
                            f"(as {base} is the default's), or unset it")
        base = mirror
    return base.rstrip("/") + "/" + path


def url_cache_key(url, where="weights") -> str:
    """The cache path of a URL's file: url/<host[:port]>/<path>, no credentials; a query adds its short hash to
    the file's stem (keeping the suffix, by which detectron2 tells a .pkl from a .pth)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = None
    if parts is None or not parts.hostname:
        raise UserError(f"{where}: {url} is not a download URL (no host, or a port that is not a number): write "
                        "it as http(s)://HOST[:PORT]/PATH")
    host = parts.hostname + (f":{port}" if port else "")
    path = PurePosixPath(safe_relative_path(parts.path, where))
    if parts.query:
        path = path.with_stem(f"{path.stem}@{hashlib.sha256(parts.query.encode()).hexdigest()[:8]}")
    return f"url/{host}/{path}"


def pinned_local_source(spec: WeightsSpec) -> WeightsSpec:
    """`spec` with an existing local path made absolute: trials run in another working directory (Tune's trial
    directory), and a local file named like a published file (yolov5su.pt) means that file, not the release."""
    if is_remote(spec.source):
        return spec
    path = Path(spec.source).expanduser()
    return WeightsSpec(str(path.absolute()), spec.sha256) if path.exists() else spec


def weights_cache_dir() -> Path:
    """Where fetched weights live on this node (pre-seed it by copying files to their cache path)."""
    return cache_root() / "weights"


@dataclass(frozen=True)
class LocalWeights:
    """A trial's starting weights on this node, and how messages about them name the trial and the source."""

    path: Path
    label: str

    def unloadable(self, reason) -> UserError:
        """The error for a file that is not a checkpoint of the trial's family; a downloaded one stays in the cache
        (every trial would fail on it again), so the message says how to get rid of it."""
        message = f"{self.label}: {reason}"
        if self.path.is_relative_to(weights_cache_dir()):
            message += f"; it was downloaded to {self.path}: remove it on each node to fetch it again"
        return UserError(message)


def local_weights(setting, named_weights, trial) -> LocalWeights:
    """The starting weights of a trial: `setting` is its resolved config's `weights`, `named_weights` its family's
    resolver of published names (trainables/<family>), `trial` how messages name the trial."""
    spec = WeightsSpec(**setting)
    label = f"{trial}: weights {spec.source}"
    return LocalWeights(fetch_weights(spec, named_weights(spec.source, label), label), label)


def fetch_weights(spec: WeightsSpec, named: NamedWeights | None, where) -> Path:
    """A local, verified copy of `spec`'s file (`named`: what its family resolved the name to, if it is one)."""
    if named is not None:
        path = _download_once(named.url, named.cache_key, spec, where)
    elif is_url(spec.source):
        path = _download_once(spec.source, url_cache_key(spec.source, where), spec, where)
    elif is_s3_uri(spec.source):
        path = fetch_s3(spec.source)
    else:
        path = Path(spec.source).expanduser()
        if not path.exists():
            raise UserError(f"{where}: {spec.source} does not exist on this node: a local path must exist on every "
                            f"node that runs the trial; put the file on shared storage, or name it by s3:// URI or URL")
    if spec.sha256 is not None and path.is_dir():
        raise UserError(f"{where}: weights.sha256 applies to a file, and {path} is a directory: remove the sha256")
    if spec.sha256 is not None:
        if path.is_relative_to(weights_cache_dir()):
            fix = f"correct weights.sha256, or remove {path} on each node to fetch it again"
        elif is_s3_uri(spec.source):
            fix = "correct weights.sha256 or the S3 object"
        else:
            fix = "correct weights.sha256 or the file"
        _check_sha256(path, spec, where, fix)
    return path


def _download_once(url, cache_key, spec, where) -> Path:
    entry = weights_cache_dir() / cache_key

    def write(part):
        if spec.sha256 is not None and _reuse_rejected(entry, part, url, spec, where):
            return
        resumed = download_into(url, part, where)
        if spec.sha256 is None:
            return
        actual = sha256_of(part)
        if actual != spec.sha256 and resumed:  # pieces of two attempts may mix two files: once more, whole
            part.unlink()
            download_into(url, part, where)
            actual = sha256_of(part)
        if actual != spec.sha256:
            rejected = entry.with_name(f"{entry.name}.sha256-{actual}")
            os.replace(part, rejected)
            raise UserError(f"{where}: the file downloaded from {url} has sha256 {actual}, not the expected "
                            f"{spec.sha256}. Check weights.sha256 and the URL (a mirror serving another file?). "
                            f"It is kept as {rejected}, so trials fail at once instead of downloading it again; "
                            "remove it on each node to download again")

    return file_once(entry, write)


def _reuse_rejected(entry, part, url, spec, where) -> bool:
    """Use an earlier download kept for having another sha256: it becomes `part` when it has the expected one
    now (weights.sha256 was corrected); otherwise fail without downloading the same file again."""
    kept = entry.with_name(f"{entry.name}.sha256-{spec.sha256}")
    if kept.is_file():
        os.replace(kept, part)
        return True
    rejected = next(iter(sorted(entry.parent.glob(f"{entry.name}.sha256-*"))), None)
    if rejected is not None:
        actual = rejected.name.rsplit("-", 1)[1]
        raise UserError(f"{where}: the file downloaded from {url} has sha256 {actual}, not the expected "
                        f"{spec.sha256}: correct weights.sha256, or if the server's file changed since, remove "
                        f"{rejected} on each node to download it again")
    return False


def _check_sha256(path, spec, where, fix):
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise UserError(f"{where}: {path} (from {spec.source}) has sha256 {actual}, not the expected "
                        f"{spec.sha256}: {fix}")
