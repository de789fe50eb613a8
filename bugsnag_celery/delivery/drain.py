"""The one drain loop: take a batch from a queue, send it, hand back what could not go, acknowledge.

Both drains (session counts, spooled events) follow the same ladder, and its order is
what makes them safe:

1. take the oldest *limit* messages of the queue, unacknowledged (``take_batch``: on Redis
   one atomic script; elsewhere kombu's ``get``) -- and again after step 4, batch after
   batch, until what waited when the run began is taken: memory bounded by *limit*;
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

from ..transport.batches import take_batch
from ..transport.queues import kept_connection, publish, queue_length

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
    """The ladder above over *queue*, batch after batch of at most *limit* messages (memory
    bounded by *limit*, whatever the backlog), until the queue held no more than when the run
    began: what a batch hands back is left for the next run, not taken again in this one.
    Raises only if the broker is unreachable."""
    messages = undecodable = 0
    with kept_connection(app) as conn:
        waiting = _waiting(conn, queue)
        while True:
            batch = take_batch(conn, queue, limit)
            taken = len(batch.bodies) + batch.malformed
            if not taken:
                return Drained(messages, undecodable, True)
            messages, undecodable = messages + taken, undecodable + batch.malformed
            if batch.malformed:
                logger.error(
                    "bugsnag_celery: dropping %d malformed message(s) from %s", batch.malformed, queue
                )
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
                    return Drained(messages, undecodable, False)
            batch.ack()
            # a batch that could not leave at all (BugSnag down): the rest waits for the next run
            if (sent.retry and not sent.left) or taken < limit or messages >= waiting:
                return Drained(messages, undecodable, True)


def _waiting(conn: Any, queue: str) -> int:
    """Messages in *queue* now (unknown: as if unbounded, the batches stop when it is empty)."""
    try:
        return queue_length(conn, queue)
    except Exception:
        return 1 << 62
