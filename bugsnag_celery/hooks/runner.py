"""The task wrapper: what runs around a task's body, so that the run is a session.

The wrapper opens the task run's session, runs the body and restores the previous
session in a ``finally``: one ContextVar set and reset and one counter update, in the
thread or greenlet that runs the task. It is the success path -- a few microseconds per
task -- so every name it uses is bound when it is built, not looked up per run.
Installing it on a task (and taking it off) is ``instrument.py``'s; making it look like
the callable it replaces is ``disguise.py``'s; ``build_tracer`` calling for both is
``tracer_hook.py``'s.

What the wrapper must not change is anything a task, Celery or a library can observe:
it adds one frame to the stack and nothing else (a failure's traceback, from Python 3.11,
is plain Celery's: see ``_drop_own_frame``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Token
from time import time
from types import CodeType, FrameType
from typing import Any

from celery import Task

from ..registry import AppState
from ..reporting.reporter import hide_frames_of
from ..sessions import counts
from ..sessions.current import CURRENT, Session
from .failures import report_failure
from .modes import OPT_OUT, TRACK
from .official import run_scope

__all__ = ["session_runner", "call_runner", "set_session_clock", "WRAPPER_CODES"]

#: What a run's session start is read from; see :func:`set_session_clock`.
_clock: Callable[[], float] = time


def set_session_clock(clock: Callable[[], float]) -> None:
    """Read the start of every run's session from *clock* (seconds since the epoch) instead.

    For tests that need sessions in several minutes without waiting for them
    (``tests/support/apps/session_app.py``). The clock is bound into a wrapper when the wrapper is
    built, never looked up per run, so it costs a run nothing -- and it applies to tasks
    wrapped after the call: call it before the first task runs.
    """
    global _clock
    _clock = clock


# --------------------------------------------------------------------------- the wrapper
#
# The wrappers below read no global name: everything they use is a closure variable, bound
# when the wrapper is built (the clock and ``report_failure`` included). That lets
# ``disguise`` re-create them with the *task's* globals, so ``typing.get_type_hints`` and
# anything else that reads ``__globals__`` resolve the task's names exactly as without us.


def _run_hooks(
    task: Task, state: AppState, mode: str
) -> tuple[Callable[[], Token[Session | None]], Callable[[BaseException], None]]:
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
    current, session, now, report, tick = CURRENT, Session, _clock, report_failure, next
    set_current, get_current = current.set, current.get
    release, minutes, open_minute = state.release, state.minutes, counts.open_minute
    local, storage = _request_storage(request_stack)
    fast = storage is not None

    if mode == TRACK:

        def enter() -> Token[Session | None]:
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
                        counter, cells, cell = minutes.get(minute) or open_minute(release, minute)
                        cells[cell] = tick(counter)  # counts.py: no lock; the ledger outlives us
                        return set_current(session(release, started, request))
                    return set_current(None)
            # ``task()`` called as a plain function (or the app unconfigured): not a task
            # run, no new session; the caller's stays current.
            return set_current(get_current())

    else:
        # OPT_OUT: no session during the run. MANUAL: the user's calls decide; only make
        # sure no session started inside outlives the run.
        opt_out = mode == OPT_OUT

        def enter() -> Token[Session | None]:
            return set_current(None if opt_out else get_current())

    def failed(exc: BaseException) -> None:
        caller = _drop_own_frame(exc)
        request = request_stack.top
        if state.active and request is not None and not request.called_directly:
            report(task, state, exc, caller)

    return enter, failed


def _drop_own_frame(exc: BaseException) -> FrameType | None:
    """Take the wrapper's frame off the head of *exc*'s traceback before it is re-raised;
    return the frame that called the wrapper (where Celery's traceback of the failure starts:
    the official client's rules add it, and finding it from here costs one frame object).

    The exception passed through the wrapper, so its traceback starts with the wrapper's
    frame; on Python 3.11+ a bare ``raise`` re-raises with ``exc.__traceback__`` as it is
    then, so Celery (and the worker log, and the user's ``task_failure`` handlers) see the
    traceback of plain Celery. It also saves the failure path what each frame costs there:
    billiard's ``ExceptionInfo`` copies every frame's ``co_positions()`` and ``traceback``
    parses each frame's line to place its carets. Before 3.11 the re-raise restores the
    traceback from when the handler was entered: the frame stays (and costs less there).
    """
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code in WRAPPER_CODES:
        exc.__traceback__ = tb.tb_next
        return tb.tb_frame.f_back
    return None


def _request_storage(request_stack: object) -> tuple[Any, Any]:
    """The thread-local storage behind Celery's ``LocalStack`` (its ``Local``), if it is one.

    ``request_stack.top`` is a property that reads ``self._local.stack`` through
    ``Local.__getattr__``: two Python calls, ~0.7 us of the ~4 us a session costs per run.
    Reading ``local.__storage__[local.__ident_func__()]["stack"][-1]`` is what they do,
    without the calls (the ident function is read on every run, since a ``LocalManager`` may
    replace it; greenlet idents under gevent included). Only for exactly Celery's classes
    (``_LocalStack`` over ``Local``, the same in Celery 5.3 to 5.7); anything else -- the
    ``threading.local`` stack of ``USE_FAST_LOCALS``, a subclass -- goes through ``top``.
    (Both are ``Any``: Celery's private, untyped classes, read in the closure above.)
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


def session_runner(
    task: Task, state: AppState, call: Callable[..., object], mode: str
) -> Callable[..., object]:
    """Build the function that runs *call* (the task body) inside the run's session.

    For a bound ``run`` the wrapper is bound to the task too, and *call* is the function,
    so ``self`` passes through as the first argument.
    """
    enter, failed = _run_hooks(task, state, mode)
    reset = CURRENT.reset
    base_exception = BaseException
    scope = run_scope()

    if scope is None:

        def run_in_session(*args: object, **kwargs: object) -> object:
            token = enter()
            try:
                return call(*args, **kwargs)
            except base_exception as exc:
                failed(exc)
                raise
            finally:
                reset(token)

    else:  # the official client adopted: the run's own breadcrumbs, flags, request data
        start_scope, end_scope = scope.start, scope.end

        def run_in_session(*args: object, **kwargs: object) -> object:
            token = enter()
            scoped = start_scope()
            try:
                return call(*args, **kwargs)
            except base_exception as exc:
                failed(exc)
                raise
            finally:
                end_scope(scoped)
                reset(token)

    return run_in_session


def call_runner(
    task: Task, state: AppState, call: Callable[..., object], fallback: Callable[..., object], mode: str
) -> Callable[..., object]:
    """The same, as a custom ``__call__`` of the task's class: one frame, not two.

    The class can be the base of other tasks (or have other instances), so the wrapper
    dispatches on ``self``: *task* runs in its session; any other instance goes on to
    *fallback*, what the class resolved ``__call__`` to before (the original, or the
    wrapper of another instrumented instance).
    """
    enter, failed = _run_hooks(task, state, mode)
    reset = CURRENT.reset
    base_exception = BaseException
    scope = run_scope()

    if scope is None:

        def call_in_session(self: object, *args: object, **kwargs: object) -> object:
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

    else:  # the official client adopted: the run's own breadcrumbs, flags, request data
        start_scope, end_scope = scope.start, scope.end

        def call_in_session(self: object, *args: object, **kwargs: object) -> object:
            if self is not task:
                return fallback(self, *args, **kwargs)
            token = enter()
            scoped = start_scope()
            try:
                return call(self, *args, **kwargs)
            except base_exception as exc:
                failed(exc)
                raise
            finally:
                end_scope(scoped)
                reset(token)

    return call_in_session


#: The code of the two wrappers above (every wrapper built shares its def's code object).
#: Found by name, not asserted: an import must never fail over this (the traceback tests
#: in tests/hooks/test_compat_tasks.py say whether the frame is dropped).
WRAPPER_CODES: frozenset[CodeType] = frozenset(
    c for runner in (session_runner, call_runner) for c in runner.__code__.co_consts
    if isinstance(c, CodeType) and c.co_name in ("run_in_session", "call_in_session")
)  # fmt: skip

# A wrapper runs with its task's globals (``disguise``), so its frames carry the task's
# module name: the reporter, which hides our modules' frames, is told their code instead.
hide_frames_of(WRAPPER_CODES)
