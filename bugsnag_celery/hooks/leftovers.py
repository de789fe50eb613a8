"""The ledger of each process, and what dead processes left in theirs.

``configure()`` says where ledgers live (``ledger_dir``) and which apps a ledger belongs
to (its *scopes*: each configured app's broker and queue prefix). The worker's main
process then recovers, at its start and once per flush interval (on Celery's timer), what
processes that are gone left behind (``delivery/recovery.py``): the counts go out with its own, the events
through the sender of the app whose key and endpoint they were queued for.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .. import registry
from ..delivery.recovery import recover, scope_of
from ..payload.wire import EVENTS_VERSION
from ..sessions import ledger
from ..sessions.counts import identity_of
from ..transport.http import Request

__all__ = ["configure_ledger", "recover_now", "watch", "keep_watching", "at_shutdown"]

logger = logging.getLogger("bugsnag_celery")


def _scopes() -> list[str]:
    return [scope_of(s.app.conf.broker_url, s.options.queue_prefix) for s in registry.states()]


def configure_ledger() -> None:
    """Where this process's ledger goes (the first configured app's ``ledger_dir``)."""
    states = registry.states()
    ledger.configure(states[0].options.ledger_dir if states else "", _scopes)


def _submit(identity: str, endpoint: str, body: bytes) -> bool:
    for state in registry.states():
        key = state.options.api_key
        if key and state.reporter.notify_endpoint == endpoint and identity_of(key, endpoint) == identity:
            reporter = state.reporter
            reporter.sender.submit(
                Request(endpoint, key, EVENTS_VERSION, encoded=[body], on_done=reporter.lost.note)
            )
            return True
    return False


def recover_now() -> None:
    """Deliver what dead processes of this app left on this host. Never raises."""
    try:
        folder = ledger.directory()
        if folder is None:
            return
        found = recover(folder, _scopes(), _submit)
        states = registry.states()
        if found.lost_events and states:
            states[0].reporter.lost.give_back(found.lost_events)  # shown by status as lost
        if found.sessions:
            registry.flusher.start()
    except Exception:
        logger.exception("bugsnag_celery: recovering what dead processes left failed")


_main_pid = 0


def watch() -> None:
    """Main process of a worker (``worker_init``): recover what dead processes left, now."""
    global _main_pid
    _main_pid = os.getpid()
    recover_now()


def keep_watching(consumer: Any) -> None:
    """Main process (``worker_ready``): recover once per flush interval, on the consumer's own
    timer -- no thread of ours in the main process (one there, idle but for a directory
    listing a second, made Celery's consumer miss a broker restart, 2 runs in 7).
    Never raises."""
    try:
        timer = getattr(consumer, "timer", None)
        states = registry.states()
        if timer is not None and states and ledger.directory() is not None:
            timer.call_repeatedly(states[0].options.session_flush_interval, recover_now)
    except Exception:
        logger.exception("bugsnag_celery: could not schedule the recovery of dead processes' ledgers")


def at_shutdown() -> None:
    """The worker's main process, shutting down: what children that died meanwhile left."""
    if _main_pid == os.getpid():
        recover_now()
