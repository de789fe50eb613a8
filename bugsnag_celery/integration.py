"""Wiring into Celery: ``configure(app)``, ``unconfigure(app)`` and ``@no_session``.

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
from typing import Any, TypeVar

from celery import Celery, Task, signals
from celery._state import get_current_task
from celery.app import trace as _trace
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded, WorkerLostError

from . import counts, notifier, sessions
from .config import Options, resolve_options
from .counts import Release
from .notifier import UNHANDLED_REASON, Reporter, Seen, task_metadata
from .session_delivery import DELIVER_TASK, Flusher, deliver_session_counts, now_iso, record_status
from .sessions import Session, _current, format_timestamp, task_session_id

__all__ = ["configure", "unconfigure", "no_session", "is_configured", "options_for", "flush", "deliver"]

logger = logging.getLogger("bugsnag_celery")

F = TypeVar("F")

_NO_SESSION_ATTR = "__bugsnag_no_session__"
_WRAPPED_ATTR = "_bugsnag_celery_wrapped"
# Celery's own machinery (chord_unlock polls by retrying) and our own tasks are not
# user work: counting them would inflate the session count.
_INTERNAL_PREFIXES = ("bugsnag_celery.", "celery.")

# How a wrapped task run treats sessions.
TRACK = "track"  # open a new session for the run
OPT_OUT = "opt-out"  # no session during the run (@no_session, exclude_tasks, internal)
MANUAL = "manual"  # auto_track_sessions=False: leave the session to the user's calls


class AppState:
    """Everything ``configure()`` set up for one app, so ``unconfigure()`` can undo it."""

    __slots__ = ("active", "app", "buckets", "excluded", "options", "release", "reporter", "wrapped")

    def __init__(self, app: Celery, options: Options) -> None:
        self.app = app
        self.options = options
        self.release = Release(options.app_version, options.release_stage, options.app_type, options.hostname)
        self.buckets = counts.buckets_for(self.release)
        self.excluded = options.task_excluded()
        self.active = True
        self.reporter = Reporter(app, options, self.release)  # no thread until something is sent
        # (task, owner, attribute, original value or _MISSING) for every wrapper installed
        self.wrapped: list[tuple[Task, Any, str, Any]] = []


_MISSING = object()
_states: dict[Celery, AppState] = {}
_hook_lock = threading.Lock()
_original_build_tracer: Callable[..., Any] | None = None


# --------------------------------------------------------------------------- opting out


def no_session(task: F) -> F:
    """Opt a task out of session tracking: it never opens a session and never counts.

    Works above or below ``@app.task``. Errors inside it are still reported, without
    a session, so they do not count against stability.
    """
    target: Any = task
    try:
        # A lazy task (``@app.task`` before the app is finalized) is a PromiseProxy:
        # mark the function it will build from rather than forcing it into existence.
        pending = object.__getattribute__(task, "__pending__")
    except AttributeError:
        pending = None
    if pending is not None:
        try:
            target = object.__getattribute__(task, "__args__")[0]
        except (AttributeError, IndexError):  # pragma: no cover - unknown proxy shape
            target = task
    setattr(target, _NO_SESSION_ATTR, True)
    return task


def _opted_out(task: Task) -> bool:
    for candidate in (task, getattr(task, "run", None), type(task).__dict__.get("__wrapped__")):
        candidate = getattr(candidate, "__func__", candidate)  # staticmethod/bound method
        if candidate is not None and getattr(candidate, _NO_SESSION_ATTR, False):
            return True
    return False


def _mode_for(task: Task, state: AppState) -> str:
    name = task.name or ""
    if name.startswith(_INTERNAL_PREFIXES) or _opted_out(task) or state.excluded(name):
        return OPT_OUT
    return TRACK if state.options.auto_track_sessions else MANUAL


# --------------------------------------------------------------------------- the wrapper


def _report_failure(task: Task, state: AppState, exc: BaseException) -> None:
    """Report an exception that escaped a task body (in the process that ran it). Never raises."""
    try:
        opts = state.options
        reporter = state.reporter
        if isinstance(exc, Retry):
            cause = exc.exc
            if opts.report_retries and isinstance(cause, BaseException):
                event = reporter.build_event(
                    cause, unhandled=False, severity="warning", severity_reason={"type": "handledException"},
                    context=task.name, session=_current.get(),
                    metadata={"task": task_metadata(task, task.request_stack.top, opts)},
                )  # fmt: skip
                reporter.send(event)
            return
        if isinstance(exc, (Ignore, Reject)) or not isinstance(exc, Exception):
            return  # control flow, or SystemExit/KeyboardInterrupt: not a task failure
        throws = getattr(task, "throws", ())
        if throws and isinstance(exc, throws):
            return  # expected errors, declared by the task
        event = reporter.build_event(
            exc, unhandled=True, severity="error", severity_reason=UNHANDLED_REASON, context=task.name,
            session=_current.get(), metadata={"task": task_metadata(task, task.request_stack.top, opts)},
        )  # fmt: skip
        reporter.send(event)
    except Exception:
        logger.exception("bugsnag_celery: could not report the failure of %r", getattr(task, "name", task))


def _session_runner(task: Task, state: AppState, call: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """Build the function that runs *call* (the task body) inside the run's session.

    Exceptions escaping the body are reported here, in the process that ran it, while
    the run's session is still current and the exception is the original object (not
    the picklable substitute Celery hands its signals) with its real traceback.
    """
    request_stack = task.request_stack
    track_eager = state.options.track_eager

    if mode == TRACK:

        def run_in_session(*args: Any, **kwargs: Any) -> Any:
            if not state.active:
                return call(*args, **kwargs)
            request = request_stack.top
            if request is None or request.called_directly:
                # ``task()`` called as a plain function: not a task run, no new session,
                # and its exception is its caller's to report.
                token = _current.set(_current.get())
                try:
                    return call(*args, **kwargs)
                finally:
                    _current.reset(token)
            if not track_eager and request.is_eager:
                token = _current.set(None)
            else:
                started = _now()
                token = _current.set(Session(state.release, started, request.id, request.retries or 0))
                # counts.add_to_buckets, inlined: this runs for every task run (the lock is
                # looked up each time: a forked child gets a new one).
                minute = int(started // 60)
                buckets = state.buckets
                with counts._lock:
                    buckets[minute] = buckets.get(minute, 0) + 1
                if not counts._watching:
                    counts._start_watch()
            try:
                return call(*args, **kwargs)
            except BaseException as exc:
                _report_failure(task, state, exc)
                raise
            finally:
                _current.reset(token)

    else:
        # OPT_OUT: no session during the run. MANUAL: the user's calls decide; only make
        # sure no session started inside outlives the run.
        opt_out = mode == OPT_OUT

        def run_in_session(*args: Any, **kwargs: Any) -> Any:
            token = _current.set(None if opt_out else _current.get())
            try:
                return call(*args, **kwargs)
            except BaseException as exc:
                request = request_stack.top
                if state.active and request is not None and not request.called_directly:
                    _report_failure(task, state, exc)
                raise
            finally:
                _current.reset(token)

    return run_in_session


def _instrument(task: Task, app: Any = None) -> None:
    """Wrap *task* once, if its app is configured. Called for every tracer built."""
    if _WRAPPED_ATTR in task.__dict__:
        return
    try:
        state = _states.get(app if app is not None else task._get_app())
        if state is None or not state.active:
            return
        mode = _mode_for(task, state)
        if _trace.task_has_custom(task, "__call__"):
            # The tracer calls ``task(...)``: wrap the class's __call__ so the session
            # covers the custom __call__ too. A task class can be the base of another
            # registered task, so the wrapper dispatches on ``self`` and always calls the
            # original (never another of our wrappers) for instances that are not ``task``.
            owner: Any = type(task)
            original = owner.__dict__.get("__call__", _MISSING)
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
            original = task.__dict__.get("run", _MISSING)
            task.run = _session_runner(task, state, task.run, mode)
            state.wrapped.append((task, task, "run", original))
        task.__dict__[_WRAPPED_ATTR] = state
    except Exception:  # never break a task over instrumentation
        logger.exception("bugsnag_celery: could not instrument task %r", getattr(task, "name", task))


def _hooked_build_tracer(name: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
    if _WRAPPED_ATTR not in task.__dict__:
        _instrument(task, kwargs.get("app"))
    assert _original_build_tracer is not None
    return _original_build_tracer(name, task, *args, **kwargs)


def _patch_consumer() -> None:
    consumer = sys.modules.get("celery.worker.consumer.consumer")
    if consumer is not None and getattr(consumer, "build_tracer", None) is not _hooked_build_tracer:
        consumer.build_tracer = _hooked_build_tracer  # type: ignore[attr-defined]


def _install_hook() -> None:
    global _original_build_tracer
    with _hook_lock:
        if _original_build_tracer is None:
            _original_build_tracer = _trace.build_tracer
            _trace.build_tracer = _hooked_build_tracer
        _patch_consumer()


def _remove_hook() -> None:
    global _original_build_tracer
    with _hook_lock:
        if _original_build_tracer is None:
            return
        _trace.build_tracer = _original_build_tracer
        consumer = sys.modules.get("celery.worker.consumer.consumer")
        if consumer is not None and getattr(consumer, "build_tracer", None) is _hooked_build_tracer:
            consumer.build_tracer = _original_build_tracer  # type: ignore[attr-defined]
        _original_build_tracer = None


# --------------------------------------------------------------------------- signals


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """Main process of ``celery worker``, before the consumer builds its tracers."""
    try:
        import celery.worker.consumer.consumer  # noqa: F401  (so that it can be patched)

        if _states:
            _patch_consumer()
            _patch_hard_timeout()
        pool = getattr(sender, "pool_cls", None)
        if pool is not None:
            notifier.worker_pool = pool if isinstance(pool, str) else getattr(pool, "__module__", str(pool))
            notifier.worker_pool = notifier.worker_pool.rsplit(".", 1)[-1]
        app = getattr(sender, "app", None)
        state = _states.get(app) if app is not None else None
        if state is not None and not state.options.api_key:
            logger.warning(
                "bugsnag_celery: no API key configured (api_key=, app.conf.bugsnag_api_key or "
                "BUGSNAG_API_KEY); sessions are counted but nothing will be sent to BugSnag"
            )
    except Exception:
        logger.exception("bugsnag_celery: worker_init handler failed")


def _patch_hard_timeout() -> None:
    """Let ``task_failure`` handlers see the request on a hard time limit.

    Celery's ``Request.on_failure`` pushes the run's context onto the task's request
    stack before sending ``task_failure`` (so handlers can read ``retries``), but
    ``Request.on_timeout`` does not. Without the attempt number, the main process could
    not name the session the child opened.
    """
    from celery.worker.request import Request

    original = Request.on_timeout
    if getattr(original, "_bugsnag_celery", False):
        return

    def on_timeout(self: Any, soft: bool, timeout: float) -> Any:
        if soft:
            return original(self, soft, timeout)
        self.task.request_stack.push(self._context)
        try:
            return original(self, soft, timeout)
        finally:
            self.task.request_stack.pop()

    on_timeout._bugsnag_celery = True  # type: ignore[attr-defined]
    Request.on_timeout = on_timeout


_main_seen = Seen()


def _on_task_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    traceback: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """Crashes only the worker's main process sees: a killed pool child, a hard time limit.

    Everything else was reported by the process that ran the task (see ``_report_failure``).
    """
    if not isinstance(exception, (WorkerLostError, TimeLimitExceeded)):
        return
    try:
        state = _states.get(sender.app) if sender is not None else None
        if state is None or not state.active or not task_id:
            return
        request = sender.request
        retries = (request.retries or 0) if getattr(request, "id", None) == task_id else 0
        if not _main_seen.add((task_id, retries)):
            return  # Celery fires task_failure twice for a hard limit on some versions
        session = None
        if _mode_for(sender, state) == TRACK and not (
            not state.options.track_eager and getattr(request, "is_eager", False)
        ):
            session = {
                "id": task_session_id(task_id, retries),
                "startedAt": format_timestamp(_now()),
                "events": {"handled": 0, "unhandled": 1},
            }
        text = traceback if isinstance(traceback, str) else getattr(einfo, "traceback", None)
        meta = task_metadata(sender, request, state.options) if getattr(request, "id", None) == task_id else {
            "id": task_id, "name": sender.name, "retries": retries}  # fmt: skip
        event = state.reporter.build_event(
            exception, unhandled=True, severity="error", severity_reason=UNHANDLED_REASON,
            context=sender.name, session=None, session_override=session, metadata={"task": meta},
            traceback_text=text if isinstance(text, str) else None,
        )  # fmt: skip
        state.reporter.send(event)
    except Exception:
        logger.exception("bugsnag_celery: could not report a crash seen by the worker")


def flush_events(timeout: float = 5.0) -> None:
    """Send (or spool) every event this process still holds, waiting at most *timeout*."""
    for state in list(_states.values()):
        try:
            state.reporter.sender.flush(timeout)
        except Exception:
            logger.exception("bugsnag_celery: flushing events failed")


def _on_process_shutdown(**_: Any) -> None:
    # Prefork children leave through os._exit right after this: atexit never runs.
    flush_events()
    try:
        _flusher.flush_once(wait=5.0)
    except Exception:
        logger.exception("bugsnag_celery: moving session counts at shutdown failed")


def _flush_targets() -> list[tuple[Celery, list[Release], bool, str]]:
    return [
        (
            state.app,
            [state.release],
            state.options.sends and bool(state.options.api_key),
            state.options.queue_prefix,
        )
        for state in list(_states.values())
    ]


def _flush_interval() -> float:
    intervals = [state.options.session_flush_interval for state in list(_states.values())]
    return min(intervals) if intervals else 1.0


_flusher = Flusher(_flush_targets, _flush_interval)
counts.on_first_count(_flusher.start)


def deliver(app: Celery) -> dict[str, Any]:
    """One delivery run: every session count on the broker, then every spooled event.

    What the periodic task ``bugsnag_celery.deliver_sessions`` does; safe to run in
    several processes at once (the broker hands each message to one of them).
    """
    from .spool import drain_spooled_events

    state = _states.get(app)
    if state is None:
        raise RuntimeError("bugsnag_celery.deliver: the app is not configured")
    opts = state.options
    status: dict[str, Any] = {"last_run": now_iso(), "hostname": opts.hostname}
    try:
        status["sessions"] = deliver_session_counts(
            app, api_key=opts.api_key if opts.sends else None, endpoint=opts.endpoints[1],
            enabled_release_stages=opts.enabled_release_stages, timeout=opts.delivery_timeout,
            prefix=opts.queue_prefix,
        )  # fmt: skip
        status["events"] = drain_spooled_events(app, timeout=opts.delivery_timeout, prefix=opts.queue_prefix)
        if status["sessions"]["retry"] or status["events"]["requeued"]:
            status["last_error"] = f"{now_iso()}: BugSnag unreachable or failing; kept for the next run"
        else:
            status["last_delivery"] = status["last_run"]
    except Exception as exc:
        status["last_error"] = f"{now_iso()}: {type(exc).__name__}: {exc}"
        logger.error("bugsnag_celery: delivery failed: %s", exc)
    record_status(app, status, opts.queue_prefix)
    return status


def flush(app: Celery, timeout: float = 10.0) -> dict[str, Any]:
    """Synchronously: move this process's counts and events out, then deliver everything."""
    flush_events(timeout)
    _flusher.flush_once()
    return deliver(app)


