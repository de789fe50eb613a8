"""The collector's page, looked at in a real headless browser (Debian's Chromium).

The page is filled by our own notifier (eager runs, real payloads), then Chromium loads
it: the DOM it built must show the figures of ``/api/releases``, a chart bar per minute,
the top errors with links that open each event's payload, and a hostile error message
as text, never as markup. A screenshot must be a real picture, not a blank page.

Chromium is installed with apt-get when it is missing and the tests run as root (the
machines of this project); otherwise the test skips with the reason, unless
``BUGSNAG_CELERY_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from celery import Celery

import bugsnag_celery
from bugsnag_celery.tools.collector import Collector

KEY = "a35a2a72bd230ac0aa0f52715bbdc6aa"
HOSTILE = "<script>document.title='pwned'</script><b>bold</b>"
# As the machine notes say: without the background-networking flags Chromium keeps
# trying to reach Google's hosts, which a closed network refuses.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _install_chromium() -> str | None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    for steps in ([install], [["apt-get", "update", "-q"], install]):  # the package lists may be stale
        for step in steps:
            subprocess.run(step, env=env, capture_output=True, timeout=900)
        found = shutil.which("chromium")
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or _install_chromium()
    if path:
        return path
    reason = "Chromium is missing and could not be installed (as root: apt-get install chromium)"
    if os.environ.get("BUGSNAG_CELERY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; BUGSNAG_CELERY_REQUIRE_BROWSER=1 requires it")
    pytest.skip(reason)


def browse(chromium: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "--window-size=1280,900", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[Collector]:
    """A collector that received what our notifier sends for 7 good runs and 2 crashes."""
    collector = Collector(port=0, db=str(tmp_path / "page.sqlite")).start()
    app = Celery(f"p{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    bugsnag_celery.configure(app, api_key=KEY, app_version="2.4.1", release_stage="production",
                             queue_prefix=f"page{uuid.uuid4().hex[:6]}",
                             notify_endpoint=f"{collector.url}/notify",
                             sessions_endpoint=f"{collector.url}/sessions")  # fmt: skip
    try:

        @app.task(name="billing.charge", shared=False)
        def charge() -> None:
            pass

        @app.task(name="billing.refund", shared=False)
        def refund() -> None:
            raise ValueError(HOSTILE)

        for _ in range(7):
            charge.apply()
        refund.apply()
        refund.apply()
        assert bugsnag_celery.flush(app)["sessions"]["delivered"] == 9
        yield collector
    finally:
        bugsnag_celery.unconfigure(app)
        collector.close()


def test_the_page_in_a_real_browser(chromium: str, filled: Collector) -> None:
    (release,) = filled.releases()
    assert release == {"appVersion": "2.4.1", "releaseStage": "production", "sessions": 9,
                       "crashedSessions": 2, "stability": 77.78}  # fmt: skip
    out = browse(chromium, "--dump-dom", f"{filled.url}/")
    dom = out.stdout
    assert "<section" in dom, out.stderr[-2000:]
    assert re.search(r"<h2>2\.4\.1 · production</h2>", dom), dom
    assert re.search(r'class="sessions">9<', dom)
    assert re.search(r'class="crashed">2<', dom)
    assert re.search(r'class="stability poor">77\.78%<', dom)
    assert len(re.findall(r'<g class="minute">', dom)) == len(filled.minutes("2.4.1", "production")) >= 1
    rows = re.findall(r'<tr class="error">(.*?)</tr>', dom, re.S)
    assert len(rows) == 1 and "ValueError" in rows[0] and "billing.refund" in rows[0]
    assert re.search(r'class="n count">2<', rows[0]) and re.search(r'class="n crashes">2<', rows[0])
    # The hostile message is shown as text: escaped in the DOM, no script ran.
    assert "&lt;script&gt;document.title" in dom and "<title>bugsnag-celery collector</title>" in dom
    assert "<b>bold</b>" not in dom
    links = re.findall(r'href="(/api/events/\d+)"', dom)
    assert len(links) == 2
    payload = requests.get(filled.url + links[0], timeout=10).json()
    assert payload["exceptions"][0]["errorClass"] == "ValueError"
    assert payload["exceptions"][0]["message"] == HOSTILE
    assert payload["context"] == "billing.refund" and payload["unhandled"] is True


def test_a_screenshot_is_a_real_picture(chromium: str, filled: Collector, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    out = browse(chromium, f"--screenshot={shot}", f"{filled.url}/")
    assert shot.exists(), out.stderr[-2000:]
    width, height, colours = png_summary(shot.read_bytes())
    assert (width, height) == (1280, 900)
    assert colours >= 50, f"the screenshot has {colours} distinct byte values: a blank page?"


def test_an_empty_collector_says_so(chromium: str, tmp_path: Path) -> None:
    collector = Collector(port=0, db=str(tmp_path / "empty.sqlite")).start()
    try:
        dom = browse(chromium, "--dump-dom", f"{collector.url}/").stdout
        assert 'id="empty"' in dom and "Nothing received yet." in dom
    finally:
        collector.close()


def png_summary(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the decompressed pixels) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))
