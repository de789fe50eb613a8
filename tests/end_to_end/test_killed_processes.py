"""Processes killed by the kernel: what they counted and queued is delivered by a survivor.

A pool child SIGKILLed (as by the OOM killer) runs no handler; the worker's main process
finds its ledger (``/dev/shm``) and delivers the counts it had not moved and the events its
sender still held. A worker's main process killed leaves its ledger for the next worker.

Covers: bugsnag_celery/sessions/ledger.py, bugsnag_celery/delivery/recovery.py
Covers: bugsnag_celery/hooks/leftovers.py, bugsnag_celery/transport/journal.py
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from brokers import Broker
from endpoint import Endpoint
from results import deliver_sessions, received_sessions, total
from workers import Worker, wait_until

from bugsnag_celery import task_session_id

API_KEY = "c0ffee00c0ffee00c0ffee00c0ffee00"


def config(ep: Endpoint, ledgers: Path, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": API_KEY, "app_version": "7.0.0", "release_stage": "test", "hostname": "h",
        "notify_endpoint": f"{ep.url}/notify", "sessions_endpoint": f"{ep.url}/sessions",
        "ledger_dir": str(ledgers), **extra,
    }  # fmt: skip


def messages(events: list[dict[str, Any]]) -> list[str]:
    return sorted(e["exceptions"][0]["message"] for e in events)


def test_a_child_killed_by_the_kernel_loses_no_event_and_no_count(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """20 crashes while BugSnag answers in 3 s, then the child is SIGKILLed: its sender held
    19 of them and its counts of the last second; all arrive, and the killed run's session
    (the one the main process's WorkerLostError names) is a counted session.

    Without the ledger (``ledger_dir=""``): 1 of the 20 crashes arrived.
    """
    ledgers = out_dir / "ledgers"
    endpoint.delay = 3.0
    cfg = config(endpoint, ledgers)
    with Worker(redis_broker, out_dir, module="events_app", concurrency=1, configure=cfg) as w:
        app = redis_broker.producer()
        for i in range(20):
            app.send_task("events.crash", (i,))
        killed = app.send_task("events.killed")
        endpoint.wait_for_events(21, timeout=90)
        assert w.stop() == 0
    events = endpoint.events()
    crashes = [e for e in events if e["exceptions"][0]["errorClass"] == "RuntimeError"]
    lost = [e for e in events if e["exceptions"][0]["errorClass"] == "billiard.exceptions.WorkerLostError"]
    # each crash at least once; one in flight when the child died may come twice
    assert sorted(set(messages(crashes))) == sorted(f"crash {i}" for i in range(20))
    assert 20 <= len(crashes) <= 21 and len(lost) == 1
    assert lost[0]["session"]["id"] == task_session_id(killed.id, 0, lost[0]["metaData"]["task"]["delivery"])
    endpoint.delay = 0.0
    deliver_sessions(redis_broker, endpoint.url)
    assert total(received_sessions(endpoint.requests)) == 21  # every run, the killed one too
    assert os.listdir(ledgers) == []  # all delivered: nothing left behind


def test_a_killed_main_process_is_delivered_by_the_next_worker(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """A threads-pool worker (every count in its main process) SIGKILLed with its counts and
    a crash not yet handed on: the next worker started for the app delivers both."""
    ledgers = out_dir / "ledgers"
    endpoint.hang(600)  # the crash stays in the first worker's sender, unanswered
    cfg = config(endpoint, ledgers, session_flush_interval=60)  # no flush before the kill
    first = Worker(
        redis_broker, out_dir, module="events_app", pool="threads", concurrency=1, configure=cfg, name="w1"
    )
    with first:
        app = redis_broker.producer()
        for _ in range(5):
            app.send_task("events.ok")
        app.send_task("events.crash", (99,))  # one thread: run after the five
        wait_until(
            lambda: [r for r in endpoint.unanswered if r["path"] == "/notify"], 60, "the crash's request"
        )
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
    left = os.listdir(ledgers)
    assert left == [f"{first.proc.pid}.ledger"]  # left behind, holding 6 counts and 1 event
    endpoint.hang(0)
    with Worker(redis_broker, out_dir, module="events_app", pool="threads", configure=cfg, name="w2") as w:
        endpoint.wait_for_events(1, timeout=30)
        wait_until(lambda: left[0] not in os.listdir(ledgers), 30, "the ledger to be recovered")
        assert w.stop() == 0
    assert messages(endpoint.events()) == ["crash 99"]
    deliver_sessions(redis_broker, endpoint.url)
    assert total(received_sessions(endpoint.requests)) == 6
    assert os.listdir(ledgers) == []  # the second worker's own went with its clean exit
