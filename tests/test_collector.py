"""The local collector: BugSnag's wire rules, storage that survives a restart, and our own
payloads accepted by it end to end."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from celery import Celery

import bugsnag_celery
from bugsnag_celery.collector import Collector

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
                                     "crashedSessions": 1, "stability": 66.67}]  # fmt: skip


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
                       "stability": 80.0}  # fmt: skip


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
