"""The periodic delivery: the beat entry, the task it runs, and ``deliver``/``flush``.

Session counts and spooled events wait on the app's broker; one worker runs the
delivery task every ``session_delivery_interval`` (beat schedules it, with ``expires``
so a backlog of runs after an outage does not run back to back). Not every beat keeps
``expires`` (django-celery-beat's database scheduler drops it), so the task itself also
does nothing when the previous run started less than half an interval ago: a backlog
of queued runs costs one delivery, whatever the scheduler.
"""

from __future__ import annotations

import logging
import time
from typing import TypedDict

from celery import Celery, Task

from .. import registry
from ..delivery.run import deliver_all
from ..delivery.status import DeliveryStatus, read_status, record_status
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


def deliver(app: Celery) -> DeliveryStatus:
    """One delivery run: every session count on the broker, then every spooled event.

    What the periodic task ``bugsnag_celery.deliver_sessions`` does; safe to run in
    several processes at once (the broker hands each message to one of them).
    """
    state = registry.state_for(app)
    if state is None:
        raise RuntimeError("bugsnag_celery.deliver: the app is not configured")
    return deliver_all(app, state.options)


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
        except Exception:  # the broker: the delivery itself will say what is wrong
            last = None
        now = time.time()
        if isinstance(last, (int, float)) and 0 <= now - last < opts.session_delivery_interval / 2:
            logger.info("bugsnag_celery: delivery skipped: the previous run started %.1f s ago "
                        "(a backlog of beat runs)", now - last)  # fmt: skip
            return {"skipped": True, "previous_run_seconds_ago": now - last}
        # claim the run first, so that the rest of a backlog sees it at once
        record_status(self.app, {"last_run_at": now}, opts.queue_prefix)
    return deliver(self.app)


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


def unregister_delivery(app: Celery) -> None:
    schedule = dict(app.conf.beat_schedule or {})
    if schedule.pop(DELIVER_TASK, None) is not None:
        app.conf.beat_schedule = schedule
