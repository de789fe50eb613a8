"""``configure(app)`` and ``unconfigure(app)``: the one call users make, and its exact undo.

``configure`` resolves and validates the options first (a bad option raises before
anything changes), then records the app, registers the delivery task and its beat
entry, connects the worker signals and installs the ``build_tracer`` hook. It starts
no thread and opens no connection: the same module is imported by every process that
only sends tasks.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from .. import registry
from ..config import Options, resolve_options
from ..registry import AppState
from ..sessions import current
from . import signals
from .beat import register_delivery, unregister_delivery
from .tracer import WRAPPED_ATTR, install_hook, remove_hook

__all__ = ["configure", "unconfigure", "is_configured", "options_for"]


def configure(app: Celery, **options: Any) -> None:
    """Make every task run of *app* a BugSnag session. Call once, where the app is defined.

    Idempotent: a second call replaces the options and connects nothing twice.
    Costs nothing in processes that only send tasks: no threads, no connections, no I/O.
    Raises ``ValueError`` naming the option for an unknown option or a bad value.
    """
    if not isinstance(app, Celery):
        raise TypeError(f"bugsnag_celery.configure() needs a Celery app, not {type(app).__name__}")
    resolved = resolve_options(app, options)  # raises before anything is changed
    _teardown(app)
    state = AppState(app, resolved)
    registry.add(state)
    current.set_default_release(state.release)
    register_delivery(app, resolved)
    signals.connect()
    install_hook()


def _teardown(app: Celery) -> AppState | None:
    state = registry.remove(app)
    if state is None:
        return None
    state.active = False  # tracers built earlier keep the wrapper: make it pass through
    for task, owner, attribute, original in reversed(state.wrapped):
        try:
            if original is registry.MISSING:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, original)
        except AttributeError:
            pass
        task.__dict__.pop(WRAPPED_ATTR, None)
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
    unregister_delivery(app)
    remaining = registry.states()
    current.set_default_release(remaining[-1].release if remaining else None)
    if not remaining:
        signals.disconnect()
        remove_hook()


def is_configured(app: Celery) -> bool:
    return registry.state_for(app) is not None


def options_for(app: Celery) -> Options | None:
    """The resolved options of a configured app (None if it is not configured)."""
    state = registry.state_for(app)
    return state.options if state is not None else None
