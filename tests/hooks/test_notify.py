"""Event options and the sender, in this process (eager runs against a real local endpoint).

Covers: bugsnag_celery/hooks/notify.py, bugsnag_celery/hooks/failures.py
Covers: bugsnag_celery/hooks/beat.py, bugsnag_celery/reporting/reporter.py
Covers: bugsnag_celery/registry.py
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery, Task
from endpoint import Endpoint
from forking import in_child

import bugsnag_celery
from bugsnag_celery.payload.encoding import encode_json
from bugsnag_celery.sessions import current as sessions
from bugsnag_celery.transport.http import Request
from bugsnag_celery.transport.sender import Sender

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def make_app(endpoint: Endpoint) -> Iterator[Any]:
    apps: list[Celery] = []

    def make(**options: Any) -> Celery:
        app = Celery(f"n{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
        app.conf.task_eager_propagates = True  # an eager run's exception reaches the test
        bugsnag_celery.configure(app, api_key=KEY, notify_endpoint=f"{endpoint.url}/notify",
                                 sessions_endpoint=f"{endpoint.url}/sessions", **options)  # fmt: skip
        apps.append(app)
        return app

    yield make
    for app in apps:
        bugsnag_celery.unconfigure(app)
    sessions.CURRENT.set(None)
    bugsnag_celery.take_pending_counts()


def delivered(endpoint: Endpoint, n: int) -> list[dict[str, Any]]:
    bugsnag_celery.flush_events(10)
    events = endpoint.events()
    assert len(events) == n, [e["context"] for e in events]
    return events


def test_eager_failure_is_reported_with_its_session(make_app: Any, endpoint: Endpoint) -> None:
    app = make_app()

    @app.task(bind=True)
    def fails(self: Task) -> None:
        raise LookupError("gone")

    task_id = uuid.uuid4().hex
    with pytest.raises(LookupError, match="gone"):
        fails.apply(task_id=task_id)
    (event,) = delivered(endpoint, 1)
    assert event["session"]["id"] == bugsnag_celery.task_session_id(task_id, 0)
    assert event["metaData"]["task"]["eager"] is True
    assert event["exceptions"][0]["errorClass"] == "LookupError"


def test_notify_severities_and_paused_sessions(make_app: Any, endpoint: Endpoint) -> None:
    make_app()
    bugsnag_celery.start_session()
    bugsnag_celery.notify(ValueError("a"))
    bugsnag_celery.notify(
        ValueError("b"), severity="info", context="ctx", grouping_hash="g", user={"id": "u1"}
    )
    bugsnag_celery.pause_session()
    bugsnag_celery.notify(ValueError("c"))
    with pytest.raises(ValueError, match="severity"):
        bugsnag_celery.notify(ValueError("d"), severity="fatal")
    a, b, c = delivered(endpoint, 3)
    assert (a["severity"], a["severityReason"], a["unhandled"]) == (
        "warning",
        {"type": "handledException"},
        False,
    )
    assert (b["severity"], b["severityReason"]) == ("info", {"type": "userSpecifiedSeverity"})
    assert (b["context"], b["groupingHash"], b["user"]) == ("ctx", "g", {"id": "u1"})
    assert a["session"]["events"] == {"handled": 1, "unhandled": 0}
    assert b["session"]["events"] == {"handled": 2, "unhandled": 0}
    assert "session" not in c
    current = bugsnag_celery.get_current_session()
    assert current is not None and current["events"] == {"handled": 2, "unhandled": 0}


def test_before_notify_adds_drops_and_survives_errors(
    make_app: Any, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    def add(event: dict[str, Any]) -> None:
        event["metaData"]["extra"] = {"added": True}

    def drop(event: dict[str, Any]) -> bool:
        return "drop me" not in event["exceptions"][0]["message"]

    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("callback bug")

    make_app(before_notify=[broken, add, drop])
    bugsnag_celery.notify(ValueError("keep me"))
    bugsnag_celery.notify(ValueError("drop me"))
    (event,) = delivered(endpoint, 1)
    assert event["metaData"]["extra"] == {"added": True}
    assert "before_notify callback" in caplog.text


def test_outside_enabled_release_stages_nothing_is_sent(make_app: Any, endpoint: Endpoint) -> None:
    app = make_app(release_stage="staging", enabled_release_stages=["production"])

    @app.task
    def fails() -> None:
        raise ValueError("x")

    with pytest.raises(ValueError, match="x"):
        fails.apply()
    bugsnag_celery.notify(ValueError("y"))
    delivered(endpoint, 0)


def test_retries_are_silent_unless_asked(make_app: Any, endpoint: Endpoint) -> None:
    for report_retries, expected in ((False, 1), (True, 3)):
        app = make_app(report_retries=report_retries)

        @app.task(bind=True, autoretry_for=(KeyError,), max_retries=2, default_retry_delay=0)
        def flaky(self: Task) -> None:
            raise KeyError("again")

        app.conf.task_always_eager = True
        # Eager retries run in a loop only when the first run's exception is kept, not raised
        app.conf.task_eager_propagates = False
        result = flaky.delay()
        assert result.state == "FAILURE" and isinstance(result.result, KeyError)
        events = delivered(endpoint, expected)
        assert events[-1]["unhandled"] is True and events[-1]["metaData"]["task"]["retries"] == 2
        for warning in events[:-1]:
            assert (warning["unhandled"], warning["severity"]) == (False, "warning")
        endpoint.requests.clear()
        bugsnag_celery.unconfigure(app)


def test_control_flow_and_declared_errors_are_silent(make_app: Any, endpoint: Endpoint) -> None:
    from celery.exceptions import Ignore, Reject

    app = make_app()

    @app.task(throws=(KeyError,))
    def declared() -> None:
        raise KeyError("expected")

    @app.task
    def ignored() -> None:
        raise Ignore()

    @app.task
    def rejected() -> None:
        raise Reject("no")

    with pytest.raises(KeyError, match="expected"):
        declared.apply()
    # Control flow is not an error: Celery records a state, it raises nothing
    assert ignored.apply().state == "IGNORED"
    assert rejected.apply().state == "REJECTED"
    delivered(endpoint, 0)


def test_the_api_key_never_reaches_logs_or_metadata(
    make_app: Any, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint.statuses = [401]
    app = make_app()

    @app.task
    def leaky(api_key: str) -> None:
        raise ValueError("x")

    with pytest.raises(ValueError, match="x"):
        leaky.apply(kwargs={"api_key": KEY})
    bugsnag_celery.flush_events(10)
    assert "HTTP 401" in caplog.text and "API key" in caplog.text
    assert KEY not in caplog.text
    body = endpoint.requests[0]["body"]
    assert KEY not in str(body["events"])


def test_sender_restarts_after_fork_and_delivers_from_the_child(endpoint: Endpoint) -> None:
    sender = Sender(timeout=5)
    sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", b'{"events": []}'))
    sender.flush(5)

    def child() -> str:  # the child inherits a thread object that is not running there
        sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", b'{"events": []}'))
        sender.flush(5)
        return "flushed"

    in_child(child)
    assert len(endpoint.requests) == 2


def _keep_in(spooled: list[Request]) -> Callable[[list[Request]], bool]:
    """A spool stand-in: keeps what it is handed and reports success."""

    def spool(payloads: list[Request]) -> bool:
        spooled.extend(payloads)
        return True

    return spool


def test_sender_retries_with_backoff_then_spools(endpoint: Endpoint) -> None:
    spooled: list[Request] = []
    outcomes: list[str] = []
    endpoint.default = 503
    sender = Sender(_keep_in(spooled), timeout=5, attempts=3, backoff=0.1)
    start = time.monotonic()
    sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", b"{}", on_done=outcomes.append))
    while not outcomes and time.monotonic() - start < 10:
        time.sleep(0.01)
    assert outcomes == ["spooled"] and len(spooled) == 1
    assert len(endpoint.requests) == 3
    assert time.monotonic() - start >= 0.3  # 0.1 + 0.2 of backoff between the three attempts


def test_dead_broker_loses_nothing_silently(endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    from bugsnag_celery.delivery.spool import spool_payloads

    app = Celery("dead", broker="redis://127.0.0.1:1/0", set_as_current=False)
    payload = Request(f"{endpoint.url}/notify", KEY, "4.0", b"{}")
    assert spool_payloads(app, [payload]) is False
    assert "could not spool" in caplog.text


def test_arguments_whose_repr_raises(make_app: Any, endpoint: Endpoint) -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    app = make_app()

    @app.task
    def fails(thing: Any, **kwargs: Any) -> None:
        raise ValueError("x")

    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="x"):
        fails.apply((Hostile(),), {"nested": {"Authorization": "Bearer abc"}, "loop": loop, "raw": b"\xff"})
    (event,) = delivered(endpoint, 1)
    task = event["metaData"]["task"]
    assert task["args"][0].startswith("<unrepresentable")
    assert task["kwargs"]["nested"] == {"Authorization": "[REDACTED]"}


def test_a_burst_against_a_slow_endpoint_is_merged_not_queued(make_app: Any, endpoint: Endpoint) -> None:
    endpoint.delay = 0.3
    make_app()
    for i in range(60):
        bugsnag_celery.notify(ValueError(f"burst {i}"))
    events = delivered(endpoint, 60)
    assert sorted(e["exceptions"][0]["message"] for e in events) == sorted(f"burst {i}" for i in range(60))
    assert len(endpoint.requests) <= 4  # one in flight, the rest merged (at most 50 per request)


def test_shutdown_flush_spools_a_failing_payload_exactly_once(endpoint: Endpoint) -> None:
    spooled: list[Request] = []
    endpoint.default = 503
    sender = Sender(_keep_in(spooled), timeout=5, attempts=10, backoff=5.0)
    sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", b"{}"))
    deadline = time.monotonic() + 5
    while not endpoint.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    sender.flush(0.2)  # the payload is backing off (5 s): shutdown spools it now
    time.sleep(1.0)
    assert len(spooled) == 1 and len(endpoint.requests) == 1


def test_beat_entry_and_delivery_task_come_and_go_with_configure(make_app: Any) -> None:
    from bugsnag_celery.hooks.beat import DELIVER_TASK

    app = make_app(session_delivery_interval=45)
    entry = app.conf.beat_schedule[DELIVER_TASK]
    assert entry == {"task": DELIVER_TASK, "schedule": 45.0, "options": {"expires": 45.0}}
    assert app.tasks[DELIVER_TASK].name == DELIVER_TASK
    bugsnag_celery.unconfigure(app)
    assert DELIVER_TASK not in app.conf.beat_schedule


def test_outside_enabled_release_stages_no_session_leaves_the_process(make_app: Any) -> None:
    from bugsnag_celery import registry
    from bugsnag_celery.delivery.sessions import pending_session_messages

    app = make_app(release_stage="staging", enabled_release_stages=["production"], queue_prefix="stages")

    @app.task
    def job() -> None:
        pass

    for _ in range(5):
        job.apply()
    registry.flusher.flush_once()
    assert pending_session_messages(app, "stages") == 0
    assert bugsnag_celery.take_pending_counts() == {}  # discarded, not piling up


def test_the_first_post_imports_nothing(endpoint: Endpoint) -> None:
    """No module is imported lazily on a process's first POST.

    The sender thread of a worker's main process makes its first POST (a WorkerLostError
    event) just as billiard forks a replacement child. A fork taken while that thread
    holds a module's import lock leaves the lock held in the child, and the child's own
    first POST hangs for ever on the same import (requests imported ``netrc`` and
    ``shlex`` lazily; a demo run hung that way). Checked in a fresh interpreter.
    """
    import subprocess
    import sys

    script = f"""
