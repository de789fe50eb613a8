"""Living next to BugSnag's official Python notifier (``bugsnag``): one report per crash, one session.

Most users already run the official client in their web processes, and their task code
calls ``bugsnag.notify``. In a worker of a configured app this module makes that client
part of the task run instead of a second, unaware reporter:

- its events from inside a task run are task events like the run's crash (context, ``task``
  tab, release) and carry the run's session and count in it (a middleware of the official
  client's own kind, ahead of its ``DefaultMiddleware`` and every callback, and its
  delivery taken over: ``official_delivery.py``);
- a crash is reported once: events of the official Celery failure handler
  (``bugsnag.celery.connect_failure_handler``) are dropped for configured apps, since the
  task wrapper reports the crash with its session; one log line says the handler is redundant;
- its own ``start_session`` does not count a task run a second time;
- in a worker where it was never configured (Django's middleware configures it in web
  processes only) it is configured from the options resolved here, so ``bugsnag.notify``
  is not lost -- filling only what the user left unset.

Outside the task runs of configured apps the official client is left alone (in paused and
opted-out runs its events are task events, with no session, as a crash there is).
Only the official *default* client (``bugsnag.notify``, ``bugsnag.configure``) is adopted.
What adoption changed (the middleware, the ``start_session`` guard, the failure handler it
disconnected) is kept in one :class:`Adoption`; :func:`undo_adoption` puts it back when the
last app is unconfigured. Values filled in on the official client stay: they are its
configuration now, which the user's own ``bugsnag.notify`` calls may rely on.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from .. import registry
from ..logs import log_every
from ..options.declared import DEFAULT_NOTIFY_ENDPOINT, DEFAULT_SESSIONS_ENDPOINT, Options, official_name
from ..reporting.official_event import filled_in, is_task_event
from .modes import TRACK, mode_for
from .official_delivery import TaskRunDelivery, as_task_event
from .official_scope import RunScope, make_run_scope

if TYPE_CHECKING:
    from celery import Task

__all__ = ["Adoption", "adopt", "undo_adoption", "official_module", "take_notes", "run_scope"]

logger = logging.getLogger("bugsnag_celery")

# The official client's defaults: a value still equal to one was not set by the user.
OFFICIAL_NOTIFY = "https://notify.bugsnag.com"
OFFICIAL_SESSIONS = "https://sessions.bugsnag.com"

_NOT_SET = object()  # no instance attribute of that name before ours


class MiddlewareStack(Protocol):
    """The official client's ``configuration.middleware``: its callbacks, in order."""

    stack: list[object]


class Adoption:
    """What adopting the official client changed in this process, so that it can be undone."""

    __slots__ = (
        "callback_in",
        "delivery_of",
        "dropped_handler",
        "excluded_in",
        "guarded",
        "notes",
        "run_scope",
    )

    def __init__(self) -> None:
        #: The official clients' internal middleware stacks our :func:`before_notify` was put in.
        self.callback_in: list[MiddlewareStack] = []
        #: ``(session tracker, our guard, its start_session instance attribute before)``.
        self.guarded: list[tuple[object, Callable[[], None], object]] = []
        #: ``bugsnag.celery.failure_handler``, when we disconnected it from ``task_failure``.
        self.dropped_handler: Callable[..., object] | None = None
        #: What adoption said, for the worker's start-up lines (see :func:`take_notes`).
        self.notes: list[str] = []
        #: ``(configuration, our wrapper)``: its delivery wrapped (official_delivery.py).
        self.delivery_of: list[tuple[object, TaskRunDelivery]] = []
        #: Each task run's own breadcrumbs, flags and request data (official_scope.py).
        self.run_scope: RunScope | None = None
        #: ``(traceback_exclude_modules list, our module)``: the task wrapper's frames left out
        #: of the official client's stacks, as they are of ours.
        self.excluded_in: list[tuple[list[object], object]] = []

    def undo(self) -> None:
        """Put the official client back as it was: middleware removed, guard off, handler back."""
        for middleware in self.callback_in:
            # bugsnag has no public way to remove a middleware: its MiddlewareStack keeps
            # ours as a SimpleMiddleware whose ``before`` it is.
            kept = [m for m in middleware.stack if getattr(m, "before", None) is not before_notify]
            middleware.stack[:] = kept
        self.callback_in.clear()
        for tracker, guard, before in self.guarded:
            if vars(tracker).get("start_session") is not guard:
                continue  # replaced again since: not ours to put back
            if before is _NOT_SET:
                del vars(tracker)["start_session"]
            else:
                vars(tracker)["start_session"] = before
        self.guarded.clear()
        for config, wrapper in self.delivery_of:
            if getattr(config, "delivery", None) is wrapper:
                config.delivery = wrapper.original  # type: ignore[attr-defined]
        self.delivery_of.clear()
        if self.run_scope is not None:
            self.run_scope.undo()
        self.run_scope = None
        for excluded, module in self.excluded_in:
            if module in excluded:
                excluded.remove(module)
        self.excluded_in.clear()
        handler, self.dropped_handler = self.dropped_handler, None
        if handler is not None:
            from celery.signals import task_failure

            task_failure.connect(handler, weak=False)  # as bugsnag.celery.connect_failure_handler


