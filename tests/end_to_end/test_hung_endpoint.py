"""A hung BugSnag (accepts, reads, never answers) and a slow one, against real workers and the broker.

A hung endpoint must cost nothing but time: every session and crash sent during the hang
arrives once it answers again, none twice; no fork, task, delivery run or shutdown waits
for it beyond its stated bound. A slow one (answering after ``delivery_timeout`` but
within the patient wait, ``outcome.PATIENCE`` times longer) gets a payload at most twice,
and its answer is known: nothing is dropped. The endpoint is the shared stand-in
(``bugsnag_celery.testing.Endpoint``) with its ``hang()``.

Covers: bugsnag_celery/transport/outcome.py, bugsnag_celery/transport/http.py
Covers: bugsnag_celery/delivery/sessions.py, bugsnag_celery/delivery/spool.py
Covers: bugsnag_celery/delivery/run.py, bugsnag_celery/hooks/beat.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from brokers import Broker
from endpoint import Endpoint
from results import received_sessions, total, wait_for_records
from workers import APPS, Worker, wait_until

from bugsnag_celery import Options, Release
from bugsnag_celery.delivery.flusher import publish_counts
from bugsnag_celery.delivery.run import deliver_all
from bugsnag_celery.delivery.sessions import pending_session_messages
from bugsnag_celery.delivery.spool import spool_payloads, spooled_event_count
from bugsnag_celery.delivery.status import DeliveryStatus
from bugsnag_celery.transport.http import Request

KEY = "c0ffee00c0ffee00c0ffee00c0ffee00"
CELERY = os.path.join(os.path.dirname(sys.executable), "celery")


def cfg(endpoint: Endpoint, **extra: Any) -> dict[str, Any]:
    return {"api_key": KEY, "app_version": "4.0.0", "release_stage": "test", "hostname": "h",
            "notify_endpoint": f"{endpoint.url}/notify", "sessions_endpoint": f"{endpoint.url}/sessions",
            **extra}  # fmt: skip


def options(broker: Broker, endpoint: Endpoint, delivery_timeout: float) -> Options:
    """The options a worker of *broker* has: what its beat's delivery run is given."""
    return Options(**cfg(endpoint, delivery_timeout=delivery_timeout, queue_prefix=broker.queue))


def waiting(broker: Broker) -> int:
    """What waits on the broker: messages of counts, and spooled event messages."""
    app = broker.producer()
    return pending_session_messages(app, broker.queue) + spooled_event_count(app, broker.queue)


