"""A real browser for tests of pages: Debian's headless Chromium, installed in setup when missing (CI runs as root;
with CI set, a browser that cannot be had fails the tests instead of skipping them).

`render(page)` opens a local HTML file the way a user's browser does and returns its DOM after the page's scripts
ran, with every message the page wrote to the console (a script error is one); `screenshot` saves what it shows.
"""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest

# Chromium writes each console message of the page to stderr as "...:INFO:CONSOLE:<line>] "message", source: ..."
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)")


def _install_chromium():
    """Chromium from Debian's archive, or the reason it cannot be had here."""
    if shutil.which("apt-get") is None:
        return "chromium is not installed and this system has no apt-get to install it"
    if os.geteuid() != 0:
        return "chromium is not installed and installing it needs root (apt-get install chromium)"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # apt's own network timeout per connection, and a bound on each command: the index, then chromium's ~100 MB
    network = ["-o", "Acquire::http::Timeout=30", "-o", "Acquire::Retries=2"]
    for command, limit in ((["apt-get", *network, "install", "-y", "-q", "chromium"], 600),
                           (["apt-get", *network, "update", "-q"], 300),
                           (["apt-get", *network, "install", "-y", "-q", "chromium"], 600)):
        try:
            done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} took over {limit} s"
        if "install" in command and done.returncode == 0:
            return None
    return f"apt-get install chromium failed: {done.stderr.strip()[-500:]}"


@pytest.fixture(scope="session")
def chromium():
    """The path of a headless-capable Chromium; installed from Debian when missing, else the test is skipped, or
    fails when the environment variable CI is set (.ci/run sets it): CI must not pass without the browser checks."""
    if shutil.which("chromium") is None:
        reason = _install_chromium()
        if reason and os.environ.get("CI"):
            pytest.fail(f"CI is set and no chromium could be had: {reason}")
        if reason:
            pytest.skip(reason)
    return shutil.which("chromium")


@dataclass
class Rendered:
    dom: str
    console: list  # every console message of the page, errors included


def _run(chromium, profile, *arguments):
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           *arguments], capture_output=True, text=True, timeout=120)


def render(chromium, page, profile):
    """The DOM of the local HTML file `page` once loaded, and its console messages."""
    done = _run(chromium, profile, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
                page.resolve().as_uri())
    assert done.returncode == 0, done.stderr[-3000:]
    return Rendered(done.stdout, [match.group(1) for match in CONSOLE.finditer(done.stderr)])


def screenshot(chromium, page, profile, target, size=(1200, 4400)):
    """Save a PNG of `page` as a browser window of `size` shows it."""
    done = _run(chromium, profile, "--hide-scrollbars", f"--window-size={size[0]},{size[1]}",
                f"--screenshot={target}", page.resolve().as_uri())
    assert done.returncode == 0 and target.stat().st_size > 0, done.stderr[-3000:]
    return target
