"""``configure(app)`` and ``unconfigure(app)``: the one call users make, and its exact undo.

``configure`` resolves and validates the options first (a bad option raises before
anything changes), then records the app, registers the delivery task and its beat
entry, connects the worker signals and installs the ``build_tracer`` hook. It starts
no thread and opens no connection: the same module is imported by every process that
only sends tasks.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery import signals as celery_signals

from .. import registry
from ..about import __version__
from ..options.declared import Options
from ..options.sources import django_settings_pending, resolve_options, where_the_key_was_sought
from ..registry import AppState
from ..sessions import current
from . import leftovers, official, signals
from .beat import DELIVER_TASK, register_delivery, unregister_delivery
from .instrument import uninstrument
from .tracer_hook import install_hook, remove_hook

__all__ = ["configure", "unconfigure", "is_configured", "options_for", "status_line"]

logger = logging.getLogger("bugsnag_celery")


def configure(app: Celery, **options: object) -> None:
    """Make every task run of *app* a BugSnag session. Call once, where the app is defined.

    Idempotent: a second call replaces the options and connects nothing twice.
    Costs nothing in processes that only send tasks: no threads, no connections, no I/O.
    Raises ``ValueError`` naming the option for an unknown option or a bad value.
    """
    if not isinstance(app, Celery):
        raise TypeError(f"bugsnag_celery.configure() needs a Celery app, not {type(app).__name__}")
    resolved = resolve_options(app, options)  # raises before anything is changed
    _teardown(app)
    state = AppState(app, resolved, options)
    registry.add(state)
    leftovers.configure_ledger()
    current.set_default_release(state.release)
    register_delivery(app, resolved)
    signals.connect()
    celery_signals.worker_init.connect(_at_worker_start, weak=False, dispatch_uid=_WORKER_START)
    celery_signals.worker_ready.connect(_say_what_the_worker_does, weak=False, dispatch_uid=_WORKER_READY)
    install_hook()
    official.adopt(resolved, load=False)
    if django_settings_pending():
        logger.info("bugsnag_celery: Django's settings are not loaded yet; settings.BUGSNAG is read "
                    "again when the worker starts")  # fmt: skip


_WORKER_START = "bugsnag_celery.worker_start"
_WORKER_READY = "bugsnag_celery.worker_ready"


def _at_worker_start(sender: Any = None, **_: Any) -> None:
    """Main process of ``celery worker``: resolve the options again, with everything loaded.

    ``configure()`` may have run before Django's settings were (the app module is imported
    first), so ``settings.BUGSNAG`` and ``DEBUG`` are read here again; then the official
    client is adopted and one line says what this worker will do.
    """
    app = getattr(sender, "app", None)
    state = registry.state_for(app) if app is not None else None
    if state is None:
        return
    try:
        resolved = resolve_options(app, state.kwargs)
        if resolved != state.options:
            configure(app, **state.kwargs)
            state = registry.state_for(app) or state
    except ValueError as exc:
        logger.error("bugsnag_celery: the options are invalid now that the worker has loaded its "
                     "settings (%s); keeping those resolved by configure()", exc)  # fmt: skip
    except Exception:
        logger.exception("bugsnag_celery: resolving the options at worker start failed")
    # No key: said once, at worker_ready; the pool's children, forked before, inherit this
    # and say nothing more when a task fails.
    state.reporter.warned_no_key = not state.options.api_key
    official.adopt(state.options, load=True)
    leftovers.watch()


def _say_no_key(state: AppState) -> None:
    """The one warning of a worker without an API key, naming every place it looked."""
    try:
        places = where_the_key_was_sought(state.app, state.kwargs)
    except Exception:  # never fail a worker's start over a message
        places = "keywords, Celery config, environment, Django settings, the official client"
    logger.warning("bugsnag_celery: no API key configured, so nothing is sent to BugSnag (tasks run as "
                   "usual); looked in: %s", places)  # fmt: skip


def _say_what_the_worker_does(sender: Any = None, **_: Any) -> None:
    """One line at worker start (``worker_ready``: Celery's logging is set up by then), after
    the warning of a worker without an API key."""
    try:
        state = registry.state_for(getattr(sender, "app", None))
        if state is not None:
            if not state.options.api_key:
                _say_no_key(state)
            logger.info("%s", status_line(state.options))
            leftovers.keep_watching(sender)
        for note in official.take_notes():
            logger.info("%s", note)
    except Exception:
        logger.exception("bugsnag_celery: worker_ready handler failed")


def status_line(options: Options) -> str:
    """What a worker will do, in one line: never the key itself."""
    notify, sessions = options.endpoints
    key = "API key present" if options.api_key else "NO API key (nothing is sent)"
    stage = f"release stage {options.release_stage!r}"
    if not options.sends:
        stage += (
            f" (not in enabled_release_stages {list(options.enabled_release_stages or ())}: nothing is sent)"
        )
    sessions_to = urlsplit(sessions).netloc if sessions else "nowhere (sessions_endpoint not set)"
    return (
        f"bugsnag_celery {__version__}: active; {key}; {stage}, app version {options.app_version!r}; "
        f"events to {urlsplit(notify).netloc}, sessions to {sessions_to}, delivered every "
        f"{options.session_delivery_interval:g} s by the beat task {DELIVER_TASK} (a beat must run)"
    )


def _teardown(app: Celery) -> AppState | None:
    state = registry.remove(app)
    if state is None:
        return None
    state.active = False  # tracers built earlier keep the wrapper: make it pass through
    uninstrument(state)
    return state


def unconfigure(app: Celery) -> None:
    """Undo :func:`configure`: disconnect, unwrap the tasks, forget the app; with the last
    app, give the official client back its own (``hooks/official.py``).

    Counts already taken stay where they are (take them with ``take_pending_counts``).
    """
    state = _teardown(app)
    if state is None:
        return
    state.reporter.sender.flush(1.0)
    unregister_delivery(app)
    registry.flusher.give_back_in_doubt(app)
    remaining = registry.states()
    current.set_default_release(remaining[-1].release if remaining else None)
    if not remaining:
        signals.disconnect()
        celery_signals.worker_init.disconnect(dispatch_uid=_WORKER_START)
        celery_signals.worker_ready.disconnect(dispatch_uid=_WORKER_READY)
        remove_hook()
        official.undo_adoption()  # the callback, the start_session guard, the failure handler


def is_configured(app: Celery) -> bool:
    return registry.state_for(app) is not None


def options_for(app: Celery) -> Options | None:
    """The resolved options of a configured app (None if it is not configured)."""
    state = registry.state_for(app)
    return state.options if state is not None else None
