"""The collector's page, looked at in a real headless browser (Debian's Chromium).

The page is filled by our own notifier (eager runs, real payloads), then Chromium loads
it: the DOM it built must show the figures of ``/api/releases``, a chart bar per minute,
the top errors with links that open each event's payload, and a hostile error message
as text, never as markup. A screenshot must be a real picture, not a blank page. With
BugSnag's official client counting web requests in the same release, the page shows the
release's figure and, apart, the workers' (app type ``celery``) and the web's.

Chromium is installed with apt-get when it is missing and the tests run as root (the
machines of this project); otherwise the test skips with the reason, unless
``BUGSNAG_CELERY_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure.

Covers: bugsnag_celery/tools/collector/page.py
"""

from __future__ import annotations

import base64
import contextvars
import fcntl
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bugsnag
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
                       "crashedSessions": 2, "stability": 77.78,
                       "appTypes": [{"appType": "celery", "sessions": 9, "crashedSessions": 2,
                                     "stability": 77.78}]}  # fmt: skip
    out = browse(chromium, "--dump-dom", f"{filled.url}/")
    dom = out.stdout
    assert "<section" in dom, out.stderr[-2000:]
    assert re.search(r"<h2>2\.4\.1 · production</h2>", dom), dom
    assert re.search(r'class="sessions">9<', dom)
    assert re.search(r'class="crashed">2<', dom)
    assert re.search(r'class="stability poor">77\.78%<', dom)
    (row,) = re.findall(r'<tr class="app-type" data-app-type="celery">(.*?)</tr>', dom, re.S)
    assert re.search(r'<td>celery</td><td class="n type-sessions">9</td><td class="n type-crashed">2</td>'
                     r'<td class="n type-stability poor">77\.78%</td>', row), row  # fmt: skip
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


# Puts the pipe ends given as arguments on fds 3 and 4, where Chromium looks for them, then
# becomes Chromium (a shell cannot: dash takes single-digit fds only).
_ONTO_3_AND_4 = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4);"
    " os.execv(sys.argv[3], sys.argv[3:])"
)


