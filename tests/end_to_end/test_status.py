"""``celery bugsnag status`` and the worker's log, as an operator reads them: honest about time.

Real processes on Redis: ``status`` and ``flush`` run as the ``celery`` command, workers and
beats as ``celery worker`` / ``celery beat``. What is checked: every time is an age ("25 s
ago"), an error older than the last successful delivery says so, "never" is the one word for
what has not happened, ``--json`` has the same fields before a first run as after; a beat
whose delivery task no worker runs is told apart from no beat at all (the no-beat half is
``tests/end_to_end/test_faults.py::test_no_beat_is_noticed_by_the_worker_and_by_status``),
and the worker's hourly warning follows a change of diagnosis at once; and a routine
delivery writes nothing at INFO, while a problem still does.

Covers: bugsnag_celery/delivery/status.py, bugsnag_celery/hooks/beat.py, bugsnag_celery/delivery/flusher.py
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker
from endpoint import Endpoint
from results import received_sessions, total, wait_for_records
from workers import APPS, Worker, wait_until

from bugsnag_celery import Release
from bugsnag_celery.about import __version__
from bugsnag_celery.clock import minute_iso
from bugsnag_celery.delivery.flusher import publish_counts
from bugsnag_celery.delivery.status import read_status

KEY = "c0ffee00c0ffee00c0ffee00c0ffee00"
DELIVER = "bugsnag_celery.deliver_sessions"
CELERY = os.path.join(os.path.dirname(sys.executable), "celery")
#: Every field of ``status --json``, in order, whatever the broker holds (the README's contract).
REPORT_FIELDS = (
    "pending_session_messages", "spooled_events",
    "delivery_task_sent", "delivery_task_sent_seconds_ago", "delivery_task_sent_by", "delivery_task_queue",
    "last_run", "last_run_seconds_ago", "last_run_hostname", "sessions", "events",
    "last_delivery", "last_delivery_seconds_ago",
    "last_error", "last_error_seconds_ago", "last_error_before_last_delivery",
    "dropped", "last_drop", "last_drop_seconds_ago", "problem",
)  # fmt: skip
#: The times of the report; each has its ``<time>_seconds_ago``.
TIMES = ("delivery_task_sent", "last_run", "last_delivery", "last_error", "last_drop")
NO_BEAT = "is a beat running?"
NO_WORKER = "no worker runs the delivery task"


def cfg(endpoint: Endpoint, **extra: Any) -> dict[str, Any]:
    return {"api_key": KEY, "app_version": "4.0.0", "release_stage": "test", "hostname": "h",
            "notify_endpoint": f"{endpoint.url}/notify", "sessions_endpoint": f"{endpoint.url}/sessions",
            **extra}  # fmt: skip


def bugsnag_command(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A session_app bugsnag <args>`` with *worker*'s settings (it need not run)."""
    env = {**worker.env, "PYTHONPATH": str(APPS)}
    return subprocess.run([CELERY, "-A", "session_app", "bugsnag", *args], env=env, cwd=worker.out,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def report(worker: Worker) -> dict[str, Any]:
    out = bugsnag_command(worker, "status", "--json")
    assert out.returncode == 0, out.stderr
    got: dict[str, Any] = json.loads(out.stdout)
    return got


def line(text: str, start: str) -> str:
    """The one line of *text* that starts with *start*."""
    found = [row for row in text.splitlines() if row.startswith(start)]
    assert len(found) == 1, text
    return found[0]


AGE = r"\d+ (s|min) ago"  # seconds on a quick machine; minutes are the margin for a slow one
STAMP = r"\(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\)"


def test_status_gives_ages_one_word_for_never_and_the_same_json_fields_always(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """Before a first run, after a failed one, after a successful one: no beat, no worker
    (``flush`` runs the deliveries), so each state is exactly the one meant."""
    # 120 s: counts that wait this test's few seconds are not a delivery problem
    worker = Worker(redis_broker, out_dir, configure=cfg(endpoint, session_delivery_interval=120))
    release = Release("4.0.0", "test", "celery", "h")
    assert publish_counts(redis_broker.producer(), {release: {minute_iso(int(time.time()) // 60): 4}},
                          redis_broker.queue)  # fmt: skip

    first = report(worker)
    assert list(first) == list(REPORT_FIELDS)
    assert first["pending_session_messages"] == 1 and first["problem"] is None
    assert all(first[t] is None and first[f"{t}_seconds_ago"] is None for t in TIMES), first
    assert first["last_error_before_last_delivery"] is None and first["sessions"] is None
    assert set(first["dropped"].values()) == {0}  # nothing dropped: zeros, as the plain "dropped: 0"
    plain = bugsnag_command(worker, "status")
    assert plain.returncode == 0, plain.stderr
    for start in ("delivery task last sent", "last run", "last delivery", "last error", "last drop"):
        assert line(plain.stdout, f"{start}: ") == f"{start}: never"
    assert "None" not in plain.stdout and "null" not in plain.stdout

    endpoint.default = 503  # BugSnag failing: the run keeps the counts and records an error
    failed = bugsnag_command(worker, "flush")
    assert failed.returncode != 0 and "unreachable or failing" in failed.stderr, failed.stderr
    current = report(worker)
    assert list(current) == list(REPORT_FIELDS)
    assert current["last_delivery"] is None and current["last_error_before_last_delivery"] is False
    assert isinstance(current["last_error_seconds_ago"], float) and current["sessions"]["retry"] == 4
    plain = bugsnag_command(worker, "status")
    error = line(plain.stdout, "last error: ")
    assert re.fullmatch(rf"last error: {AGE} {STAMP}: BugSnag unreachable or failing; kept for the next run",
                        error), error  # fmt: skip
    assert line(plain.stdout, "last delivery: ") == "last delivery: never"
    assert re.fullmatch(rf"last run: {AGE} {STAMP}, on h: sessions 0 delivered, 4 kept for later, .*",
                        line(plain.stdout, "last run: "))  # fmt: skip

    endpoint.default = 200  # BugSnag back: the next run delivers, the error is history
    delivered = bugsnag_command(worker, "flush")
    assert delivered.returncode == 0 and "sessions: 4 delivered in 1 request(s)" in delivered.stdout
    after = report(worker)
    assert list(after) == list(REPORT_FIELDS)
    assert after["last_error"] == current["last_error"] and after["last_error_before_last_delivery"] is True
    assert after["last_error_seconds_ago"] >= after["last_delivery_seconds_ago"]
    plain = bugsnag_command(worker, "status")
    error = line(plain.stdout, "last error: ")
    assert re.fullmatch(rf"last error: {AGE}, before the last successful delivery {STAMP}: BugSnag "
                        "unreachable or failing; kept for the next run", error), error  # fmt: skip
    assert re.fullmatch(rf"last delivery: {AGE} {STAMP}", line(plain.stdout, "last delivery: "))
    assert "None" not in plain.stdout
    assert total(received_sessions(endpoint.requests)) == 4


@contextmanager
def beat(worker: Worker) -> Iterator[Path]:
    """``celery beat`` for *worker*'s app, in a process of its own; yields its log."""
    log_path = worker.out / "beat.log"
    cmd = [sys.executable, "-m", "celery", "-A", "session_app", "beat", "--loglevel=INFO",
           "-s", str(worker.out / "beat-schedule")]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=worker.env, cwd=str(worker.out), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        yield log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_a_beat_whose_delivery_task_no_worker_runs_is_not_called_no_beat(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """A beat runs and sends the delivery task to a queue no worker consumes: the worker's
    warning and ``status`` say that no worker runs it, where it goes, and not "no beat"."""
    interval = 2.0  # three intervals pass in seconds; the beat's mark is never older than one
    nobody = f"{redis_broker.queue}.nobody"
    w = Worker(redis_broker, out_dir, configure=cfg(endpoint, session_delivery_interval=interval),
               env={"BSC_ROUTES": json.dumps({DELIVER: {"queue": nobody}})})  # fmt: skip
    with beat(w) as beat_log:
        # the beat first: a worker that looks before any beat has sent the task says "no
        # beat", rightly (the next test)
        wait_until(
            lambda: bugsnag_command(w, "status").stdout.count(repr(nobody)) == 1, 60, "the beat's mark"
        )
        with w:
            app = redis_broker.producer()
            for i in range(20):
                app.send_task("session_app.observe", (f"t{i}",), queue=redis_broker.queue)
            wait_for_records(out_dir, 20, worker=w)
            # 3 intervals after the first flush, then one check per interval; 60 s is the margin
            wait_until(lambda: NO_WORKER in w.log(), 60, "the no-worker warning")
            status = bugsnag_command(w, "status")
            assert w.stop() == 0
    assert f"Sending due task {DELIVER}" not in beat_log.read_text()  # routine: DEBUG (see below)
    warnings = [row for row in w.log().splitlines() if NO_WORKER in row]
    assert warnings and all("WARNING/" in row and repr(nobody) in row for row in warnings), warnings
    assert NO_BEAT not in w.log()
    assert status.returncode != 0 and NO_WORKER in status.stderr, status.stderr
    assert repr(nobody) in status.stderr and NO_BEAT not in status.stderr and "Traceback" not in status.stderr
    sent = line(status.stdout, "delivery task last sent: ")
    to = re.escape(repr(nobody))
    assert re.fullmatch(rf"delivery task last sent: {AGE} {STAMP}, by h, to {to}", sent), sent
    assert line(status.stdout, "last run: ") == "last run: never"


def test_a_beat_started_after_the_no_beat_warning_changes_the_warning_at_once(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """The worker warns hourly; a new diagnosis is not held back by the old one's hour."""
    nobody = f"{redis_broker.queue}.nobody"
    w = Worker(redis_broker, out_dir, configure=cfg(endpoint, session_delivery_interval=1),
               env={"BSC_ROUTES": json.dumps({DELIVER: {"queue": nobody}})})  # fmt: skip
    with w:
        app = redis_broker.producer()
        for i in range(20):
            app.send_task("session_app.observe", (f"t{i}",), queue=redis_broker.queue)
        wait_for_records(out_dir, 20, worker=w)
        wait_until(lambda: NO_BEAT in w.log(), 60, "the no-beat warning")  # 60 s: the margin
        with beat(w):
            wait_until(lambda: NO_WORKER in w.log(), 60, "the no-worker warning")
        assert w.stop() == 0
    # hourly, per process (2 children), per diagnosis
    assert 1 <= w.log().count(NO_BEAT) <= 2 and 1 <= w.log().count(NO_WORKER) <= 2


ROUTINE = re.compile(rf"(Sending due task|Task) {re.escape(DELIVER)}\b")


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_routine_deliveries_log_at_debug_and_problems_still_at_warning_or_error(
    level: str, redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """A worker with an embedded beat, delivering every second. At INFO its log has the
    start-up line, no line about a routine delivery run (Celery's "Sending due task",
    "received", "succeeded: {...}"), and the error line of a refused delivery; at DEBUG the
    routine lines are there, at DEBUG (which shows that the INFO check would see them)."""
    configure = cfg(endpoint, session_delivery_interval=1)
    extra = ("-B", "-s", str(out_dir / "beat-schedule"), f"--loglevel={level}")
    with Worker(redis_broker, out_dir, configure=configure, extra_args=extra) as w:
        app, producer = redis_broker.producer(), redis_broker.producer()
        for i in range(5):
            app.send_task("session_app.observe", (f"t{i}",), queue=redis_broker.queue)
        wait_until(lambda: total(received_sessions(endpoint.requests)) == 5, 60, "5 sessions delivered")
        delivering = read_status(producer, redis_broker.queue)
        assert delivering is not None
        # a routine run after it: nothing to deliver
        wait_until(lambda: (read_status(producer, redis_broker.queue) or {}).get("last_run_at", 0)
                   > delivering["last_run_at"], 60, "a later delivery run")  # fmt: skip
        endpoint.default = 401  # a problem: BugSnag refuses the key
        for i in range(3):
            app.send_task("session_app.observe", (f"r{i}",), queue=redis_broker.queue)
        wait_until(lambda: "HTTP 401" in w.log(), 60, "the refused delivery logged")
        assert w.stop() == 0
    log = w.log()
    assert f"INFO/MainProcess] bugsnag_celery {__version__}: active; API key present" in log
    refused = [row for row in log.splitlines() if "rejected a session payload with HTTP 401" in row]
    assert len(refused) == 1 and "ERROR/" in refused[0], refused
    routine = [row for row in log.splitlines() if ROUTINE.search(row)]
    # the app's own tasks keep Celery's lines at INFO: only the delivery task's go down
    assert re.search(r"INFO/\S+\] Task session_app\.observe\[[^\]]+\] succeeded", log)
    if level == "INFO":
        assert routine == [], routine[:3]
    else:
        kinds = {
            m.group(0) for row in routine if (m := re.search("Sending due task|received|succeeded", row))
        }
        assert kinds == {"Sending due task", "received", "succeeded"}, routine[:6]
        assert all("DEBUG/" in row for row in routine), [row for row in routine if "DEBUG/" not in row][:3]


def test_configure_connects_the_mark_and_the_log_filter_once_and_the_last_unconfigure_undoes_them() -> None:
    import logging

    from celery import Celery, signals

    import bugsnag_celery
    from bugsnag_celery import registry
    from bugsnag_celery.hooks.beat import ROUTINE_LOGGERS, RoutineDeliveryLines

    def marks() -> int:
        return sum(
            1 for (key, _), _r in signals.after_task_publish.receivers if key == "bugsnag_celery.mark_sent"
        )

    def filters() -> list[int]:
        return [
            sum(isinstance(f, RoutineDeliveryLines) for f in logging.getLogger(n).filters)
            for n in ROUTINE_LOGGERS
        ]

    assert registry.states() == []  # nothing configured in this process before
    local = {
        "notify_endpoint": "http://127.0.0.1:9/notify",
        "sessions_endpoint": "http://127.0.0.1:9/sessions",
    }
    one = Celery("one", broker="memory://", set_as_current=False)
    two = Celery("two", broker="memory://", set_as_current=False)
    for app in (one, one, two):
        bugsnag_celery.configure(app, api_key=KEY, **local)
    assert marks() == 1 and filters() == [1, 1, 1]
    bugsnag_celery.unconfigure(one)
    assert marks() == 1 and filters() == [1, 1, 1]  # two still needs them
    bugsnag_celery.unconfigure(two)
    assert marks() == 0 and filters() == [0, 0, 0]
