"""The per-node cache for derived data (S3 downloads, YOLO views), shared by every process on the machine.

Entries are directories named by a content hash and built at most once: concurrent builders (several Tune trials
starting together) serialise on a file lock, build into a private temporary directory and publish it with one
atomic rename, so a reader never sees a half-built entry.
"""

import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock


def cache_root() -> Path:
    """$DETFUSE_CACHE, else ~/.cache/detfuse (created on first use)."""
    root = Path(os.environ.get("DETFUSE_CACHE") or Path.home() / ".cache" / "detfuse").expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_once(entry: Path, build) -> Path:
    """Return `entry`, first calling `build(tmp_dir)` to fill it if it does not exist yet.

    `build` writes into an empty temporary directory beside `entry`; it is renamed to `entry` only when `build`
    returns, and removed when it raises.
    """
    if entry.is_dir():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if entry.is_dir():  # another process built it while we waited for the lock
            return entry
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".partial", dir=entry.parent))
        try:
            build(tmp_dir)
            os.rename(tmp_dir, entry)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    return entry