class DevTools:
    """Chromium driven over its DevTools pipe (``--remote-debugging-pipe``: it reads commands
    on fd 3 and answers on fd 4, NUL-separated JSON): no WebSocket client needed.

    Why more than ``--dump-dom``: whether a table fits its card is known only to the layout
    engine, so the test asks it (``getBoundingClientRect``, ``scrollWidth``) on the page as
    served.
    """

    def __init__(self, chromium: str, profile: str) -> None:
        to_chromium, self._commands = os.pipe()
        self._answers, from_chromium = os.pipe()
        # Chromium's ends above fd 9 first, so that moving them onto 3 and 4 cannot clobber either.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chromium, from_chromium)]
        self.log = Path(profile) / "chromium.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _ONTO_3_AND_4, *map(str, ends), chromium, *FLAGS,
                 "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
                pass_fds=ends, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        for fd in (to_chromium, from_chromium, *ends):
            os.close(fd)
        self._next, self._buffer = 0, b""

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise AssertionError(f"Chromium is gone: {self.log.read_text()[-2000:]}") from None
        deadline = time.monotonic() + 30
        while True:
            while b"\0" not in self._buffer:
                ready, _, _ = select.select([self._answers], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise AssertionError(f"Chromium did not answer {method} within 30 s")
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise AssertionError(f"Chromium exited during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next:
                assert "error" not in answer, answer
                return answer["result"]

    def open(self, url: str, width: int, height: int) -> str:
        """A new tab of *width* x *height* CSS pixels showing *url*, loaded; its session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = str(self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"])
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics, session)
        self.call("Page.navigate", {"url": url}, session)
        deadline = time.monotonic() + 30
        while self.evaluate(session, "location.href + ' ' + document.readyState") != f"{url} complete":
            assert time.monotonic() < deadline, f"{url} did not load within 30 s"
            time.sleep(0.05)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def screenshot(self, session: str, path: Path) -> None:
        path.write_bytes(
            base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"}, session)["data"])
        )

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait(10)
        finally:
            os.close(self._commands)
            os.close(self._answers)


@pytest.fixture
def devtools(chromium: str) -> Iterator[DevTools]:
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(chromium, profile)
        try:
            yield browser
        finally:
            browser.close()


LONG_TASK = "billing.tasks." + "reconcile_" * 16 + "ledger"  # one word, 180 characters
LONG_CLASS = "Unrecoverable" + "Ledger" * 14 + "Error"  # one word, 102 characters
LONG_TYPE = "celery-" + "billing" * 20  # an app type of one word, 147 characters
MEASURE = """(() => {
  const cards = [...document.querySelectorAll('section.release')].map(card => {
    const box = card.getBoundingClientRect(), table = card.querySelector('table.errors');
    let widest = 0, culprit = '';
    for (const el of card.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width && r.right > widest) {
        widest = r.right; culprit = el.tagName + '.' + el.getAttribute('class');
      }
    }
    return {right: box.right, scrollWidth: card.scrollWidth, clientWidth: card.clientWidth, widest, culprit,
            table: table && {right: table.getBoundingClientRect().right, scrollWidth: table.scrollWidth,
                             clientWidth: table.clientWidth},
            links: [...card.querySelectorAll('tr.error')].map(tr => tr.querySelectorAll('a.payload').length),
            more: [...card.querySelectorAll('a.more')].map(a => [a.textContent, a.getAttribute('href')])};
  });
  return {cards, pageWidth: document.documentElement.scrollWidth, viewport: innerWidth};
})()"""


def _post_events(url: str, events: list[dict[str, Any]]) -> None:
    headers = {"Content-Type": "application/json", "Bugsnag-Api-Key": KEY, "Bugsnag-Payload-Version": "4.0",
               "Bugsnag-Sent-At": "2026-01-01T00:00:05Z"}  # fmt: skip
    body = {"apiKey": KEY, "payloadVersion": "4.0", "notifier": {"name": "n", "version": "1", "url": "u"},
            "events": events}  # fmt: skip
    assert requests.post(f"{url}/notify", json=body, headers=headers, timeout=10).status_code == 200


def _post_sessions(url: str, app_type: str, n: int) -> None:
    headers = {"Content-Type": "application/json", "Bugsnag-Api-Key": KEY, "Bugsnag-Payload-Version": "1.0",
               "Bugsnag-Sent-At": "2026-01-01T00:00:05Z"}  # fmt: skip
    body = {"notifier": {"name": "n", "version": "1", "url": "u"}, "device": {},
            "app": {"version": "2.4.1", "releaseStage": "production", "type": app_type},
            "sessionCounts": [{"startedAt": "2026-01-01T00:00:00Z", "sessionsStarted": n}]}  # fmt: skip
    assert requests.post(f"{url}/sessions", json=body, headers=headers, timeout=10).status_code == 202


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (640, 900)])
def test_no_table_is_wider_than_its_card(
    devtools: DevTools, filled: Collector, tmp_path: Path, width: int, height: int
) -> None:
    """An error with 30 payloads, a task name, an error class and an app type that are one long
    word each: the layout engine's own measures say every table (and everything else) stays
    inside its card, at a desktop width and a narrow one. A screenshot is kept as the test's
    artefact."""
    crash = {"exceptions": [{"errorClass": LONG_CLASS, "message": "x" * 400}], "severity": "error",
             "unhandled": True, "context": LONG_TASK,
             "app": {"version": "2.4.1", "releaseStage": "production"},
             "session": {"id": "s-long", "startedAt": "2026-01-01T00:00:00Z"}}  # fmt: skip
    _post_events(filled.url, [crash] * 30)
    _post_sessions(filled.url, LONG_TYPE, 3)
    session = devtools.open(f"{filled.url}/", width, height)
    measured = devtools.evaluate(session, MEASURE)
    shot = tmp_path / f"collector-page-{width}x{height}.png"
    devtools.screenshot(session, shot)
    print(f"\nscreenshot of the collector's page at {width}x{height}: {shot}")
    for card in measured["cards"]:
        table = card["table"]
        print(f"card right edge {card['right']}, table right edge {table['right']}, table scrollWidth/"
              f"clientWidth {table['scrollWidth']}/{table['clientWidth']}, widest descendant {card['widest']}"
              f" ({card['culprit']}); page {measured['pageWidth']} px")  # fmt: skip
    assert png_summary(shot.read_bytes())[:2] == (width, height)
    assert measured["pageWidth"] <= measured["viewport"], measured  # no horizontal scrolling at all
    (card,) = measured["cards"]
    assert card["table"]["scrollWidth"] <= card["table"]["clientWidth"], card
    assert card["table"]["right"] <= card["right"] + 0.5, card
    assert card["widest"] <= card["right"] + 0.5, f"{card['culprit']} sticks out of its card: {card}"
    assert card["scrollWidth"] <= card["clientWidth"], card
    assert sorted(card["links"]) == [2, 8]  # at most 8 payload links per error
    ((text, href),) = card["more"]
    assert text == "+22 more"
    listed = requests.get(filled.url + href, timeout=10).json()
    assert len(listed) == 30 and {e["context"] for e in listed} == {LONG_TASK}


def _web_requests(collector: Collector, requests_: int, crashes: int) -> None:
    """What a web process with BugSnag's official client (Flask's or Django's integration)
    sends: a session per request, in the workers' release, and an unhandled event per crash."""
    client = bugsnag.Client(
        api_key=KEY, endpoint=f"{collector.url}/notify", session_endpoint=f"{collector.url}/sessions",
        asynchronous=False, install_sys_hook=False, app_version="2.4.1", release_stage="production",
    )  # fmt: skip
    tracker: Any = client.session_tracker

    def serve() -> None:  # in a context of its own: the official session must not leak
        for i in range(requests_):
            tracker.start_session()
            if i < crashes:
                try:
                    raise LookupError("no such order")
                except LookupError as exc:
                    client.notify(exc, unhandled=True, severity="error", context="GET /orders")
        tracker.send_sessions(asynchronous=False)

    try:
        contextvars.Context().run(serve)
    finally:
        if tracker.delivery_thread is not None:  # its 30 s timer would outlive the test
            tracker.delivery_thread.cancel()


SPLIT = """(() => [...document.querySelectorAll('section.release')].map(card => {
  const box = card.getBoundingClientRect(), table = card.querySelector('table.app-types');
  const shown = table && table.getBoundingClientRect();
  return {combined: [...card.querySelectorAll('.figure b')].map(b => b.innerText),
          inside: !!shown && shown.height > 0 && shown.right <= box.right + 0.5,
          rows: table ? [...table.querySelectorAll('tr.app-type')].map(
              tr => [...tr.cells].map(td => td.innerText)) : []};
}))()"""


def test_the_workers_are_shown_apart_from_the_web_requests(devtools: DevTools, filled: Collector) -> None:
    """The workers' 9 runs (2 crashed) and 31 web requests (1 crashed) of the official client,
    in one release: the page shows the release's figure (40, 3) and, as the browser renders
    it, one row per app type: the web's requests (sent without a type) and the workers'."""
    _web_requests(filled, 31, 1)
    (release,) = filled.releases()
    assert (release["sessions"], release["crashedSessions"], release["stability"]) == (40, 3, 92.5)
    session = devtools.open(f"{filled.url}/", 1280, 900)
    (card,) = devtools.evaluate(session, SPLIT)
    assert card["combined"] == ["40", "3", "92.50%"]
    assert card["inside"], card
    assert card["rows"] == [["(no app type)", "31", "1", "96.77%"], ["celery", "9", "2", "77.78%"]]
