"""A configured app's tasks are indistinguishable from plain Celery's, in this process.

Two apps get the same tasks (``tests/support/apps/compat_tasks.py``: plain, ``bind=True``, typed,
retries that switch argument styles, a failing one, ``Task`` subclasses used as bases with
and without a custom ``__call__``, class-based tasks, one the base of another); one app is
configured. Every comparison is between the two, so it holds on every Celery the matrix
runs, whatever that Celery itself does (Celery < 5.7 fails a retry that switches argument
styles -- with and without us alike). The same workload on real workers:
``tests/end_to_end/test_compat_worker.py``.

Covers: bugsnag_celery/hooks/runner.py, bugsnag_celery/hooks/disguise.py
Covers: bugsnag_celery/hooks/instrument.py, bugsnag_celery/hooks/tracer_hook.py
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, Task
from endpoint import Endpoint
from workers import APPS

import bugsnag_celery
from bugsnag_celery.hooks.instrument import WRAPPED_ATTR

sys.path.insert(0, str(APPS))
from compat_tasks import WORKLOAD, define, describe

KEY = "0123456789abcdef0123456789abcdef"
WRAPPER_FRAMES = ("runner.py:run_in_session", "runner.py:call_in_session")


class Side:
    """One app with the workload's tasks, and what they recorded."""

    def __init__(self, configured: Endpoint | None) -> None:
        self.app = Celery(f"compat{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
        self.records: list[dict[str, Any]] = []
        self.tasks = define(self.app, self.record)
        if configured is not None:
            bugsnag_celery.configure(
                self.app, api_key=KEY, notify_endpoint=f"{configured.url}/notify",
                sessions_endpoint=f"{configured.url}/sessions",
            )  # fmt: skip

    def record(self, fields: dict[str, Any]) -> None:
        self.records.append({**fields, "session": bugsnag_celery.get_current_session()})

    def run(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run *name* eagerly (Celery's real tracer, retries included) and take its outcome."""
        del self.records[:]
        result = self.tasks[name].apply(args=args, kwargs=kwargs)
        if result.failed():
            value: Any = {"raised": type(result.result).__name__, "message": str(result.result)}
        else:
            value = result.result
        # the traceback Celery formatted (what its log line, result backend and einfo hold)
        tb = re.findall(r'^\s+File "[^"]*?([^/"]+)", line \d+, in (\S+)', result.traceback or "", re.M)
        return {"state": result.state, "value": value, "records": list(self.records), "traceback": tb}


@pytest.fixture
def sides(endpoint: Endpoint) -> Iterator[tuple[Side, Side]]:
    from bugsnag_celery import registry

    registry.flusher.enabled = False  # counts stay in this process; nothing to deliver
    plain, configured = Side(None), Side(endpoint)
    try:
        yield plain, configured
    finally:
        bugsnag_celery.unconfigure(configured.app)
        bugsnag_celery.take_pending_counts()
        registry.flusher.enabled = True


def test_every_task_runs_to_the_same_outcome(sides: tuple[Side, Side]) -> None:
    """State, return value or exception, and what each attempt received: identical.

    This is where Celery 5.7's ``Task.retry`` (it merges arguments by
    ``inspect.signature(task.run)``) failed with our wrapper: ``TypeError: got multiple values
    for argument 'foo'``.
    """
    plain, configured = sides
    for name, args, kwargs in WORKLOAD:
        want, got = plain.run(name, args, kwargs), configured.run(name, args, kwargs)
        assert [r["args"] for r in got["records"]] == [r["args"] for r in want["records"]], name
        assert (got["state"], got["value"]) == (want["state"], want["value"]), name


def test_introspection_is_the_same(sides: tuple[Side, Side]) -> None:
    """``describe``: signature, identity, annotations, type hints, ``__wrapped__``, ``__header__``..."""
    plain, configured = sides
    for name, args, kwargs in WORKLOAD:
        plain.run(name, args, kwargs)
        configured.run(name, args, kwargs)
        task = configured.tasks[name]
        # the comparison means something only if the configured task is wrapped
        assert WRAPPED_ATTR in task.__dict__, name
        assert "run" in task.__dict__ or type(task).__dict__.get("__call__") is not None, name
        assert describe(task) == describe(plain.tasks[name]), name


def test_the_wrapper_adds_one_frame(sides: tuple[Side, Side]) -> None:
    """Below Celery's ``trace_task``, a run's stack is plain Celery's plus one frame of ours,
    directly above the task's own code (its ``run``, or its custom ``__call__``)."""
    plain, configured = sides
    for name, args, kwargs in WORKLOAD:
        want, got = plain.run(name, args, kwargs), configured.run(name, args, kwargs)
        for plain_record, record in zip(want["records"], got["records"]):
            assert record["stack"][0] in WRAPPER_FRAMES, (name, record["stack"])
            assert record["stack"][1:] == plain_record["stack"], name


def test_a_failures_traceback_is_plain_celerys(sides: tuple[Side, Side]) -> None:
    """From Python 3.11 the wrapper takes its own frame off a failure's traceback before it
    re-raises (before 3.11 the re-raise restores it: one frame more, and no other)."""
    plain, configured = sides
    failing = 0
    for name, args, kwargs in WORKLOAD:
        want, got = plain.run(name, args, kwargs), configured.run(name, args, kwargs)
        if not want["traceback"]:
            continue
        failing += 1
        ours = [f for f in got["traceback"] if ":".join(f) in WRAPPER_FRAMES]
        assert len(ours) == (0 if sys.version_info >= (3, 11) else 1), (name, got["traceback"])
        assert [f for f in got["traceback"] if f not in ours] == want["traceback"], name
    assert failing >= 1  # the comparison ran on at least one failure


def test_argument_checking_is_celerys(sides: tuple[Side, Side]) -> None:
    """``typing=True``: a call with the wrong arguments fails at the caller, as it did."""
    plain, configured = sides
    for side in sides:
        for name, args, kwargs in WORKLOAD:
            side.run(name, args, kwargs)  # wrapped now, where configured
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("compat.plain", (), {}),
        ("compat.plain", (1, 2, 3), {}),
        ("compat.bound", (1,), {"nope": 2}),
        ("compat.retry_to_keyword", (), {"bar": 1}),
        ("compat.based_bound", (1, 2), {}),
        ("compat.class_based", (), {"y": 1}),
    ]

    def attempt(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            task.__header__(*args, **kwargs) if hasattr(task, "__header__") else task.run(*args, **kwargs)
        except TypeError as exc:
            return f"TypeError: {exc}"
        return "accepted"

    for name, args, kwargs in calls:
        want = attempt(plain.tasks[name], args, kwargs)
        assert want.startswith("TypeError"), (name, want)
        assert attempt(configured.tasks[name], args, kwargs) == want, name
    for name, args, kwargs in calls[:3]:
        with pytest.raises(TypeError) as plain_error:
            plain.tasks[name].apply_async(args, kwargs)
        with pytest.raises(TypeError) as error:
            configured.tasks[name].apply_async(args, kwargs)
        assert str(error.value) == str(plain_error.value)


def test_called_as_a_function_it_is_the_function(sides: tuple[Side, Side]) -> None:
    """``task(...)`` and ``task.run(...)`` outside a run: same results, same errors, no session."""
    for side in sides:
        for name, args, kwargs in WORKLOAD:
            side.run(name, args, kwargs)
    for name, args, kwargs in WORKLOAD:
        for how in ("call", "run"):
            outcomes = []
            for side in sides:
                task = side.tasks[name]
                try:
                    value = task(*args, **kwargs) if how == "call" else task.run(*args, **kwargs)
                except Exception as exc:
                    value = f"{type(exc).__name__}: {exc}"
                outcomes.append(value)
            assert outcomes[0] == outcomes[1], (name, how)
    assert bugsnag_celery.get_current_session() is None


def test_unconfigure_restores_every_task(sides: tuple[Side, Side]) -> None:
    """After ``unconfigure`` nothing of ours is left on a task or its class."""
    plain, configured = sides
    classes = {name: dict(type(task).__dict__) for name, task in configured.tasks.items()}
    for side in sides:
        for name, args, kwargs in WORKLOAD:
            side.run(name, args, kwargs)
    bugsnag_celery.unconfigure(configured.app)
    for name, task in configured.tasks.items():
        assert task.__dict__.keys() == plain.tasks[name].__dict__.keys(), name
        assert dict(type(task).__dict__) == classes[name], name


def test_the_runs_compared_ran_in_sessions(sides: tuple[Side, Side]) -> None:
    """The other half of "indistinguishable": the configured side's runs had their sessions
    (one per attempt), the plain side's none, and nothing outlives a run."""
    plain, configured = sides
    attempts = 0
    for name, args, kwargs in WORKLOAD:
        want, got = plain.run(name, args, kwargs), configured.run(name, args, kwargs)
        assert [r["session"] for r in want["records"]] == [None] * len(want["records"]), name
        assert all(r["session"] is not None for r in got["records"]), name
        assert len({r["session"]["id"] for r in got["records"]}) == len(got["records"]), name
        assert bugsnag_celery.get_current_session() is None, name
        # an attempt Celery fails before the body (Celery < 5.7 on a style-switching
        # retry) has a session but no record: count attempts from the retries seen
        attempts += 2 if name in ("compat.retry_to_positional", "compat.retry_to_keyword") else 1
    counted = sum(n for c in bugsnag_celery.take_pending_counts().values() for n in c.values())
    assert counted == attempts


def test_the_request_read_without_celerys_property_is_celerys_top() -> None:
    """The wrapper reads the current request from Celery's ``Local`` storage directly (the
    ``top`` property's two Python calls were a fifth of a session's cost): on this Celery it
    must give exactly what ``request_stack.top`` gives -- empty, pushed, nested, popped, and
    from another thread, which has a stack of its own."""
    import threading

    from bugsnag_celery.hooks.runner import _request_storage

    app: Any = Celery(f"top{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)

    @app.task
    def probe() -> None:
        return None

    stack = probe.request_stack
    local, storage = _request_storage(stack)
    assert storage is not None, type(stack)  # Celery's own classes: the direct read is used

    def direct() -> Any:
        try:
            return storage[local.__ident_func__()]["stack"][-1]
        except (KeyError, IndexError):
            return None

    seen = [(direct(), stack.top)]
    probe.push_request(id="outer")
    seen.append((direct(), stack.top))
    probe.push_request(id="inner")
    seen.append((direct(), stack.top))
    other: list[tuple[Any, Any]] = []
    thread = threading.Thread(target=lambda: other.append((direct(), stack.top)))
    thread.start()
    thread.join()
    probe.pop_request()
    seen.append((direct(), stack.top))
    probe.pop_request()
    seen.append((direct(), stack.top))
    assert [a is b for a, b in seen + other] == [True] * 6
    assert [getattr(b, "id", None) for _, b in seen] == [None, "outer", "inner", "outer", None]
    assert other == [(None, None)]


def test_a_stack_of_another_kind_goes_through_top() -> None:
    """``USE_FAST_LOCALS`` (a ``threading.local`` stack) or a subclass: no direct read."""
    from celery.utils.threads import _FastLocalStack, _LocalStack

    from bugsnag_celery.hooks.runner import _request_storage

    class Sub(_LocalStack):  # type: ignore[misc, unused-ignore]
        pass

    assert _request_storage(_FastLocalStack()) == (None, None)
    assert _request_storage(Sub()) == (None, None)
    assert _request_storage(object()) == (None, None)


def test_the_build_tracer_hook_takes_celerys_own_parameters(sides: tuple[Side, Side]) -> None:
    """On this Celery the hook forwards positionally (no ``**kwargs`` dict per eager run):
    the same parameters, the original's very defaults; the worker's imported name too."""
    import inspect

    from celery.app import trace

    from bugsnag_celery.hooks import tracer_hook

    original = tracer_hook._original_build_tracer
    assert original is not None and trace.build_tracer is not original  # configured: hooked
    hook = trace.build_tracer
    assert hook.__defaults__ is original.__defaults__
    assert inspect.signature(hook, follow_wrapped=False).parameters.keys() == (
        inspect.signature(original).parameters.keys()
    )


def test_the_exact_hook_forwards_every_call_as_it_came() -> None:
    """Eager (keywords), worker (positional) and every default: the original sees the same
    arguments with the hook as without; a ``build_tracer`` another library wrapped with
    ``*args, **kwargs`` (Sentry's integration does) gets the generic hook instead."""
    import functools

    from bugsnag_celery.hooks.tracer_hook import _exact_hook, _generic_hook

    sentinel_info, sentinel_clock, sentinel_ok = object(), object(), object()
    sentinel_states: frozenset[str] = frozenset()

    def build_tracer(  # Celery's parameters, recording what it was given
        name: Any, task: Any, loader: Any = None, hostname: Any = None, store_errors: Any = True,
        Info: Any = sentinel_info, eager: Any = False, propagate: Any = False, app: Any = None,
        monotonic: Any = sentinel_clock, trace_ok_t: Any = sentinel_ok, IGNORE_STATES: Any = sentinel_states,
    ) -> dict[str, Any]:  # fmt: skip
        return dict(locals())

    app: Any = Celery(f"hook{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)

    @app.task
    def job() -> None:
        return None

    calls = [
        (("job", job), {"eager": True, "propagate": True, "app": app}),  # Task.apply
        (("job", job, "loader", "host"), {"app": app}),  # the worker's consumer and prefork
        (("job", job), {}),
        (("job", job, "l", "h", False, "I", True, True, app, "m", "t", "s"), {}),
    ]
    exact = _exact_hook(build_tracer)
    assert exact is not None
    for args, kwargs in calls:
        assert exact(*args, **kwargs) == build_tracer(*args, **kwargs)

    @functools.wraps(build_tracer)
    def wrapped_by_another(name: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
        return build_tracer(name, task, *args, **kwargs)

    assert _exact_hook(wrapped_by_another) is None
    generic = _generic_hook(wrapped_by_another)
    for args, kwargs in calls:
        assert generic(*args, **kwargs) == build_tracer(*args, **kwargs)
