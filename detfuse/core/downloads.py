"""HTTP(S) downloads into a file that may already hold the start of the content: an interrupted download continues
with a Range request instead of starting over (a COCO checkpoint is a few hundred MB). Standard library only.

Every failure is a UserError naming the URL and what went wrong: unreachable host, HTTP status, a body shorter
than the server announced.
"""

import http.client
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from detfuse.core.errors import UserError

TIMEOUT_S = 60  # per connection attempt and per read; a stalled server fails instead of hanging a trial
CHUNK = 1024 * 1024


def download_into(url: str, part: Path, where: str):
    """Write the content at `url` to `part`, continuing after the bytes `part` already holds when the server
    supports ranges (HTTP 206); a server that answers with the whole content (200) restarts the file."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "detfuse"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part is already as long as the file, or longer: start over
            part.unlink()
            return download_into(url, part, where)
        hint = {404: "no such file: check the name or URL", 403: "access denied by the server",
                401: "the server wants credentials"}.get(error.code, "the server refused the request")
        raise UserError(f"{where}: downloading {url} failed: HTTP {error.code} {error.reason} ({hint})") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"{where}: cannot reach {url} ({reason}). On a cluster without internet access, stage the file with "
            "`detfuse weights fetch NAME --to DIR_OR_S3` on a machine that has it, or pre-seed the node's cache "
            "(docs/cluster.md)") from None
    with response:
        resumed = response.status == 206
        expected = response.headers.get("Content-Length")
        expected = None if expected is None else int(expected) + (offset if resumed else 0)
        try:
            with open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
        except (OSError, http.client.HTTPException) as error:  # dropped mid-body: `part` keeps what arrived
            raise UserError(f"{where}: downloading {url} was interrupted ({error}); run again to continue it") \
                from None
    size = part.stat().st_size
    if expected is not None and size < expected:
        raise UserError(f"{where}: downloading {url} stopped after {size} of {expected} bytes; run again to "
                        "continue it")
