"""The configured apps of this process, and the one flusher that moves their counts.

``configure()`` adds an :class:`AppState`, ``unconfigure()`` removes it; the task
wrapper, the worker signals, ``notify()`` and the tools read it through
:func:`state_for` and :func:`states` -- nobody touches the dict itself.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task
from celery._state import get_current_task
from celery.app.task import Context

from .delivery.flusher import Flusher, FlushTarget
from .delivery.spool import spool_payloads
from .options.declared import Options
from .reporting.reporter import Reporter
from .sessions import counts
from .sessions.counts import Release
from .transport.http import route_through_proxy

__all__ = ["AppState", "state_for", "states", "add", "remove", "current_reporter", "flusher"]


class AppState:
    """Everything ``configure()`` set up for one app, so ``unconfigure()`` can undo it."""

    __slots__ = (
        "active",
        "app",
        "excluded",
        "kwargs",
        "minutes",
        "options",
        "release",
        "reporter",
        "wrapped",
    )

    def __init__(self, app: Celery, options: Options, kwargs: Mapping[str, object] | None = None) -> None:
        self.app = app
        self.options = options
        self.kwargs = dict(kwargs or {})  # what configure() was given: the worker start resolves again
        self.release = Release.of(options)
        for endpoint in options.endpoints:
            route_through_proxy(endpoint, options.proxy_host)
        self.minutes = counts.minutes_for(self.release)  # the live counters the wrapper counts in
        self.excluded = options.task_excluded()
        self.active = True
        prefix = options.queue_prefix
        # no thread until something is sent
        self.reporter = Reporter(
            options,
            self.release,
            lambda payloads: spool_payloads(app, payloads, prefix, self.reporter.lost.give_back),
        )
        # (task, owner, attribute, original) for every wrapper installed (hooks/instrument.py)
        self.wrapped: list[tuple[Task, Any, str, Any]] = []


_states: dict[Celery, AppState] = {}
_lock = threading.Lock()


def state_for(app: object) -> AppState | None:
    """The state of *app*, if it is configured (one dict lookup: the wrapper's hot path uses it)."""
    return _states.get(app)


def states() -> list[AppState]:
    """Every configured app's state, oldest first (a copy: safe to iterate while others change it)."""
    return list(_states.values())


def add(state: AppState) -> None:
    with _lock:
        _states[state.app] = state


def remove(app: Celery) -> AppState | None:
    with _lock:
        return _states.pop(app, None)


def current_reporter() -> tuple[Reporter | None, Task | None, Context | None]:
    """The reporter of the task running here (else of the last configured app), the task and its request."""
    task = get_current_task()
    state = _states.get(task.app) if task is not None else None
    if state is not None and task is not None:
        return state.reporter, task, task.request_stack.top
    latest = states()
    if latest:
        return latest[-1].reporter, None, None
    return None, None, None


def _flush_targets() -> list[FlushTarget]:
    return [
        FlushTarget(
            state.app,
            [state.release],
            state.options.sends and bool(state.options.api_key),
            state.options.queue_prefix,
            state.options.session_delivery_interval,
            state.reporter.lost,
        )
        for state in states()
    ]


def _flush_interval() -> float:
    intervals = [state.options.session_flush_interval for state in states()]
    return min(intervals) if intervals else 1.0


#: The process's flusher: started by the first session counted (in this process or a forked child).
flusher = Flusher(_flush_targets, _flush_interval)
counts.on_first_count(flusher.start)
