"""``bugsnag.notify()`` in a task run: made a task event before the callbacks, delivered by us after them.

Every event sent from a task run carries the same task context, whoever built it (a crash,
``bugsnag_celery.notify``, ``bugsnag.notify``, the official logging handler): the task name
as ``context``, the ``task`` tab, the worker's release and ``app.type``, the run's session.
This package builds the first two that way; the official client builds the others, so:

- **before its callbacks** (:func:`as_task_event`, run by the adoption's middleware ahead
  of the official ``DefaultMiddleware``) the event gets what a crash event is built with:
  the task name as ``context`` unless the call gave one, the ``task`` tab under any keys
  the call gave, the worker's release stage, version and app type unless the call gave
  others. The project's callbacks then see the event a crash event shows them, and what
  they change is kept; the request configuration's ``context`` does not replace the task
  name, as it does not for a crash (the official Celery handler passes the task name too);
  its metadata adds keys to the ``task`` tab without replacing ours, as for a crash.
- **after them** its delivery is taken over: a payload delivered from inside a run of a
  configured app comes here, where this package's options apply on top (``redacted_keys``,
  ``before_notify``, ``enabled_release_stages``), the run's session counts the event --
  only now, so that an event some callback dropped is never counted -- and this package's
  sender delivers it (fork-aware, retried, spooled: the official delivery thread dies with
  a prefork child's ``os._exit``). Everything else -- outside task runs, session payloads
  -- goes to the official delivery as before.

Which session an event belongs to is decided with the rest, before the callbacks (it sees
the exception: one raised in ``session_paused()`` is not attributed), and handed to the
delivery through a ContextVar: both run in the same call of ``bugsnag.notify``, in the
same thread.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .. import registry
from ..reporting.reporter import Reporter, raised_while_paused
from ..reporting.task_tab import task_metadata
from ..sessions.current import Session, current_session

if TYPE_CHECKING:
    from celery import Task
    from celery.app.task import Context

__all__ = ["TaskRunDelivery", "ATTRIBUTION", "as_task_event"]

logger = logging.getLogger("bugsnag_celery")

#: The session the event being notified belongs to (set by :func:`as_task_event`), or None.
ATTRIBUTION: ContextVar[Session | None] = ContextVar("bugsnag_celery_attribution", default=None)


def as_task_event(event: Any, reporter: Reporter, task: Task, request: Context) -> None:
    """Give an official event of a task run what a crash event of the run is built with,
    before the project's callbacks see it (see the module), and note its session.

    What the call itself gave is kept: a ``context``, keys of a ``task`` tab, a release
    stage, version or app type other than the official configuration's.
    """
    session = current_session()
    raised = getattr(event, "exception", None)
    paused = isinstance(raised, BaseException) and raised_while_paused(raised)
    ATTRIBUTION.set(None if session is None or session.paused or paused else session)
    if not event.context:
        event.context = task.name
    tab = task_metadata(task, request, reporter.options)
    given = event.metadata.get("task")
    event.metadata["task"] = {**tab, **given} if isinstance(given, dict) else tab
    # the worker's release and type, where the run's session is counted (a crash event's too)
    config, release = event.config, reporter.release
    if event.release_stage == getattr(config, "release_stage", None):
        event.release_stage = release.release_stage
    if event.app_version == getattr(config, "app_version", None):
        event.app_version = release.app_version
    if event.app_type == getattr(config, "app_type", None):
        event.app_type = release.app_type


class TaskRunDelivery:
    """The official client's delivery, with payloads of task runs taken over (see the module)."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def __getattr__(self, name: str) -> Any:  # anything else of the official Delivery interface
        return getattr(self.original, name)

    def deliver(self, config: Any, payload: Any, options: Any = None) -> None:
        reporter, task, request = registry.current_reporter()
        if reporter is None or task is None or request is None:
            self.original.deliver(config, payload, options if options is not None else {})
            return
        session = ATTRIBUTION.get()
        ATTRIBUTION.set(None)
        try:
            data = json.loads(payload)
            for event in data.get("events") or ():
                reporter.take_over(event, session)
        except Exception:
            logger.exception("bugsnag_celery: could not take over an event of the official client; "
                             "delivering it as the official client would")  # fmt: skip
            self.original.deliver(config, payload, options if options is not None else {})
            return
        done = (options or {}).get("post_delivery_callback")
        if callable(done):
            done()  # the official client's request tracker: this request is no longer in flight

    def deliver_sessions(self, config: Any, payload: Any, options: Any = None) -> None:
        # the official client checks this signature (an ``options`` parameter: synchronous
        # delivery at exit); an older delivery without one gets the call it knows
        try:
            takes_options = "options" in self.original.deliver_sessions.__code__.co_varnames
        except AttributeError:
            takes_options = False
        if takes_options:
            self.original.deliver_sessions(config, payload, options if options is not None else {})
        else:
            self.original.deliver_sessions(config, payload)
