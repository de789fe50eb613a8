"""The package's own durable queues on the app's broker, and publishing to them.

Three queues per ``queue_prefix`` (default ``bugsnag_celery``): ``<prefix>.sessions``
(session counts on their way to delivery), ``<prefix>.events`` (events spooled when
BugSnag could not be reached) and ``<prefix>.status`` (the last delivery's outcome).
Messages are JSON, never pickle. A different prefix keeps apps (or test runs) that
share a broker apart.
"""

from __future__ import annotations

import functools
from typing import Any

from kombu.entity import Exchange, Queue

__all__ = ["DEFAULT_PREFIX", "durable_queue", "publish", "bound_queue"]

DEFAULT_PREFIX = "bugsnag_celery"
# Bounded: a dead broker must not hold a task or a shutdown for long.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


@functools.lru_cache(maxsize=64)
def durable_queue(name: str) -> Queue:
    exchange = Exchange(name, type="direct", durable=True)
    return Queue(name, exchange, routing_key=name, durable=True)


def publish(app: Any, name: str, bodies: list[Any]) -> None:
    """Publish JSON *bodies* to queue *name*, persistently. Raises if the broker refuses."""
    queue = durable_queue(name)
    with app.connection_for_write() as conn:
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


def message_count(app: Any, name: str) -> int:
    with app.connection_for_read() as conn:
        _name, count, _consumers = bound_queue(conn, name).queue_declare()
        return int(count)
