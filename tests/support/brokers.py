"""Real brokers for the tests: which ones answer here, and each test's own queue on them.

The embedded filesystem transport always works; Redis and RabbitMQ are used when they
answer on 127.0.0.1. SQS is moto's server (``moto[server]``, a test dependency), started by
the first test that needs it on a free loopback port (its receives made atomic, as SQS's
are: ``moto_sqs.py``) and stopped when the tests end. On a
machine without them those tests skip with a reason, unless
``BUGSNAG_CELERY_REQUIRE_BROKERS=1`` (set by ``.ci/run``) turns the skip into a failure.
Every test gets its own queue name; Redis tests use database 11 and delete only the keys
of their own queue; RabbitMQ and SQS tests delete only their own queues (and exchanges).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import time
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
    extra_env: dict[str, str] = field(default_factory=dict)  # what a worker on it needs besides

    def env(self) -> dict[str, str]:
        return {
            "BSC_BROKER_URL": self.url,
            "BSC_TRANSPORT_OPTIONS": json.dumps(self.transport_options),
            "BSC_QUEUE": self.queue,
            **self.extra_env,
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

    # kombu keeps taken-but-unacknowledged messages in one hash per database, and a worker
    # that starts hands back every entry of it past its visibility timeout, takes a mutex
    # shared by all to do so: the test runs CI starts side by side would restore, and hold
    # up, each other's. Keys of the queue's own keep each test to itself (and its cleanup).
    options = {"visibility_timeout": 3600, **unacked_keys(queue)}
    return Broker("redis", url, queue, options, cleanup)


def unacked_keys(queue: str) -> dict[str, str]:
    """kombu's Redis bookkeeping of taken-but-unacknowledged messages, under *queue*'s keys."""
    return {"unacked_key": f"{queue}.unacked", "unacked_index_key": f"{queue}.unacked_index",
            "unacked_mutex_key": f"{queue}.unacked_mutex"}  # fmt: skip


def redis_message_bodies(queue: str) -> list[str]:
    """The bodies of the messages waiting in Redis list *queue* (database :data:`REDIS_DB`),
    decoded as kombu wrote them: each list item is kombu's JSON envelope, its ``body``
    base64-encoded (``properties.body_encoding``). What a test searches for a secret: the raw
    list never shows one, whatever the messages carry."""
    import base64

    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        items: Any = client.lrange(queue, 0, -1)  # Awaitable | list in redis's types
    finally:
        client.close()
    bodies = []
    for item in items:
        envelope = json.loads(item)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode("utf-8")
        bodies.append(body)
    return bodies


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


#: Credentials and region of the SQS emulator: made up (moto takes any), never a real account's.
SQS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_moto: dict[str, Any] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def moto_port() -> int:
    """The port of this test session's moto server (SQS), started on first use."""
    if "port" in _moto:
        return int(_moto["port"])
    try:
        import moto.server  # noqa: F401  (the emulator is a test dependency: pyproject's dev extra)
    except ImportError:
        need_service("moto's SQS emulator (pip install 'moto[server]')", -1)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("moto_sqs.py")), str(port)],  # atomic receives
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **SQS_ENV},
    )  # fmt: skip

    def stop() -> None:
        proc.kill()
        proc.wait(10)

    atexit.register(stop)
    deadline = time.monotonic() + 60
    while not _reachable(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            need_service(f"moto's SQS emulator (exited with {proc.poll()})", -1)
        time.sleep(0.1)
    _moto.update(port=port, proc=proc)
    return port


def sqs_client() -> Any:
    """A boto3 SQS client of the emulator (for clean-up and for what a test inspects)."""
    import boto3

    return boto3.client(
        "sqs", endpoint_url=f"http://127.0.0.1:{moto_port()}", region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip


def sqs_broker() -> Broker:
    """kombu's SQS transport on moto's server. Its queues take at most 256 KiB a message (the
    ``MaximumMessageSize`` of queues made before 2025 and the smallest default SQS has had;
    moto's own default is 1 MiB). The options are a user's: kombu's default long polls."""
    port = moto_port()
    queue = f"bsc-test-{uuid.uuid4().hex[:10]}"
    os.environ.update({k: v for k, v in SQS_ENV.items() if k not in os.environ})

    def cleanup() -> None:
        client = sqs_client()
        # kombu names an SQS queue after the kombu queue, '.' made '-'
        for url in client.list_queues(QueueNamePrefix=queue).get("QueueUrls", []):
            client.delete_queue(QueueUrl=url)

    options = {"region": "us-east-1", "is_secure": False, "visibility_timeout": 60,
               "sqs-creation-attributes": {"MaximumMessageSize": "262144"}}  # fmt: skip
    return Broker("sqs", f"sqs://testing:testing@127.0.0.1:{port}", queue, options, cleanup, dict(SQS_ENV))


def make_broker(kind: str, tmp: Path) -> Broker:
    if kind == "filesystem":
        return filesystem_broker(tmp)
    if kind == "redis":
        return redis_broker()
    if kind == "rabbitmq":
        return rabbitmq_broker()
    if kind == "sqs":
        return sqs_broker()
    raise ValueError(kind)


def broker_fixture(kind: str, tmp: Path) -> Iterator[Broker]:
    broker = make_broker(kind, tmp)
    try:
        yield broker
    finally:
        broker.cleanup()
