"""The spool: a durable queue on the Celery app's own broker for events not yet delivered.

Events that could not be sent (endpoint down, process shutting down) are published here as
JSON -- never pickle -- and the periodic delivery run drains the queue later. Using the
broker the app already has means no new server for the user to run, and the queue
survives worker restarts. The broker hands each message to one consumer, so two drains
running at once never send the same payload twice.

A message holds the events only: neither the endpoint nor the API key. They are sent with
the app's configuration at delivery time, so whoever can write to the broker cannot make
workers post anywhere, a configuration fixed later applies to what waits, and no key sits
on the broker in plain text. (Messages of the earlier format, ``"v"`` absent, are read too;
their endpoint and key are ignored.)
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..about import notifier_info
from ..payload.encoding import PayloadTooLarge, encode_payload
from ..transport.http import DELIVERED, PERMANENT, UNKNOWN, Payload, log_permanent, log_unknown, post
from ..transport.queues import DEFAULT_PREFIX, message_count, publish, queue_names
from .drain import Sent, drain

__all__ = ["spool_payloads", "drain_spooled_events", "spooled_event_count"]

logger = logging.getLogger("bugsnag_celery")

VERSION = 2


def _message(payload: Payload) -> dict[str, Any]:
    events = payload.event_dicts() if payload.holds_events() else json.loads(payload.body)["events"]
    return {"v": VERSION, "kind": payload.kind, "payload_version": payload.payload_version,
            "events": events, "unknown": payload.unknown}  # fmt: skip


def spool_payloads(app: Any, payloads: list[Payload], prefix: str = DEFAULT_PREFIX) -> bool:
    """Publish *payloads* to the spool queue. True if the broker took all of them."""
    try:
        publish(app, queue_names(prefix).events, [_message(p) for p in payloads])
        return True
    except Exception as exc:
        logger.error("bugsnag_celery: could not spool %d payload(s) to the broker: %s", len(payloads), exc)
        return False


def _events_of(data: Any) -> tuple[list[Any], int]:
    """The events a spooled message holds, and its unknown-outcome mark; raises if malformed."""
    if data.get("v") == VERSION:
        events, unknown = data["events"], data.get("unknown", 0)
    else:  # the earlier format: a whole body, with an endpoint and key we ignore
        events, unknown = json.loads(data["body"])["events"], 0
    if not isinstance(events, list) or not events or not all(isinstance(e, dict) for e in events):
        raise ValueError("no events")
    if not isinstance(unknown, int) or isinstance(unknown, bool):
        raise ValueError("bad unknown mark")
    return events, unknown


def drain_spooled_events(
    app: Any,
    *,
    api_key: str | None,
    endpoint: str,
    timeout: float = 10.0,
    limit: int = 10_000,
    prefix: str = DEFAULT_PREFIX,
) -> dict[str, int]:
    """Send what the spool holds, in order, with *api_key* to *endpoint* (the app's, now).

    A 2xx ends a message's life; so does a message that cannot be read or sent (malformed,
    over 1 MB, a permanent 4xx): dropped with one log line each, never blocking the ones
    behind. On a retryable failure the drain stops (the endpoint is unwell): that message
    and every one after it go back to the spool for the next run. Without an API key
    nothing is taken.
    """
    stats = {"delivered": 0, "dropped": 0, "requeued": 0}
    if not api_key:
        return stats

    def send(bodies: list[Any]) -> Sent:
        for index, data in enumerate(bodies):
            try:
                events, unknown = _events_of(data)
                envelope = {"apiKey": api_key, "payloadVersion": "4.0", "notifier": notifier_info(),
                            "events": events}  # fmt: skip
                payload = Payload(endpoint, api_key, "4.0", encode_payload(envelope), kind="event")
            except PayloadTooLarge:
                logger.error("bugsnag_celery: dropping a spooled event over 1 MB even after trimming")
                stats["dropped"] += 1
                continue
            except Exception as exc:
                logger.error("bugsnag_celery: dropping a malformed spooled message (%s)", type(exc).__name__)
                stats["dropped"] += 1
                continue
            outcome, reason = post(payload, timeout)
            if outcome == DELIVERED:
                stats["delivered"] += 1
            elif outcome == PERMANENT:
                log_permanent(payload, reason)
                stats["dropped"] += 1
            elif outcome == UNKNOWN and unknown:
                log_unknown("event", len(events), again=True)
                stats["dropped"] += 1
            else:
                if outcome == UNKNOWN:
                    log_unknown("event", len(events), again=False)
                    data = {**data, "v": VERSION, "events": events, "unknown": 1, "payload_version": "4.0",
                            "kind": "event"}  # fmt: skip
                    data.pop("body", None)
                    data.pop("endpoint", None)
                stats["requeued"] = len(bodies) - index
                return Sent([data, *bodies[index + 1 :]], True)
        return Sent([], True)

    drained = drain(app, queue_names(prefix).events, send, limit=limit)
    stats["dropped"] += drained.undecodable
    return stats


def spooled_event_count(app: Any, prefix: str = DEFAULT_PREFIX) -> int:
    """Events waiting in the spool for a delivery run."""
    return message_count(app, queue_names(prefix).events)
