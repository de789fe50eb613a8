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
from collections.abc import Callable
from typing import Any

from celery import Celery

from ..payload.encoding import PayloadTooLarge, encode_json
from ..payload.packing import envelope_around, event_body, event_fragments, pack_events
from ..payload.wire import EVENTS_VERSION, MAX_BODY_BYTES, event_envelope
from ..transport.batches import trim_oldest
from ..transport.http import Request, post
from ..transport.limits import broker_limit
from ..transport.outcome import Next, Outcome, decide, log_decision, read_timeout, send_order, unknown_after
from ..transport.queues import (
    DEFAULT_PREFIX,
    body_limit,
    broker_problem,
    kept_connection,
    message_count,
    publish,
    queue_names,
)
from .drain import Sent, drain

__all__ = ["spool_messages", "spool_payloads", "drain_spooled_events", "trim_spool", "spooled_event_count"]

logger = logging.getLogger("bugsnag_celery")

VERSION = 2


class _One:
    """One encoded event, packed on its own (``payload/packing.py``'s ``Pending``)."""

    events = None

    def __init__(self, fragment: bytes) -> None:
        self.encoded = [fragment]


#: The spool holds no key: its messages are packed as bodies with a key of a key's length.
_NO_KEY = "0" * 32


def spool_messages(request: Request, limit: int) -> tuple[list[bytes], int]:
    """The spool messages of *request*'s events, each at most *limit* bytes of JSON, in order;
    and how many events could not be made to fit even trimmed (dropped).

    A request holds up to BugSnag's 1 MB of merged events; SQS stores at most 256 KiB of
    what kombu makes of a body (base64, twice): its events are split over as many messages
    as that takes, and an event too big alone is trimmed as for BugSnag, to fit one.
    """
    if request.holds_events():
        fragments = event_fragments(request)
    else:
        fragments = [encode_json(event) for event in json.loads(request.body)["events"]]
    head, tail = envelope_around(
        {"v": VERSION, "kind": request.kind, "payload_version": request.payload_version,
         "unknown": request.unknown, "events": []}
    )  # fmt: skip
    v4_head, v4_tail = envelope_around(event_envelope(_NO_KEY, []))
    room = min(limit, MAX_BODY_BYTES) - max(0, len(head) - len(v4_head))
    packed = pack_events(_NO_KEY, [_One(f) for f in fragments], room)
    messages = []
    for body, _carried in packed.bodies:
        if body.startswith(v4_head) and body.endswith(v4_tail):
            messages.append(head + body[len(v4_head) : -len(v4_tail)] + tail)
        else:  # pragma: no cover - encode_payload writes the envelope as envelope_around does
            events = b",".join(encode_json(e) for e in json.loads(body)["events"])
            messages.append(head + events + tail)
    return messages, sum(len(p.encoded) for p, _too_large in packed.skipped)


def spool_payloads(
    app: Celery,
    requests: list[Request],
    prefix: str = DEFAULT_PREFIX,
    lost: Callable[[int], None] | None = None,
) -> bool:
    """Publish the events of *requests* to the spool queue, in messages the broker takes
    (:func:`spool_messages`). True if the broker took all of them. Events that fit no
    message even trimmed are dropped, logged and handed to *lost* (counted in ``status``)."""
    try:
        limit = body_limit(app)
        messages: list[bytes] = []
        for request in requests:
            made, too_large = spool_messages(request, limit)
            messages += made
            if too_large:
                logger.error(
                    "bugsnag_celery: dropping %d event(s) over the broker's message limit (%d bytes) even "
                    "after trimming", too_large, limit,
                )  # fmt: skip
                if lost is not None:
                    lost(too_large)
        publish(app, queue_names(prefix).events, messages)
        return True
    except Exception as exc:
        logger.error(
            "bugsnag_celery: could not spool %d payload(s): %s", len(requests), broker_problem(exc)[1]
        )
        return False


