"""Every shape of task a user writes, and what introspection tells about each.

Used twice over: in the test process (``tests/hooks/test_compat_tasks.py``: two apps, one plain
and one configured, eager runs) and in real workers (``compat_app``: the same workload on
a plain worker and on a configured one). Each task records what it saw -- its arguments,
what ``describe`` says about the task, and the stack between Celery's ``trace_task`` and
its body -- through the ``record`` callable it is defined with, so the two outcomes can be
compared as data. Nothing here imports bugsnag_celery: the plain side must not be touched.
"""

# mypy: disallow-untyped-decorators=False, disallow-untyped-calls=False
# (Celery ships no type hints: @app.task is an untyped decorator, as for the other test apps.)

from __future__ import annotations

import inspect
import os
import re
import traceback
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

from celery import Celery, Task
from celery.app.trace import task_has_custom

from bugsnag_celery.sessions.current import DELIVERY_KEY

Record = Callable[[dict[str, Any]], None]

#: The tasks ``define`` registers, and how the workload calls each: (name, args, kwargs).
WORKLOAD: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("compat.plain", (1,), {}),
    ("compat.bound", (2,), {"scale": 3}),
    ("compat.retry_to_positional", (), {"foo": 1, "bar": 2}),
    ("compat.retry_to_keyword", (1, 2), {}),
    ("compat.fails", (), {}),
    ("compat.based_plain", (4,), {}),
    ("compat.based_bound", (5,), {}),
    ("compat.hooked", (6,), {}),
    ("compat.class_based", (7,), {}),
    ("compat.parent", (8,), {}),
    ("compat.child", (9,), {}),
]


class Point(NamedTuple):
    """A type only this module knows: ``typing.get_type_hints`` must find it here."""

    x: int
    y: int


ORIGIN = Point(0, 0)


def _qualname(obj: Any) -> str | None:
    if obj is None:
        return None
    return f"{type(obj).__name__}:{getattr(obj, '__qualname__', '?')}"


def _identity(obj: Any) -> list[Any]:
    return [getattr(obj, a, "MISSING") for a in ("__name__", "__qualname__", "__doc__", "__module__")]


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError) as exc:
        return f"raises {type(exc).__name__}"


def describe(task: Task) -> dict[str, Any]:
    """What introspection tells about *task*: the same with and without bugsnag_celery.

    Everything a library, a framework or Celery itself reads off a task: ``task.run``'s
    signature, identity attributes, annotations and type hints, ``__wrapped__`` and what
    ``inspect.unwrap`` reaches, whether it is a bound method; the task's own signature,
    ``__header__`` (Celery's argument check), ``__wrapped__`` and ``__call__``.
    """
    run = task.run
    call = type(task).__call__
    app_name = task.app.main or ""
    return {
        "run.signature": _signature(run),
        "run.identity": _identity(run),
        "run.annotations": repr(getattr(run, "__annotations__", "MISSING")),
        "run.type_hints": repr(typing.get_type_hints(run)),
        "run.__wrapped__": _qualname(getattr(run, "__wrapped__", None)),
        "run.unwrapped": _qualname(inspect.unwrap(run)),
        "run.kind": [inspect.ismethod(run), inspect.isfunction(run), getattr(run, "__self__", None) is task],
        "run.repr": re.sub(r" at 0x[0-9a-f]+", "", repr(run)).replace(app_name, "<app>"),
        "task.signature": _signature(task),
        "task.__header__": _signature(task.__header__) if hasattr(task, "__header__") else None,
        "task.__wrapped__": _qualname(getattr(task, "__wrapped__", None)),
        "task.identity": _identity(task),
        "call.identity": _identity(call),
        "call.signature": _signature(call),
        "call.custom": bool(task_has_custom(task, "__call__")),
        "call.__wrapped__": _qualname(getattr(call, "__wrapped__", None)),
    }


