"""Stability per app type: the workers apart from the web requests counted in the same release.

A web process running BugSnag's official integration (Flask's ``handle_exceptions``, Django's
middleware) counts a session per request under the same app version and release stage as
the workers, so a release's figure blends both. The collector keeps each release's sessions
and crashed sessions per ``app.type`` as well: sessions by their payload's app type (the
official notifier 4.9.2 sends none with its sessions), crashed sessions by their unhandled
events' app type. The combined figure stays as it was.

Covers: bugsnag_celery/tools/collector/store.py, bugsnag_celery/tools/collector/api.py
Covers: bugsnag_celery/tools/collector/page.py
"""

from __future__ import annotations

import contextvars
import json
import sqlite3
import uuid
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
NOTIFIER = {"name": "n", "version": "1", "url": "u"}
MISMATCH = "Crashed sessions and no sessions of their app type"  # the page's note


def headers(version: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Bugsnag-Api-Key": KEY, "Bugsnag-Payload-Version": version,
            "Bugsnag-Sent-At": "2026-01-01T00:00:05Z"}  # fmt: skip


def sessions(app_type: str | None, n: int, version: str = "1") -> dict[str, Any]:
    app: dict[str, Any] = {"version": version, "releaseStage": "p"}
    if app_type is not None:
        app["type"] = app_type
    return {"notifier": NOTIFIER, "app": app, "device": {"hostname": "h"},
            "sessionCounts": [{"startedAt": "2026-01-01T00:00:00Z", "sessionsStarted": n}]}  # fmt: skip


def event(app_type: str | None, session: str | None, unhandled: bool = True) -> dict[str, Any]:
    started = "2026-01-01T00:00:00Z"
    return {"exceptions": [{"errorClass": "E", "message": "m"}], "severity": "error", "unhandled": unhandled,
            "context": "t", "app": {"version": "1", "releaseStage": "p", "type": app_type},
            "session": None if session is None else {"id": session, "startedAt": started}}  # fmt: skip


def post(url: str, path: str, body: Any, version: str) -> None:
    answer = requests.post(f"{url}{path}", data=json.dumps(body), headers=headers(version), timeout=10)
    assert answer.status_code in (200, 202), answer.text


# The collector's file before events kept their app type (sessions always had it).
OLD_SCHEMA = """
create table sessions (
    id integer primary key, app_version text, release_stage text, app_type text, hostname text,
    started_at text, count integer, received real);
create table events (
    id integer primary key, app_version text, release_stage text, context text, error_class text,
    message text, unhandled integer, severity text, session_id text, payload text, received real,
    session_started text);
"""


def figures(app_type: str | None, n: int, crashed: int, stability: float | None) -> dict[str, Any]:
    return {"appType": app_type, "sessions": n, "crashedSessions": crashed, "stability": stability}


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    lines: list[str] = []
    server = Collector(port=0, db=str(tmp_path / "types.sqlite"), log=lines.append).start()
    try:
        yield server
    finally:
        server.close()
    assert lines == [], "the collector refused something"


def test_a_release_is_split_by_app_type_with_the_combined_figure_kept(collector: Collector) -> None:
    """Two app types and sessions sent without one, in one release: each type's figures, and
    the release's as before. Two unhandled events of one session crash it once; a handled
    event and an event without a session crash nothing."""
    url = collector.url
    post(url, "/sessions", sessions("celery", 8), "1.0")
    post(url, "/sessions", sessions("celery", 2), "1.0")
    post(url, "/sessions", sessions("flask", 30), "1.0")
    post(url, "/sessions", sessions(None, 10), "4.0")
    post(url, "/sessions", sessions("celery", 5, version="2"), "1.0")  # another release
    crashes = [event("celery", "w1"), event("celery", "w1"), event("celery", "w2"), event("flask", "r1"),
               event("celery", "w3", unhandled=False), event("celery", None), event(None, "n1")]  # fmt: skip
    post(url, "/notify", {"apiKey": KEY, "notifier": NOTIFIER, "events": crashes}, "4.0")

    expected: list[dict[str, Any]] = [
        {"appVersion": "1", "releaseStage": "p", "sessions": 50, "crashedSessions": 4, "stability": 92.0,
         "appTypes": [figures(None, 10, 1, 90.0), figures("celery", 10, 2, 80.0),
                      figures("flask", 30, 1, 96.67)]},
        {"appVersion": "2", "releaseStage": "p", "sessions": 5, "crashedSessions": 0, "stability": 100.0,
         "appTypes": [figures("celery", 5, 0, 100.0)]},
    ]  # fmt: skip
    assert collector.releases() == expected
    assert requests.get(f"{url}/api/releases", timeout=10).json() == expected
    for release in expected:  # every session is counted under exactly one app type
        assert sum(t["sessions"] for t in release["appTypes"]) == release["sessions"]
    page = requests.get(f"{url}/", timeout=10).text
    assert "<td>flask</td><td class='n type-sessions'>30</td><td class='n type-crashed'>1</td>" in page
    assert MISMATCH not in page  # (shown where it applies: the next test)


