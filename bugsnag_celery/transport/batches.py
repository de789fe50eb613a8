"""Taking messages from the package's queues in batches, and keeping the spool under its bound.

A delivery run takes a queue's oldest messages a batch at a time, unacknowledged, and
acknowledges them only once they left (or hands them back). On Redis a batch moves in one
atomic script; elsewhere through kombu's ``get``/``ack``. :func:`trim_oldest` drops the
oldest messages of a queue until what the broker stores for it is under a number of bytes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

from . import folders
from .limits import BrokerLimit, stored_size
from .queues import bound_queue

__all__ = ["Batch", "take_batch", "trim_oldest", "peek", "peek_oldest", "decoded"]


class Batch:
    """Messages taken from a queue, to be acknowledged (after a 2xx) or handed back."""

    def __init__(
        self, bodies: list[object], ack: Callable[[], None], requeue: Callable[[], None], malformed: int = 0
    ) -> None:
        self.bodies = bodies
        self._ack, self._requeue = ack, requeue
        self.malformed = malformed

    def ack(self) -> None:
        self._ack()

    def requeue(self) -> None:
        self._requeue()


def take_batch(conn: Any, name: str, limit: int) -> Batch:
    """Take up to *limit* JSON messages from queue *name*, unacknowledged.

    On Redis, kombu's per-message ``basic_get``/``ack`` costs three round trips and a
    new redis-py pipeline each (about 0.5 ms a message here: 10,000 messages in 5 s).
    There the oldest *limit* messages move in one atomic script to an in-flight key that is
    deleted after the 2xx, pushed back on failure, and adopted by a later run if the
    process dies in between (a whole backlog at once held 300,000 messages, 623 MB, in one
    process). Other transports use kombu's ``get``/``ack``.
    """
    channel = conn.default_channel
    bound = bound_queue(conn, name)
    if _redis_fast_path(conn):
        return _redis_batch(channel.client, name, limit)
    return _kombu_batch(bound, limit)


def peek_oldest(conn: Any, name: str) -> object | None:
    """The JSON body of the oldest message of queue *name*, left where it is (None: empty)."""
    bodies = peek(conn, name, 1)
    return bodies[0] if bodies else None


def peek(conn: Any, name: str, limit: int) -> list[object]:
    """The JSON bodies of up to *limit* of queue *name*'s oldest messages (oldest first),
    left where they are: what a check reads ("why do counts wait", the delivery status, the
    beat's mark), many processes at once.

    Taking a message and handing it back (kombu's ``get`` and ``requeue``) hid it from every
    other reader meanwhile (a status read found no status while a pool child's check held
    it), and left it hidden for the broker's visibility time-out when the reader died or
    the broker went away in between: on Redis in kombu's unacked hash (a restarted Redis once
    held 76 sessions there), on SQS in flight (a pool child stopped by a warm shutdown
    mid-check: 10 of 60 sessions out of sight). So Redis is read with one ``LRANGE``, SQS
    with a receive whose visibility time-out is 0 (the message stays visible), the embedded
    broker's files where they lie (taking one removes it: a reader that dies mid-check loses
    it, and handing it back made it the newest), and only RabbitMQ, which hands back at
    once what a dead reader held, takes and hands back. Undecodable bodies are skipped.
    """
    if _redis_fast_path(conn):
        bodies: list[object] = []
        items = conn.default_channel.client.lrange(name, -limit, -1)  # kombu pushes left, takes right
        for item in reversed(items):
            try:
                bodies.append(json.loads(_redis_body(item)))
            except Exception:
                pass
        return bodies
    if conn.transport.driver_type == "filesystem":
        return decoded(folders.peek(conn.default_channel, name, limit))
    if conn.transport.driver_type == "sqs":
        try:
            return _sqs_peek(conn, name, limit)
        except Exception:  # a kombu whose SQS channel is laid out otherwise: as elsewhere
            pass
    bound = bound_queue(conn, name)
    messages: list[Any] = []
    try:
        while len(messages) < limit and (message := bound.get(no_ack=False, accept=["json"])) is not None:
            messages.append(message)
        return decoded(messages)
    finally:
        for message in messages:
            message.requeue()


def decoded(messages: list[Any]) -> list[object]:
    """The bodies of kombu *messages*, an undecodable one left out."""
    bodies: list[object] = []
    for message in messages:
        try:
            bodies.append(message.decode())
        except Exception:
            pass
    return bodies


def _sqs_peek(conn: Any, name: str, limit: int) -> list[object]:
    """Up to *limit* (at most 10: one receive) messages of SQS queue *name*, received with a
    visibility time-out of 0, so they never leave the others' sight; oldest first by
    ``SentTimestamp`` (a standard queue keeps no order)."""
    channel = conn.default_channel
    url = channel._new_queue(name)  # kombu's queue-URL cache (predefined queues included)
    answer = channel.sqs(queue=name).receive_message(
        QueueUrl=url, MaxNumberOfMessages=max(1, min(limit, 10)), VisibilityTimeout=0,
        WaitTimeSeconds=0, AttributeNames=["SentTimestamp"],
    )  # fmt: skip
    received: list[dict[str, Any]] = answer.get("Messages", [])
    received.sort(key=lambda m: int(m.get("Attributes", {}).get("SentTimestamp", 0)))
    bodies: list[object] = []
    for message in received:
        raw = message["Body"]
        try:  # kombu's envelope, as JSON, base64-encoded again unless sqs_base64_encoding is off
            envelope = json.loads(raw if raw.lstrip().startswith("{") else base64.b64decode(raw))
            bodies.append(channel.Message(envelope, channel=channel).decode())
        except Exception:
            pass
    return bodies


def _redis_fast_path(conn: Any) -> bool:
    channel = conn.default_channel
    return bool(conn.transport.driver_type == "redis" and not getattr(channel, "global_keyprefix", ""))


def _kombu_batch(bound: Any, limit: int) -> Batch:
    messages: list[Any] = []
    bodies: list[object] = []
    malformed = 0
    while len(messages) < limit:
        message = bound.get(no_ack=False, accept=["json"])
        if message is None:
            break
        messages.append(message)
        try:
            bodies.append(message.decode())
        except Exception:
            malformed += 1

    def ack() -> None:
        for message in messages:
            message.ack()

    def requeue() -> None:
        for message in messages:
            message.requeue()

    return Batch(bodies, ack, requeue, malformed)


#: An in-flight batch older than this was taken by a delivery that died: adopt it. Far
#: longer than any delivery run takes (each request has its own timeout).
ORPHAN_AFTER = 3600.0


#: Moves the oldest ARGV[1] messages of KEYS[1] (kombu pushes on the left, takes from the
#: right) to the in-flight list KEYS[2], registered in KEYS[3]; returns how many. Atomic.
_TAKE_OLDEST = """
local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
if #items == 0 then return 0 end
redis.call('LTRIM', KEYS[1], 0, -#items - 1)
redis.call('SADD', KEYS[3], KEYS[2])
for i = 1, #items, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items)))
end
return #items
"""


def _redis_batch(client: Any, name: str, limit: int) -> Batch:
    import time
    import uuid

    from redis.exceptions import ResponseError, WatchError

    registry = f"{name}.inflight"  # a set of in-flight keys: no keyspace SCAN per run

    def take(source: str) -> str | None:
        """Atomically move *source* to a new in-flight key of ours; None if it is gone."""
        key = f"{name}.inflight.{time.time():.0f}.{uuid.uuid4().hex}"
        pipe = client.pipeline(transaction=True)
        pipe.sadd(registry, key)
        pipe.rename(source, key)
        try:
            pipe.execute()
        except ResponseError:  # no such key: nothing to take (or another run took it)
            client.srem(registry, key)
            return None
        return key

    def give_back(key: str, items: Sequence[bytes | str]) -> None:
        """Push *items* back to the queue -- only if *key* is still ours, atomically."""
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                if not pipe.exists(key):
                    return  # adopted by another run: it is theirs now
                pipe.multi()
                if items:
                    pipe.rpush(name, *items)
                pipe.delete(key)
                pipe.srem(registry, key)
                pipe.execute()
            except WatchError:
                return

    now = time.time()
    for member in client.smembers(registry):
        key = member.decode() if isinstance(member, bytes) else str(member)
        try:
            taken_at = float(key[len(registry) + 1 :].split(".", 1)[0])
        except ValueError:
            continue
        if not client.exists(key):
            client.srem(registry, key)
        elif now - taken_at > ORPHAN_AFTER:
            claimed = take(key)  # the delivery that took it died: one adopter wins
            if claimed is not None:
                give_back(claimed, client.lrange(claimed, 0, -1))

    mine = f"{name}.inflight.{time.time():.0f}.{uuid.uuid4().hex}"
    if not client.eval(_TAKE_OLDEST, 3, name, mine, registry, max(int(limit), 1)):
        return Batch([], lambda: None, lambda: None)  # the queue is empty
    items = client.lrange(mine, 0, -1)
    bodies: list[object] = []
    malformed = 0
    for item in items:
        try:
            bodies.append(json.loads(_redis_body(item)))
        except Exception:
            malformed += 1

    def ack() -> None:
        pipe = client.pipeline(transaction=True)
        pipe.delete(mine)
        pipe.srem(registry, mine)
        pipe.execute()

    return Batch(bodies, ack, lambda: give_back(mine, items), malformed)


#: Finds, from the newest message of KEYS[1] (kombu pushes on the left), the first that
#: takes the bytes stored past ARGV[1]; removes it and every older one, and returns them,
#: oldest last. Atomic: a writer's message is either counted or arrives after.
_TRIM_OLDEST = """
local total, length, start = 0, redis.call('LLEN', KEYS[1]), 0
while start < length do
    local items = redis.call('LRANGE', KEYS[1], start, start + 999)
    for i = 1, #items do
        total = total + #items[i]
        if total > tonumber(ARGV[1]) then
            local cut = start + i - 1
            local dropped = redis.call('LRANGE', KEYS[1], cut, -1)
            redis.call('LTRIM', KEYS[1], 0, cut - 1)
            return dropped
        end
    end
    start = start + 1000
end
return {}
"""


def trim_oldest(conn: Any, name: str, max_bytes: int, limit: BrokerLimit, largest: int) -> list[bytes]:
    """Drop the oldest messages of queue *name* until the broker stores at most *max_bytes* for
    it; return their bodies (JSON), for the caller to count and log.

    On Redis one script measures the stored items exactly and trims. Elsewhere there is no
    way to read a message without taking it: when the queue may hold more (*largest*: the
    largest body written to it, by the queue's length) every message is taken, oldest first,
    the stored size of each reckoned from its body (``transport/limits.py``), the oldest
    past the bound acknowledged (gone) and the rest handed back. That holds the queue in
    this process's memory for the moment, up to about *max_bytes*.
    """
    bound = bound_queue(conn, name)
    if _redis_fast_path(conn):
        items = conn.default_channel.client.eval(_TRIM_OLDEST, 1, name, max_bytes)
        return [_dropped_body(item) for item in items]
    _name, waiting, _consumers = bound.queue_declare()
    if int(waiting) * stored_size(limit, largest) <= max_bytes:
        return []  # it cannot be over its bound: nothing to read
    messages: list[Any] = []
    while True:
        message = bound.get(no_ack=False, accept=["json"])
        if message is None:
            break
        messages.append(message)
    total = sum(stored_size(limit, len(m.body)) for m in messages)
    dropped: list[bytes] = []
    for message in messages:
        if total > max_bytes:
            total -= stored_size(limit, len(message.body))
            dropped.append(message.body)
            message.ack()
        else:
            message.requeue()
    return dropped


def _redis_body(item: bytes | str) -> bytes:
    """The JSON body of a list item kombu wrote (its envelope, the body base64-encoded)."""
    envelope = json.loads(item)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        return base64.b64decode(body)
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _dropped_body(item: bytes | str) -> bytes:
    """A trimmed item's body; ``b""`` for one that is not kombu's envelope (counted as malformed)."""
    try:
        return _redis_body(item)
    except Exception:
        return b""
