"""The local collector: BugSnag's wire rules, storage that survives a restart, and our own
payloads accepted by it end to end.

Covers: bugsnag_celery/tools/collector/server.py, bugsnag_celery/tools/collector/store.py
Covers: bugsnag_celery/tools/collector/api.py, bugsnag_celery/tools/cli.py
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from celery import Celery

import bugsnag_celery
from bugsnag_celery.tools.collector import Collector

KEY = "a35a2a72bd230ac0aa0f52715bbdc6aa"
NOTIFIER = {"name": "n", "version": "1", "url": "u"}
EVENT = {
    "exceptions": [{"errorClass": "KeyError", "message": "'b'", "stacktrace": [], "type": "python"}],
    "severity": "error",
    "unhandled": True,
    "context": "t",
    "app": {"version": "1", "releaseStage": "p"},
    "session": {"id": "s1", "startedAt": "2026-01-01T00:00:00Z", "events": {"handled": 0, "unhandled": 1}},
}


def headers(version: str = "4.0", **over: str) -> dict[str, str]:
    base = {"Content-Type": "application/json", "Bugsnag-Api-Key": KEY, "Bugsnag-Payload-Version": version,
            "Bugsnag-Sent-At": "2026-01-01T00:00:05.123Z"}  # fmt: skip
    return {**base, **over}


def post(url: str, body: Any, hdrs: dict[str, str]) -> int:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url, data=data, headers=hdrs, timeout=10).status_code


@pytest.fixture
def collector(tmp_path: Path) -> Any:
    server = Collector(port=0, db=str(tmp_path / "c.sqlite")).start()
    yield server
    server.close()


def test_wire_rules(collector: Collector) -> None:
    notify, sessions = f"{collector.url}/notify", f"{collector.url}/sessions"
    event_body = {"apiKey": KEY, "payloadVersion": "4.0", "notifier": NOTIFIER, "events": [EVENT]}
    session_body = {
        "notifier": NOTIFIER,
        "app": {"version": "1", "releaseStage": "p"},
        "device": {"hostname": "h"},
        "sessionCounts": [{"startedAt": "2026-01-01T00:00:00Z", "sessionsStarted": 3}],
    }
    assert post(notify, event_body, headers()) == 200
    assert post(sessions, session_body, headers("1.0")) == 202
    assert post(notify, event_body, headers(**{"Bugsnag-Api-Key": "nope"})) == 401
    assert post(notify, event_body, headers(**{"Content-Type": "application/json; charset=utf-8"})) == 400
    assert post(notify, event_body, headers("1.0")) == 400  # version header and body disagree
    assert post(notify, event_body, headers(**{"Bugsnag-Sent-At": "yesterday"})) == 400
    assert post(notify, {**event_body, "events": []}, headers()) == 400
    assert post(notify, {**event_body, "notifier": {"name": "n"}}, headers()) == 400
    assert post(sessions, {**session_body, "apiKey": KEY}, headers("1.0")) == 400
    assert post(notify, b"x" * 1_000_001, headers()) == 400  # BugSnag answers 400, not 413
    assert collector.releases() == [{"appVersion": "1", "releaseStage": "p", "sessions": 3,
                                     "crashedSessions": 1, "stability": 66.67,
                                     "appTypes": [{"appType": None, "sessions": 3, "crashedSessions": 1,
                                                   "stability": 66.67}]}]  # fmt: skip


def test_nothing_is_lost_across_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "keep.sqlite")
    first = Collector(port=0, db=db).start()
    body = {"apiKey": KEY, "payloadVersion": "4.0", "notifier": NOTIFIER, "events": [EVENT]}
    assert post(f"{first.url}/notify", body, headers()) == 200
    first.close()
    second = Collector(port=0, db=db).start()
    try:
        events = requests.get(f"{second.url}/api/events", timeout=10).json()
        assert [(e["errorClass"], e["sessionId"]) for e in events] == [("KeyError", "s1")]
    finally:
        second.close()


def test_fault_injection(collector: Collector) -> None:
    collector.fail_status = 503
    body = {"apiKey": KEY, "payloadVersion": "4.0", "notifier": NOTIFIER, "events": [EVENT]}
    assert post(f"{collector.url}/notify", body, headers()) == 503
    assert collector.events() == []


def test_our_payloads_pass_the_wire_rules_end_to_end(collector: Collector) -> None:
    app = Celery(f"e{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    bugsnag_celery.configure(app, api_key=KEY, app_version="7.0", release_stage="e2e", queue_prefix="e2e",
                             notify_endpoint=f"{collector.url}/notify",
                             sessions_endpoint=f"{collector.url}/sessions")  # fmt: skip
    try:

        @app.task
        def ok() -> None:
            pass

        @app.task
        def boom() -> None:
            raise ValueError("x")

        for _ in range(4):
            ok.apply()
        boom.apply()
        status = bugsnag_celery.flush(app)
        assert status["sessions"]["delivered"] == 5, status
    finally:
        bugsnag_celery.unconfigure(app)
    (release,) = [r for r in collector.releases() if r["appVersion"] == "7.0"]
    assert release == {"appVersion": "7.0", "releaseStage": "e2e", "sessions": 5, "crashedSessions": 1,
                       "stability": 80.0,
                       "appTypes": [{"appType": "celery", "sessions": 5, "crashedSessions": 1,
                                     "stability": 80.0}]}  # fmt: skip


def test_collector_command(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = str(Path(sys.executable).parent / "bugsnag-celery")
    proc = subprocess.Popen([exe, "collector", "--port", str(port), "--db", str(tmp_path / "c.sqlite")],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and "collector on" in proc.stdout.readline()
        body = {"apiKey": KEY, "payloadVersion": "4.0", "notifier": NOTIFIER, "events": [EVENT]}
        for _ in range(50):
            try:
                assert post(f"http://127.0.0.1:{port}/notify", body, headers()) == 200
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        events = requests.get(f"http://127.0.0.1:{port}/api/events", timeout=10).json()
        assert [e["errorClass"] for e in events] == ["KeyError"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_routes_second_port_and_integrity(tmp_path: Path) -> None:
    """``POST /`` takes events on the main port (notify.bugsnag.com) and sessions on the
    sessions port (sessions.bugsnag.com, an on-premise 49003); a wrong Bugsnag-Integrity
    is refused; an unknown path is a 404."""
    import hashlib
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Collector(port=0, db=str(tmp_path / "c.sqlite"), sessions_port=port).start()
    try:
        assert server.sessions_url == f"http://127.0.0.1:{port}"
        event_body = {"apiKey": KEY, "payloadVersion": "4.0", "notifier": NOTIFIER, "events": [EVENT]}
        counts = [{"startedAt": "2026-01-01T00:00:00Z", "sessionsStarted": 2}]
        session_body = {"notifier": NOTIFIER, "app": {"version": "1", "releaseStage": "p"}, "device": {},
                        "sessionCounts": counts}  # fmt: skip
        assert post(f"{server.url}/", event_body, headers()) == 200
        assert post(f"{server.sessions_url}/", session_body, headers("1.0")) == 202
        assert post(f"{server.sessions_url}/", event_body, headers()) == 400  # an event is not a session
        raw = json.dumps(event_body).encode()
        good = headers(**{"Bugsnag-Integrity": f"sha1 {hashlib.sha1(raw).hexdigest()}"})
        assert post(f"{server.url}/notify", raw, good) == 200
        assert post(f"{server.url}/notify", raw, headers(**{"Bugsnag-Integrity": "sha1 00"})) == 400
        assert post(f"{server.url}/elsewhere", event_body, headers()) == 404
        assert requests.get(f"{server.url}/nothing", timeout=10).status_code == 404
        assert server.releases() == [{"appVersion": "1", "releaseStage": "p", "sessions": 2,
                                      "crashedSessions": 1, "stability": 50.0,
                                      "appTypes": [{"appType": None, "sessions": 2, "crashedSessions": 1,
                                                    "stability": 50.0}]}]  # fmt: skip
        assert len(server.events()) == 2
    finally:
        server.close()


def test_event_api_filters_and_payloads(collector: Collector) -> None:
    other = {**EVENT, "context": "other", "exceptions": [{"errorClass": "OSError", "message": "m"}],
             "unhandled": False, "session": None}  # fmt: skip
    body = {"apiKey": KEY, "payloadVersion": "4.0", "notifier": NOTIFIER, "events": [EVENT, other, EVENT]}
    assert post(f"{collector.url}/notify", body, headers()) == 200
    api = f"{collector.url}/api/events"
    assert [e["id"] for e in requests.get(f"{api}?task=t", timeout=10).json()] == [1, 3]
    assert [e["context"] for e in requests.get(f"{api}?errorClass=OSError", timeout=10).json()] == ["other"]
    assert requests.get(f"{api}/2", timeout=10).json() == other  # exactly as received
    assert requests.get(f"{api}/99", timeout=10).status_code == 404
    (top, second) = collector.top_errors("1", "p")
    assert (top["errorClass"], top["events"], top["crashedSessions"]) == ("KeyError", 2, 1)
    assert top["eventIds"] == [1, 3]
    assert (second["errorClass"], second["unhandled"], second["crashedSessions"]) == ("OSError", 0, 0)


def test_per_minute_figures(collector: Collector) -> None:
    """Sessions per minute from the counts, crashes per minute from the crashed sessions'
    start times; a session with two unhandled events is one crashed session."""
    counts = [{"startedAt": "2026-01-01T00:00:00Z", "sessionsStarted": 4},
              {"startedAt": "2026-01-01T00:02:00Z", "sessionsStarted": 6}]  # fmt: skip
    session_body = {"notifier": NOTIFIER, "app": {"version": "1", "releaseStage": "p"}, "device": {},
                    "sessionCounts": counts}  # fmt: skip
    assert post(f"{collector.url}/sessions", session_body, headers("1.0")) == 202
    late = {**EVENT, "session": {"id": "s2", "startedAt": "2026-01-01T00:02:31.5Z"}}
    body = {"apiKey": KEY, "payloadVersion": "4.0", "notifier": NOTIFIER, "events": [EVENT, late, late]}
    assert post(f"{collector.url}/notify", body, headers()) == 200
    assert collector.minutes("1", "p") == [
        {"minute": "2026-01-01T00:00", "sessions": 4, "crashedSessions": 1},
        {"minute": "2026-01-01T00:02", "sessions": 6, "crashedSessions": 1},
    ]
    assert collector.releases()[0]["stability"] == 80.0


def test_a_database_of_the_first_version_is_migrated(tmp_path: Path) -> None:
    """A SQLite file written before events kept their session's start time still opens,
    and what it holds still counts."""
    import sqlite3

    db = str(tmp_path / "old.sqlite")
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "create table events (id integer primary key, app_version text, release_stage text, context text,"
            " error_class text, message text, unhandled integer, severity text, session_id text,"
            " payload text, received real);"
            "insert into events (app_version, release_stage, context, error_class, message, unhandled,"
            " severity, session_id, payload, received)"
            " values ('1', 'p', 't', 'E', 'm', 1, 'error', 's', '{}', 0);"
        )
    server = Collector(port=0, db=db)
    try:
        assert [e["errorClass"] for e in server.events()] == ["E"]
        assert server.top_errors("1", "p")[0]["crashedSessions"] == 1
    finally:
        server.server.server_close()
