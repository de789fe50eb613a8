"""How big a message may be on each broker, measured by what the broker finally stores.

Every message the package writes (spooled events, session counts, the status) is JSON that
kombu wraps before the broker stores it: on its virtual transports (Redis, SQS, the
filesystem) the body is base64-encoded inside a JSON envelope of headers and properties,
and the SQS transport base64-encodes that envelope once more. A body that fits in 1 MB of
JSON is ~1.8 MB on SQS, whose limit is 256 KiB: a spooled batch of merged events was
refused there, and lost. :func:`message_limit` says, for a connection, the largest JSON
body whose stored form stays under the broker's limit; :func:`stored_size` what a body of
a given size costs the broker. Writers split what they publish by the first; the spool's
bound adds up the second. Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = ["ENVELOPE_BYTES", "BrokerLimit", "broker_limit", "message_limit", "stored_size"]

#: kombu's envelope around a body (headers, properties, delivery info, the queue's and
#: exchange's names), at most: ~300 bytes with the package's names, 2 KiB allowed.
ENVELOPE_BYTES = 2_048

MIB = 1 << 20


class BrokerLimit(NamedTuple):
    """A broker's limit on what it stores for one message, and how kombu encodes a body for it."""

    stored: int  # bytes the broker stores for one message, at most
    body_base64: bool  # the body is base64-encoded in kombu's envelope (virtual transports)
    envelope_base64: bool  # the whole envelope is base64-encoded again (SQS)


#: By kombu ``driver_type``. SQS: 256 KiB, the limit of queues made before 2025 and of
#: any queue whose ``MaximumMessageSize`` was left at the old default (newer queues take
#: 1 MiB; 256 KiB fits both). RabbitMQ: 16 MiB, its default ``max_message_size`` since 4.0
#: (128 MiB before). Redis: 512 MiB per list item.
_LIMITS = {
    "sqs": BrokerLimit(262_144, True, True),
    "amqp": BrokerLimit(16 * MIB, False, False),
    "redis": BrokerLimit(512 * MIB, True, False),
    "filesystem": BrokerLimit(512 * MIB, True, False),
    "memory": BrokerLimit(512 * MIB, True, False),
}
#: A transport not in the table: as small as SQS's, with its encoding (the other kombu
#: transports with a limit -- Azure, ZooKeeper, Kafka -- take at least that much).
_UNKNOWN = BrokerLimit(262_144, True, True)


def _base64(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _unbase64(n: int) -> int:
    """The largest input whose base64 is at most *n* bytes."""
    return n // 4 * 3


def broker_limit(driver_type: str, transport_options: Mapping[str, Any] | None = None) -> BrokerLimit:
    """The limit of the broker behind kombu's *driver_type*, with the encodings its options choose."""
    options = transport_options or {}
    limit = _LIMITS.get(driver_type, _UNKNOWN)
    if limit.body_base64 and str(options.get("body_encoding", "base64")).lower() != "base64":
        limit = limit._replace(body_base64=False)
    if limit.envelope_base64 and options.get("sqs_base64_encoding", True) is False:
        limit = limit._replace(envelope_base64=False)
    return limit


def stored_size(limit: BrokerLimit, body: int) -> int:
    """What the broker stores, at most, for a JSON body of *body* bytes."""
    size = (_base64(body) if limit.body_base64 else body) + ENVELOPE_BYTES
    return _base64(size) if limit.envelope_base64 else size


def message_limit(limit: BrokerLimit) -> int:
    """The largest JSON body (bytes) whose stored form stays within *limit*."""
    size = _unbase64(limit.stored) if limit.envelope_base64 else limit.stored
    size -= ENVELOPE_BYTES
    return _unbase64(size) if limit.body_base64 else size
