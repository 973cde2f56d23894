"""The per-node cache for derived data (S3 downloads, YOLO views, pretrained weights), shared by every process on
the machine.

Entries are built at most once: concurrent builders (several Tune trials starting together) serialise on a file
lock, build privately and publish with one atomic rename, so a reader never sees a half-built entry. Directory
entries (`build_once`) are named by a content hash and built in a temporary directory; file entries (`file_once`)
are written to `<entry>.part`, which outlives a failed attempt so the next one can continue it (a resumed download).
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


def _once(entry: Path, present, make) -> Path:
    """Return `entry`, first calling `make()` under the entry's file lock unless `present(entry)`: concurrent trials
    on a node wait for the one that makes it, then find it made."""
    if present(entry):
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if not present(entry):  # another process may have made it while we waited for the lock
            make()
    return entry


def build_once(entry: Path, build) -> Path:
    """Return the directory `entry`, first calling `build(tmp_dir)` to fill it if it does not exist yet.

    `build` writes into an empty temporary directory beside `entry`; it is renamed to `entry` only when `build`
    returns, and removed when it raises.
    """
    def make():
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".partial", dir=entry.parent))
        try:
            build(tmp_dir)
            os.rename(tmp_dir, entry)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise

    return _once(entry, Path.is_dir, make)


def file_once(entry: Path, write) -> Path:
    """Return the file `entry`, first calling `write(part)` to fill it if it does not exist yet.

    `write` writes (or continues) the file `part` (`<entry>.part`); it is renamed to `entry` only when `write`
    returns. A `part` left by a failed attempt stays for the next one: `write` decides whether to continue it.
    A file placed at `entry` by hand (a pre-seeded cache) counts as built.
    """
    def make():
        part = entry.with_name(entry.name + ".part")
        write(part)
        os.rename(part, entry)

    return _once(entry, Path.is_file, make)
