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

from celery import Celery

from ..payload.encoding import PayloadTooLarge
from ..payload.packing import event_body, event_dicts
from ..payload.wire import EVENTS_VERSION
from ..transport.http import Request, post
from ..transport.outcome import Next, decide, log_decision
from ..transport.queues import DEFAULT_PREFIX, message_count, publish, queue_names
from .drain import Sent, drain

__all__ = ["spool_payloads", "drain_spooled_events", "spooled_event_count"]

logger = logging.getLogger("bugsnag_celery")

VERSION = 2


def _message(request: Request) -> dict[str, object]:
    events = event_dicts(request) if request.holds_events() else json.loads(request.body)["events"]
    return {"v": VERSION, "kind": request.kind, "payload_version": request.payload_version,
            "events": events, "unknown": request.unknown}  # fmt: skip


def spool_payloads(app: Celery, requests: list[Request], prefix: str = DEFAULT_PREFIX) -> bool:
    """Publish the events of *requests* to the spool queue. True if the broker took all of them."""
    try:
        publish(app, queue_names(prefix).events, [_message(r) for r in requests])
        return True
    except Exception as exc:
        logger.error("bugsnag_celery: could not spool %d payload(s) to the broker: %s", len(requests), exc)
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
    app: Celery,
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
                request = Request(
                    endpoint, api_key, EVENTS_VERSION, event_body(api_key, events), kind="event"
                )
            except PayloadTooLarge:
                logger.error("bugsnag_celery: dropping a spooled event over 1 MB even after trimming")
                stats["dropped"] += 1
                continue
            except Exception as exc:
                logger.error("bugsnag_celery: dropping a malformed spooled message (%s)", type(exc).__name__)
                stats["dropped"] += 1
                continue
            outcome, reason = post(request, timeout)
            step = decide(outcome, unknown)
            log_decision(step, request.kind, len(events), reason)
            if step is Next.DONE:
                stats["delivered"] += 1
            elif step is Next.DROP or step is Next.GIVE_UP:
                stats["dropped"] += 1
            else:  # retry, or send again once: this message and all behind it wait for the next run
                if step is Next.SEND_AGAIN:
                    data = {**data, "v": VERSION, "events": events, "unknown": unknown + 1,
                            "payload_version": EVENTS_VERSION, "kind": "event"}  # fmt: skip
                    data.pop("body", None)
                    data.pop("endpoint", None)
                stats["requeued"] = len(bodies) - index
                return Sent([data, *bodies[index + 1 :]], True)
        return Sent([], True)

    drained = drain(app, queue_names(prefix).events, send, limit=limit)
    stats["dropped"] += drained.undecodable
    return stats


def spooled_event_count(app: Celery, prefix: str = DEFAULT_PREFIX) -> int:
    """Events waiting in the spool for a delivery run."""
    return message_count(app, queue_names(prefix).events)
