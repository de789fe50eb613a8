"""Queued events kept in the process's ledger until their fate is known.

The sender's queue is memory: a process the kernel kills takes it along. Each event handed
to the sender is also written to the process's ledger (``sessions/ledger.py``, a copy of
bytes already encoded: ~1 us) and marked finished once it is delivered, spooled or dropped
by the policy; what a killed process left unfinished is sent by the worker's main process.
"""

from __future__ import annotations

import logging

from ..sessions import ledger
from ..sessions.counts import identity_of
from .http import Request

__all__ = ["journal", "finished"]

logger = logging.getLogger("bugsnag_celery")

_identities: dict[tuple[str, str], str] = {}  # (key, endpoint) -> identity_of (a hash each: ~1 us)


def journal(request: Request) -> None:
    """Keep each queued event in the process's ledger until its fate is known: a process
    the kernel kills leaves it to the worker's main process (``sessions/ledger.py``)."""
    book = ledger.current()
    if book is None or not request.encoded:
        return
    try:
        identity = _identities.get((request.api_key, request.endpoint))
        if identity is None:
            identity = _identities[request.api_key, request.endpoint] = identity_of(
                request.api_key, request.endpoint
            )
        offsets = tuple(book.add_event(identity, request.endpoint, event) for event in request.encoded)
    except Exception:
        logger.exception("bugsnag_celery: could not keep an event in the ledger")
        return
    if any(offset is not None for offset in offsets):
        request.journal, request.journaled = book, offsets


def finished(request: Request) -> None:
    """*request* ended (delivered, spooled, dropped): its events leave the ledger. Once,
    however often it ends (a flush took it over, then it ended)."""
    book, offsets = request.journal, request.journaled
    request.journal, request.journaled = None, ()
    if isinstance(book, ledger.Ledger):
        for offset in offsets:
            if offset is not None:
                book.event_done(offset)
