"""Real brokers for the tests: which ones answer here, and each test's own queue on them.

The embedded filesystem transport always works; Redis and RabbitMQ are used when they
answer on 127.0.0.1. On a machine without them those tests skip with a reason, unless
``BUGSNAG_CELERY_REQUIRE_BROKERS=1`` (set by ``.ci/run``) turns the skip into a failure.
Every test gets its own queue name; Redis tests use database 11 and delete only the keys
of their own queue; RabbitMQ tests delete only their own queue and exchange.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

REDIS_DB = 11
REQUIRE_BROKERS = os.environ.get("BUGSNAG_CELERY_REQUIRE_BROKERS") == "1"


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def need_service(name: str, port: int) -> None:
    if _reachable(port):
        return
    message = f"{name} is not reachable on 127.0.0.1:{port}"
    if REQUIRE_BROKERS:
        pytest.fail(f"{message}, and BUGSNAG_CELERY_REQUIRE_BROKERS=1 requires it")
    pytest.skip(f"{message} (set BUGSNAG_CELERY_REQUIRE_BROKERS=1 to make this a failure)")


@dataclass
class Broker:
    """A broker URL plus what a producer needs to talk to it, and how to clean up after."""

    name: str
    url: str
    queue: str
    transport_options: dict[str, Any] = field(default_factory=dict)
    cleanup: Callable[[], None] = lambda: None

    def env(self) -> dict[str, str]:
        return {
            "BSC_BROKER_URL": self.url,
            "BSC_TRANSPORT_OPTIONS": json.dumps(self.transport_options),
            "BSC_QUEUE": self.queue,
        }

    def producer(self) -> Celery:
        """A fresh app on the same broker (never the worker's module: stale imports)."""
        app = Celery(f"producer-{uuid.uuid4().hex[:6]}", broker=self.url, set_as_current=False)
        app.conf.broker_transport_options = self.transport_options
        if self.url.startswith("filesystem"):
            from bugsnag_celery.tools.fs_transport import TRANSPORT

            app.conf.broker_transport = TRANSPORT
        app.conf.task_default_queue = self.queue
        app.conf.task_default_exchange = self.queue
        app.conf.task_default_routing_key = self.queue
        return app


def filesystem_broker(tmp: Path) -> Broker:
    data, control = tmp / "broker" / "data", tmp / "broker" / "control"
    data.mkdir(parents=True)
    control.mkdir(parents=True)
    return Broker(
        "filesystem",
        "filesystem://",
        f"bsc-{uuid.uuid4().hex[:10]}",
        {
            "data_folder_in": str(data),
            "data_folder_out": str(data),
            "control_folder": str(control),
            "polling_interval": 0.05,
        },
    )


def redis_broker() -> Broker:
    need_service("Redis", 6379)
    queue = f"bsc-test-{uuid.uuid4().hex[:10]}"
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"

    def cleanup() -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        for key in client.scan_iter(match=f"*{queue}*"):
            client.delete(key)
        client.close()

    return Broker("redis", url, queue, {"visibility_timeout": 3600}, cleanup)


def rabbitmq_broker() -> Broker:
    need_service("RabbitMQ", 5672)
    queue = f"bsc-test-{uuid.uuid4().hex[:10]}"
    url = "amqp://guest:guest@127.0.0.1:5672//"

    def cleanup() -> None:
        from kombu.connection import Connection

        with Connection(url) as conn:
            channel = conn.default_channel
            # the tasks' queue, and bugsnag-celery's own queues under this test's prefix
            for name in (queue, f"{queue}.sessions", f"{queue}.events", f"{queue}.status"):
                channel.queue_delete(name)
                channel.exchange_delete(name)

    return Broker("rabbitmq", url, queue, {}, cleanup)


def make_broker(kind: str, tmp: Path) -> Broker:
    if kind == "filesystem":
        return filesystem_broker(tmp)
    if kind == "redis":
        return redis_broker()
    if kind == "rabbitmq":
        return rabbitmq_broker()
    raise ValueError(kind)


def broker_fixture(kind: str, tmp: Path) -> Iterator[Broker]:
    broker = make_broker(kind, tmp)
    try:
        yield broker
    finally:
        broker.cleanup()
