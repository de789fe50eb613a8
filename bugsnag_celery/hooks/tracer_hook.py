"""The ``build_tracer`` hook: installed by ``configure()``, removed by the last ``unconfigure()``.

Why not ``task_prerun``/``task_postrun``? Celery's ``Signal.send`` takes a lock and
rebuilds its receiver list on every call: two signals cost 2-5 us per task here, the
whole budget. Instead, like Sentry's integration, we hook ``build_tracer`` -- the one
place where Celery decides which callable a task run invokes -- and wrap the task's
``run`` (or its custom ``__call__``) once per task (``instrument.py``).

``build_tracer`` is called by ``task.apply()`` on every eager run, by prefork children
when they start, and by the consumer under the other pools; the consumer imported it
by name, so its module is patched too (at ``worker_init``, before it builds tracers).
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Callable

from celery import Celery, Task
from celery.app import trace

from .instrument import WRAPPED_ATTR, instrument

__all__ = ["install_hook", "remove_hook", "patch_consumer"]

_CONSUMER = "celery.worker.consumer.consumer"
_hook_lock = threading.Lock()
_original_build_tracer: Callable[..., object] | None = None
_hook: Callable[..., object] | None = None  # what build_tracer is while the hook is installed


def _generic_hook(original: Callable[..., object]) -> Callable[..., object]:
    """The hook for any ``build_tracer``: instrument the task, then build its tracer."""

    def build_tracer(name: str, task: Task, *args: object, **kwargs: object) -> object:
        if WRAPPED_ATTR not in task.__dict__:
            instrument(task, kwargs.get("app"))
        return original(name, task, *args, **kwargs)

    return build_tracer


# Celery's build_tracer parameters, the same from 5.3 to 5.7.
_BUILD_TRACER_PARAMS = (
    "name", "task", "loader", "hostname", "store_errors", "Info", "eager", "propagate", "app",
    "monotonic", "trace_ok_t", "IGNORE_STATES",
)  # fmt: skip


def _exact_hook(original: Callable[..., object]) -> Callable[..., object] | None:
    """The hook with ``build_tracer``'s own parameters and defaults, if they are the known ones.

    ``task.apply()`` builds a tracer on every eager run, so the hook is on the success
    path. Taking ``*args, **kwargs`` and passing them on costs a dict and its unpacking per
    call: ~3,800 of the ~15,000 CPU instructions bugsnag-celery added to an eager run
    (counted under valgrind). With the same parameters, the call is forwarded positionally;
    the defaults are the original's own objects, so every call means what it meant.
    """
    try:
        params = list(inspect.signature(original, follow_wrapped=False).parameters.values())
    except (TypeError, ValueError):
        return None
    defaults = getattr(original, "__defaults__", None)
    if (
        tuple(p.name for p in params) != _BUILD_TRACER_PARAMS
        or any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
        or defaults is None
        or len(defaults) != len(params) - 2
    ):
        return None

    def build_tracer(
        name: str, task: Task, loader: object = None, hostname: object = None, store_errors: object = None,
        Info: object = None, eager: object = None, propagate: object = None, app: Celery | None = None,
        monotonic: object = None, trace_ok_t: object = None, IGNORE_STATES: object = None,
    ) -> object:  # fmt: skip
        if WRAPPED_ATTR not in task.__dict__:
            instrument(task, app)
        return original(
            name, task, loader, hostname, store_errors, Info, eager, propagate, app, monotonic,
            trace_ok_t, IGNORE_STATES,
        )  # fmt: skip

    build_tracer.__defaults__ = defaults
    return build_tracer


def patch_consumer() -> None:
    """Point the worker consumer's imported name at the hook (it builds the tracers of the
    non-prefork pools); a no-op until the hook is installed and the consumer imported."""
    consumer = sys.modules.get(_CONSUMER)
    if _hook is not None and consumer is not None and getattr(consumer, "build_tracer", None) is not _hook:
        consumer.build_tracer = _hook  # type: ignore[attr-defined]


def install_hook() -> None:
    global _original_build_tracer, _hook
    with _hook_lock:
        if _original_build_tracer is None:
            _original_build_tracer = original = trace.build_tracer
            _hook = _exact_hook(original) or _generic_hook(original)
            trace.build_tracer = _hook
        patch_consumer()


def remove_hook() -> None:
    """Undo :func:`install_hook`: ``build_tracer`` is Celery's again, in both places."""
    global _original_build_tracer, _hook
    with _hook_lock:
        if _original_build_tracer is None:
            return
        trace.build_tracer = _original_build_tracer
        consumer = sys.modules.get(_CONSUMER)
        if consumer is not None and getattr(consumer, "build_tracer", None) is _hook:
            consumer.build_tracer = _original_build_tracer  # type: ignore[attr-defined]
        _original_build_tracer = _hook = None
