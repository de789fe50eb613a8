"""The task wrapper: every task run of a configured app runs inside its session.

Why not ``task_prerun``/``task_postrun``? Celery's ``Signal.send`` takes a lock and
rebuilds its receiver list on every call: two signals cost 2-5 us per task here, the
whole budget. Instead, like Sentry's integration, we hook ``build_tracer`` -- the one
place where Celery decides which callable a task run invokes -- and wrap the task's
``run`` (or its custom ``__call__``) once per task. The wrapper opens the task run's
session, runs the body and restores the previous session in a ``finally``: one
ContextVar set and reset and one counter update, in the thread or greenlet that runs
the task.

``build_tracer`` is called by ``task.apply()`` on every eager run, by prefork children
when they start, and by the consumer under the other pools; the consumer imported it
by name, so its module is patched too (at ``worker_init``, before it builds tracers).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from functools import partial
from time import time as _now
from typing import Any

from celery import Task
from celery.app import trace as _trace

from .. import registry
from ..registry import AppState
from ..sessions import counts
from ..sessions.current import CURRENT, Session
from .failures import report_failure
from .modes import OPT_OUT, TRACK, mode_for

__all__ = ["instrument", "install_hook", "remove_hook", "patch_consumer", "WRAPPED_ATTR"]

logger = logging.getLogger("bugsnag_celery")

#: Set in a task's ``__dict__`` (to its AppState) once its wrapper is installed.
WRAPPED_ATTR = "_bugsnag_celery_wrapped"
_hook_lock = threading.Lock()
_original_build_tracer: Callable[..., Any] | None = None


# --------------------------------------------------------------------------- the wrapper


def _session_runner(task: Task, state: AppState, call: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """Build the function that runs *call* (the task body) inside the run's session.

    Exceptions escaping the body are reported here, in the process that ran it, while
    the run's session is still current and the exception is the original object (not
    the picklable substitute Celery hands its signals) with its real traceback.
    """
    request_stack = task.request_stack
    track_eager = state.options.track_eager
    current = CURRENT
    add_to_buckets = counts.add_to_buckets

    if mode == TRACK:

        def run_in_session(*args: Any, **kwargs: Any) -> Any:
            if not state.active:
                return call(*args, **kwargs)
            request = request_stack.top
            if request is None or request.called_directly:
                # ``task()`` called as a plain function: not a task run, no new session,
                # and its exception is its caller's to report.
                token = current.set(current.get())
                try:
                    return call(*args, **kwargs)
                finally:
                    current.reset(token)
            if not track_eager and request.is_eager:
                token = current.set(None)
            else:
                started = _now()
                token = current.set(Session(state.release, started, request.id, request.retries or 0))
                add_to_buckets(state.buckets, started)
            try:
                return call(*args, **kwargs)
            except BaseException as exc:
                report_failure(task, state, exc)
                raise
            finally:
                current.reset(token)

    else:
        # OPT_OUT: no session during the run. MANUAL: the user's calls decide; only make
        # sure no session started inside outlives the run.
        opt_out = mode == OPT_OUT

        def run_in_session(*args: Any, **kwargs: Any) -> Any:
            token = current.set(None if opt_out else current.get())
            try:
                return call(*args, **kwargs)
            except BaseException as exc:
                request = request_stack.top
                if state.active and request is not None and not request.called_directly:
                    report_failure(task, state, exc)
                raise
            finally:
                current.reset(token)

    return run_in_session


def instrument(task: Task, app: Any = None) -> None:
    """Wrap *task* once, if its app is configured. Called for every tracer built."""
    if WRAPPED_ATTR in task.__dict__:
        return
    try:
        state = registry.state_for(app if app is not None else task._get_app())
        if state is None or not state.active:
            return
        mode = mode_for(task, state)
        if _trace.task_has_custom(task, "__call__"):
            # The tracer calls ``task(...)``: wrap the class's __call__ so the session
            # covers the custom __call__ too. A task class can be the base of another
            # registered task, so the wrapper dispatches on ``self`` and always calls the
            # original (never another of our wrappers) for instances that are not ``task``.
            owner: Any = type(task)
            original = owner.__dict__.get("__call__", registry.MISSING)
            unbound = owner.__call__
            unbound = getattr(unbound, "_bugsnag_original", unbound)
            inner = _session_runner(task, state, partial(unbound, task), mode)

            def call_in_session(self: Any, *args: Any, **kwargs: Any) -> Any:
                if self is task:
                    return inner(*args, **kwargs)
                return unbound(self, *args, **kwargs)

            call_in_session._bugsnag_original = unbound  # type: ignore[attr-defined]
            owner.__call__ = call_in_session
            state.wrapped.append((task, owner, "__call__", original))
        else:
            original = task.__dict__.get("run", registry.MISSING)
            task.run = _session_runner(task, state, task.run, mode)
            state.wrapped.append((task, task, "run", original))
        task.__dict__[WRAPPED_ATTR] = state
    except Exception:  # never break a task over instrumentation
        logger.exception("bugsnag_celery: could not instrument task %r", getattr(task, "name", task))


def _hooked_build_tracer(name: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
    if WRAPPED_ATTR not in task.__dict__:
        instrument(task, kwargs.get("app"))
    assert _original_build_tracer is not None
    return _original_build_tracer(name, task, *args, **kwargs)


def patch_consumer() -> None:
    consumer = sys.modules.get("celery.worker.consumer.consumer")
    if consumer is not None and getattr(consumer, "build_tracer", None) is not _hooked_build_tracer:
        consumer.build_tracer = _hooked_build_tracer  # type: ignore[attr-defined]


def install_hook() -> None:
    global _original_build_tracer
    with _hook_lock:
        if _original_build_tracer is None:
            _original_build_tracer = _trace.build_tracer
            _trace.build_tracer = _hooked_build_tracer
        patch_consumer()


def remove_hook() -> None:
    global _original_build_tracer
    with _hook_lock:
        if _original_build_tracer is None:
            return
        _trace.build_tracer = _original_build_tracer
        consumer = sys.modules.get("celery.worker.consumer.consumer")
        if consumer is not None and getattr(consumer, "build_tracer", None) is _hooked_build_tracer:
            consumer.build_tracer = _original_build_tracer  # type: ignore[attr-defined]
        _original_build_tracer = None
