"""Failure reporting: a task's exception becomes an event, in the process that saw it.

Two places see failures. The process that ran the task reports the exception that
escaped its body (:func:`report_failure`, called by the task wrapper, ``runner.py``, while
the run's session is current and the exception is the original object with its real
traceback). The worker's main process alone sees a pool child die or hit its hard time
limit (:func:`report_crash_seen_by_main`, on ``task_failure``): it names the session the
child opened by its deterministic id.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from types import FrameType
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded, WorkerLostError

from .. import registry
from ..clock import now_iso
from ..payload.shapes import SessionRef, session_reference
from ..registry import AppState
from ..reporting.reporter import UNHANDLED_REASON
from ..reporting.task_tab import task_metadata
from ..sessions.current import CURRENT, DELIVERY_KEY, task_session_id
from .modes import TRACK, mode_for

__all__ = ["report_failure", "report_crash_seen_by_main", "Seen"]

logger = logging.getLogger("bugsnag_celery")


def report_failure(task: Task, state: AppState, exc: BaseException, caller: FrameType | None = None) -> None:
    """Report an exception that escaped a task body (in the process that ran it). Never raises.

    *caller*: the frame that called the task wrapper, if known (``runner._drop_own_frame``).
    """
    try:
        opts = state.options
        reporter = state.reporter
        if isinstance(exc, Retry):
            cause = exc.exc
            if opts.report_retries and isinstance(cause, BaseException):
                reporter.report(
                    cause, unhandled=False, severity="warning", severity_reason={"type": "handledException"},
                    context=task.name, session=CURRENT.get(),
                    metadata={"task": task_metadata(task, task.request_stack.top, opts)},
                )  # fmt: skip
            return
        if isinstance(exc, (Ignore, Reject)) or not isinstance(exc, Exception):
            return  # control flow, or SystemExit/KeyboardInterrupt: not a task failure
        throws = getattr(task, "throws", ())
        if throws and isinstance(exc, throws):
            return  # expected errors, declared by the task
        reporter.report(
            exc, unhandled=True, severity="error", severity_reason=UNHANDLED_REASON, context=task.name,
            session=CURRENT.get(), metadata={"task": task_metadata(task, task.request_stack.top, opts)},
            caller=caller,
        )  # fmt: skip
    except Exception:
        logger.exception("bugsnag_celery: could not report the failure of %r", getattr(task, "name", task))


class Seen:
    """A bounded set of recent keys: Celery can report a crash twice (hard limits on main)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """True if *key* is new."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return True


_main_seen = Seen()


def report_crash_seen_by_main(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    traceback: object = None,
    einfo: object = None,
    request: Any = None,
    **_: object,
) -> None:
    """Crashes only the worker's main process sees: a killed pool child, a hard time limit.

    Everything else was reported by the process that ran the task (:func:`report_failure`).
    *request*: the run's context, where it is not on the task's request stack (a lost child
    whose message Celery requeues sends no ``task_failure``: ``signals.py`` calls this).
    """
    if not isinstance(exception, (WorkerLostError, TimeLimitExceeded)):
        return
    try:
        state = registry.state_for(sender.app) if sender is not None else None
        if state is None or not state.active or not task_id:
            return
        if request is None:
            request = sender.request
        ours = getattr(request, "id", None) == task_id
        retries = (request.retries or 0) if ours else 0
        delivery = getattr(request, "__dict__", {}).get(DELIVERY_KEY) if ours else None
        if not _main_seen.add((task_id, retries, delivery)):
            return  # reported already: Celery fires task_failure twice for a hard limit on some versions
        session: SessionRef | None = None
        if mode_for(sender, state) == TRACK and not (
            not state.options.track_eager and getattr(request, "is_eager", False)
        ):
            sid = task_session_id(task_id, retries, delivery)
            session = session_reference(sid, now_iso(), handled=0, unhandled=1)
        text = traceback if isinstance(traceback, str) else getattr(einfo, "traceback", None)
        meta = task_metadata(sender, request, state.options) if ours else {
            "id": task_id, "name": sender.name, "retries": retries}  # fmt: skip
        state.reporter.report(
            exception, unhandled=True, severity="error", severity_reason=UNHANDLED_REASON,
            context=sender.name, session=None, session_override=session, metadata={"task": meta},
            traceback_text=text if isinstance(text, str) else None,
        )  # fmt: skip
    except Exception:
        logger.exception("bugsnag_celery: could not report a crash seen by the worker")
