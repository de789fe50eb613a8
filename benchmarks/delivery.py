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
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from harness import RABBIT, REDIS, cleanup, rss_tree  # noqa: E402
from variants import KEY  # noqa: E402
from verdict import EXACT, TARGET, Check, conclude  # noqa: E402


def minutes(records: list[dict[str, Any]]) -> set[str]:
    """The minute buckets the session requests among *records* counted."""
    return {minute for r in records for _, minute in r["buckets"]}


def network(runs: int, endpoint: Any) -> list[Check]:
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
        notify_endpoint=f"{endpoint.url}/notify", sessions_endpoint=f"{endpoint.url}/sessions",
    )  # fmt: skip

    @app.task
    def noop() -> None:
        return None

    endpoint.reset()
    try:
        start = time.monotonic()
        for _ in range(runs):
            noop.apply()
        elapsed = time.monotonic() - start
        bugsnag_celery.flush_events()
        from bugsnag_celery import registry

        registry.flusher.flush_once()
        messages = message_count(app, f"{prefix}.sessions")
        stats = deliver_session_counts(app, api_key=KEY, endpoint=f"{endpoint.url}/sessions",
                                       enabled_release_stages=None, prefix=prefix)  # fmt: skip
    finally:
        cleanup(REDIS, prefix)
        bugsnag_celery.unconfigure(app)
    got = endpoint.received()
    requests, sent, buckets, sessions = (
        len(got),
        sum(r["size"] for r in got),
        minutes(got),
        harness.sessions(got),
    )
    print(f"network: {runs:,} task runs in {elapsed:.1f} s -> {messages} broker message(s)"
          f" (flush interval 1 s: at most {int(elapsed) + 2}),")  # fmt: skip
    print(f"         {requests} session request(s), {sent:,} bytes,"
          f" {len(buckets)} minute bucket(s), {sessions:,} sessions delivered")  # fmt: skip
    return [
        Check(f"network: the endpoint received {sessions:,} sessions for {runs:,} runs",
              sessions == runs == stats["delivered"], EXACT),
        Check(f"network: {requests} session request(s) for {len(buckets)} minute bucket(s)",
              requests <= len(buckets), TARGET),
        Check(f"network: {messages} broker message(s) in {elapsed:.1f} s (at most one per flush interval)",
              messages <= int(elapsed) + 2, TARGET),
    ]  # fmt: skip


