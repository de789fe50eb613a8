"""What a task run adds to the official client belongs to that run: breadcrumbs, feature flags, request data.

The official client keeps breadcrumbs, feature flags and the "request" configuration
(``add_metadata_tab``, ``configure_request``: user, metadata, context) in ContextVars, and
its web integrations give every request fresh ones. A worker never does: a prefork child
runs one task after another in the same context, so without this the tenth run's crash
would carry the breadcrumbs, flags and user of the nine before it.

So each task run of a configured app (when the official client is adopted) gets its own
copies at its start, seeded with the process-wide ones -- those set outside any run -- and
they are thrown away at its end (the ContextVars are reset, in the run's own frame). Under
a threads or gevent pool a run's thread or greenlet has no values of its own: the
process-wide ones are those of the thread that adopted the client (the worker's main
thread, at worker start), held by reference, so what is added there later, outside runs,
applies too.

Cost: three ContextVar reads, sets and resets per run, and a copy of what is non-empty
(measured in ``benchmarks/ab.py --official``); nothing at all where the official client is
not adopted (the task wrapper is then built without this step).
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

__all__ = ["RunScope", "Tokens", "make_run_scope", "end_run_scope"]

logger = logging.getLogger("bugsnag_celery")

#: What a run's scope set: its ContextVar tokens, reset by :func:`end_run_scope`.
Tokens = tuple[Token[Any], Token[Any], Token[Any]]
#: Starts a run's scope; returns what :func:`end_run_scope` resets.
RunScope = Callable[[], Tokens]

_FLAGS_KEY = "feature_flag_delegate"  # bugsnag.context.FEATURE_FLAG_DELEGATE_KEY


def make_run_scope(module: Any) -> RunScope | None:
    """A scope for the official client *module* (``bugsnag``), or None if this version keeps
    its per-context state elsewhere (then runs share it, as without this package).

    Called in the thread that adopts the client: its current values are the process-wide ones.
    """
    try:
        crumbs_var: ContextVar[Any] = sys.modules["bugsnag.breadcrumbs"]._breadcrumbs
        request_var: ContextVar[Any] = sys.modules["bugsnag.configuration"]._request_info
        contexts_var: ContextVar[Any] = sys.modules["bugsnag.context"]._client_contexts
        request_class = sys.modules["bugsnag.configuration"].RequestConfiguration
        client = module.legacy.default_client
        config = client.configuration
        # Make the process-wide objects exist now, so that later additions outside runs
        # (in this thread) land in them and are seen by runs in other threads too.
        config._breadcrumbs.to_list()
        process_request = request_class.get_instance()
        process_flags = client._context.feature_flag_delegate
        process_crumbs = crumbs_var.get()
    except Exception:
        logger.warning("bugsnag_celery: this bugsnag version keeps per-context state elsewhere; "
                       "task runs share breadcrumbs, flags and request data", exc_info=True)  # fmt: skip
        return None

    pristine = request_class().__dict__
    delegate_class: Any = type(process_flags)
    # Where the run's thread still holds the adopting context's values (a prefork child, the
    # solo pool), the flags are found without the WeakKeyDictionary's look-ups (~0.6 us).
    process_contexts = contexts_var.get(None)
    process_entry = process_contexts.get(client) if process_contexts is not None else None
    crumbs_get, crumbs_set = crumbs_var.get, crumbs_var.set
    request_get, request_set = request_var.get, request_var.set
    contexts_get, contexts_set = contexts_var.get, contexts_var.set

    def copy_request(request: Any) -> Any:
        if request.__dict__ == pristine:
            return None  # nothing to carry: the official client makes a fresh one on first use
        copy = request_class.__new__(request_class)
        copy.__dict__.update(request.__dict__)
        copy.user = dict(request.user)
        copy.metadata = {tab: dict(v) if isinstance(v, dict) else v for tab, v in request.metadata.items()}
        return copy

    def start() -> Tokens:
        crumbs = crumbs_get(None)
        if crumbs is None:
            crumbs = process_crumbs
        crumbs_token = crumbs_set(deque(crumbs, crumbs.maxlen) if crumbs else None)
        request = request_get(None)
        request_token = request_set(copy_request(process_request if request is None else request))
        contexts = contexts_get(None)
        if contexts is process_contexts and process_entry is not None:
            flags = process_entry.get(_FLAGS_KEY)
        elif contexts is not None and client in contexts:
            flags = contexts[client].get(_FLAGS_KEY)
        else:
            flags = None
        if flags is None:
            flags = process_flags
        storage = flags._storage
        if storage:
            copy = delegate_class.__new__(delegate_class)
            copy._storage = storage.copy()
            # a plain dict where the official client keeps a WeakKeyDictionary: it only looks
            # its client up in it, and the default client lives as long as the process
            return contexts_set({client: {_FLAGS_KEY: copy}}), request_token, crumbs_token
        return contexts_set(None), request_token, crumbs_token

    return start


def end_run_scope(tokens: Tokens) -> None:
    """Reset what :func:`make_run_scope`'s ``start`` set (in the same frame: the run's)."""
    contexts_token, request_token, crumbs_token = tokens
    contexts_token.var.reset(contexts_token)
    request_token.var.reset(request_token)
    crumbs_token.var.reset(crumbs_token)