def stack_below_tracer() -> list[str]:
    """``file:function`` of each frame between Celery's ``trace_task`` and the task's code."""
    frames = traceback.extract_stack()[:-2]  # not this function, nor ``seen`` that calls it
    names = [f"{os.path.basename(f.filename)}:{f.name}" for f in frames]
    cut = max((i for i, n in enumerate(names) if n == "trace.py:trace_task"), default=-1)
    return names[cut + 1 :]


def define(app: Celery, record: Record) -> dict[str, Task]:
    """Register the workload's tasks on *app* (``shared=False``: on this app alone)."""

    def seen(task: Task, **fields: Any) -> None:
        record(
            {
                "task": task.name,
                "id": task.request.id,
                "retries": task.request.retries or 0,
                "delivery": task.request.__dict__.get(DELIVERY_KEY),
                "describe": describe(task),
                "stack": stack_below_tracer(),
                **fields,
            }
        )

    @app.task(name="compat.plain", shared=False)
    def plain(x: int, where: Point = ORIGIN) -> int:
        """A plain task: ``run`` is the function itself."""
        seen(app.tasks["compat.plain"], args=[x, list(where)])
        return x

    @app.task(name="compat.bound", bind=True, shared=False)
    def bound(self: Task, x: int, *, scale: int = 1) -> int:
        """``bind=True``: ``run`` is a bound method."""
        seen(self, args=[x, scale])
        return x * scale

    @app.task(name="compat.retry_to_positional", bind=True, max_retries=1, shared=False)
    def retry_to_positional(self: Task, foo: int, bar: int) -> list[int]:
        """Called with keywords, retried with positional arguments (Celery 5.7 merges them)."""
        seen(self, args=[foo, bar])
        if not self.request.retries:
            raise self.retry(args=(foo + 1, bar + 1), countdown=0)
        return [foo, bar]

    @app.task(name="compat.retry_to_keyword", bind=True, max_retries=1, shared=False)
    def retry_to_keyword(self: Task, foo: int, bar: int = 0) -> list[int]:
        """Called with positional arguments, retried with a keyword replacing one of them."""
        seen(self, args=[foo, bar])
        if not self.request.retries:
            raise self.retry(kwargs={"foo": foo + 1}, countdown=0)
        return [foo, bar]

    @app.task(name="compat.fails", shared=False)
    def fails() -> None:
        """Raises: the outcome and the traceback are what is compared."""
        seen(app.tasks["compat.fails"], args=[])
        raise KeyError("compat")

    class Audited(Task):  # type: ignore[misc]  # Task is untyped (Any)
        """A Task subclass used as a base, with its own ``__call__``."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            """Audited call."""
            return super().__call__(*args, **kwargs)

    @app.task(name="compat.based_plain", base=Audited, shared=False)
    def based_plain(x: int) -> int:
        seen(app.tasks["compat.based_plain"], args=[x])
        return x

    @app.task(name="compat.based_bound", base=Audited, bind=True, shared=False)
    def based_bound(self: Task, x: int) -> int:
        seen(self, args=[x])
        return x

    class Hooked(Task):  # type: ignore[misc]
        """A base with hooks but Celery's own ``__call__``."""

        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            pass

    @app.task(name="compat.hooked", base=Hooked, bind=True, shared=False)
    def hooked(self: Task, x: int) -> int:
        seen(self, args=[x])
        return x

    class ClassBased(Task):  # type: ignore[misc]
        """A class-based task (``app.register_task``)."""

        name = "compat.class_based"

        def run(self, x: int, y: int = 2) -> int:
            """Multiplies."""
            seen(self, args=[x, y])
            return x * y

    class Parent(Task):  # type: ignore[misc]
        """A class-based task with a custom ``__call__``, and the base of another task."""

        name = "compat.parent"

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return super().__call__(*args, **kwargs)

        def run(self, x: int) -> int:
            seen(self, args=[x])
            return x

    class Child(Parent):
        name = "compat.child"

        def run(self, x: int) -> int:
            seen(self, args=[x])
            return -x

    for cls in (ClassBased, Parent, Child):
        app.register_task(cls())
    return {name: app.tasks[name] for name, _, _ in WORKLOAD}
