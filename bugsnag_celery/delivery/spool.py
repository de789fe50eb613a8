"""The spool: a durable queue on the Celery app's own broker for events not yet delivered.

Events that could not be sent (endpoint down, process shutting down) are published here as
JSON -- never pickle -- and the periodic delivery run drains the queue later. Using the
broker the app already has means no new server for the user to run, and the queue
survives worker restarts. The broker hands each message to one consumer, so two drains
running at once never send the same payload twice.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..transport.http import DELIVERED, PERMANENT, Payload, log_permanent, post
from ..transport.queues import DEFAULT_PREFIX, message_count, publish, queue_names
from .drain import Sent, drain

__all__ = ["spool_payloads", "drain_spooled_events", "spooled_event_count"]

logger = logging.getLogger("bugsnag_celery")


def spool_payloads(app: Any, payloads: list[Payload], prefix: str = DEFAULT_PREFIX) -> bool:
    """Publish *payloads* to the spool queue. True if the broker took all of them."""
    try:
        bodies = [
            {"kind": p.kind, "endpoint": p.endpoint, "payload_version": p.payload_version,
             "body": p.body.decode("utf-8")}
            for p in payloads
        ]  # fmt: skip
        publish(app, queue_names(prefix).events, bodies)
        return True
    except Exception as exc:
        logger.error("bugsnag_celery: could not spool %d payload(s) to the broker: %s", len(payloads), exc)
        return False


def drain_spooled_events(
    app: Any, *, timeout: float = 10.0, limit: int = 10_000, prefix: str = DEFAULT_PREFIX
) -> dict[str, int]:
    """Send what the spool holds, in order. A 2xx or a permanent 4xx ends a message's life.

    On a retryable failure the drain stops (the endpoint is unwell): that message and
    every one after it go back to the spool for the next run.
    """
    stats = {"delivered": 0, "dropped": 0, "requeued": 0}

    def send(bodies: list[Any]) -> Sent:
        for index, data in enumerate(bodies):
            try:
                body = data["body"].encode("utf-8")
                api_key = json.loads(body).get("apiKey", "")
                payload = Payload(data["endpoint"], api_key, data["payload_version"], body, kind=data["kind"])
            except Exception:
                logger.error("bugsnag_celery: dropping a malformed spooled message")
                stats["dropped"] += 1
                continue
            outcome, reason = post(payload, timeout)
            if outcome == DELIVERED:
                stats["delivered"] += 1
            elif outcome == PERMANENT:
                log_permanent(payload, reason)
                stats["dropped"] += 1
            else:
                stats["requeued"] = len(bodies) - index
                return Sent(bodies[index:], True)
        return Sent([], True)

    drained = drain(app, queue_names(prefix).events, send, limit=limit)
    stats["dropped"] += drained.undecodable
    return stats


def spooled_event_count(app: Any, prefix: str = DEFAULT_PREFIX) -> int:
    """Events waiting in the spool for a delivery run."""
    return message_count(app, queue_names(prefix).events)
