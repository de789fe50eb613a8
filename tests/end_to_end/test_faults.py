"""The fault matrix: what a production deployment meets, against the real broker and workers.

Each test names a fault and asserts on what the BugSnag endpoint receives (the README's
"fault -> what happens -> what is lost" table is this file).

Covers: bugsnag_celery/delivery/spool.py, bugsnag_celery/delivery/drain.py
Covers: bugsnag_celery/delivery/status.py, bugsnag_celery/transport/queues.py
Covers: bugsnag_celery/transport/http.py, bugsnag_celery/transport/outcome.py
Covers: bugsnag_celery/hooks/exit_flush.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker, redis_message_bodies
from endpoint import Endpoint
from results import deliver_sessions, received_sessions, total, wait_for_records
from workers import APPS, Worker, wait_until

from bugsnag_celery import Release
from bugsnag_celery.clock import minute_iso
from bugsnag_celery.delivery.flusher import publish_counts
from bugsnag_celery.delivery.sessions import deliver_session_counts
from bugsnag_celery.delivery.spool import drain_spooled_events, spool_payloads
from bugsnag_celery.transport.http import Request
from bugsnag_celery.transport.queues import publish, queue_names

KEY = "c0ffee00c0ffee00c0ffee00c0ffee00"
RELEASE = Release("4.0.0", "test", "celery", "h")
CELERY = os.path.join(os.path.dirname(sys.executable), "celery")


def cfg(endpoint: Endpoint, **extra: Any) -> dict[str, Any]:
    return {"api_key": KEY, "app_version": "4.0.0", "release_stage": "test", "hostname": "h",
            "notify_endpoint": f"{endpoint.url}/notify", "sessions_endpoint": f"{endpoint.url}/sessions",
            **extra}  # fmt: skip


def deliver(broker: Broker, endpoint: Endpoint, timeout: float) -> dict[str, int]:
    url = f"{endpoint.url}/sessions"
    return deliver_session_counts(
        broker.producer(), api_key=KEY, endpoint=url, enabled_release_stages=None, timeout=timeout,
        prefix=broker.queue,
    )  # fmt: skip


def drain(broker: Broker, endpoint: Endpoint, timeout: float = 10.0) -> dict[str, int]:
    return drain_spooled_events(broker.producer(), api_key=KEY, endpoint=f"{endpoint.url}/notify",
                                timeout=timeout, prefix=broker.queue)  # fmt: skip


# -- 1. a slow endpoint: an unknown outcome is repeated at most once ------------------------


def test_slow_endpoint_never_multiplies_counts(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """Endpoint answering after 3 s, delivery_timeout=2: 100 runs arrive at most twice."""
    with Worker(redis_broker, out_dir, configure=cfg(endpoint, delivery_timeout=2)) as w:
        app = redis_broker.producer()
        for i in range(100):
            app.send_task("session_app.observe", (f"t{i}",), queue=redis_broker.queue)
        wait_for_records(out_dir, 100, worker=w)
        assert w.stop() == 0
    endpoint.delay = 3.0
    for _ in range(3):  # three delivery runs, as the beat would make them
        deliver(redis_broker, endpoint, timeout=2)
    got = total(received_sessions(endpoint.requests))
    assert 100 <= got <= 200, got  # was 300 after three runs, 404 after four
    assert deliver(redis_broker, endpoint, timeout=2)["messages"] == 0  # nothing left to repeat


def test_slow_endpoint_with_the_default_timeout_is_sent_exactly_once(
    redis_broker: Broker, endpoint: Endpoint
) -> None:
    publish_counts(redis_broker.producer(), {RELEASE: {"2026-01-01T00:00:00Z": 100}}, redis_broker.queue)
    endpoint.delay = 3.0
    stats = deliver(redis_broker, endpoint, timeout=10.0)  # the default delivery_timeout
    assert stats["delivered"] == 100 and total(received_sessions(endpoint.requests)) == 100
    assert deliver(redis_broker, endpoint, timeout=10.0)["messages"] == 0


def test_slow_endpoint_sends_a_spooled_event_at_most_twice(redis_broker: Broker, endpoint: Endpoint) -> None:
    event = {"exceptions": [{"errorClass": "E", "message": "once", "stacktrace": []}], "severity": "error"}
    payload = Request(f"{endpoint.url}/notify", KEY, "4.0", events=[event])
    assert spool_payloads(redis_broker.producer(), [payload], redis_broker.queue)
    endpoint.delay = 3.0
    for _ in range(4):
        drain(redis_broker, endpoint, timeout=2)
    assert 1 <= len(endpoint.events()) <= 2  # was 6 for one failure


# -- 2. the spool obeys the configuration -------------------------------------------------


def test_the_spool_holds_no_endpoint_nor_key_and_a_bad_message_blocks_nothing(
    redis_broker: Broker, endpoint: Endpoint
) -> None:
    app = redis_broker.producer()
    event = {"exceptions": [{"errorClass": "E", "message": "spooled-event-7f3a", "stacktrace": []}],
             "severity": "error"}  # fmt: skip
    name = queue_names(redis_broker.queue).events
    # The search is shown to find what a message carries: the same decoding finds a key and an
    # endpoint in a message that has them (kombu base64-encodes bodies: the raw list never shows them).
    publish(app, name, [{"control": [KEY, "http://elsewhere.invalid/notify"]}])
    (control,) = redis_message_bodies(name)
    assert KEY in control and "elsewhere" in control
    drain(redis_broker, endpoint)  # the control message (not a spool message): dropped
    assert redis_message_bodies(name) == []
    assert spool_payloads(app, [Request("http://elsewhere.invalid/notify", KEY, "4.0", events=[event])],
                          redis_broker.queue)  # fmt: skip
    (spooled,) = redis_message_bodies(name)
    assert "spooled-event-7f3a" in spooled  # the event is there, decoded
    assert KEY not in spooled and "elsewhere" not in spooled
    # An old-format message pointing at an unusable endpoint, a malformed one, then a good one:
    old = {"kind": "event", "endpoint": "http://127.0.0.1:notaport/notify", "payload_version": "4.0",
           "body": json.dumps({"apiKey": "f" * 32, "events": [{**event, "message": "old"}]})}  # fmt: skip
    publish(app, name, [old, {"v": 2, "events": "not a list"}, {"v": 2, "events": [event], "unknown": 0}])
    stats = drain(redis_broker, endpoint)
    assert stats == {"delivered": 3, "dropped": 1, "requeued": 0, "unanswered": 0, "overflow": 0}
    # every one went to the configured endpoint, with the configured key
    assert {r["headers"]["Bugsnag-Api-Key"] for r in endpoint.requests} == {KEY}
    assert drain(redis_broker, endpoint)["delivered"] == 0


# -- 3. any backlog goes out; no beat is noticed -------------------------------------------


def test_a_backlog_over_1_mb_is_split_and_delivered_whole(redis_broker: Broker, endpoint: Endpoint) -> None:
    """18 days of minute buckets for one release group: 25,920 entries, 259,200 sessions."""
    start = int(time.time()) // 60 - 18 * 24 * 60
    buckets = {minute_iso(start + i): 10 for i in range(18 * 24 * 60)}
    publish_counts(redis_broker.producer(), {RELEASE: buckets}, redis_broker.queue)
    stats = deliver(redis_broker, endpoint, timeout=30)
    posts = [r for r in endpoint.requests if r["path"] == "/sessions"]
    assert stats["delivered"] == 259_200 == total(received_sessions(endpoint.requests))
    assert len(posts) >= 2 and all(len(r["raw"]) < 1_000_000 and r["status"] == 200 for r in posts)


def test_no_beat_is_noticed_by_the_worker_and_by_status(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    interval = 1.0  # the minimum: three intervals pass in seconds
    with Worker(redis_broker, out_dir, configure=cfg(endpoint, session_delivery_interval=interval)) as w:
        app = redis_broker.producer()
        for i in range(20):
            app.send_task("session_app.observe", (f"t{i}",), queue=redis_broker.queue)
        wait_for_records(out_dir, 20, worker=w)
        # 3 intervals after the first flush, then one check per interval; 60 s is the margin
        wait_until(lambda: "is a beat running?" in w.log(), 60, "the no-beat warning")
        assert w.log().count("is a beat running?") <= 2  # once per hour per process (2 children)
        env = {**w.env, "PYTHONPATH": str(APPS)}
        status = subprocess.run(
            [CELERY, "-A", "session_app", "bugsnag", "status"],
            env=env, cwd=out_dir, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert w.stop() == 0
    assert status.returncode != 0 and "is a beat running?" in status.stderr, status.stderr
    assert "Traceback" not in status.stderr
    # no beat is not taken for a beat whose task no worker runs (that one: tests/end_to_end/test_status.py)
    assert "no worker runs the delivery task" not in w.log() + status.stderr
    assert "nothing sends the delivery task: bugsnag_celery.deliver_sessions was never sent" in status.stderr
    assert "\ndelivery task last sent: never\n" in status.stdout and "\nlast run: never\n" in status.stdout


def test_status_with_the_broker_down_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        from celery import Celery
        import bugsnag_celery
        app = Celery("down", broker="redis://127.0.0.1:1/0")
        app.conf.broker_connection_retry_on_startup = False
        bugsnag_celery.configure(app, api_key="c0ffee00c0ffee00c0ffee00c0ffee00")
    """)
    (tmp_path / "down_app.py").write_text(script)
    out = subprocess.run(
        [CELERY, "-A", "down_app", "bugsnag", "status"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "cannot read the broker" in out.stderr and "Traceback" not in out.stderr, out.stderr


# -- 4. secrets in Celery's own reprs -----------------------------------------------------


def test_secrets_in_celerys_reprs_and_odd_keys_never_leave(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    secret = "s3cr3t-f4ult"
    with Worker(redis_broker, out_dir, module="events_app", configure=cfg(endpoint)) as w:
        app = redis_broker.producer()
        # JSON turns {1: 2} into {"1": 2}: Celery's default kwargsrepr no longer matches the
        # kwargs the worker sees, and must not be taken for one the caller set
        app.send_task(
            "events.secret_args", kwargs={"api key": secret, "ids": {1: 2}}, queue=redis_broker.queue
        )
        app.send_task("events.secret_args", (["x"],), {"token": "t", "extra": {"credit.card": secret}},
                      queue=redis_broker.queue)  # fmt: skip
        endpoint.wait_for_events(2, timeout=60)
        assert w.stop() == 0
    sent = json.dumps(endpoint.events())
    assert secret not in sent and len(endpoint.events()) == 2


# -- 5. short-lived processes --------------------------------------------------------------


def test_a_script_that_exits_at_once_delivers_its_sessions_and_events(
    redis_broker: Broker, tmp_path: Path, endpoint: Endpoint
) -> None:
    script = textwrap.dedent(f"""
        import time
        from celery import Celery
        import bugsnag_celery
        app = Celery("script", broker="redis://127.0.0.1:6379/11")
        bugsnag_celery.configure(app, api_key="{KEY}", app_version="4.0.0", release_stage="test",
            hostname="h", queue_prefix="{redis_broker.queue}", notify_endpoint="{endpoint.url}/notify",
            sessions_endpoint="{endpoint.url}/sessions")

        @app.task
        def ok():
            pass

        @app.task
        def boom():
            raise ValueError("at exit")

        for _ in range(5):
            ok.apply()
        boom.apply()
        started = time.monotonic()
        import atexit
        atexit.register(lambda: print(f"exit flush took {{time.monotonic() - started:.2f}} s"))
    """)
    endpoint.default = 503  # the event is still being retried when the script exits
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert took < 15, took  # bounded (the exit flush itself: at most 2 s)
    endpoint.default = 200
    assert total(received_sessions(endpoint.requests)) == 0  # 503 so far
    deliver_sessions(redis_broker, endpoint.url, KEY)
    assert total(received_sessions(endpoint.requests)) == 6  # every run, after the exit
    assert drain(redis_broker, endpoint)["delivered"] == 1  # the event, spooled at exit
    assert [e["exceptions"][0]["message"] for e in endpoint.events()] == ["at exit"]


# -- 7. shape-valid garbage on the queue ----------------------------------------------------


def test_impossible_counts_from_the_queue_are_dropped_the_rest_delivered(
    redis_broker: Broker, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    good = "2026-01-01T00:00:00Z"
    body = {"v": 1, "pid": 1, "groups": [{"release": list(RELEASE), "counts": {
        good: 7, "2026-01-01T00:01:00Z": 10**300, "2026-01-01T00:02:00Z": 0,
        "9999-12-31T23:59:00Z": 5, "2026-13-01T00:00:00Z": 1}}]}  # fmt: skip
    publish(redis_broker.producer(), queue_names(redis_broker.queue).sessions, [body])
    stats = deliver(redis_broker, endpoint, timeout=10)
    assert stats["delivered"] == 7 and total(received_sessions(endpoint.requests)) == 7
    # the sessions of the year-9999 minute are counted; the other three entries hold none that can be
    assert stats["dropped"] == 5 and stats["unreadable"] == 3
    assert "dropping 3 session-count entr(ies) with impossible values" in caplog.text
    assert "dropping 5 session(s) counted in minutes over a day ahead" in caplog.text
