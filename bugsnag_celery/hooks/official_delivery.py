"""``bugsnag.notify()`` from a task run, delivered by this package: after every callback, counted, kept.

The official client builds such an event and runs its callbacks and ``params_filters``
itself; what it delivers is the final payload. Its delivery is wrapped while the client is
adopted: a payload delivered from inside a run of a configured app is taken over here,
where this package's options apply on top (``redacted_keys``, ``before_notify``,
``enabled_release_stages``), the run's session counts the event -- only now, so that an
event some callback dropped is never counted -- and this package's sender delivers it
(fork-aware, retried, spooled: the official delivery thread dies with a prefork child's
``os._exit``). Everything else -- outside task runs, session payloads -- goes to the
official delivery as before.

Which session an event belongs to is decided by the adoption's ``before_notify`` callback
(it sees the exception: one raised in ``session_paused()`` is not attributed) and handed
here through a ContextVar: the callback and the delivery run in the same call of
``bugsnag.notify``, in the same thread.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Any

from .. import registry
from ..payload.official_filters import filter_params
from ..reporting.task_tab import task_metadata
from ..sessions.current import Session

__all__ = ["TaskRunDelivery", "ATTRIBUTION"]

logger = logging.getLogger("bugsnag_celery")

#: The session the event being notified belongs to (set by the adoption's callback), or None.
ATTRIBUTION: ContextVar[Session | None] = ContextVar("bugsnag_celery_attribution", default=None)


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
            filters = tuple(str(f).lower() for f in getattr(config, "params_filters", None) or ())
            # added here, after the official encoder filtered the rest: filtered as it would be
            tab = filter_params(dict(task_metadata(task, request, reporter.options)), filters)
            for event in data.get("events") or ():
                reporter.take_over(event, session, task.name, tab)  # type: ignore[arg-type]
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
