"""Putting the task wrapper on a task, and taking it off again: the two side by side.

:func:`instrument` replaces the task's ``run`` (or its class's custom ``__call__``) with
the wrapper of ``runner.py``, disguised as what it replaces (``disguise.py``), once per
task, and records what it replaced in the app's state; :func:`uninstrument` puts back
exactly that, newest first, when ``unconfigure()`` forgets the app.

In a worker every task takes the ``__call__`` path: Celery's stack protection replaces
``Task.__call__`` there, which ``task_has_custom`` counts as custom.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from types import MethodType

from celery import Celery, Task
from celery.app import trace

from .. import registry
from ..registry import AppState
from .disguise import disguise
from .modes import mode_for
from .runner import call_runner, session_runner

__all__ = ["instrument", "uninstrument", "WRAPPED_ATTR"]

logger = logging.getLogger("bugsnag_celery")

#: Set in a task's ``__dict__`` (to its AppState) once its wrapper is installed.
WRAPPED_ATTR = "_bugsnag_celery_wrapped"

#: Recorded as the original of an attribute that did not exist before the wrapper was
#: installed: :func:`uninstrument` deletes it again rather than setting it.
_MISSING = object()

# Our __call__ wrappers -> the original they call, so that a subclass's wrapper calls the
# original, never another wrapper (kept here: nothing is added to the class or the function).
_originals: weakref.WeakKeyDictionary[Callable[..., object], Callable[..., object]] = (
    weakref.WeakKeyDictionary()
)


def instrument(task: Task, app: Celery | None = None) -> None:
    """Wrap *task* once, if its app is configured. Called for every tracer built.

    What is replaced goes into ``state.wrapped`` as ``(task, owner, attribute, original)``
    (*original* is ``_MISSING`` if *owner* had no attribute of its own), for
    :func:`uninstrument`.
    """
    if WRAPPED_ATTR in task.__dict__:
        return
    try:
        state = registry.state_for(app if app is not None else task._get_app())
        if state is None or not state.active:
            return
        mode = mode_for(task, state)
        if trace.task_has_custom(task, "__call__"):
            # The tracer calls ``task(...)``: wrap the class's __call__ so the session
            # covers the custom __call__ too.
            owner: type[Task] = type(task)
            original = owner.__dict__.get("__call__", _MISSING)
            resolved = owner.__call__
            unbound = _originals.get(resolved, resolved)
            wrapper = disguise(call_runner(task, state, unbound, resolved, mode), unbound)
            _originals[wrapper] = unbound
            owner.__call__ = wrapper
            state.wrapped.append((task, owner, "__call__", original))
        else:
            original = task.__dict__.get("run", _MISSING)
            run = task.run
            bound = isinstance(run, MethodType) and run.__self__ is task
            if bound:
                # ``bind=True`` or a class's ``run``: a bound method stays a bound method.
                func = run.__func__
                task.run = MethodType(disguise(session_runner(task, state, func, mode), func), task)
            else:
                task.run = disguise(session_runner(task, state, run, mode), run)
            state.wrapped.append((task, task, "run", original))
        task.__dict__[WRAPPED_ATTR] = state
    except Exception:  # never break a task over instrumentation
        logger.exception("bugsnag_celery: could not instrument task %r", getattr(task, "name", task))


def uninstrument(state: AppState) -> None:
    """Undo every :func:`instrument` of *state*'s app, newest first: each attribute is what
    it was before (deleted again if it was not there), and each task may be wrapped again.

    Tracers built earlier keep a reference to the wrapper: the caller sets
    ``state.active = False`` first, so that one passes through.
    """
    for task, owner, attribute, original in reversed(state.wrapped):
        try:
            if original is _MISSING:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, original)
        except AttributeError:
            pass
        task.__dict__.pop(WRAPPED_ATTR, None)
    state.wrapped.clear()
