"""Events into v4 request bodies under BugSnag's limit: as few bodies as fit, in order.

The failure path encodes each event once, on the task's thread (``encode_json``); the
sender thread then hands what is queued for one endpoint and key to :func:`pack_events`,
which packs as many as fit under the limit into one body without encoding anything again
(a storm of failures becomes a few requests a second, not one per failure). An event too
big alone goes through :func:`encode_payload`'s trimming. Pure functions: the sender does
the sending, the bookkeeping and the log lines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from .encoding import PayloadTooLarge, encode_json, encode_payload
from .wire import MAX_BODY_BYTES, event_envelope

__all__ = [
    "Pending",
    "Packed",
    "pack_events",
    "event_body",
    "event_fragments",
    "event_dicts",
    "envelope_around",
]


class Pending(Protocol):
    """Events handed over for sending: as dicts, or each already encoded (one JSON object each)."""

    @property
    def events(self) -> list[dict[str, Any]] | None: ...

    @property
    def encoded(self) -> list[bytes] | None: ...


P = TypeVar("P", bound=Pending)


def event_fragments(pending: Pending) -> list[bytes]:
    """Each event's JSON: as handed over, or encoded now."""
    if pending.encoded is not None:
        return pending.encoded
    return [encode_json(event) for event in pending.events or ()]


def event_dicts(pending: Pending) -> list[dict[str, Any]]:
    """The events as dicts (to trim one over the size limit, or to spool them)."""
    if pending.events is not None:
        return pending.events
    return [json.loads(fragment) for fragment in pending.encoded or ()]


def envelope_around(envelope: dict[str, object]) -> tuple[bytes, bytes]:
    """The bytes before and after the events of a v4 payload whose last key is ``events``.

    ``head + b",".join(encoded events) + tail`` is then byte for byte what encoding the
    whole payload would give: the sender encodes each event once, then packs as many as fit
    under the size limit into one request without encoding anything again.
    """
    body = encode_json({**envelope, "events": []})
    if not body.endswith(b"[]}"):  # pragma: no cover - events is the last key by construction
        raise ValueError("the envelope's last key must be events")
    return body[:-2], b"]}"


def event_body(api_key: str, events: Sequence[object], limit: int = MAX_BODY_BYTES) -> bytes:
    """The v4 body of *events*, trimmed under *limit*; raises :class:`PayloadTooLarge`."""
    return encode_payload(event_envelope(api_key, events), limit)


@dataclass
class Packed(Generic[P]):
    """What :func:`pack_events` made of the pending events of one endpoint and key."""

    #: The request bodies, in sending order, each with the pendings it carries.
    bodies: list[tuple[bytes, list[P]]] = field(default_factory=list)
    #: Pendings that get no request, in the order handed over: ``(pending, too_large)``;
    #: with no events there is nothing to send, and one too large even after trimming
    #: would be refused by BugSnag (a 400) anyway.
    skipped: list[tuple[P, bool]] = field(default_factory=list)


def pack_events(api_key: str, pending: Sequence[P], limit: int = MAX_BODY_BYTES) -> Packed[P]:
    """*pending* (one endpoint and key) as few bodies of at most *limit* bytes, in order.

    A body is filled until the next pending's events would not fit, then the next body
    starts with them. A pending too big for a body of its own is trimmed into one, sent
    in its turn without closing the body being filled.
    """
    head, tail = envelope_around(event_envelope(api_key, []))
    room = limit - len(head) - len(tail)
    packed: Packed[P] = Packed()
    chunk: list[P] = []
    fragments: list[bytes] = []
    size = 0
    for p in pending:
        encoded_events = event_fragments(p)
        if not encoded_events:  # nothing to send: done
            packed.skipped.append((p, False))
            continue
        fragment = b",".join(encoded_events)
        if len(fragment) > room:
            try:
                body = event_body(api_key, event_dicts(p), limit)
            except PayloadTooLarge:
                packed.skipped.append((p, True))
                continue
            packed.bodies.append((body, [p]))
            continue
        if chunk and size + 1 + len(fragment) > room:
            packed.bodies.append((head + b",".join(fragments) + tail, chunk))
            chunk, fragments, size = [], [], 0
        size += len(fragment) + (1 if fragments else 0)
        chunk.append(p)
        fragments.append(fragment)
    if chunk:
        packed.bodies.append((head + b",".join(fragments) + tail, chunk))
    return packed
