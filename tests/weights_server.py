"""A loopback HTTP server for pretrained-weights tests: serves the files a test puts in its directory, honours
Range and If-Range requests (with a strong ETag per content) as real file hosts do, records every request, and can
cut a response short once (an interrupted download), ignore ranges, redirect, or leave out Content-Length, as some
hosts do. No test reaches outside the machine.
"""

import hashlib
import http.server
import threading
import time
from pathlib import Path

import pytest


class WeightsServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests = []  # (path, Range header or None), in arrival order
        self.cut_after = {}  # path -> bytes sent before the connection drops, for that path's next request
        self.delay_s = 0.0  # before answering each request: concurrent clients overlap
        self.ignore_range = False  # answer every request with the whole file (200), as hosts without range support
        self.redirect = {}  # path -> the path it redirects to (302), as release downloads do
        self.send_length = True  # False: no Content-Length, the body ends when the connection closes
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def put(self, relative, data: bytes) -> str:
        """Serve `data` at `relative`; returns its URL."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.url}/{relative}"

    def gets(self, relative):
        """The requests made for `relative` so far."""
        return [entry for entry in self.requests if entry[0] == "/" + relative]

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server._lock:
                    server.requests.append((self.path, self.headers.get("Range")))
                    cut = server.cut_after.pop(self.path, None)
                time.sleep(server.delay_s)
                if self.path in server.redirect:
                    self.send_response(302)
                    self.send_header("Location", server.url + server.redirect[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                file = server.root / self.path.split("?")[0].lstrip("/")  # a query selects nothing here
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                start = 0
                ranged = self.headers.get("Range") and not server.ignore_range
                if ranged and self.headers.get("If-Range", etag) == etag:
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("ETag", etag)
                if server.send_length:
                    self.send_header("Content-Length", str(len(data) - start))
                else:
                    self.close_connection = True
                self.end_headers()
                body = data[start:] if cut is None else data[start:start + cut]
                self.wfile.write(body)
                if cut is not None:
                    self.close_connection = True

        return Handler

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def weights_server(tmp_path):
    with WeightsServer(tmp_path / "served") as server:
        yield server


@pytest.fixture(scope="module")
def module_weights_server(tmp_path_factory):
    with WeightsServer(tmp_path_factory.mktemp("served")) as server:
        yield server