_adoption = Adoption()


def official_module(load: bool) -> ModuleType | None:
    """The ``bugsnag`` module if it is in use (imported), or, with *load*, installed."""
    module = sys.modules.get("bugsnag")
    if module is None and load and importlib.util.find_spec("bugsnag") is not None:
        import bugsnag as module
    return module


def _say_once(kind: str, message: str, *args: object) -> None:
    if log_every(f"official.{kind}", math.inf, logging.INFO, message, *args):
        _adoption.notes.append(message % args)


def take_notes() -> list[str]:
    """What adoption said so far (``worker_init`` runs before Celery sets up logging)."""
    notes = list(_adoption.notes)
    _adoption.notes.clear()
    return notes


def _in_task_run() -> Task | None:
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


def _is_official_celery_failure(event: object) -> bool:
    reason = getattr(event, "severity_reason", None) or {}
    attributes = reason.get("attributes") or {}
    return bool(getattr(event, "unhandled", False)) and attributes.get("framework") == "Celery"


def _task_of_configured_app(name: object) -> bool:
    return any(state.options.sends and name in state.app.tasks for state in registry.states())


class OfficialEvent(Protocol):
    """What is written on an event of the official client (the rest is read defensively)."""

    session: object


def before_notify(event: OfficialEvent) -> bool | None:
    """The official client's first middleware (before its ``DefaultMiddleware`` and every
    callback): False drops the event; an event of a task run becomes a task event."""
    try:
        if not registry.states():
            return None  # everything unconfigured: the official client is on its own again
        if is_task_event(event):
            return None  # this package's own event, built as a task event (official_event.py)
        if _is_official_celery_failure(event) and _task_of_configured_app(getattr(event, "context", None)):
            _say_once(
                "handler",
                "bugsnag_celery: dropped a crash report of bugsnag.celery's failure handler: the "
                "task's crash is reported once, with its session, by bugsnag_celery. "
                "connect_failure_handler() is redundant with bugsnag_celery.configure() and can go.",
            )
            return False
        reporter, task, request = registry.current_reporter()
        if reporter is not None and task is not None and request is not None:
            # its task context, and its session: counted only once it is delivered
            as_task_event(event, reporter, task, request)
    except Exception:
        logger.exception("bugsnag_celery: could not make a task event of an event of the official client")
    return None


def _configure_unset(module: ModuleType, options: Options) -> None:
    """Fill in what the user left unset on the official client, from our resolved options.

    An official client without an API key (Django's middleware configures it in web
    processes only) would drop every ``bugsnag.notify`` of a worker: it gets ours, and our
    endpoints. Release stage and version are filled where they are still the official
    defaults, so that its events and ours land in the same release (``development`` under
    Django's ``DEBUG``, as the official Django integration sets in web processes).
    Its names are the declared ones (``official_name``): those ``sources.py`` reads.
    """
    config = module.configuration
    if not getattr(config, official_name("api_key"), None):
        _configure_as_django_does(module)
    values: dict[str, object] = {}

    def official(option: str) -> object:
        return getattr(config, official_name(option))

    if not getattr(config, official_name("api_key"), None) and options.api_key:
        values[official_name("api_key")] = options.api_key
        notify, sessions = options.endpoints
        if official("notify_endpoint") in (None, OFFICIAL_NOTIFY) and notify != DEFAULT_NOTIFY_ENDPOINT:
            values[official_name("notify_endpoint")] = notify
        ours = sessions not in (None, DEFAULT_SESSIONS_ENDPOINT)
        if official("sessions_endpoint") in (None, OFFICIAL_SESSIONS) and ours:
            values[official_name("sessions_endpoint")] = sessions
    stage_unset = official("release_stage") == "production" and not os.environ.get("BUGSNAG_RELEASE_STAGE")
    if stage_unset and options.release_stage != "production":
        values[official_name("release_stage")] = options.release_stage
    if official("app_version") is None and options.app_version is not None:
        values[official_name("app_version")] = options.app_version
    if official("enabled_release_stages") is None and options.enabled_release_stages is not None:
        # our stages bind the client we fill in: bugsnag.notify() outside task runs included
        values[official_name("enabled_release_stages")] = list(options.enabled_release_stages)
    if not values:
        return
    module.configure(**values)
    if official_name("api_key") in values:
        filled_in(config, True)  # its policy is ours: our events keep our rules (official_event.py)
    _say_once(
        "configured",
        "bugsnag_celery: filled in the official bugsnag client's unset %s from bugsnag_celery's "
        "options, so that bugsnag.notify() in tasks is delivered, to the same release",
        ", ".join(sorted(values)),
    )


