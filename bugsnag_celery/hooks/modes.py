"""Which task runs count: tracked, opted out (``@no_session``, ``exclude_tasks``, internal) or manual.

Decided once per task when its wrapper is installed, so a run pays nothing for it.
"""

from __future__ import annotations

from typing import TypeVar

from celery import Task

from ..registry import AppState

__all__ = ["no_session", "mode_for", "TRACK", "OPT_OUT", "MANUAL"]

F = TypeVar("F")

_NO_SESSION_ATTR = "__bugsnag_no_session__"
# Celery's own machinery (chord_unlock polls by retrying) and our own tasks are not
# user work: counting them would inflate the session count.
_INTERNAL_PREFIXES = ("bugsnag_celery.", "celery.")

# How a wrapped task run treats sessions.
TRACK = "track"  # open a new session for the run
OPT_OUT = "opt-out"  # no session during the run (@no_session, exclude_tasks, internal)
MANUAL = "manual"  # auto_track_sessions=False: leave the session to the user's calls


def no_session(task: F) -> F:
    """Opt a task out of session tracking: it never opens a session and never counts.

    Works above or below ``@app.task``. Errors inside it are still reported, without
    a session, so they do not count against stability.
    """
    target: object = task
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


def mode_for(task: Task, state: AppState) -> str:
    name = task.name or ""
    if name.startswith(_INTERNAL_PREFIXES) or _opted_out(task) or state.excluded(name):
        return OPT_OUT
    return TRACK if state.options.auto_track_sessions else MANUAL
