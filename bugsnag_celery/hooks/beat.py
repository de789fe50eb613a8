"""The periodic delivery: the beat entry, the task it runs, and ``deliver``/``flush``.

Session counts and spooled events wait on the app's broker; one worker runs the
delivery task every ``session_delivery_interval`` (beat schedules it, with ``expires``
so a backlog of runs after an outage does not run back to back). Not every beat keeps
``expires`` (django-celery-beat's database scheduler drops it), so the task itself also
does nothing when the previous run started less than half an interval ago: a backlog
of queued runs costs one delivery, whatever the scheduler. Nor while the previous run may
still be going (a hung BugSnag holds one for up to ``delivery/run.py``'s ``longest_run``):
one pool slot waits on BugSnag at most, never several.

Whatever sends the delivery task leaves its mark (``after_task_publish``: when, from which
host, to which routing key; ``delivery/status.py``), so that counts waiting with no delivery
run can say whether nothing sends it (no beat) or no worker runs it. A routine run is not
news: Celery's own INFO lines about it (the beat's "Sending due task", the worker's
"received" and "succeeded" with the run's figures, three lines every interval) go out at
DEBUG; what goes wrong is logged by the run itself, at WARNING or ERROR.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, TypedDict

from celery import Celery, Task
from celery import signals as celery_signals

from .. import registry
from ..delivery.run import deliver_all, longest_run
from ..delivery.status import DeliveryStatus, read_status, record_sent, record_status
from ..logs import log_every
from ..options.declared import Options
from .exit_flush import flush_events

__all__ = ["DELIVER_TASK", "deliver", "flush", "register_delivery", "unregister_delivery"]

#: The name of the delivery task and of its beat entry.
DELIVER_TASK = "bugsnag_celery.deliver_sessions"

logger = logging.getLogger("bugsnag_celery")


class SkippedRun(TypedDict):
    """The delivery task's result when a backlog run did nothing (see the module docstring)."""

    skipped: bool
    previous_run_seconds_ago: float
    previous_run_busy: bool


def deliver(app: Celery) -> DeliveryStatus:
    """One delivery run: every session count on the broker, then every spooled event.

    What the periodic task ``bugsnag_celery.deliver_sessions`` does; safe to run in
    several processes at once (the broker hands each message to one of them).
    """
    state = registry.state_for(app)
    if state is None:
        raise RuntimeError("bugsnag_celery.deliver: the app is not configured")
    others = [other.options for other in registry.states() if other is not state]
    return deliver_all(app, state.options, others)


def flush(app: Celery, timeout: float = 10.0) -> DeliveryStatus:
    """Synchronously: move this process's counts and events out, then deliver everything."""
    flush_events(timeout)
    registry.flusher.flush_once()
    return deliver(app)


def _deliver_task(self: Task) -> DeliveryStatus | SkippedRun:
    state = registry.state_for(self.app)
    if state is not None:
        opts = state.options
        try:
            status = read_status(self.app, opts.queue_prefix)
            last = status.get("last_run_at") if status else None
            busy = status.get("busy_until") if status else None
        except Exception:  # the broker: the delivery itself will say what is wrong
            last = busy = None
        now = time.time()
        if isinstance(last, (int, float)) and 0 <= now - last < opts.session_delivery_interval / 2:
            logger.debug("bugsnag_celery: delivery skipped: the previous run started %.1f s ago "
                         "(a backlog of beat runs)", now - last)  # fmt: skip
            return {"skipped": True, "previous_run_seconds_ago": now - last, "previous_run_busy": False}
        if isinstance(last, (int, float)) and isinstance(busy, (int, float)) and now < busy <= last + 3600:
            logger.info("bugsnag_celery: delivery skipped: the previous run, started %.1f s ago, is "
                        "still going (BugSnag slow or hung?)", now - last)  # fmt: skip
            return {"skipped": True, "previous_run_seconds_ago": now - last, "previous_run_busy": True}
        # claim the run first, so that the rest of a backlog sees it at once, and later runs
        # wait for it while it may be waiting on BugSnag
        record_status(
            self.app, {"last_run_at": now, "busy_until": now + longest_run(opts)}, opts.queue_prefix
        )
    return deliver(self.app)


def _mark_sent(sender: Any = None, routing_key: Any = None, **_: Any) -> None:
    """``after_task_publish``, in whatever process sends the delivery task (the beat's): leave
    the mark ``celery bugsnag status`` and the workers' no-delivery warning read. Never raises:
    the task is sent whatever happens here."""
    if sender != DELIVER_TASK:
        return
    try:
        from celery._state import get_current_app

        state = registry.state_for(get_current_app())
        configured = registry.states()
        if state is None and len(configured) == 1:
            state = configured[0]  # a process with one configured app: the beat's
        if state is None:
            return
        key = routing_key if isinstance(routing_key, str) and routing_key else None
        opts = state.options
        record_sent(state.app, {"at": time.time(), "hostname": opts.hostname, "routing_key": key},
                    opts.queue_prefix)  # fmt: skip
    except Exception as exc:
        log_every("mark-sent", 3600.0, logging.WARNING,
                  "bugsnag_celery: could not note that the delivery task was sent: %s", exc)  # fmt: skip


#: The loggers of Celery's routine lines about a task: the beat sending it, the worker
#: receiving it, its result.
ROUTINE_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


def _names_delivery(record: logging.LogRecord) -> bool:
    """Whether *record* is about the delivery task: Celery passes its name in a mapping (the
    worker's lines) or as an argument (the beat's)."""
    args = record.args
    if isinstance(args, Mapping):
        return args.get("name") == DELIVER_TASK
    return any(arg == DELIVER_TASK or getattr(arg, "name", None) == DELIVER_TASK for arg in args or ())


class RoutineDeliveryLines(logging.Filter):
    """Celery's INFO lines about the delivery task, at DEBUG: written only where DEBUG is."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if record.levelno != logging.INFO or not _names_delivery(record):
                return True
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        except Exception:  # a line of Celery's, whatever it holds, is never lost here
            pass
        return True


_ROUTINE_FILTER = RoutineDeliveryLines()
_MARK_SENT = "bugsnag_celery.mark_sent"


def register_delivery(app: Celery, options: Options) -> None:
    app.task(name=DELIVER_TASK, bind=True, shared=False, ignore_result=True)(_deliver_task)
    schedule = dict(app.conf.beat_schedule or {})
    schedule[DELIVER_TASK] = {
        "task": DELIVER_TASK,
        "schedule": options.session_delivery_interval,
        # a backlog of delivery runs (beat running while no worker does) is pointless
        "options": {"expires": options.session_delivery_interval},
    }
    app.conf.beat_schedule = schedule
    celery_signals.after_task_publish.connect(_mark_sent, weak=False, dispatch_uid=_MARK_SENT)
    for name in ROUTINE_LOGGERS:
        logging.getLogger(name).addFilter(_ROUTINE_FILTER)  # once: addFilter skips one it has


def unregister_delivery(app: Celery) -> None:
    """Undo :func:`register_delivery` for *app*; with the last configured app, the signal and
    the log filter too (``unconfigure`` removes *app* from the registry first)."""
    schedule = dict(app.conf.beat_schedule or {})
    if schedule.pop(DELIVER_TASK, None) is not None:
        app.conf.beat_schedule = schedule
    if not registry.states():
        celery_signals.after_task_publish.disconnect(dispatch_uid=_MARK_SENT)
        for name in ROUTINE_LOGGERS:
            logging.getLogger(name).removeFilter(_ROUTINE_FILTER)