def _deliver_task(self: Task) -> dict[str, Any]:
    return deliver(self.app)


def _register_delivery(app: Celery, options: Options) -> None:
    app.task(name=DELIVER_TASK, bind=True, shared=False, ignore_result=True)(_deliver_task)
    schedule = dict(app.conf.beat_schedule or {})
    schedule[DELIVER_TASK] = {
        "task": DELIVER_TASK,
        "schedule": options.session_delivery_interval,
        # a backlog of delivery runs (beat running while no worker does) is pointless
        "options": {"expires": options.session_delivery_interval},
    }
    app.conf.beat_schedule = schedule


def _unregister_delivery(app: Celery) -> None:
    schedule = dict(app.conf.beat_schedule or {})
    if schedule.pop(DELIVER_TASK, None) is not None:
        app.conf.beat_schedule = schedule


def reporter_for_current() -> tuple[Reporter | None, Task | None, Any]:
    """The reporter of the task running here (else of the last configured app)."""
    task = get_current_task()
    state = _states.get(task.app) if task is not None else None
    if state is not None and task is not None:
        return state.reporter, task, task.request_stack.top
    if _states:
        return list(_states.values())[-1].reporter, None, None
    return None, None, None


_SIGNALS = (
    ("worker_init", _on_worker_init),
    ("task_failure", _on_task_failure),
    ("worker_process_shutdown", _on_process_shutdown),
    ("worker_shutdown", _on_process_shutdown),
)


