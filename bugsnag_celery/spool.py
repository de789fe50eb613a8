"""The spool: a durable queue on the Celery app's own broker for payloads not yet delivered.

Events that could not be sent (endpoint down, process shutting down) are published here as
JSON -- never pickle -- and the periodic delivery task drains the queue later. Using the
broker the app already has means no new server for the user to run, and the queue
survives worker restarts. The broker hands each message to one consumer, so two drains
running at once never send the same payload twice.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .delivery import DELIVERED, PERMANENT, Payload, log_permanent, post
from .queues import DEFAULT_PREFIX, bound_queue, connection, message_count, publish

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
        publish(app, f"{prefix}.events", bodies)
        return True
    except Exception as exc:
        logger.error("bugsnag_celery: could not spool %d payload(s) to the broker: %s", len(payloads), exc)
        return False


def drain_spooled_events(
    app: Any, *, timeout: float = 10.0, limit: int = 10_000, prefix: str = DEFAULT_PREFIX
) -> dict[str, int]:
    """Send what the spool holds. Acknowledge a message only after a 2xx (or a permanent 4xx).

    On a retryable failure the message goes back and the drain stops: the endpoint is
    unwell, the next run tries again.
    """
    stats = {"delivered": 0, "dropped": 0, "requeued": 0}
    with connection(app, write=False) as conn:
        bound = bound_queue(conn, f"{prefix}.events")
        for _ in range(limit):
            message = bound.get(no_ack=False, accept=["json"])
            if message is None:
                break
            try:
                data = message.decode()
                body = data["body"].encode("utf-8")
                api_key = json.loads(body).get("apiKey", "")
                payload = Payload(data["endpoint"], api_key, data["payload_version"], body, kind=data["kind"])
            except Exception:
                logger.error("bugsnag_celery: dropping a malformed spooled message")
                message.ack()
                stats["dropped"] += 1
                continue
            outcome, reason = post(payload, timeout)
            if outcome == DELIVERED:
                message.ack()
                stats["delivered"] += 1
            elif outcome == PERMANENT:
                log_permanent(payload, reason)
                message.ack()
                stats["dropped"] += 1
            else:
                message.requeue()
                stats["requeued"] += 1
                break
    return stats


def spooled_event_count(app: Any, prefix: str = DEFAULT_PREFIX) -> int:
    return message_count(app, f"{prefix}.events")