def _configure_as_django_does(module: ModuleType) -> None:
    """A Django project's policy is ``settings.BUGSNAG``: its web processes configure the
    official client from it (``bugsnag.django.configure()``, run by the middleware). A worker
    never runs that middleware; it is run here, so that the worker's client is the web's --
    its filters, callbacks, ignored classes and all -- and the project's policy applies."""
    try:
        conf = sys.modules.get("django.conf")
        settings = getattr(conf, "settings", None) if conf is not None else None
        if (
            settings is None
            or not settings.configured
            or not isinstance(getattr(settings, "BUGSNAG", None), dict)
        ):
            return
        import bugsnag.django

        bugsnag.django.configure()  # type: ignore[no-untyped-call]
        _say_once("django", "bugsnag_celery: configured the official bugsnag client from settings.BUGSNAG, "
                  "as its Django integration does in web processes")  # fmt: skip
    except Exception:
        logger.exception("bugsnag_celery: could not configure the official client from settings.BUGSNAG")


def _drop_failure_handler() -> None:
    from celery.signals import task_failure

    handler = getattr(sys.modules.get("bugsnag.celery"), "failure_handler", None)
    if handler is not None and task_failure.disconnect(handler):
        _adoption.dropped_handler = handler
        _say_once(
            "disconnected",
            "bugsnag_celery: disconnected bugsnag.celery's failure handler: bugsnag_celery reports "
            "each crash once, with its session; connect_failure_handler() can be removed",
        )


def _guard_start_session(module: ModuleType) -> None:
    """``bugsnag.start_session()`` inside a tracked task run: the run is already a session."""
    tracker = module.legacy.default_client.session_tracker
    if any(guarded is tracker for guarded, _, _ in _adoption.guarded):
        return
    original = tracker.start_session

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

    _adoption.guarded.append((tracker, start_session, vars(tracker).get("start_session", _NOT_SET)))
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
        _insert_middleware(module)
        _drop_failure_handler()
        _guard_start_session(module)
        _wrap_delivery(module)
        _exclude_the_wrapper(module)
        if _adoption.run_scope is None:
            _adoption.run_scope = make_run_scope(module)
        if load:
            _configure_unset(module, options)
    except Exception:
        logger.exception("bugsnag_celery: could not adopt the official bugsnag client")


def _insert_middleware(module: ModuleType) -> None:
    """:func:`before_notify` in the internal middleware, ahead of ``DefaultMiddleware`` (which
    fills in the request configuration's context where an event has none) and of every
    callback, so that they see a task event as they see a crash event."""
    from bugsnag.middleware import DefaultMiddleware, SimpleMiddleware

    middleware = module.configuration.internal_middleware
    if not any(adopted is middleware for adopted in _adoption.callback_in):
        _adoption.callback_in.append(middleware)
        ours: Any = before_notify  # the official stubs want a callback typed by their Event
        middleware.insert_before(DefaultMiddleware, SimpleMiddleware(before=ours))


def _wrap_delivery(module: ModuleType) -> None:
    config = module.configuration
    if any(adopted is config for adopted, _ in _adoption.delivery_of):
        return
    wrapper = TaskRunDelivery(config.delivery)
    config.delivery = wrapper
    _adoption.delivery_of.append((config, wrapper))


def _exclude_the_wrapper(module: ModuleType) -> None:
    """The task wrapper's frame in ``bugsnag.notify()`` stacks: left out by its module, as the
    official client leaves out its own (``traceback_exclude_modules`` matches by file)."""
    ours = sys.modules.get(f"{__package__}.runner")
    excluded = getattr(module.configuration, "traceback_exclude_modules", None)
    if ours is None or not isinstance(excluded, list) or ours in excluded:
        return
    excluded.append(ours)
    _adoption.excluded_in.append((excluded, ours))


def run_scope() -> RunScope | None:
    """Each run's own breadcrumbs, flags and request data, if the official client is adopted."""
    return _adoption.run_scope


def undo_adoption() -> None:
    """Undo :func:`adopt` (``unconfigure()`` of the last configured app): see :meth:`Adoption.undo`."""
    try:
        _adoption.undo()
    except Exception:
        logger.exception("bugsnag_celery: could not undo the adoption of the official bugsnag client")
