"""The one drain loop: take a batch from a queue, send it, hand back what could not go, acknowledge.

Both drains (session counts, spooled events) follow the same ladder, and its order is
what makes them safe:

1. take every message of the queue, unacknowledged (``take_batch``: on Redis one atomic
   ``RENAME``; elsewhere kombu's ``get``);
2. ``send`` posts what it can and returns the bodies still to be sent;
3. those are published again as new messages *before* the batch is acknowledged: a crash
   in between can duplicate, never lose;
4. if even that publish fails, the batch goes back whole -- unless part of it already
   left, and ``keep`` can hold the rest elsewhere (session counts: in this process's
   memory, since handing back the whole batch would send that part twice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from celery import Celery

from ..transport.queues import connection, publish, take_batch

__all__ = ["Sent", "Drained", "drain"]

logger = logging.getLogger("bugsnag_celery")


class Sent(NamedTuple):
    """What ``send`` did with a batch."""

    retry: list[Any]  # message bodies to hand back for a later run
    left: bool  # whether anything of the batch already left (a 2xx, or a permanent 4xx)


class Drained(NamedTuple):
    messages: int  # taken from the queue, malformed ones included
    undecodable: int  # of those, not JSON at all (dropped)
    handed_back: bool  # the retry bodies are on the broker (or there were none)


def drain(
    app: Celery,
    queue: str,
    send: Callable[[list[Any]], Sent],
    *,
    limit: int,
    keep: Callable[[list[Any]], bool] | None = None,
) -> Drained:
    """One pass of the ladder above over *queue*; raises only if the broker is unreachable."""
    with connection(app, write=False) as conn:
        batch = take_batch(conn, queue, limit)
        messages = len(batch.bodies) + batch.malformed
        if not messages:
            return Drained(0, 0, True)
        if batch.malformed:
            logger.error("bugsnag_celery: dropping %d malformed message(s) from %s", batch.malformed, queue)
        sent = send(batch.bodies)
        if sent.retry:
            try:
                publish(app, queue, sent.retry)
            except Exception as exc:
                logger.warning("bugsnag_celery: could not hand %d message(s) back to %s: %s",
                               len(sent.retry), queue, exc)  # fmt: skip
                if sent.left and keep is not None and keep(sent.retry):
                    batch.ack()
                else:
                    batch.requeue()  # the broker is gone: let it hand everything out again
                return Drained(messages, batch.malformed, False)
        batch.ack()
        return Drained(messages, batch.malformed, True)
