"""Session delivery at scale: network cost, worker memory, and drain speed.

    .venv/bin/python benchmarks/delivery.py            # full size (several minutes; Redis, RabbitMQ)
    .venv/bin/python benchmarks/delivery.py --quick    # smoke mode (part of the tests)

1. network: 1,000,000 ``task.apply()`` runs in one process and one release group, with the
   flusher moving counts to Redis every second, then one delivery to a local endpoint:
   broker messages, session requests, bytes, minute buckets. Target: one session request
   per minute bucket at most, not one per task (or per message).
2. memory: a real ``celery worker -P prefork -c 2`` on Redis; RSS of the main process plus
   children after a 10,000-task warm-up and again after 200,000 more tasks. Target: <= 2 MB.
3. drain: 10,000 pending count messages on Redis and on RabbitMQ, drained and delivered by
   one delivery run. Target: < 2 s.
4. recycle: 5,000 tasks on ``-c 8 --max-tasks-per-child=1`` (a child process per task, each
   leaving through ``os._exit``): sessions delivered must equal tasks, exactly.

Redis (127.0.0.1:6379, database 12) and RabbitMQ (127.0.0.1:5672) are the services the
README names; queues get a unique prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from verdict import EXACT, TARGET, Check, conclude

REDIS = "redis://127.0.0.1:6379/12"
RABBIT = "amqp://guest:guest@127.0.0.1:5672//"
KEY = "0" * 31 + "1"


class Endpoint(BaseHTTPRequestHandler):
    requests = 0
    bytes = 0
    buckets: ClassVar[set[str]] = set()
    sessions = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests += 1
        type(self).bytes += len(body)
        data = json.loads(body)
        for row in data.get("sessionCounts", []):
            type(self).buckets.add(row["startedAt"])
            type(self).sessions += row["sessionsStarted"]
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass

    @classmethod
    def reset(cls) -> None:
        cls.requests = cls.bytes = cls.sessions = 0
        cls.buckets = set()


def serve() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def cleanup(url: str, prefix: str) -> None:
    """Delete this run's queues (and, on Redis, kombu's binding keys for them): nothing else."""
    from kombu.connection import Connection

    with Connection(url) as conn:
        channel = conn.default_channel
        if url.startswith("redis"):
            for key in channel.client.scan_iter(match=f"*{prefix}*"):
                channel.client.delete(key)
            return
        for suffix in ("sessions", "events", "status"):
            try:
                channel.queue_delete(f"{prefix}.{suffix}")
                channel.exchange_delete(f"{prefix}.{suffix}")
            except Exception:
                pass


def network(runs: int, endpoint: str) -> list[Check]:
    import logging

    from celery import Celery

    import bugsnag_celery
    from bugsnag_celery.delivery.sessions import deliver_session_counts
    from bugsnag_celery.transport.queues import message_count

    logging.disable(logging.WARNING)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    app = Celery("net", broker=REDIS, backend=None)
    app.conf.task_store_eager_result = False
    bugsnag_celery.configure(
        app, api_key=KEY, app_version="bench", queue_prefix=prefix,
        notify_endpoint=f"{endpoint}/notify", sessions_endpoint=f"{endpoint}/sessions",
    )  # fmt: skip

    @app.task
    def noop() -> None:
        return None

    Endpoint.reset()
    try:
        start = time.monotonic()
        for _ in range(runs):
            noop.apply()
        elapsed = time.monotonic() - start
        bugsnag_celery.flush_events()
        from bugsnag_celery import registry

        registry.flusher.flush_once()
        messages = message_count(app, f"{prefix}.sessions")
        stats = deliver_session_counts(app, api_key=KEY, endpoint=f"{endpoint}/sessions",
                                       enabled_release_stages=None, prefix=prefix)  # fmt: skip
    finally:
        cleanup(REDIS, prefix)
        bugsnag_celery.unconfigure(app)
    print(f"network: {runs:,} task runs in {elapsed:.1f} s -> {messages} broker message(s)"
          f" (flush interval 1 s: at most {int(elapsed) + 2}),")  # fmt: skip
    print(f"         {Endpoint.requests} session request(s), {Endpoint.bytes:,} bytes,"
          f" {len(Endpoint.buckets)} minute bucket(s), {Endpoint.sessions:,} sessions delivered")  # fmt: skip
    return [
        Check(f"network: the endpoint received {Endpoint.sessions:,} sessions for {runs:,} runs",
              Endpoint.sessions == runs == stats["delivered"], EXACT),
        Check(f"network: {Endpoint.requests} session request(s) for {len(Endpoint.buckets)} minute bucket(s)",
              Endpoint.requests <= len(Endpoint.buckets), TARGET),
        Check(f"network: {messages} broker message(s) in {elapsed:.1f} s (at most one per flush interval)",
              messages <= int(elapsed) + 2, TARGET),
    ]  # fmt: skip


WORKER_APP = textwrap.dedent("""
    import os
    from celery import Celery
    import bugsnag_celery
    app = Celery("memapp", broker=os.environ["BENCH_BROKER"])
    app.conf.update(task_default_queue=os.environ["BENCH_QUEUE"], worker_enable_remote_control=False,
                    task_ignore_result=True, worker_prefetch_multiplier=64)
    if os.environ.get("BENCH_INSTRUMENT") == "1":
        endpoint = os.environ["BENCH_ENDPOINT"]
        bugsnag_celery.configure(app, api_key="0" * 31 + "1", app_version="bench",
                                 queue_prefix=os.environ["BENCH_QUEUE"], notify_endpoint=endpoint + "/notify",
                                 sessions_endpoint=endpoint + "/sessions")
    RUNS = os.environ.get("BENCH_RUNS")
    @app.task(name="mem.noop")
    def noop():
        if RUNS:  # the recycle figure counts the runs themselves
            fd = os.open(RUNS, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.write(fd, b"1")
            os.close(fd)
        return None
""")


def rss_tree(pid: int) -> int:
    """RSS in bytes of *pid* and its children."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            pids += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def start_worker(queue: str, endpoint: str, *args: str, runs: str = "") -> subprocess.Popen[bytes]:
    """``celery worker`` (prefork) on Redis running the benchmark app, instrumented."""
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "memapp.py"), "w") as fh:
        fh.write(WORKER_APP)
    env = {**os.environ, "PYTHONPATH": folder, "BENCH_BROKER": REDIS, "BENCH_QUEUE": queue,
           "BENCH_ENDPOINT": endpoint, "BENCH_INSTRUMENT": "1", "BENCH_RUNS": runs}  # fmt: skip
    log = open(os.path.join(folder, "worker.log"), "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "memapp", "worker", "-P", "prefork", "-Q", queue,
         "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "WARNING", *args],
        env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def fill(queue: str, n: int, task: str = "mem.noop") -> None:
    """Send *n* no-op tasks to *queue* on Redis, over one connection."""
    from celery import Celery

    producer = Celery("p", broker=REDIS)
    producer.conf.task_default_queue = queue
    with producer.connection_for_write() as conn:
        for _ in range(n):
            producer.send_task(task, connection=conn)


def send_and_drain(queue: str, n: int) -> None:
    """Send *n* no-op tasks and wait until the worker has taken them all and gone quiet."""
    from kombu.connection import Connection

    fill(queue, n)
    with Connection(REDIS) as conn:
        while conn.default_channel.client.llen(queue) > 0:
            time.sleep(0.2)
    time.sleep(3)  # the last prefetched tasks run; flushers go quiet


def memory(tasks: int, warmup: int, endpoint: str) -> list[Check]:
    queue = f"bench-mem-{uuid.uuid4().hex[:8]}"
    proc = start_worker(queue, endpoint, "-c", "2")

    try:
        time.sleep(3)
        send_and_drain(queue, warmup)
        before = rss_tree(proc.pid)
        send_and_drain(queue, tasks)
        after = rss_tree(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
        cleanup(REDIS, queue)
    growth = (after - before) / 1e6
    print(f"memory:  worker RSS (main + 2 children) {before / 1e6:.1f} MB after {warmup:,} tasks,"
          f" {after / 1e6:.1f} MB after {tasks:,} more: growth {growth:+.2f} MB")  # fmt: skip
    return [Check(f"memory: at most 2 MB worker RSS growth ({growth:+.2f} MB)", growth <= 2.0, TARGET)]


def recycle(tasks: int, endpoint: str) -> list[Check]:
    """A child per task (--max-tasks-per-child=1): every child's counts leave before os._exit."""
    from celery import Celery

    from bugsnag_celery.delivery.sessions import deliver_session_counts

    queue = f"bench-recycle-{uuid.uuid4().hex[:8]}"
    runs_file = os.path.join(tempfile.mkdtemp(), "runs")
    proc = start_worker(queue, endpoint, "-c", "8", "--max-tasks-per-child=1", runs=runs_file)
    start = time.monotonic()

    def runs() -> int:
        try:
            return os.path.getsize(runs_file)  # one byte per run
        except OSError:
            return 0

    try:
        time.sleep(3)
        send_and_drain(queue, tasks)
        deadline = time.monotonic() + 60 + tasks  # Celery recycles a few children a second
        while runs() < tasks and time.monotonic() < deadline:
            time.sleep(0.5)  # prefetched tasks are still running, a child each
        proc.terminate()  # warm shutdown: the last children flush too
        proc.wait(120)
        Endpoint.reset()
        app = Celery("r", broker=REDIS)
        stats = deliver_session_counts(app, api_key=KEY, endpoint=f"{endpoint}/sessions",
                                       enabled_release_stages=None, prefix=queue)  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
        cleanup(REDIS, queue)
    ran = runs()
    print(f"recycle: {ran:,} task runs, a child process each (-c 8 --max-tasks-per-child=1),"
          f" {time.monotonic() - start:.0f} s: {Endpoint.sessions:,} sessions delivered")  # fmt: skip
    # runs are counted by the tasks themselves (a byte each), sessions by the endpoint
    return [
        Check(
            f"recycle: the endpoint received {Endpoint.sessions:,} sessions for {ran:,} runs"
            f" ({tasks:,} sent)",
            Endpoint.sessions == ran == stats["delivered"] and ran >= tasks,
            EXACT,
        )
    ]


def drain(messages: int, endpoint: str) -> list[Check]:
    from celery import Celery

    from bugsnag_celery import Release
    from bugsnag_celery.delivery.sessions import deliver_session_counts
    from bugsnag_celery.transport.queues import publish

    checks: list[Check] = []
    release = list(Release("bench", "production", "celery", "h"))
    for url in (REDIS, RABBIT):
        prefix = f"bench-drain-{uuid.uuid4().hex[:8]}"
        app = Celery("drain", broker=url)
        bodies = [{"v": 1, "pid": i, "groups": [{"release": release, "counts": {
            f"2026-01-01T00:{i % 60:02d}:00Z": 1}}]} for i in range(messages)]  # fmt: skip
        try:
            publish(app, f"{prefix}.sessions", bodies)
            Endpoint.reset()
            start = time.perf_counter()
            stats = deliver_session_counts(app, api_key=KEY, endpoint=f"{endpoint}/sessions",
                                           enabled_release_stages=None, prefix=prefix)  # fmt: skip
            took = time.perf_counter() - start
        finally:
            cleanup(url, prefix)
        kind = url.split(":")[0]
        print(f"drain:   {kind:6s} {messages:,} messages drained and delivered in {took:.2f} s"
              f" ({Endpoint.requests} request)")  # fmt: skip
        checks += [
            Check(f"drain {kind}: the endpoint received {Endpoint.sessions:,} sessions of {messages:,}",
                  stats["delivered"] == messages == Endpoint.sessions, EXACT),
            Check(f"drain {kind}: one run in under 2 s ({took:.2f} s)", took < 2.0, TARGET),
        ]  # fmt: skip
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke mode: small numbers, exactness only")
    parser.add_argument("--only", choices=["network", "memory", "drain", "recycle"])
    args = parser.parse_args()
    endpoint = serve()
    q = args.quick
    checks: list[Check] = []
    if args.only in (None, "network"):
        checks += network(5_000 if q else 1_000_000, endpoint)
    if args.only in (None, "drain"):
        checks += drain(200 if q else 10_000, endpoint)
    if args.only in (None, "memory"):
        checks += memory(2_000 if q else 200_000, 500 if q else 10_000, endpoint)
    if args.only in (None, "recycle"):
        checks += recycle(40 if q else 5_000, endpoint)
    print()
    return conclude(checks, q)


if __name__ == "__main__":
    raise SystemExit(main())