# --------------------------------------------------------------------------- public


def configure(app: Celery, **options: Any) -> None:
    """Make every task run of *app* a BugSnag session. Call once, where the app is defined.

    Idempotent: a second call replaces the options and connects nothing twice.
    Costs nothing in processes that only send tasks: no threads, no connections, no I/O.
    Raises ``ValueError`` naming the option for an unknown option or a bad value.
    """
    if not isinstance(app, Celery):
        raise TypeError(f"bugsnag_celery.configure() needs a Celery app, not {type(app).__name__}")
    resolved = resolve_options(app, options)  # raises before anything is changed
    if app in _states:
        _teardown(app)
    state = _states[app] = AppState(app, resolved)
    sessions.set_default_release(state.release)
    _register_delivery(app, resolved)
    for name, receiver in _SIGNALS:
        # One receiver per process for all apps (they look the app up): weak=False so a
        # closure is not collected, dispatch_uid so configuring twice connects once.
        getattr(signals, name).connect(receiver, weak=False, dispatch_uid=f"bugsnag_celery.{name}")
    _install_hook()


def _teardown(app: Celery) -> AppState | None:
    state = _states.pop(app, None)
    if state is None:
        return None
    state.active = False  # tracers built earlier keep the wrapper: make it pass through
    for task, owner, attribute, original in reversed(state.wrapped):
        try:
            if original is _MISSING:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, original)
        except AttributeError:
            pass
        task.__dict__.pop(_WRAPPED_ATTR, None)
    state.wrapped.clear()
    return state


def unconfigure(app: Celery) -> None:
    """Undo :func:`configure`: disconnect, unwrap the tasks, forget the app.

    Counts already taken stay where they are (take them with ``take_pending_counts``).
    """
    state = _teardown(app)
    if state is None:
        return
    state.reporter.sender.flush(1.0)
    _unregister_delivery(app)
    remaining = list(_states.values())
    sessions.set_default_release(remaining[-1].release if remaining else None)
    if not remaining:
        for name, _receiver in _SIGNALS:
            getattr(signals, name).disconnect(dispatch_uid=f"bugsnag_celery.{name}")
        _remove_hook()


def is_configured(app: Celery) -> bool:
    return app in _states


def options_for(app: Celery) -> Options | None:
    """The resolved options of a configured app (None if it is not configured)."""
    state = _states.get(app)
    return state.options if state is not None else None
