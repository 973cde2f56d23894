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
    $DETFUSE_CACHE/weights/url/<host[:port]>/<path>        http(s)://host[:port]/path (the query is not part of it)

s3:// sources use the S3 cache (detfuse.core.storage.s3.fetch). With a sha256, a download is checked before it
counts as cached, and every cached, pre-seeded, S3 or local file is checked before a trial uses it.
"""

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

FORMS = ("a local path, an s3:// URI, an http(s):// URL, a detectron2:// model-zoo name or an Ultralytics "
         "release file name such as yolov5su.pt")
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
    """A file a family publishes under a name: where to download it, and its path under the weights cache."""

    url: str
    cache_key: str


def parse_weights(value, where) -> WeightsSpec | None:
    """The `weights` setting of a trial config (a source string or {source, sha256}); None when unset."""
    if value is None:
        return None
    shape = f"{where}: 'weights' must be {FORMS}, or a mapping {{source: ..., sha256: ...}}"
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


def url_cache_key(url, where="weights") -> str:
    """The cache path of a URL's file: url/<host[:port]>/<path>; no credentials, no query."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise UserError(f"{where}: {url} names no host: write it as http(s)://HOST/PATH")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return f"url/{host}/{safe_relative_path(parts.path, where)}"


def weights_cache_dir() -> Path:
    """Where fetched weights live on this node (pre-seed it by copying files to their cache path)."""
    return cache_root() / "weights"


@dataclass(frozen=True)
class LocalWeights:
    """A trial's starting weights on this node, and how messages about them name the trial and the source."""

    path: Path
    label: str


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
            raise UserError(f"{where}: {spec.source} does not exist on this node; weights are {FORMS}")
    if spec.sha256 is not None and not path.is_file():
        raise UserError(f"{where}: weights.sha256 applies to a file, and {path} is a directory: remove the sha256")
    if spec.sha256 is not None:
        _check_sha256(path, spec, where, fix=f"correct weights.sha256, or remove {path} to fetch it again"
                      if path.is_relative_to(cache_root()) else "correct weights.sha256 or the file")
    return path


def _download_once(url, cache_key, spec, where) -> Path:
    def write(part):
        download_into(url, part, where)
        actual = None if spec.sha256 is None else sha256_of(part)
        if actual != spec.sha256:
            part.unlink()  # a wrong file is not continued next time
            raise UserError(f"{where}: the file downloaded from {url} has sha256 {actual}, not the expected "
                            f"{spec.sha256}; it was discarded. Check weights.sha256 and the URL (a mirror serving "
                            "another file?)")

    return file_once(weights_cache_dir() / cache_key, write)


def _check_sha256(path, spec, where, fix):
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise UserError(f"{where}: {path} (from {spec.source}) has sha256 {actual}, not the expected "
                        f"{spec.sha256}: {fix}")