WORKER_APP = textwrap.dedent("""
    import os
    from celery import Celery
    import bugsnag_celery
    app = Celery("memapp", broker=os.environ["BENCH_BROKER"])
    queue = os.environ["BENCH_QUEUE"]
    app.conf.update(task_default_queue=queue, worker_enable_remote_control=False,
                    task_ignore_result=True, worker_prefetch_multiplier=64,
                    broker_transport_options={"unacked_key": f"{queue}.unacked",  # harness.transport_options
                                              "unacked_index_key": f"{queue}.unacked_index",
                                              "unacked_mutex_key": f"{queue}.unacked_mutex"})
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


def start_worker(queue: str, endpoint: str, *args: str, runs: str = "") -> subprocess.Popen[bytes]:
    """``celery worker`` (prefork) on Redis running the benchmark app, instrumented."""
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "memapp.py"), "w") as fh:
        fh.write(WORKER_APP)
    return harness.start_worker(queue, endpoint, *args, app="memapp", path=Path(folder), BENCH_INSTRUMENT="1",
                                BENCH_RUNS=runs)  # fmt: skip


def send_and_drain(proc: subprocess.Popen[bytes], queue: str, n: int, per_second: float = 20) -> None:
    """Send *n* no-op tasks and wait until the worker has taken them all and gone quiet."""
    from kombu.connection import Connection

    harness.fill(queue, n, "mem.noop")
    start = time.monotonic()
    with Connection(REDIS) as conn:
        redis: Any = conn.default_channel.client  # type: ignore[attr-defined, unused-ignore]
        while redis.llen(queue) > 0:
            harness.alive(proc, "delivery", start, n, redis, queue, per_second)
            time.sleep(0.2)
    time.sleep(3)  # the last prefetched tasks run; flushers go quiet


def memory(tasks: int, warmup: int, endpoint: Any) -> list[Check]:
    queue = f"bench-mem-{uuid.uuid4().hex[:8]}"
    proc = start_worker(queue, endpoint.url, "-c", "2")

    try:
        time.sleep(3)
        send_and_drain(proc, queue, warmup)
        before = rss_tree(proc.pid)
        send_and_drain(proc, queue, tasks)
        after = rss_tree(proc.pid)
    finally:
        harness.finish(proc, queue)
    growth = (after - before) / 1e6
    print(f"memory:  worker RSS (main + 2 children) {before / 1e6:.1f} MB after {warmup:,} tasks,"
          f" {after / 1e6:.1f} MB after {tasks:,} more: growth {growth:+.2f} MB")  # fmt: skip
    return [Check(f"memory: at most 2 MB worker RSS growth ({growth:+.2f} MB)", growth <= 2.0, TARGET)]


def recycle(tasks: int, endpoint: Any) -> list[Check]:
    """A child per task (--max-tasks-per-child=1): every child's counts leave before os._exit."""
    from celery import Celery

    from bugsnag_celery.delivery.sessions import deliver_session_counts

    queue = f"bench-recycle-{uuid.uuid4().hex[:8]}"
    runs_file = os.path.join(tempfile.mkdtemp(), "runs")
    proc = start_worker(queue, endpoint.url, "-c", "8", "--max-tasks-per-child=1", runs=runs_file)
    start = time.monotonic()

    def runs() -> int:
        try:
            return os.path.getsize(runs_file)  # one byte per run
        except OSError:
            return 0

    try:
        time.sleep(3)
        send_and_drain(proc, queue, tasks, per_second=1)
        deadline = time.monotonic() + 60 + tasks  # Celery recycles a few children a second
        while runs() < tasks and time.monotonic() < deadline:
            time.sleep(0.5)  # prefetched tasks are still running, a child each
        harness.stop_worker(proc, grace=120)  # warm shutdown: the last children flush too
        endpoint.reset()
        app = Celery("r", broker=REDIS)
        stats = deliver_session_counts(app, api_key=KEY, endpoint=f"{endpoint.url}/sessions",
                                       enabled_release_stages=None, prefix=queue)  # fmt: skip
    finally:
        harness.finish(proc, queue)
    sessions = harness.sessions(endpoint.received())
    ran = runs()
    print(f"recycle: {ran:,} task runs, a child process each (-c 8 --max-tasks-per-child=1),"
          f" {time.monotonic() - start:.0f} s: {sessions:,} sessions delivered")  # fmt: skip
    # runs are counted by the tasks themselves (a byte each), sessions by the endpoint
    return [
        Check(
            f"recycle: the endpoint received {sessions:,} sessions for {ran:,} runs ({tasks:,} sent)",
            sessions == ran == stats["delivered"] and ran >= tasks,
            EXACT,
        )
    ]


def drain(messages: int, endpoint: Any) -> list[Check]:
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
            endpoint.reset()
            start = time.perf_counter()
            stats = deliver_session_counts(app, api_key=KEY, endpoint=f"{endpoint.url}/sessions",
                                           enabled_release_stages=None, prefix=prefix)  # fmt: skip
            took = time.perf_counter() - start
        finally:
            cleanup(url, prefix)
        got = endpoint.received()
        kind = url.split(":")[0]
        print(f"drain:   {kind:6s} {messages:,} messages drained and delivered in {took:.2f} s"
              f" ({len(got)} request)")  # fmt: skip
        checks += [
            Check(f"drain {kind}: the endpoint received {harness.sessions(got):,} sessions of {messages:,}",
                  stats["delivered"] == messages == harness.sessions(got), EXACT),
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
    harness.exit_on_sigterm()
    endpoint = harness.endpoint(default=202)
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
