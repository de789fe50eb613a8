"""What a task run adds to the official client belongs to that run: breadcrumbs, feature flags, request data.

The official client keeps breadcrumbs, feature flags and the "request" configuration
(``add_metadata_tab``, ``configure_request``: user, metadata, context) in ContextVars, and
its web integrations give every request fresh ones. A worker never does: a prefork child
runs one task after another in the same context, so without this the tenth run's crash
would carry the breadcrumbs, flags and user of the nine before it.

The process-wide values are those of the context that adopted the client (the worker's
main thread, at worker start; a prefork child inherits it), held by reference, so what is
added there later, outside runs, applies to every run. A run sees them plus its own, and
what it adds is gone at its end. Two ways to get there:

- **Where runs take turns in the adopting context** (a prefork child, the solo pool, eager
  runs of a script): nothing is copied. The run adds to the process-wide objects, and at
  its end whatever it changed is put back from a snapshot taken when they last changed
  outside a run. Whether anything changed is one flag, raised by every way the official
  client changes them -- the breadcrumbs' ``append``/``clear``/``resize``/
  ``create_copy_for_context``, the process-wide flags' ``add``/``merge``/``remove``/
  ``clear``, ``RequestConfiguration.get_instance``/``clear``/``set_instance`` -- which
  are wrapped while the client is adopted (``undo`` unwraps them); and one ContextVar
  read for ``create_new_context``, a module function. A run that adds nothing -- nearly
  every successful one -- pays two ContextVar reads and a few attribute loads
  (``benchmarks/ab.py --official``).
- **Anywhere else** (a threads or gevent pool, whose runs have contexts of their own; a run
  nested in another): the run gets copies, seeded with the process-wide ones, set in its
  own ContextVars and reset at its end, in the run's own frame. Once a run has been seen
  outside the adopting context, the process keeps to this way, so that no run's additions
  are ever visible to a run in another thread; a run that starts in another thread while
  one in the adopting context is under way is seeded from the snapshot, not from the
  objects that run is adding to.

Nothing at all where the official client is not adopted (the task wrapper is then built
without this step).
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, NamedTuple

__all__ = ["RunScope", "make_run_scope"]

logger = logging.getLogger("bugsnag_celery")

_FLAGS_KEY = "feature_flag_delegate"  # bugsnag.context.FEATURE_FLAG_DELEGATE_KEY
#: Every way the official client changes what a run scope keeps (see the module docstring).
_CRUMBS_METHODS = ("append", "clear", "resize", "create_copy_for_context")
_FLAGS_METHODS = ("add", "merge", "remove", "clear")
_REQUEST_METHODS = ("get_instance", "clear", "set_instance")


class RunScope(NamedTuple):
    """A run's scope: ``start()`` at its start, ``end(start's result)`` at its end (in the
    run's frame), ``undo()`` when the adoption is undone."""

    start: Callable[[], Any]
    end: Callable[[Any], None]
    undo: Callable[[], None]


class _State:
    """The process-wide objects' snapshot, and how runs stand. One per adoption.

    ``turns``: a run is under way in the adopting context (written by that context only).
    ``shared``: a run has been seen in another context; from then on every run copies.
    The two are a Dekker pair: each side writes its own before reading the other's, so a
    run in another thread either sees ``turns`` (and seeds from the snapshot) or the
    adopting context's next run sees ``shared`` (and copies).
    """

    __slots__ = ("changed", "crumbs", "flags", "request", "shared", "turns")

    def __init__(self) -> None:
        self.crumbs: tuple[Any, ...] = ()
        self.flags: dict[Any, Any] = {}
        self.request: dict[str, Any] = {}
        #: Something changed the process-wide objects since the last snapshot or put-back.
        self.changed = True  # take the first snapshot
        self.shared = False
        self.turns = False


def _copy_request_data(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a RequestConfiguration's ``__dict__`` that the original's mutations miss
    (``add_metadata_tab`` updates a tab's dict in place)."""
    copy = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    metadata = copy.get("metadata")
    if isinstance(metadata, dict):
        copy["metadata"] = {tab: dict(v) if isinstance(v, dict) else v for tab, v in metadata.items()}
    return copy


def make_run_scope(module: Any) -> RunScope | None:
    """A scope for the official client *module* (``bugsnag``), or None if this version keeps
    its per-context state elsewhere (then runs share it, as without this package).

    Called in the context that adopts the client: its current values are the process-wide ones.
    """
    try:
        crumbs_var: ContextVar[Any] = sys.modules["bugsnag.breadcrumbs"]._breadcrumbs
        request_var: ContextVar[Any] = sys.modules["bugsnag.configuration"]._request_info
        contexts_var: ContextVar[Any] = sys.modules["bugsnag.context"]._client_contexts
        request_class = sys.modules["bugsnag.configuration"].RequestConfiguration
        request_methods = {name: request_class.__dict__[name] for name in _REQUEST_METHODS}
        client = module.legacy.default_client
        config = client.configuration
        # Make the process-wide objects exist now, so that later additions outside runs
        # (in this context) land in them and are seen by runs in other threads too.
        config._breadcrumbs.to_list()
        process_request = request_class.get_instance()
        process_flags = client._context.feature_flag_delegate
        process_crumbs = crumbs_var.get()
        process_contexts = contexts_var.get()
        process_storage = process_flags._storage
        crumbs_object = config._breadcrumbs
        marked = [(crumbs_object, name, getattr(crumbs_object, name)) for name in _CRUMBS_METHODS]
        marked += [(process_flags, name, getattr(process_flags, name)) for name in _FLAGS_METHODS]
        if not isinstance(process_crumbs, deque) or process_contexts is None:
            raise TypeError("unexpected per-context state")
    except Exception:
        logger.warning("bugsnag_celery: this bugsnag version keeps per-context state elsewhere; "
                       "task runs share breadcrumbs, flags and request data", exc_info=True)  # fmt: skip
        return None

    state = _State()

    def marking(method: Callable[..., Any]) -> Callable[..., Any]:
        def changing(*args: Any, **kwargs: Any) -> Any:
            state.changed = True
            return method(*args, **kwargs)

        return changing

    wrapped: list[tuple[Any, str, Any]] = []
    for owner, name, method in marked:  # instance attributes, ahead of the class's methods
        setattr(owner, name, marking(method))
        wrapped.append((owner, name, getattr(owner, name)))
    for name, original in request_methods.items():
        setattr(request_class, name, classmethod(marking(original.__func__)))
        wrapped.append((request_class, name, request_class.__dict__[name]))

    def undo() -> None:
        for owner, name, ours in wrapped:
            if vars(owner).get(name) is ours:
                if owner is request_class:
                    setattr(owner, name, request_methods[name])
                else:
                    delattr(owner, name)
        wrapped.clear()

    pristine = request_class().__dict__
    delegate_class: Any = type(process_flags)
    # Where the run's thread still holds the adopting context's values, the flags are found
    # without the WeakKeyDictionary's look-ups (~0.6 us).
    process_entry = process_contexts.get(client)
    crumbs_get, crumbs_set = crumbs_var.get, crumbs_var.set
    request_get, request_set = request_var.get, request_var.set
    contexts_get, contexts_set = contexts_var.get, contexts_var.set

    def take_snapshot() -> None:
        """The process-wide objects as they are between runs (they changed outside runs)."""
        state.changed = False
        state.crumbs = tuple(process_crumbs)
        state.flags = process_storage.copy()
        state.request = _copy_request_data(process_request.__dict__)

    def copy_request(request: Any) -> Any:
        if request.__dict__ == pristine:
            return None  # nothing to carry: the official client makes a fresh one on first use
        copy = request_class.__new__(request_class)
        copy.__dict__.update(_copy_request_data(request.__dict__))
        return copy

    def copies() -> tuple[Token[Any], Token[Any], Token[Any]]:
        """The run's own copies, set in its ContextVars (reset by ``end``)."""
        crumbs = crumbs_get(None)
        in_adopting = crumbs is process_crumbs
        if not in_adopting:
            state.shared = True  # before reading ``turns``: see _State
        # Seeded from the snapshot while a run in the adopting context adds to the objects.
        from_snapshot = state.turns and not in_adopting
        if crumbs is None:
            crumbs = state.crumbs if from_snapshot else process_crumbs
        crumbs_token = crumbs_set(deque(crumbs, process_crumbs.maxlen) if crumbs else None)
        request = request_get(None)
        if request is None and from_snapshot:
            request = request_class.__new__(request_class)
            request.__dict__.update(state.request)
        request_token = request_set(copy_request(process_request if request is None else request))
        contexts = contexts_get(None)
        if contexts is process_contexts:
            flags = process_entry.get(_FLAGS_KEY)
        elif contexts is not None and client in contexts:
            flags = contexts[client].get(_FLAGS_KEY)
        else:
            flags = None
        storage = (state.flags if from_snapshot else process_storage) if flags is None else flags._storage
        if storage:
            copy = delegate_class.__new__(delegate_class)
            copy._storage = storage.copy()
            # a plain dict where the official client keeps a WeakKeyDictionary: it only looks
            # its client up in it, and the default client lives as long as the process
            return contexts_set({client: {_FLAGS_KEY: copy}}), request_token, crumbs_token
        return contexts_set(None), request_token, crumbs_token

    def start() -> Any:
        if state.shared or state.turns:  # another context seen, or a run nested in this one's
            return copies()
        if crumbs_get(None) is not process_crumbs:  # not the adopting context
            return copies()
        if state.changed:
            if request_get(None) is not process_request or contexts_get(None) is not process_contexts:
                return copies()  # replaced outside runs: this run's copies are seeded from those
            take_snapshot()
        state.turns = True
        if state.shared:  # after writing ``turns``: see _State
            state.turns = False
            return copies()
        return None

    def end(tokens: Any) -> None:
        if tokens is not None:
            contexts_token, request_token, crumbs_token = tokens
            contexts_token.var.reset(contexts_token)
            request_token.var.reset(request_token)
            crumbs_token.var.reset(crumbs_token)
            return
        # A run in the adopting context: put back what it changed (everything it added).
        try:
            if state.changed or contexts_get(None) is not process_contexts:
                put_back()
        finally:
            state.turns = False

    def put_back() -> None:
        """Everything as the snapshot has it: the ContextVars' objects (a resize or
        create_copy_for_context, create_new_context, clear_request_config or set_instance
        replace them) and what those objects hold."""
        crumbs_set(process_crumbs)
        contexts_set(process_contexts)
        request_set(process_request)
        process_contexts[client] = process_entry
        process_entry[_FLAGS_KEY] = process_flags
        process_crumbs.clear()
        process_crumbs.extend(state.crumbs)
        process_storage.clear()
        process_storage.update(state.flags)
        process_request.__dict__.clear()
        process_request.__dict__.update(_copy_request_data(state.request))
        state.changed = False

    take_snapshot()
    return RunScope(start, end, undo)
