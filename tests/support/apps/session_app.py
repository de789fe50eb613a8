"""The Celery app that the real-worker tests run (``celery -A session_app worker``).

Configured from the environment so one module serves every broker and pool:
``BSC_BROKER_URL``, ``BSC_TRANSPORT_OPTIONS`` (JSON), ``BSC_QUEUE``, ``BSC_OUT`` (a folder
the tasks write their observations to) and ``BSC_CONFIGURE`` (JSON keyword arguments
for ``bugsnag_celery.configure``). Every task appends one JSON line per observation to
``BSC_OUT/records-<pid>.jsonl``. Session counts travel the product's own path: the
broker queue ``<queue_prefix>.sessions``, drained by the tests as the beat task would.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from celery.exceptions import Ignore
from env_app import make_app

import bugsnag_celery
from bugsnag_celery.sessions.current import DELIVERY_KEY

OUT = os.environ["BSC_OUT"]
app = make_app(
    "session_app", worker_send_task_events=False, task_acks_late=False, worker_prefetch_multiplier=4
)

if os.environ.get("BSC_CLOCK_SPREAD"):
    # Spread session start times over several minutes without waiting for them: every
    # run's clock is shifted back by 0..N-1 minutes, so counts land in several minute
    # buckets. Back, not ahead: a minute ahead of the delivery's clock is filed under its
    # current minute (payload/sessions.py's clock rule), which would merge the buckets.
    import itertools

    from bugsnag_celery.hooks.runner import set_session_clock

    _spread, _ticks = int(os.environ["BSC_CLOCK_SPREAD"]), itertools.count()
    set_session_clock(lambda: time.time() - 60 * (next(_ticks) % _spread))
elif os.environ.get("BSC_CLOCK_SKEW"):
    # A worker whose clock is off by this many seconds (positive: fast), as every run's
    # session start reads it; whatever delivers the counts reads the right time.
    from bugsnag_celery.hooks.runner import set_session_clock

    _skew = float(os.environ["BSC_CLOCK_SKEW"])
    set_session_clock(lambda: time.time() + _skew)


if os.environ.get("BSC_RECORD_FLUSHES"):
    # Every flush of this process's counts to the broker, as a line in
    # ``BSC_OUT/flushes-<pid>.jsonl``: when it began (every count added before that moment
    # is in it or in an earlier one) and how many sessions it moved. Lets a test say
    # exactly which runs a killed process could still hold, with no timing window.
    from bugsnag_celery.delivery.flusher import Flusher

    _flush_once = Flusher.flush_once

    def _recorded_flush_once(self: Flusher, wait: float | None = None) -> int:
        began = time.time()
        moved = _flush_once(self, wait)
        line = json.dumps({"pid": os.getpid(), "began": began, "ended": time.time(), "moved": moved})
        fd = os.open(
            os.path.join(OUT, f"flushes-{os.getpid()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND
        )
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
        return moved

    Flusher.flush_once = _recorded_flush_once  # type: ignore[method-assign]


def _record(**fields: Any) -> None:
    from celery import current_task

    request = getattr(current_task, "request", None)
    fields.setdefault("delivery", getattr(request, "__dict__", {}).get(DELIVERY_KEY))
    fields.setdefault("pid", os.getpid())
    fields.setdefault("thread", threading.get_ident())
    line = (json.dumps(fields) + "\n").encode()
    fd = os.open(os.path.join(OUT, f"records-{os.getpid()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines from threads never interleave
    finally:
        os.close(fd)


def _write(kind: str, fields: dict[str, Any]) -> None:
    line = (json.dumps(fields) + "\n").encode()
    fd = os.open(os.path.join(OUT, f"{kind}-{os.getpid()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@app.task(bind=True)
def observe(self: Any, tag: str = "", delay: float = 0.0, gate: str = "") -> None:
    """Record the session at the start and, after *delay*, at the end of the run.

    With *gate* (a path), the run says it started (``started-<pid>.jsonl``) and then waits
    until the test creates that file: runs that overlap because the test made them, not
    because the machine happened to be fast enough.
    """
    started = time.time()
    first = bugsnag_celery.get_current_session()
    if gate:
        _write("started", {"id": self.request.id})
        deadline = time.monotonic() + 120
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
    if delay:
        time.sleep(delay)
    last = bugsnag_celery.get_current_session()
    ended = time.time()
    _record(task="observe", tag=tag, id=self.request.id, retries=self.request.retries, first=first, last=last,
            started=started, ended=ended)  # fmt: skip


@app.task(bind=True, max_retries=5)
def retrying(self: Any, attempts: int) -> None:
    """Fails into a retry until it has run *attempts* times."""
    _record(
        task="retrying",
        id=self.request.id,
        retries=self.request.retries,
        first=bugsnag_celery.get_current_session(),
    )
    if self.request.retries + 1 < attempts:
        raise self.retry(countdown=0)


@app.task(bind=True)
def crashing(self: Any) -> None:
    _record(
        task="crashing",
        id=self.request.id,
        retries=self.request.retries,
        first=bugsnag_celery.get_current_session(),
    )
    raise RuntimeError("boom")


@app.task(bind=True)
def ignored(self: Any) -> None:
    _record(
        task="ignored",
        id=self.request.id,
        retries=self.request.retries,
        first=bugsnag_celery.get_current_session(),
    )
    raise Ignore()


@app.task(bind=True)
@bugsnag_celery.no_session
def opted_out_below(self: Any) -> None:
    _record(task="opted_out_below", id=self.request.id, first=bugsnag_celery.get_current_session())


@bugsnag_celery.no_session
@app.task(bind=True)
def opted_out_above(self: Any) -> None:
    _record(task="opted_out_above", id=self.request.id, first=bugsnag_celery.get_current_session())


@app.task(bind=True, name="session_app.housekeeping.vacuum")
def excluded_vacuum(self: Any) -> None:
    """Excluded by the ``exclude_tasks`` pattern the tests configure."""
    _record(task="excluded", id=self.request.id, first=bugsnag_celery.get_current_session())


@app.task(bind=True)
def paused_housekeeping(self: Any) -> None:
    before = bugsnag_celery.get_current_session()
    with bugsnag_celery.session_paused():
        inside = bugsnag_celery.get_current_session()
    after = bugsnag_celery.get_current_session()
    _record(
        task="paused_housekeeping",
        id=self.request.id,
        retries=self.request.retries,
        first=before,
        inside=inside,
        last=after,
    )


@app.task(bind=True)
def manual_calls(self: Any) -> None:
    """The seed's calls, one after the other, inside a task run."""
    got: dict[str, Any] = {"start": bugsnag_celery.get_current_session()}
    got["resume_active"] = bugsnag_celery.resume_session()
    bugsnag_celery.pause_session()
    got["after_pause"] = bugsnag_celery.get_current_session()
    got["resume_paused"] = bugsnag_celery.resume_session()
    got["after_resume"] = bugsnag_celery.get_current_session()
    bugsnag_celery.start_session()
    got["after_start"] = bugsnag_celery.get_current_session()
    _record(task="manual_calls", id=self.request.id, retries=self.request.retries, **got)


@app.task(bind=True)
def after_manual(self: Any) -> None:
    """Runs after manual_calls in the same process: must not see its session."""
    _record(
        task="after_manual",
        id=self.request.id,
        retries=self.request.retries,
        first=bugsnag_celery.get_current_session(),
    )
