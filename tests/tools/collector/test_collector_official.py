"""BugSnag's official Python notifier (bugsnag 4.9.2) pointed at the collector.

The collector is where people try things before BugSnag, and many of them already run the
official notifier (a Django web process next to their Celery workers). What it sends must
be filed as BugSnag files it: its sessions carry ``Bugsnag-Payload-Version: 4.0`` and
times with no zone, its events put the release stage at the top of the event. These tests
drive the real client at a real collector and assert what the collector filed, and that
the client saw no failed delivery.

Covers: bugsnag_celery/tools/collector/wire.py, bugsnag_celery/tools/collector/times.py
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import bugsnag
import pytest
import requests

from bugsnag_celery.tools.collector import Collector

KEY = "a35a2a72bd230ac0aa0f52715bbdc6aa"
DATA = Path(__file__).resolve().parents[2] / "support" / "data"
CAPTURE = DATA / "official-bugsnag-python-4.9.2-capture.json"
T = TypeVar("T")


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    lines: list[str] = []
    server = Collector(port=0, db=str(tmp_path / "official.sqlite"), log=lines.append).start()
    try:
        yield server
    finally:
        server.close()
    assert lines == [], "the collector refused something of the official notifier's"


@pytest.fixture
def official(collector: Collector) -> Iterator[Any]:
    """A real ``bugsnag.Client`` (synchronous, no sys hooks) reporting to the collector."""
    client = bugsnag.Client(
        api_key=KEY, endpoint=f"{collector.url}/notify", session_endpoint=f"{collector.url}/sessions",
        asynchronous=False, install_sys_hook=False, app_version="3.1.0", release_stage="staging",
        hostname="web-1",
    )  # fmt: skip
    assert version("bugsnag") == "4.9.2", "these tests stand for the official notifier 4.9.2"
    try:
        yield client
    finally:
        tracker: Any = client.session_tracker
        if tracker.delivery_thread is not None:  # its 30 s timer would outlive the test
            tracker.delivery_thread.cancel()


def isolated(run: Callable[[], T]) -> T:
    """Run in a fresh context: the official notifier keeps its current session in a module
    context variable, which must not leak into other tests' events."""
    return contextvars.Context().run(run)


def no_failed_delivery(caplog: pytest.LogCaptureFixture) -> None:
    failed = [r.getMessage() for r in caplog.records if r.name == "bugsnag" and r.levelno >= logging.WARNING]
    assert failed == [], failed


def test_its_sessions_are_accepted_and_counted(
    official: Any, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    tracker: Any = official.session_tracker

    def sessions() -> None:
        for _ in range(3):
            tracker.start_session()
        tracker.send_sessions(asynchronous=False)

    isolated(sessions)
    no_failed_delivery(caplog)
    # the official notifier sends no app type with its sessions
    assert collector.releases() == [{"appVersion": "3.1.0", "releaseStage": "staging", "sessions": 3,
                                     "crashedSessions": 0, "stability": 100.0,
                                     "appTypes": [{"appType": None, "sessions": 3, "crashedSessions": 0,
                                                   "stability": 100.0}]}]  # fmt: skip
    (minute,) = collector.minutes("3.1.0", "staging")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d", minute["minute"]) and minute["sessions"] == 3


def test_its_events_are_filed_under_their_stage_and_crash_their_session(
    official: Any, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    tracker: Any = official.session_tracker

    def run() -> None:
        for _ in range(4):
            tracker.start_session()
        try:
            raise KeyError("b")
        except KeyError as exc:
            official.notify(exc, unhandled=True, severity="error", context="orders.views.checkout")
        try:
            raise ValueError("handled, no context")
        except ValueError as exc:
            official.notify(exc)
        tracker.send_sessions(asynchronous=False)

    isolated(run)
    no_failed_delivery(caplog)
    events = collector.events()
    assert [(e["errorClass"], e["appVersion"], e["releaseStage"], e["unhandled"]) for e in events] == [
        ("KeyError", "3.1.0", "staging", True),
        ("ValueError", "3.1.0", "staging", False),
    ]
    assert collector.releases() == [{"appVersion": "3.1.0", "releaseStage": "staging", "sessions": 4,
                                     "crashedSessions": 1, "stability": 75.0,
                                     "appTypes": [{"appType": None, "sessions": 4, "crashedSessions": 1,
                                                   "stability": 75.0}]}]  # fmt: skip
    # exactly as received: the stage where the official notifier puts it
    payload = requests.get(f"{collector.url}/api/events/{events[0]['id']}", timeout=10).json()
    assert payload["releaseStage"] == "staging" and "releaseStage" not in payload["app"]
    page = requests.get(f"{collector.url}/", timeout=10).text
    assert page.count("<section class='release'") == 1  # one release: no "None" stage beside it
    assert "3.1.0 &middot; staging" in page and "orders.views.checkout" in page
    assert ">None<" not in page and "(no task)" in page  # the handled error had no context


def test_the_captured_requests_are_accepted_exactly_as_sent(collector: Collector) -> None:
    """The capture's requests, headers and bodies byte for byte as the notifier sent them."""
    captured = json.loads(CAPTURE.read_text())
    statuses = []
    for request in captured:
        headers = {
            k: v for k, v in request["headers"].items() if k.startswith("Bugsnag-") or k == "Content-Type"
        }
        body = json.dumps(request["body"], separators=(",", ":")).encode()
        statuses.append(
            requests.post(collector.url + request["path"], data=body, headers=headers, timeout=10)
        )
    assert [(r.status_code, r.json()) for r in statuses] == [
        (200, {"status": "ok"}),
        (202, {"status": "accepted"}),
    ]
    assert captured[1]["headers"]["Bugsnag-Payload-Version"] == "4.0"  # sessions sent as 4.0: accepted
    assert collector.releases() == [{"appVersion": "1.2.3", "releaseStage": "production", "sessions": 1,
                                     "crashedSessions": 1, "stability": 0.0,
                                     "appTypes": [{"appType": None, "sessions": 1, "crashedSessions": 1,
                                                   "stability": 0.0}]}]  # fmt: skip
    assert collector.minutes("1.2.3", "production") == [
        {"minute": "2026-11-27T23:40", "sessions": 1, "crashedSessions": 1}
    ]