def test_an_app_type_with_crashes_and_no_sessions_is_shown_without_a_score(collector: Collector) -> None:
    """A web process whose official client has an ``app_type``: its events carry it, its
    sessions (official notifier 4.9.2) do not. Its crashes are its type's; its sessions are
    under no type. Nothing is moved between them behind the reader's back: the page says why."""
    post(collector.url, "/sessions", sessions(None, 4), "4.0")
    crash = {"apiKey": KEY, "notifier": NOTIFIER, "events": [event("web", "r1")]}
    post(collector.url, "/notify", crash, "4.0")
    (release,) = collector.releases()
    assert release["appTypes"] == [figures(None, 4, 0, 100.0), figures("web", 0, 1, None)]
    assert (release["sessions"], release["crashedSessions"], release["stability"]) == (4, 1, 75.0)
    page = requests.get(f"{collector.url}/", timeout=10).text
    assert MISMATCH in page


@pytest.fixture
def official(collector: Collector) -> Iterator[Any]:
    """BugSnag's official client as a web process runs it, reporting to the collector."""
    client = bugsnag.Client(
        api_key=KEY, endpoint=f"{collector.url}/notify", session_endpoint=f"{collector.url}/sessions",
        asynchronous=False, install_sys_hook=False, app_version="3.1.0", release_stage="staging",
    )  # fmt: skip
    try:
        yield client
    finally:
        tracker: Any = client.session_tracker
        if tracker.delivery_thread is not None:  # its 30 s timer would outlive the test
            tracker.delivery_thread.cancel()


def _ok() -> None:
    pass


def _boom() -> None:
    raise ValueError("x")


def test_the_workers_apart_from_the_official_clients_requests(collector: Collector, official: Any) -> None:
    """Real payloads: the official client counts 6 "requests" and one crashes; this package
    counts 5 task runs of the same release and one crashes. The release blends them (11, 2);
    its ``celery`` row is the workers' alone (5, 1), the rest is the web's (6, 1)."""
    tracker: Any = official.session_tracker

    def requests_of_the_web() -> None:
        for _ in range(6):
            tracker.start_session()
        try:
            raise KeyError("b")
        except KeyError as exc:
            official.notify(exc, unhandled=True, severity="error", context="GET /checkout")
        tracker.send_sessions(asynchronous=False)

    contextvars.Context().run(requests_of_the_web)  # the official session stays in that context
    app = Celery(f"t{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    bugsnag_celery.configure(app, api_key=KEY, app_version="3.1.0", release_stage="staging",
                             queue_prefix=f"types{uuid.uuid4().hex[:6]}",
                             notify_endpoint=f"{collector.url}/notify",
                             sessions_endpoint=f"{collector.url}/sessions")  # fmt: skip
    try:
        # (Celery has no type hints: tasks made by a call, not an untyped decorator)
        ok, boom = (app.task(shared=False)(run) for run in (_ok, _boom))
        for _ in range(4):
            ok.apply()
        boom.apply()
        assert bugsnag_celery.flush(app)["sessions"]["delivered"] == 5
    finally:
        bugsnag_celery.unconfigure(app)
    assert collector.releases() == [
        {"appVersion": "3.1.0", "releaseStage": "staging", "sessions": 11, "crashedSessions": 2,
         "stability": 81.82, "appTypes": [figures(None, 6, 1, 83.33), figures("celery", 5, 1, 80.0)]}
    ]  # fmt: skip


def test_events_stored_before_app_types_were_kept_get_theirs_from_their_payloads(tmp_path: Path) -> None:
    """A file written before events had an app type column: opening it reads each event's
    type from the payload it kept (an unreadable payload: no type), so its crashes split too."""
    db = str(tmp_path / "old.sqlite")
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute(
            "insert into sessions (app_version, release_stage, app_type, started_at, count, received)"
            " values ('1', 'p', 'celery', '2026-01-01T00:00:00Z', 4, 0)"
        )
        stored = [(json.dumps(event("celery", "w1")), "w1"), (json.dumps(event("web", "r1")), "r1"),
                  ("not json {", "x1"), (json.dumps({"app": "celery"}), "x2"), (None, "x3")]  # fmt: skip
        for payload, session in stored:
            conn.execute(
                "insert into events (app_version, release_stage, error_class, unhandled, severity,"
                " session_id, payload, received) values ('1', 'p', 'E', 1, 'error', ?, ?, 0)",
                (session, payload),
            )
    for _ in range(2):  # and once more, now that the file has the column
        reopened = Collector(port=0, db=db)
        try:
            (release,) = reopened.releases()
            assert release["appTypes"] == [figures(None, 0, 3, None), figures("celery", 4, 1, 75.0),
                                           figures("web", 0, 1, None)]  # fmt: skip
            assert (release["sessions"], release["crashedSessions"]) == (4, 5)
        finally:
            reopened.server.server_close()
            reopened.close_db()
