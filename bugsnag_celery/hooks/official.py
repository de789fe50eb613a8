"""Living next to BugSnag's official Python notifier (``bugsnag``): one report per crash, one session.

Most users already run the official client in their web processes, and their task code
calls ``bugsnag.notify``. In a worker of a configured app this module makes that client
part of the task run instead of a second, unaware reporter:

- its events from inside a task run carry the run's session and count in it (a
  ``before_notify`` callback, the official client's own extension point);
- a crash is reported once: events of the official Celery failure handler
  (``bugsnag.celery.connect_failure_handler``) are dropped for configured apps, since the
  task wrapper reports the crash with its session; one log line says the handler is redundant;
- its own ``start_session`` does not count a task run a second time;
- in a worker where it was never configured (Django's middleware configures it in web
  processes only) it is configured from the options resolved here, so ``bugsnag.notify``
  is not lost -- filling only what the user left unset.

Outside a task run, and in paused or opted-out runs, the official client is left alone.
Only the official *default* client (``bugsnag.notify``, ``bugsnag.configure``) is adopted.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

from .. import registry
from ..options.declared import DEFAULT_NOTIFY_ENDPOINT, DEFAULT_SESSIONS_ENDPOINT, Options
from ..reporting.reporter import raised_while_paused
from ..sessions.current import current_session
from .modes import TRACK, mode_for

__all__ = ["adopt", "official_module", "take_notes"]

logger = logging.getLogger("bugsnag_celery")

# The official client's defaults: a value still equal to one was not set by the user.
OFFICIAL_NOTIFY = "https://notify.bugsnag.com"
OFFICIAL_SESSIONS = "https://sessions.bugsnag.com"

_adopted: set[int] = set()  # id() of official Configuration objects we added our callback to
_said: set[str] = set()  # one log line per kind per process


def official_module(load: bool) -> Any:
    """The ``bugsnag`` module if it is in use (imported), or, with *load*, installed."""
    module = sys.modules.get("bugsnag")
    if module is None and load and importlib.util.find_spec("bugsnag") is not None:
        import bugsnag as module
    return module


_notes: list[str] = []  # what was said, for the worker's start-up lines (see take_notes)


def _say_once(kind: str, message: str, *args: Any) -> None:
    if kind not in _said:
        _said.add(kind)
        _notes.append(message % args)
        logger.info(message, *args)


def take_notes() -> list[str]:
    """What adoption said so far (``worker_init`` runs before Celery sets up logging)."""
    notes = list(_notes)
    _notes.clear()
    return notes


def _in_task_run() -> Any:
    """The running task of a configured app, or None (outside runs, or another app's)."""
    reporter, task, request = registry.current_reporter()
    if reporter is None or task is None or request is None:
        return None
    return task


def _in_tracked_task_run() -> bool:
    """In a task run that is (or is about to be) a session of its own."""
    task = _in_task_run()
    state = registry.state_for(task.app) if task is not None else None
    return state is not None and mode_for(task, state) == TRACK


def _is_official_celery_failure(event: Any) -> bool:
    reason = getattr(event, "severity_reason", None) or {}
    attributes = reason.get("attributes") or {}
    return bool(getattr(event, "unhandled", False)) and attributes.get("framework") == "Celery"


def _task_of_configured_app(name: Any) -> bool:
    return any(state.options.sends and name in state.app.tasks for state in registry.states())


def before_notify(event: Any) -> Any:
    """The official client's callback: False drops the event; anything else sends it."""
    try:
        if not registry.states():
            return None  # everything unconfigured: the official client is on its own again
        if _is_official_celery_failure(event) and _task_of_configured_app(getattr(event, "context", None)):
            _say_once(
                "handler",
                "bugsnag_celery: dropped a crash report of bugsnag.celery's failure handler: the "
                "task's crash is reported once, with its session, by bugsnag_celery. "
                "connect_failure_handler() is redundant with bugsnag_celery.configure() and can go.",
            )
            return False
        if _in_task_run() is None:
            return None
        session = current_session()
        raised = getattr(event, "exception", None)
        paused = isinstance(raised, BaseException) and raised_while_paused(raised)
        if session is None or session.paused or paused:
            return None
        if getattr(event, "unhandled", False):
            session.unhandled += 1
        else:
            session.handled += 1
        event.session = {
            "id": session.id,
            "startedAt": session.started_at,
            "events": {"handled": session.handled, "unhandled": session.unhandled},
        }
    except Exception:
        logger.exception("bugsnag_celery: could not attribute an event of the official client")
    return None


def _configure_unset(module: Any, options: Options) -> None:
    """Fill in what the user left unset on the official client, from our resolved options.

    An official client without an API key (Django's middleware configures it in web
    processes only) would drop every ``bugsnag.notify`` of a worker: it gets ours, and our
    endpoints. Release stage and version are filled where they are still the official
    defaults, so that its events and ours land in the same release (``development`` under
    Django's ``DEBUG``, as the official Django integration sets in web processes).
    """
    config = module.configuration
    values: dict[str, Any] = {}
    if not getattr(config, "api_key", None) and options.api_key:
        values["api_key"] = options.api_key
        notify, sessions = options.endpoints
        if config.endpoint in (None, OFFICIAL_NOTIFY) and notify != DEFAULT_NOTIFY_ENDPOINT:
            values["endpoint"] = notify
        ours = sessions not in (None, DEFAULT_SESSIONS_ENDPOINT)
        if config.session_endpoint in (None, OFFICIAL_SESSIONS) and ours:
            values["session_endpoint"] = sessions
    stage_unset = config.release_stage == "production" and not os.environ.get("BUGSNAG_RELEASE_STAGE")
    if stage_unset and options.release_stage != "production":
        values["release_stage"] = options.release_stage
    if config.app_version is None and options.app_version is not None:
        values["app_version"] = options.app_version
    if not values:
        return
    module.configure(**values)
    _say_once(
        "configured",
        "bugsnag_celery: filled in the official bugsnag client's unset %s from bugsnag_celery's "
        "options, so that bugsnag.notify() in tasks is delivered, to the same release",
        ", ".join(sorted(values)),
    )


def _drop_failure_handler(module: Any) -> None:
    from celery.signals import task_failure

    handler = getattr(sys.modules.get("bugsnag.celery"), "failure_handler", None)
    if handler is not None and task_failure.disconnect(handler):
        _say_once(
            "disconnected",
            "bugsnag_celery: disconnected bugsnag.celery's failure handler: bugsnag_celery reports "
            "each crash once, with its session; connect_failure_handler() can be removed",
        )


def _guard_start_session(module: Any) -> None:
    """``bugsnag.start_session()`` inside a tracked task run: the run is already a session."""
    tracker = module.legacy.default_client.session_tracker
    original = tracker.start_session
    if getattr(original, "_bugsnag_celery", False):
        return

    def start_session() -> None:
        # (task_prerun, where the official docs start it, runs before the run's session opens)
        if _in_tracked_task_run():
            _say_once(
                "session",
                "bugsnag_celery: bugsnag.start_session() in a task run is ignored: "
                "the run is already a session (counted once, by bugsnag_celery)",
            )
            return
        original()

    start_session._bugsnag_celery = True  # type: ignore[attr-defined]
    tracker.start_session = start_session


def adopt(options: Options, *, load: bool) -> None:
    """Adopt the official client of this process, if there is one (see the module docstring).

    *load*: import ``bugsnag`` if installed (worker start); otherwise only a client that is
    already imported is adopted (``configure()`` in a process that may only send tasks).
    """
    try:
        module = official_module(load)
        if module is None:
            return
        config = module.configuration
        if id(config) not in _adopted:
            _adopted.add(id(config))
            module.before_notify(before_notify)
        _drop_failure_handler(module)
        _guard_start_session(module)
        if load:
            _configure_unset(module, options)
    except Exception:
        logger.exception("bugsnag_celery: could not adopt the official bugsnag client")
