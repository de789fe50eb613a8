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
In a worker every task takes the ``__call__`` path: Celery's stack protection replaces
``Task.__call__`` there, which ``task_has_custom`` counts as custom.

What the wrapper must not change is anything a task, Celery or a library can observe:
it adds one frame to the stack and nothing else (a failure's traceback, from Python 3.11,
is plain Celery's: see ``_drop_own_frame``). ``task.run`` keeps its kind (a bound
method stays one), its signature (Celery 5.7's ``Task.retry`` reads it), identity,
annotations, globals and ``__wrapped__``; a replaced ``__call__`` likewise
(``tests/test_compat_tasks.py`` and ``tests/test_compat_worker.py`` compare with plain Celery).
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import weakref
from collections.abc import Callable
from time import time as _now
from types import CodeType, FunctionType, MethodType
from typing import Any, cast

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
#
# The wrappers below read no global name: everything they use is a closure variable, bound
# when the wrapper is built (``_now`` and ``report_failure`` included). That lets
# ``_disguise`` re-create them with the *task's* globals, so ``typing.get_type_hints`` and
# anything else that reads ``__globals__`` resolve the task's names exactly as without us.


def _run_hooks(
    task: Task, state: AppState, mode: str
) -> tuple[Callable[[], Any], Callable[[BaseException], None]]:
    """What happens around a run of *task*: ``enter()`` before (returns the ContextVar token
    to reset after), ``failed(exc)`` when an exception escapes the body.

    Kept out of the wrappers themselves for the failure path's sake: the wrapper's frame is
    in every traceback of a failing run, and Celery (billiard's ``ExceptionInfo`` copies
    every frame's ``co_positions()``; ``traceback`` walks them to place the carets) pays
    for each instruction of each frame's code on every failure. A wrapper of seven lines
    has a fifth of the instructions of one with this logic inline (measured: ~60 us less
    per failing run); the success path pays one function call (~0.05 us) for it.

    ``failed`` reports the exception in the process that ran the body, while the run's
    session is still current and the exception is the original object (not the
    picklable substitute Celery hands its signals) with its real traceback -- unless the
    task was called as a plain function (``task()``: its caller's exception to report).
    """
    request_stack = task.request_stack
    track_eager = state.options.track_eager
    current, session, now, report, tick = CURRENT, Session, _now, report_failure, next
    set_current, get_current = current.set, current.get
    release, minutes, open_minute = state.release, state.minutes, counts.open_minute
    local, storage = _request_storage(request_stack)
    fast = storage is not None

    if mode == TRACK:

        def enter() -> Any:
            if state.active:
                if fast:  # request_stack.top, read as Celery's own property reads it
                    try:
                        request = storage[local.__ident_func__()]["stack"][-1]
                    except (KeyError, IndexError):
                        request = None
                else:
                    request = request_stack.top
                if request is not None and not request.called_directly:
                    if track_eager or not request.is_eager:
                        started = now()
                        minute = started // 60
                        tick(minutes.get(minute) or open_minute(release, minute))  # counts.py: no lock
                        return set_current(session(release, started, request.id, request.retries or 0))
                    return set_current(None)
            # ``task()`` called as a plain function (or the app unconfigured): not a task
            # run, no new session; the caller's stays current.
            return set_current(get_current())

    else:
        # OPT_OUT: no session during the run. MANUAL: the user's calls decide; only make
        # sure no session started inside outlives the run.
        opt_out = mode == OPT_OUT

        def enter() -> Any:
            return set_current(None if opt_out else get_current())

    def failed(exc: BaseException) -> None:
        _drop_own_frame(exc)
        request = request_stack.top
        if state.active and request is not None and not request.called_directly:
            report(task, state, exc)

    return enter, failed


def _drop_own_frame(exc: BaseException) -> None:
    """Take the wrapper's frame off the head of *exc*'s traceback before it is re-raised.

    The exception passed through the wrapper, so its traceback starts with the wrapper's
    frame; on Python 3.11+ a bare ``raise`` re-raises with ``exc.__traceback__`` as it is
    then, so Celery (and the worker log, and the user's ``task_failure`` handlers) see the
    traceback of plain Celery. It also saves the failure path what each frame costs there:
    billiard's ``ExceptionInfo`` copies every frame's ``co_positions()`` and ``traceback``
    parses each frame's line to place its carets. Before 3.11 the re-raise restores the
    traceback from when the handler was entered: the frame stays (and costs less there).
    """
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code in _WRAPPER_CODES:
        exc.__traceback__ = tb.tb_next


def _request_storage(request_stack: Any) -> tuple[Any, Any]:
    """The thread-local storage behind Celery's ``LocalStack`` (its ``Local``), if it is one.

    ``request_stack.top`` is a property that reads ``self._local.stack`` through
    ``Local.__getattr__``: two Python calls, ~0.7 us of the ~4 us a session costs per run.
    Reading ``local.__storage__[local.__ident_func__()]["stack"][-1]`` is what they do,
    without the calls (the ident function is read on every run, since a ``LocalManager`` may
    replace it; greenlet idents under gevent included). Only for exactly Celery's classes
    (``_LocalStack`` over ``Local``, the same in Celery 5.3 to 5.7); anything else -- the
    ``threading.local`` stack of ``USE_FAST_LOCALS``, a subclass -- goes through ``top``.
    """
    from celery.utils import threads

    local: Any = getattr(request_stack, "_local", None)
    stack_type, local_type = getattr(threads, "_LocalStack", None), getattr(threads, "Local", None)
    if stack_type is None or type(request_stack) is not stack_type or type(local) is not local_type:
        return None, None
    try:
        storage = local.__storage__
        local.__ident_func__  # noqa: B018  # both slots exist
    except AttributeError:
        return None, None
    return (local, storage) if isinstance(storage, dict) else (None, None)


def _session_runner(task: Task, state: AppState, call: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """Build the function that runs *call* (the task body) inside the run's session.

    For a bound ``run`` the wrapper is bound to the task too, and *call* is the function,
    so ``self`` passes through as the first argument.
    """
    enter, failed = _run_hooks(task, state, mode)
    reset = CURRENT.reset
    base_exception = BaseException

    def run_in_session(*args: Any, **kwargs: Any) -> Any:
        token = enter()
        try:
            return call(*args, **kwargs)
        except base_exception as exc:
            failed(exc)
            raise
        finally:
            reset(token)

    return run_in_session


def _call_runner(
    task: Task, state: AppState, call: Callable[..., Any], fallback: Callable[..., Any], mode: str
) -> Callable[..., Any]:
    """The same, as a custom ``__call__`` of the task's class: one frame, not two.

    The class can be the base of other tasks (or have other instances), so the wrapper
    dispatches on ``self``: *task* runs in its session; any other instance goes on to
    *fallback*, what the class resolved ``__call__`` to before (the original, or the
    wrapper of another instrumented instance).
    """
    enter, failed = _run_hooks(task, state, mode)
    reset = CURRENT.reset
    base_exception = BaseException

    def call_in_session(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self is not task:
            return fallback(self, *args, **kwargs)
        token = enter()
        try:
            return call(self, *args, **kwargs)
        except base_exception as exc:
            failed(exc)
            raise
        finally:
            reset(token)

    return call_in_session


# The code of the two wrappers above (every wrapper built shares its def's code object).
# Found by name, not asserted: an import must never fail over this (the traceback tests
# in tests/test_compat_tasks.py say whether the frame is dropped).
_WRAPPER_CODES = frozenset(
    c for runner in (_session_runner, _call_runner) for c in runner.__code__.co_consts
    if isinstance(c, CodeType) and c.co_name in ("run_in_session", "call_in_session")
)  # fmt: skip

# What a wrapper copies from the callable it replaces (functools.WRAPPER_ASSIGNMENTS, plus
# ``__type_params__`` on 3.12+), so that nothing that reads them can tell the two apart.
_IDENTITY = ("__module__", "__name__", "__qualname__", "__doc__", "__annotations__", "__type_params__")


def _disguise(wrapper: Callable[..., Any], original: Any) -> Callable[..., Any]:
    """*wrapper*, looking like *original* to introspection.

    Like ``functools.update_wrapper``, except for ``__wrapped__``: plain Celery's
    ``task.run`` has none (unless the task function itself has one, which is copied with
    its ``__dict__``), so neither does ours -- ``inspect.unwrap(task.run)`` and
    ``task.run.__wrapped__`` give what they give without us. The signature comes from
    ``__signature__`` instead (Celery 5.7's ``Task.retry`` reads ``inspect.signature(task.run)``
    to merge positional and keyword arguments), and the globals are the original's.
    """
    fn: Any = wrapper
    globals_ = getattr(original, "__globals__", None)
    if isinstance(globals_, dict) and isinstance(wrapper, FunctionType):
        fn = FunctionType(wrapper.__code__, globals_, wrapper.__name__, None, wrapper.__closure__)
    for attr in _IDENTITY:
        try:
            setattr(fn, attr, getattr(original, attr))
        except (AttributeError, TypeError):
            pass
    fn.__dict__.update(getattr(original, "__dict__", {}))
    try:
        fn.__signature__ = inspect.signature(original)
    except (TypeError, ValueError):
        # No signature to be had: then inspect.signature(wrapper) fails as the original's does.
        fn.__wrapped__ = original
    return cast("Callable[..., Any]", fn)


# Our __call__ wrappers -> the original they call, so that a subclass's wrapper calls the
# original, never another wrapper (kept here: nothing is added to the class or the function).
_originals: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


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
            # covers the custom __call__ too.
            owner: Any = type(task)
            original = owner.__dict__.get("__call__", registry.MISSING)
            resolved = owner.__call__
            unbound = _originals.get(resolved, resolved)
            wrapper = _disguise(_call_runner(task, state, unbound, resolved, mode), unbound)
            _originals[wrapper] = unbound
            owner.__call__ = wrapper
            state.wrapped.append((task, owner, "__call__", original))
        else:
            original = task.__dict__.get("run", registry.MISSING)
            run = task.run
            bound = isinstance(run, MethodType) and run.__self__ is task
            if bound:
                # ``bind=True`` or a class's ``run``: a bound method stays a bound method.
                func = run.__func__
                task.run = MethodType(_disguise(_session_runner(task, state, func, mode), func), task)
            else:
                task.run = _disguise(_session_runner(task, state, run, mode), run)
            state.wrapped.append((task, task, "run", original))
        task.__dict__[WRAPPED_ATTR] = state
    except Exception:  # never break a task over instrumentation
        logger.exception("bugsnag_celery: could not instrument task %r", getattr(task, "name", task))


def _generic_hook(original: Callable[..., Any]) -> Callable[..., Any]:
    """The hook for any ``build_tracer``: instrument the task, then build its tracer."""

    def build_tracer(name: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
        if WRAPPED_ATTR not in task.__dict__:
            instrument(task, kwargs.get("app"))
        return original(name, task, *args, **kwargs)

    return build_tracer


# Celery's build_tracer parameters, the same from 5.3 to 5.7.
_BUILD_TRACER_PARAMS = (
    "name", "task", "loader", "hostname", "store_errors", "Info", "eager", "propagate", "app",
    "monotonic", "trace_ok_t", "IGNORE_STATES",
)  # fmt: skip


def _exact_hook(original: Callable[..., Any]) -> Callable[..., Any] | None:
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
        name: Any, task: Any, loader: Any = None, hostname: Any = None, store_errors: Any = None,
        Info: Any = None, eager: Any = None, propagate: Any = None, app: Any = None,
        monotonic: Any = None, trace_ok_t: Any = None, IGNORE_STATES: Any = None,
    ) -> Any:  # fmt: skip
        if WRAPPED_ATTR not in task.__dict__:
            instrument(task, app)
        return original(
            name, task, loader, hostname, store_errors, Info, eager, propagate, app, monotonic,
            trace_ok_t, IGNORE_STATES,
        )  # fmt: skip

    build_tracer.__defaults__ = defaults
    return build_tracer


_hook: Callable[..., Any] | None = None  # what build_tracer is while the hook is installed


def patch_consumer() -> None:
    consumer = sys.modules.get("celery.worker.consumer.consumer")
    if _hook is not None and consumer is not None and getattr(consumer, "build_tracer", None) is not _hook:
        consumer.build_tracer = _hook  # type: ignore[attr-defined]


def install_hook() -> None:
    global _original_build_tracer, _hook
    with _hook_lock:
        if _original_build_tracer is None:
            _original_build_tracer = original = _trace.build_tracer
            _hook = _exact_hook(original) or _generic_hook(original)
            _trace.build_tracer = _hook
        patch_consumer()


def remove_hook() -> None:
    global _original_build_tracer, _hook
    with _hook_lock:
        if _original_build_tracer is None:
            return
        _trace.build_tracer = _original_build_tracer
        consumer = sys.modules.get("celery.worker.consumer.consumer")
        if consumer is not None and getattr(consumer, "build_tracer", None) is _hook:
            consumer.build_tracer = _original_build_tracer  # type: ignore[attr-defined]
        _original_build_tracer = _hook = None
