"""Real brokers and real ``celery worker`` subprocesses for the tests.

Brokers: the embedded filesystem transport always works; Redis and RabbitMQ are used
when they answer on 127.0.0.1. On a machine without them those tests skip with a reason,
unless ``BUGSNAG_CELERY_REQUIRE_BROKERS=1`` (set by ``.ci/run``) turns the skip into a
failure. Every test gets its own queue name; Redis tests use database 11 and delete only
the keys of their own queue; RabbitMQ tests delete only their own queue and exchange.
"""

from __future__ import annotations

import glob
import json
import os
import signal
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

APPS = Path(__file__).parent / "apps"
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


class Worker:
    """``python -m celery -A <module> worker`` in a subprocess, stopped by SIGTERM to its main pid."""

    def __init__(
        self,
        broker: Broker,
        out: Path,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        module: str = "session_app",
        configure: dict[str, Any] | None = None,
        extra_args: tuple[str, ...] = (),
        name: str = "w1",
        env: dict[str, str] | None = None,
    ) -> None:
        self.broker, self.out, self.pool = broker, out, pool
        self.log_path = out / f"worker-{name}.log"
        self.cmd = [
            sys.executable, "-m", "celery", "-A", module, "worker",
            f"--pool={pool}", f"--concurrency={concurrency}", "--loglevel=INFO",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
            "-Q", broker.queue, "-n", f"{name}-{broker.queue}@%h", *extra_args,
        ]  # fmt: skip
        # The machine's own BUGSNAG_* settings must not leak into what a test asserts.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("BUGSNAG_API")}
        self.env = {
            **inherited,
            **broker.env(),
            "BSC_OUT": str(out),
            # bugsnag-celery's own queues get this test's prefix: nothing shared with others
            # ... and nothing may leave the machine: endpoints default to a closed local port
            "BSC_CONFIGURE": json.dumps(
                {
                    "queue_prefix": broker.queue,
                    "notify_endpoint": "http://127.0.0.1:9/notify",
                    "sessions_endpoint": "http://127.0.0.1:9/sessions",
                    **(configure or {}),
                }
            ),
            "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
            # A worker that hangs is SIGABRTed (see ``stop``): every process of it then writes
            # each thread's stack to the log, so that a hang seen once can be explained.
            "PYTHONFAULTHANDLER": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Worker:
        self.out.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # the child keeps its own copy
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=str(self.out),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log():
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 60) -> int:
        """Warm shutdown: SIGTERM to the main pid only (children get theirs from it)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.dump_stacks()
                self.kill()
                raise AssertionError(f"worker did not stop in {timeout}s:\n{self.log()}") from None
        return self.proc.returncode

    def dump_stacks(self) -> None:
        """Every thread's stack of every process of the worker, into its log (faulthandler)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGABRT)
        except ProcessLookupError:
            return
        time.sleep(3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll *check* until it returns something truthy; fail naming *what* at the deadline.

    The deadline is a margin against a loaded machine, never the expected time: a test
    states why its figure is generous.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


def flushes(out: Path) -> list[dict[str, Any]]:
    """The flushes of session_app's processes (``BSC_RECORD_FLUSHES=1``), oldest first."""
    return sorted(records(out, "flushes"), key=lambda f: f["began"])


def records(out: Path, kind: str = "records") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(glob.glob(str(out / f"{kind}-*.jsonl"))):
        with open(path) as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break  # a line still being written (readers can see half a write): next poll
                try:
                    rows.append(json.loads(line))
                except ValueError:  # read while the same line was being written
                    break
    return rows


def wait_for_records(
    out: Path, n: int, timeout: float = 120, worker: Worker | None = None
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        got = records(out)
        if len(got) >= n:
            return got
        time.sleep(0.1)
    log = worker.log() if worker else ""
    raise AssertionError(f"only {len(got)} of {n} task records after {timeout}s\n{log[-5000:]}")


def deliver_sessions(
    broker: Broker, endpoint_url: str, api_key: str = "c0ffee00c0ffee00c0ffee00c0ffee00"
) -> Any:
    """Run the delivery (what the beat task does) from the test process."""
    from bugsnag_celery.delivery.sessions import deliver_session_counts

    return deliver_session_counts(
        broker.producer(), api_key=api_key, endpoint=f"{endpoint_url}/sessions", enabled_release_stages=None,
        prefix=broker.queue,
    )  # fmt: skip


def received_sessions(requests: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, int]]:
    """What BugSnag's session API accepted, merged: {(version, stage, type, hostname): {minute: n}}."""
    merged: dict[tuple[Any, ...], dict[str, int]] = {}
    for request in requests:
        if request["path"] != "/sessions" or request["status"] >= 300:
            continue
        body = request["body"]
        app, device = body["app"], body["device"]
        key = (app["version"], app["releaseStage"], app["type"], device["hostname"])
        buckets = merged.setdefault(key, {})
        for row in body["sessionCounts"]:
            buckets[row["startedAt"]] = buckets.get(row["startedAt"], 0) + row["sessionsStarted"]
    return merged


def total(merged: dict[tuple[Any, ...], dict[str, int]]) -> int:
    return sum(n for buckets in merged.values() for n in buckets.values())


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def broker_fixture(kind: str, tmp: Path) -> Iterator[Broker]:
    broker = make_broker(kind, tmp)
    try:
        yield broker
    finally:
        broker.cleanup()
