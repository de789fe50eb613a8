"""The compat workload on real workers: a plain Celery worker and a configured one, side by side.

The same tasks (``tests/support/apps/compat_tasks.py``), the same messages, one worker without
bugsnag_celery and one with it, on the embedded broker: every outcome (state, return value,
exception), what every attempt received, what introspection says inside the worker (where
the tasks were wrapped by the pool's tracer), the stack below Celery's tracer and the
traceback in the worker log must be the same, but for the one frame the wrapper adds to the
stack (and, before Python 3.11, to the traceback: from 3.11 it takes itself off). Under
prefork (tracers built in the children) and threads (built by the consumer).

Covers: bugsnag_celery/hooks/runner.py, bugsnag_celery/hooks/tracer_hook.py
"""

from __future__ import annotations

import re
import sys
import threading
from collections import defaultdict
from itertools import chain
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker, make_broker
from endpoint import Endpoint
from results import records
from workers import APPS, Worker, wait_until

from bugsnag_celery import task_session_id

if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))  # compat_tasks: the workload, shared with the worker
from compat_tasks import WORKLOAD

WRAPPER_FRAMES = ("runner.py:run_in_session", "runner.py:call_in_session")


def finished(out: Path) -> bool:
    """Every task of the workload reached a final state (anything but RETRY).

    How many attempts that takes depends on Celery: 5.7 merges the arguments of a retry
    that switches styles (2 attempts), earlier releases refuse to send it (``Reject``).
    """
    final = {row["task"] for row in records(out, "outcomes") if row["state"] != "RETRY"}
    return len(final) == len(WORKLOAD)


def send_workload(broker: Broker) -> None:
    app = broker.producer()
    with app.connection_for_write() as conn:
        for name, args, kwargs in WORKLOAD:
            app.send_task(name, args, kwargs, connection=conn)


def run_side(broker: Broker, out: Path, pool: str, plain: bool, endpoint: Endpoint) -> Worker:
    worker = Worker(
        broker, out, pool=pool, concurrency=2, module="compat_app", name="plain" if plain else "ours",
        configure={"api_key": "c0ffee00c0ffee00c0ffee00c0ffee00", "notify_endpoint": f"{endpoint.url}/notify",
                   "sessions_endpoint": f"{endpoint.url}/sessions"},
        env={"BSC_COMPAT_PLAIN": "1" if plain else "0"},
    )  # fmt: skip
    with worker:
        send_workload(broker)
        try:
            wait_until(lambda: finished(out), 120, "every task's final outcome")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; got {records(out, 'outcomes')}\n{worker.log()[-6000:]}") from None
        assert worker.stop() == 0, worker.log()
    return worker


def by_task(rows: list[dict[str, Any]], *fields: str) -> dict[str, list[Any]]:
    """Per task name, the given fields of each row, in attempt order."""
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["task"], r.get("retries", 0), r.get("state", ""))):
        grouped[row["task"]].append([row[f] for f in fields])
    return dict(grouped)


def logged_traceback(log: str, task: str) -> list[str]:
    """The function names of the traceback Celery logged for *task*'s failure."""
    match = re.search(
        rf"Task {re.escape(task)}\[[^\]]+\] raised unexpected: .*?\nTraceback[^\n]*\n(.*?)\n\S", log, re.S
    )
    assert match, log[-3000:]
    return re.findall(r'^\s+File "[^"]*?([^/"]+)", line \d+, in (\S+)', match.group(1), re.M)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_configured_worker_runs_tasks_as_plain_celery_does(
    pool: str, tmp_path: Path, endpoint: Endpoint
) -> None:
    sides: dict[bool, tuple[Worker, Path]] = {}
    brokers: dict[bool, Broker] = {}
    errors: list[BaseException] = []

    def side(plain: bool) -> None:
        try:
            brokers[plain] = broker = make_broker("filesystem", tmp_path / ("plain" if plain else "ours"))
            out = tmp_path / ("plain" if plain else "ours") / "out"
            out.mkdir()
            sides[plain] = (run_side(broker, out, pool, plain, endpoint), out)
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=side, args=(plain,)) for plain in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    (plain_worker, plain_out), (worker, out) = sides[True], sides[False]

    want, got = records(plain_out, "outcomes"), records(out, "outcomes")
    assert by_task(got, "state", "retval") == by_task(want, "state", "retval")
    assert len(by_task(got, "state")) == len(WORKLOAD)

    want_runs, runs = records(plain_out), records(out)
    assert by_task(runs, "retries", "args") == by_task(want_runs, "retries", "args")
    assert by_task(runs, "describe") == by_task(want_runs, "describe")
    stacks = chain.from_iterable(by_task(runs, "stack").values())
    plain_stacks = chain.from_iterable(by_task(want_runs, "stack").values())
    for (stack,), (plain_stack,) in zip(stacks, plain_stacks):
        assert stack[0] in WRAPPER_FRAMES and stack[1:] == plain_stack, (stack, plain_stack)

    # the comparison is with the instrumentation at work: every run in its own session
    assert all(r["session"] is None for r in want_runs)
    for run in runs:
        assert run["session"]["id"] == task_session_id(run["id"], run["retries"], run["delivery"]), run

    # the worker log's traceback: plain Celery's (before 3.11, plus one frame of ours)
    plain_tb = logged_traceback(plain_worker.log(), "compat.fails")
    tb = logged_traceback(worker.log(), "compat.fails")
    ours = [frame for frame in tb if f"{frame[0]}:{frame[1]}" in WRAPPER_FRAMES]
    assert len(ours) == (0 if sys.version_info >= (3, 11) else 1), tb
    assert [f for f in tb if f not in ours] == plain_tb, (tb, plain_tb)
