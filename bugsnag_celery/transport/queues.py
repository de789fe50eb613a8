"""The package's own durable queues on the app's broker, and publishing to them.

Three queues per ``queue_prefix`` (default ``bugsnag_celery``): ``<prefix>.sessions``
(session counts on their way to delivery), ``<prefix>.events`` (events spooled when
BugSnag could not be reached) and ``<prefix>.status`` (the last delivery's outcome).
Messages are JSON, never pickle. A different prefix keeps apps (or test runs) that
share a broker apart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from kombu.entity import Exchange, Queue

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "DEFAULT_PREFIX",
    "QueueNames",
    "queue_names",
    "durable_queue",
    "connection",
    "publish",
    "bound_queue",
    "message_count",
    "Batch",
    "take_batch",
]

DEFAULT_PREFIX = "bugsnag_celery"


class QueueNames(NamedTuple):
    """The three queues of one ``queue_prefix``: the only place their names are spelled."""

    sessions: str
    events: str
    status: str


def queue_names(prefix: str = DEFAULT_PREFIX) -> QueueNames:
    return QueueNames(f"{prefix}.sessions", f"{prefix}.events", f"{prefix}.status")


# Bounded: a dead broker must not hold a task or a shutdown for long.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


@functools.lru_cache(maxsize=64)
def durable_queue(name: str) -> Queue:
    exchange = Exchange(name, type="direct", durable=True)
    return Queue(name, exchange, routing_key=name, durable=True)


#: A broker that accepts connections and never answers must not hang a flush or a shutdown.
SOCKET_TIMEOUTS = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}


def connection(app: Celery, write: bool = True) -> Any:
    """A connection to the app's broker with bounded socket waits (Redis ignores none by default).

    kombu's connections, queues and messages are left untyped here: kombu has
    type hints from 5.7 on only, and few of its methods have them even there.
    """
    options = dict(app.conf.broker_transport_options or {})
    for key, value in SOCKET_TIMEOUTS.items():
        options.setdefault(key, value)
    factory = app.connection_for_write if write else app.connection_for_read
    return factory(connect_timeout=5, transport_options=options)


def publish(app: Celery, name: str, bodies: Sequence[object]) -> None:
    """Publish JSON *bodies* to queue *name*, persistently. Raises if the broker refuses."""
    queue = durable_queue(name)
    with connection(app) as conn:
        producer = conn.Producer(serializer="json")
        for body in bodies:
            producer.publish(
                body,
                exchange=queue.exchange,
                routing_key=name,
                declare=[queue],
                delivery_mode=2,
                retry=True,
                retry_policy=RETRY_POLICY,
            )


def bound_queue(conn: Any, name: str) -> Any:
    """The queue bound to *conn*'s default channel, declared."""
    bound = durable_queue(name).bind(conn.default_channel)
    bound.declare()
    return bound


def message_count(app: Celery, name: str) -> int:
    with connection(app, write=False) as conn:
        _name, count, _consumers = bound_queue(conn, name).queue_declare()
        return int(count)


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
    There the whole queue is taken in one atomic ``RENAME`` to an in-flight key that is
    deleted after the 2xx, pushed back on failure, and adopted by a later run if the
    process dies in between. Other transports use kombu's ``get``/``ack``.
    """
    channel = conn.default_channel
    bound_queue(conn, name)
    if conn.transport.driver_type == "redis" and not getattr(channel, "global_keyprefix", ""):
        return _redis_batch(channel.client, name)
    return _kombu_batch(conn, name, limit)


def _kombu_batch(conn: Any, name: str, limit: int) -> Batch:
    bound = bound_queue(conn, name)
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


def _redis_batch(client: Any, name: str) -> Batch:
    import base64
    import json
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

    mine = take(name)
    if mine is None:  # the queue is empty
        return Batch([], lambda: None, lambda: None)
    items = client.lrange(mine, 0, -1)
    bodies: list[object] = []
    malformed = 0
    for item in items:
        try:
            envelope = json.loads(item)
            body = envelope["body"]
            if envelope.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            bodies.append(json.loads(body))
        except Exception:
            malformed += 1

    def ack() -> None:
        pipe = client.pipeline(transaction=True)
        pipe.delete(mine)
        pipe.srem(registry, mine)
        pipe.execute()

    return Batch(bodies, ack, lambda: give_back(mine, items), malformed)