def test_a_hung_endpoint_loses_no_session_and_no_crash(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """Hung for 15 s with delivery_timeout=1: the children's senders wait 1 s, then 3 s, and keep
    the crashes on the broker; the delivery runs keep the counts; status says so. Once the
    endpoint answers again, all 25 sessions and all 5 crashes arrive, each once (it was
    0 of 100 and 0 of 10: the second send without an answer dropped them)."""
    hang = 15.0
    opts = options(redis_broker, endpoint, delivery_timeout=1)
    with Worker(redis_broker, out_dir, configure=cfg(endpoint, delivery_timeout=1)) as w:
        endpoint.hang(hang)
        hang_ends = time.monotonic() + hang
        app = redis_broker.producer()
        for i in range(20):
            app.send_task("session_app.observe", (f"t{i}",), queue=redis_broker.queue)
        for _ in range(5):
            app.send_task("session_app.crashing", queue=redis_broker.queue)
        wait_for_records(out_dir, 25, worker=w)
        wait_until(lambda: waiting(redis_broker), 30, "the first counts on the broker")  # flushed each 1 s
        runs: list[DeliveryStatus] = []
        while time.monotonic() < hang_ends - 2:  # delivery runs during the hang, as the beat makes them
            runs.append(deliver_all(app, opts))
            time.sleep(0.5)
        assert not endpoint.requests and endpoint.unanswered  # it was hung, and was asked
        dropped = [r["sessions"]["dropped"] + r["events"]["dropped"] for r in runs]
        assert len(runs) >= 2 and sum(dropped) == 0, dropped  # nothing given up
        errors = [str(r.get("last_error")) for r in runs]
        assert all("did not answer" in e for e in errors[1:]), errors
        assert waiting(redis_broker) > 0  # kept, and status says so:
        status = subprocess.run([CELERY, "-A", "session_app", "bugsnag", "status"],
                                env={**w.env, "PYTHONPATH": str(APPS)}, cwd=out_dir, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert "with no answer from BugSnag" in status.stdout, (status.stdout, status.stderr)
        assert "pending session messages: 0\nspooled events: 0" not in status.stdout
        wait_until(lambda: time.monotonic() > hang_ends, 30, "the end of the hang")

        def everything_arrived() -> bool:
            deliver_all(app, opts)
            return total(received_sessions(endpoint.requests)) >= 25 and len(endpoint.events()) >= 5

        # after the hang: the children's senders' own retries or the next runs send the rest
        wait_until(everything_arrived, 60, "every session and crash after the hang", every=0.5)
        assert w.stop() == 0
    deliver_all(app, opts)
    assert total(received_sessions(endpoint.requests)) == 25  # none twice
    events = endpoint.events()
    assert len(events) == 5 and len({e["session"]["id"] for e in events}) == 5  # each crash once
    assert waiting(redis_broker) == 0
    assert "BugSnag looks hung" in w.log() and "payload(s) lost" not in w.log()


def test_a_slow_endpoint_gets_a_payload_at_most_twice_and_its_answer_is_known(
    redis_broker: Broker, endpoint: Endpoint
) -> None:
    """Answering after 2 s, delivery_timeout=1: the first send has no answer in time (the
    endpoint processes it anyway); the second waits 3 s and gets the answer. 100 counts and a
    spooled event: each arrives at most twice, none is dropped (the second send used to wait
    1 s too, and drop them), nothing is left."""
    app = redis_broker.producer()
    release = Release("4.0.0", "test", "celery", "h")
    publish_counts(app, {release: {"2026-01-01T00:00:00Z": 100}}, redis_broker.queue)
    event = {"exceptions": [{"errorClass": "E", "message": "slow", "stacktrace": []}], "severity": "error"}
    assert spool_payloads(
        app, [Request(f"{endpoint.url}/notify", KEY, "4.0", events=[event])], redis_broker.queue
    )
    endpoint.delay = 2.0  # after delivery_timeout (1 s), within the patient wait (3 s)
    opts = options(redis_broker, endpoint, delivery_timeout=1)
    runs = [deliver_all(app, opts) for _ in range(3)]
    assert sum(r["sessions"]["delivered"] for r in runs) == 100, runs  # the answer was known
    assert sum(r["sessions"]["dropped"] + r["events"]["dropped"] for r in runs) == 0, runs
    assert sum(r["events"]["delivered"] for r in runs) == 1, runs
    assert 100 <= total(received_sessions(endpoint.requests)) <= 200
    assert 1 <= len(endpoint.events()) <= 2
    assert waiting(redis_broker) == 0 and runs[-1].get("last_delivery") == runs[-1]["last_run"]


def test_a_hung_endpoint_never_stalls_a_fork(redis_broker: Broker, out_dir: Path, endpoint: Endpoint) -> None:
    """``--max-tasks-per-child=1``: every task needs a fork of the main process, which is
    posting the crash of a killed child to a hung endpoint (delivery_timeout=20: it waits 20 s,
    then 60 s). A fork used to wait for the request in flight, the whole delivery_timeout
    (100 tasks took 36.5 s, not 14.5 s). The tasks go one at a time, each sent when the one
    before has succeeded: ten sent at once took 1.1-1.3 s, 5.1 s at times, and twice in CI
    Celery's pool never gave the last one to the child it had started for it (the main process
    idle in its event loop, the child waiting for work: Celery's, with a healthy endpoint too)."""
    endpoint.hang(300)  # for the whole test
    timeout = 20.0
    with Worker(redis_broker, out_dir, module="events_app", extra_args=("--max-tasks-per-child=1",),
                configure=cfg(endpoint, delivery_timeout=timeout)) as w:  # fmt: skip
        app = redis_broker.producer()
        app.send_task("events.killed")  # the main process reports the WorkerLostError
        wait_until(lambda: endpoint.unanswered, 30, "the main process's report in flight")
        took = []

        def succeeded() -> int:
            return len(re.findall(r"Task events\.ok\[[^\]]+\] succeeded", w.log()))

        for n in range(1, 11):
            start = time.monotonic()
            app.send_task("events.ok")
            try:
                wait_until(lambda n=n: succeeded() >= n, 45, f"task {n}")  # type: ignore[misc]
            except AssertionError as exc:  # where every process stood
                w.dump_stacks()
                where = f"unanswered {len(endpoint.unanswered)}; log:\n{w.log()[-20000:]}"
                raise AssertionError(f"{exc}; {where}") from None
            took.append(time.monotonic() - start)
        assert max(took) < timeout / 2, took  # a fork that waits for the request: over 20 s
        assert len(endpoint.unanswered) == 1  # the main process's first send is still in flight
        stopping = time.monotonic()
        assert w.stop() == 0
        stopped = time.monotonic() - stopping
    # warm shutdown: 1.7 s with a healthy endpoint; here the main process's flush waits its 5.5 s
    # for the request, then spools it (7.2 s; 8.3 s while the exit flush waited for it again)
    assert stopped < 15, stopped


def test_while_a_delivery_run_waits_on_a_hung_endpoint_the_next_runs_skip(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """One pool slot waits on a hung BugSnag, not one per beat run: a run claims the status
    with the longest it may take, and later runs skip until it is done (without that, each
    run 1 s later took the counts flushed meanwhile and waited on BugSnag too)."""
    endpoint.hang(300)
    app = redis_broker.producer()
    release = Release("4.0.0", "test", "celery", "h")
    publish_counts(app, {release: {"2026-01-01T00:00:00Z": 5}}, redis_broker.queue)
    config = cfg(endpoint, delivery_timeout=10, session_delivery_interval=1)
    with Worker(redis_broker, out_dir, pool="threads", concurrency=3, configure=config) as w:
        app.send_task("bugsnag_celery.deliver_sessions", queue=redis_broker.queue)
        wait_until(lambda: endpoint.unanswered, 30, "the first run's request")
        for minute in ("01", "02"):
            time.sleep(1)  # more than half an interval later: not a backlog of beat runs
            publish_counts(app, {release: {f"2026-01-01T00:{minute}:00Z": 5}}, redis_broker.queue)
            app.send_task("bugsnag_celery.deliver_sessions", queue=redis_broker.queue)
        wait_until(lambda: w.log().count("is still going") >= 2, 30, "the next two runs skipped")
        assert len(endpoint.unanswered) == 1  # only the first run waits on BugSnag
        assert w.stop() == 0
