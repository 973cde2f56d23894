"""HTTP(S) downloads into a file that may already hold the start of the content: an interrupted download continues
with a Range request instead of starting over (a COCO checkpoint is a few hundred MB). Standard library only.

A download continues only the same file: the first response's strong ETag (else its Last-Modified) is kept beside
the part as `<part>.validator` and sent as If-Range, so a server whose file changed answers with the whole new
file, and a partial answer must start exactly where the part ends. A body without Content-Length (nor chunked
framing) cannot tell a complete download from a dropped connection, so it is refused rather than taken as whole.

Every failure is a UserError naming the URL and what went wrong: unreachable host, HTTP status, a body shorter
than the server announced.
"""

import http.client
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from detfuse.core.errors import UserError

TIMEOUT_S = 60  # per connection attempt and per read; a stalled server fails instead of hanging a trial
CHUNK = 1024 * 1024
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+)")


def download_into(url: str, part: Path, where: str) -> bool:
    """Write the content at `url` to `part`, continuing after the bytes `part` already holds when the server
    confirms the same file (If-Range) and range support (HTTP 206); otherwise `part` restarts. Returns True when
    `part` holds bytes of an earlier attempt (a continued download), False when one response wrote it all."""
    validator_file = part.with_name(part.name + ".validator")
    offset = part.stat().st_size if part.is_file() and validator_file.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "detfuse"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        request.add_header("If-Range", validator_file.read_text())
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part reaches the end already, or is longer than the file
            if _content_range(error.headers)[1] == offset:
                validator_file.unlink()
                return True
            part.unlink()
            validator_file.unlink()
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
        if resumed and (not offset or _content_range(response.headers)[0] != offset):
            if not offset:
                raise UserError(f"{where}: downloading {url} failed: the server sent part of the file (HTTP 206) "
                                "when asked for all of it")
            part.unlink()  # a range other than the one asked for: continuing would mix two pieces
            validator_file.unlink()
            return download_into(url, part, where)
        length = response.headers.get("Content-Length")
        expected = None if length is None else int(length) + (offset if resumed else 0)
        if expected is None and response.headers.get("Transfer-Encoding", "").lower() != "chunked":
            raise UserError(f"{where}: downloading {url} failed: the server announced no length (Content-Length), "
                            "so a dropped connection cannot be told from the end of the file; serve it with its "
                            "length, or stage it on S3 (`detfuse weights fetch`)")
        if not resumed:
            validator = _validator(response.headers)
            if validator is None:
                validator_file.unlink(missing_ok=True)  # nothing to confirm the file by: an interruption restarts
            else:
                validator_file.write_text(validator)
        try:
            with open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
        except (OSError, http.client.HTTPException) as error:  # dropped mid-body: `part` keeps what arrived
            again = "continue it" if validator_file.is_file() else "download it again"
            raise UserError(f"{where}: downloading {url} was interrupted ({error}); run again to {again}") from None
    size = part.stat().st_size
    if expected is not None and size < expected:
        again = "continue it" if validator_file.is_file() else "download it again"
        raise UserError(f"{where}: downloading {url} stopped after {size} of {expected} bytes; run again to {again}")
    validator_file.unlink(missing_ok=True)
    return resumed


def _validator(headers):
    """What identifies this version of the file for If-Range: a strong ETag, else Last-Modified (or None)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _content_range(headers):
    """(first byte, total length) of a Content-Range header; (None, total) for `bytes */total`, (None, None)
    when absent or unreadable."""
    match = _CONTENT_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    if match is None:
        return None, None
    return (None if match.group(1) is None else int(match.group(1))), int(match.group(2))