def _events_of(data: Any) -> tuple[list[Any], int]:
    """The events a spooled message holds, and its unknown-outcome mark; raises if malformed."""
    if data.get("v") == VERSION:
        events, unknown = data["events"], data.get("unknown", 0)
    else:  # the earlier format: a whole body, with an endpoint and key we ignore
        events, unknown = json.loads(data["body"])["events"], 0
    if not isinstance(events, list) or not events or not all(isinstance(e, dict) for e in events):
        raise ValueError("no events")
    if not isinstance(unknown, int) or isinstance(unknown, bool) or unknown < 0:
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
    max_bytes: int | None = None,
) -> dict[str, int]:
    """Send what the spool holds, with *api_key* to *endpoint* (the app's, now).

    First, with *max_bytes*, the spool is bounded: while the broker stores more than that for
    it, its oldest messages are dropped (:func:`trim_spool`), their events counted in
    ``overflow`` and logged.

    A 2xx ends a message's life; so does a message that cannot be read or sent (malformed,
    over 1 MB, a permanent 4xx): dropped with one log line each, never blocking the ones
    behind. In the policy's order (``outcome.send_order``: a patient second send first,
    kept ones last), oldest first within each; at the first message without a 2xx or
    a 4xx the drain stops (BugSnag is unwell): that message, marked as the outcome says,
    and every one not yet sent go back to the spool for the next run, so a hung BugSnag
    holds a run for one request's wait. Without an API key nothing is taken.
    ``unanswered``: of those handed back, the messages BugSnag left without an answer, in this
    run or an earlier one (hung, or slow).
    """
    stats = {"delivered": 0, "dropped": 0, "requeued": 0, "unanswered": 0, "overflow": 0}
    if max_bytes is not None:
        stats["overflow"], stats["dropped"] = trim_spool(app, max_bytes, prefix)
    if not api_key:
        return stats

    def send(bodies: list[Any]) -> Sent:
        readable: list[tuple[Any, list[Any], int]] = []
        for data in bodies:
            try:
                events, unknown = _events_of(data)
            except Exception as exc:
                logger.error("bugsnag_celery: dropping a malformed spooled message (%s)", type(exc).__name__)
                stats["dropped"] += 1
                continue
            readable.append((data, events, unknown))
        readable.sort(key=lambda item: send_order(item[2]))  # stable: oldest first within a mark
        for index, (_data, events, unknown) in enumerate(readable):
            try:
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
            outcome, reason = post(request, read_timeout(timeout, unknown))
            step = decide(outcome, unknown)
            log_decision(step, request.kind, len(events), reason, timeout)
            if step is Next.DONE:
                stats["delivered"] += 1
            elif step is Next.DROP:
                stats["dropped"] += 1
            else:  # retry; no answer (sent again, patiently, or kept): this and the rest wait
                again = {"v": VERSION, "kind": "event", "payload_version": EVENTS_VERSION, "events": events,
                         "unknown": unknown_after(outcome, unknown)}  # fmt: skip
                rest = [item[0] for item in readable[index + 1 :]]
                stats["requeued"] = 1 + len(rest)
                stats["unanswered"] = int(outcome is Outcome.UNKNOWN) + sum(
                    1 for item in readable[index + 1 :] if item[2]
                )
                return Sent([again, *rest], True)
        return Sent([], True)

    drained = drain(app, queue_names(prefix).events, send, limit=limit)
    stats["dropped"] += drained.undecodable
    return stats


def trim_spool(app: Celery, max_bytes: int, prefix: str = DEFAULT_PREFIX) -> tuple[int, int]:
    """Drop the oldest spooled messages while the broker stores over *max_bytes* for the spool;
    logged. Returns the events they held, and how many of them could not be read."""
    name = queue_names(prefix).events
    with kept_connection(app) as conn:
        limit = broker_limit(conn.transport.driver_type, conn.transport_options)
        largest = min(body_limit(app), 2 * MAX_BODY_BYTES)  # what the spool's writers write, at most
        dropped = trim_oldest(conn, name, max_bytes, limit, largest)
    events = unreadable = 0
    for body in dropped:
        try:
            events += len(_events_of(json.loads(body))[0])
        except Exception:
            unreadable += 1
    if dropped:
        logger.error(
            "bugsnag_celery: the spool of undelivered events is over spool_max_bytes (%d bytes): dropped its "
            "%d oldest message(s), %d event(s)%s", max_bytes, len(dropped), events,
            f" and {unreadable} unreadable message(s)" if unreadable else "",
        )  # fmt: skip
    return events, unreadable


def spooled_event_count(app: Celery, prefix: str = DEFAULT_PREFIX) -> int:
    """Events waiting in the spool for a delivery run."""
    return message_count(app, queue_names(prefix).events)