import sys
import bugsnag_celery, bugsnag_celery.registry
from bugsnag_celery.transport.http import Request, post
before = set(sys.modules)
payload = Request(kind="events", endpoint={endpoint.url + "/notify"!r}, api_key={KEY!r},
                  payload_version="4.0", body=b"{{}}")
outcome, _ = post(payload, 5.0)
assert outcome == "delivered", outcome
print(sorted(set(sys.modules) - before))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported lazily on the first POST: {out.stdout}"


def test_a_429_with_retry_after_is_honoured_then_the_rest_is_sent(endpoint: Endpoint) -> None:
    endpoint.statuses = [429]
    endpoint.retry_after = "1"
    outcomes: list[str] = []
    sender = Sender(_keep_in([]), timeout=5, attempts=3, backoff=0.05)
    sent_at = time.monotonic()
    sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", events=[{"n": 1}], on_done=outcomes.append))
    deadline = time.monotonic() + 10
    while not outcomes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcomes == ["delivered"]
    assert [r["status"] for r in endpoint.requests] == [429, 200]
    assert time.monotonic() - sent_at >= 1.0  # waited as asked, not the 0.05 s backoff


def test_a_full_send_queue_spills_the_oldest_to_the_spool_and_loses_nothing(endpoint: Endpoint) -> None:
    endpoint.delay = 0.3  # the thread is busy with the first request while the rest queue up
    spooled: list[Request] = []
    outcomes: list[str] = []
    sender = Sender(_keep_in(spooled), timeout=5, max_queue=5, max_batch=50)
    for n in range(20):
        sender.submit(
            Request(f"{endpoint.url}/notify", KEY, "4.0", events=[{"n": n}], on_done=outcomes.append)
        )
    sender.flush(10)
    delivered = sorted(e["n"] for r in endpoint.requests for e in r["body"]["events"])
    kept = sorted(e["n"] for p in spooled for e in json.loads(p.body)["events"])
    assert sorted(delivered + kept) == list(range(20))  # every event once: delivered or spooled
    assert kept and max(kept) < max(delivered)  # the oldest went to the spool, the newest were sent
    assert len(outcomes) == 20


def test_the_send_queue_is_bounded_in_bytes_too(endpoint: Endpoint) -> None:
    """Encoded events of 100 kB against a 1 MB cap: never more than ~1 MB waits; the oldest
    spill to the spool, and every event is delivered or spooled exactly once."""
    endpoint.delay = 0.3
    spooled: list[Request] = []
    sender = Sender(_keep_in(spooled), timeout=5, max_queue=1_000, max_queue_bytes=1_000_000, max_batch=5)
    peak = 0
    for n in range(40):
        event = encode_json({"n": n, "pad": "x" * 100_000})
        sender.submit(Request(f"{endpoint.url}/notify", KEY, "4.0", encoded=[event]))
        peak = max(peak, sender._queue.bytes)
    sender.flush(20)
    assert peak <= 1_000_000 + 100_100  # the cap, plus the one that found it full
    delivered = [e["n"] for r in endpoint.requests for e in r["body"]["events"]]
    kept = [e["n"] for p in spooled for e in json.loads(p.body)["events"]]
    assert sorted(delivered + kept) == list(range(40))
    assert kept and max(kept) < max(delivered)  # the oldest spilled, the newest were sent
