"""What every benchmark shares: the brokers, the BugSnag stand-in, real workers, eager apps.

The benchmark scripts (``compare.py``, ``overhead.py``, ``storm.py``, ``delivery.py``, ...)
import this module and ``variants.py``/``verdict.py``, never each other's internals, so that
no script is a library and no import goes round in a circle (``tests/test_tooling.py``
checks the import graph). The stand-in is the project's one: ``bugsnag_celery.testing.Endpoint``,
the tests' too; here it keeps a digest of each request (see :func:`digest`), since a full-size
run sends tens of thousands of events.

Redis database 12 on 127.0.0.1:6379 and RabbitMQ on 127.0.0.1:5672 are the services the
README names; every run names its queues uniquely and deletes them (:func:`cleanup`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on use: a benchmark's child measuring plain Celery imports no bugsnag_celery
    from bugsnag_celery.testing import Endpoint, Record

HERE = Path(__file__).resolve().parent
REDIS = "redis://127.0.0.1:6379/12"
RABBIT = "amqp://guest:guest@127.0.0.1:5672//"
#: The failure path's slow BugSnag: every answer after 50 ms (a synchronous send pays it).
SLOW = 0.05

# -- the BugSnag stand-in ----------------------------------------------------------------------


def digest(record: Record) -> Record:
    """What the benchmarks count of one request, without its body.

    ``size`` (body bytes), ``header_bytes``, ``tasks`` (task id and worker pid of each event,
    from bugsnag-celery's task metadata), ``sessions`` (sessions started in its counts) and
    ``buckets`` (release and minute of each count): the peers' bodies are counted, not read.
    """
    body = record["body"]
    sessions = 0
    buckets: set[tuple[str, str]] = set()
    try:
        release = json.dumps(body.get("app"), sort_keys=True)
        for row in body.get("sessionCounts", []):
            buckets.add((release, row["startedAt"]))
            sessions += row["sessionsStarted"]
    except (AttributeError, KeyError, TypeError):  # not bugsnag's JSON: counted, not read
        pass
    return {
        "path": record["path"],
        "status": record["status"],
        "at": record["at"],
        "answered": record["answered"],
        "size": len(record["raw"]),
        "header_bytes": sum(len(k) + len(v) + 4 for k, v in record["headers"].items()),
        "tasks": tasks(body),
        "sessions": sessions,
        "buckets": buckets,
    }


def tasks(body: Any) -> list[tuple[Any, Any]]:
    """(task id, worker pid) of each event in a request's *body* (bugsnag-celery's task metadata)."""
    found: list[tuple[Any, Any]] = []
    try:
        for event in body.get("events", []):
            task = event.get("metaData", {}).get("task", {})
            found.append((task.get("id"), task.get("worker_pid")))
    except (AttributeError, TypeError):  # not bugsnag's JSON: counted, not read
        pass
    return found


def endpoint(delay: float = 0.0, **script: Any) -> Endpoint:
    """A local BugSnag stand-in answering after *delay* seconds, keeping :func:`digest` of each
    request (*script*: the rest of :class:`~bugsnag_celery.testing.Endpoint`'s options)."""
    from bugsnag_celery.testing import Endpoint

    return Endpoint(delay=delay, keep=digest, **script)


def sessions(records: list[Record]) -> int:
    return sum(r["sessions"] for r in records)


def events(records: list[Record]) -> int:
    return sum(len(r["tasks"]) for r in records)


# -- Redis -------------------------------------------------------------------------------------


def redis_client() -> Any:
    """A kombu connection to database 12 and its Redis client (release the connection)."""
    from kombu.connection import Connection

    conn = Connection(REDIS)
    return conn, conn.default_channel.client  # type: ignore[attr-defined, unused-ignore]


def cleanup(url: str, prefix: str) -> None:
    """Delete this run's queues (and, on Redis, every key naming them): nothing else."""
    from kombu.connection import Connection

    with shielded(), Connection(url) as conn:
        channel: Any = conn.default_channel
        if url.startswith("redis"):
            for key in list(channel.client.scan_iter(match=f"*{prefix}*", count=1000)):
                channel.client.delete(key)
            return
        for suffix in ("sessions", "events", "status"):
            try:
                channel.queue_delete(f"{prefix}.{suffix}")
                channel.exchange_delete(f"{prefix}.{suffix}")
            except Exception:
                pass


def fill(queue: str, n: int, task: str) -> None:
    """Send *n* calls of *task* (no arguments) to *queue* on Redis, over one connection."""
    from celery import Celery

    producer = Celery("p", broker=REDIS)
    producer.conf.task_default_queue = queue
    with producer.connection_for_write() as conn:
        for _ in range(n):
            producer.send_task(task, connection=conn)


def transport_options(queue: str) -> dict[str, str]:
    """The Redis transport's bookkeeping of taken-but-unacknowledged messages, under keys of
    *queue*'s own (kombu's default is one ``unacked`` hash for the whole database).

    With the shared hash, :func:`drained` waited for whatever any other run on database 12
    held -- the other pair of CI's matrix, two at a time, another checkout's benchmark -- and
    for a killed worker's messages until Redis gave them back, an hour later.
    """
    return {"unacked_key": f"{queue}.unacked", "unacked_index_key": f"{queue}.unacked_index",
            "unacked_mutex_key": f"{queue}.unacked_mutex"}  # fmt: skip


def drained(client: Any, queue: str) -> bool:
    """Nothing left in *queue* and nothing taken but not yet acknowledged (by a worker whose
    app uses :func:`transport_options`)."""
    return client.llen(queue) == 0 and not client.hlen(f"{queue}.unacked")


def alive(
    proc: Any, what: str, since: float, n: int, client: Any = None, queue: str = "", per_second: float = 20
) -> None:
    """Raise if the worker died, or if *n* tasks took longer than two minutes plus *per_second*
    of them a second (each variant runs hundreds a second; a child per task, a few): a stuck
    run fails with what it waited for, instead of running into the test's time limit."""
    if proc.poll() is not None:
        raise RuntimeError(f"{what}: the worker died (see {queue}.log in the temp folder)")
    if time.monotonic() - since > 120 + n / per_second:
        left = f": {client.llen(queue)} queued, {client.hlen(f'{queue}.unacked')} unacked" if client else ""
        raise RuntimeError(f"{what}: {n:,} tasks not done in {time.monotonic() - since:.0f} s{left}")


# -- real workers ------------------------------------------------------------------------------


def start_worker(
    queue: str, endpoint: str, *args: str, app: str = "bench_app", path: Path = HERE, **env: str
) -> subprocess.Popen[bytes]:
    """``celery -A <app> worker -P prefork`` on Redis, consuming *queue*, reporting to *endpoint*.

    The app (``bench_app`` by default) is imported from *path*; *env* adds ``BENCH_*``
    variables (``BENCH_VARIANT=...``). The worker leads a process group of its own, so that
    :func:`stop_worker` can end it with its children, and logs to ``<queue>.log`` in the
    temporary folder.
    """
    env = {**os.environ, "PYTHONPATH": str(path), "BENCH_BROKER": REDIS, "BENCH_QUEUE": queue,
           "BENCH_ENDPOINT": endpoint, **env}  # fmt: skip
    log = open(os.path.join(tempfile.gettempdir(), f"{queue}.log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, "worker", "-P", "prefork", "-Q", queue,
         "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "WARNING", *args],
        env=env, cwd=str(path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    return proc


_stopping = {"deferred": False, "shielded": 0}


def exit_on_sigterm() -> None:
    """Make SIGTERM end the benchmark through its ``finally`` blocks, which stop the workers it
    started: they lead process groups of their own, and would otherwise outlive it (a test's
    time limit, a Ctrl-C'd CI job) and load the machine under the runs that follow. A SIGTERM
    that lands in :func:`shielded` code (stopping a worker, deleting queues) waits for its end.
    """

    def stop(signum: int, _frame: Any) -> None:
        if _stopping["shielded"]:
            _stopping["deferred"] = True
        else:
            sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Run the block whole even if SIGTERM arrives meanwhile; then exit, if it did."""
    _stopping["shielded"] += 1
    try:
        yield
    finally:
        _stopping["shielded"] -= 1
        if _stopping["deferred"] and not _stopping["shielded"]:
            _stopping["deferred"] = False
            sys.exit(128 + signal.SIGTERM)


def finish(proc: subprocess.Popen[bytes], queue: str, conn: Any = None) -> None:
    """A worker's end: stop it, release *conn*, delete *queue*'s keys -- all of it (:func:`shielded`)."""
    with shielded():
        stop_worker(proc)
        if conn is not None:
            conn.release()
        cleanup(REDIS, queue)


def wait_started(proc: subprocess.Popen[bytes], client: Any, queue: str, n: int, what: str) -> None:
    """Until the worker took the first of the *n* tasks in *queue* (at most two minutes)."""
    deadline = time.monotonic() + 120
    while client.llen(queue) >= n:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: the worker did not start (see {queue}.log in the temp folder)")
        time.sleep(0.002)


def stop_worker(proc: subprocess.Popen[bytes], grace: float = 60) -> None:
    """A warm shutdown (children flush or spool what they hold); after *grace* seconds, a kill
    of the worker's whole process group, so that nothing outlives the benchmark.

    Pool children can outlast their main process by a moment (a worker stopped while it was
    still starting): they are waited for, up to 10 s, so that what they write does not land
    after the benchmark deleted its queues.
    """
    with shielded():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is not None:
            deadline = time.monotonic() + 10
            while group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, and is not ours to signal
        return True
    return True


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


# -- eager runs --------------------------------------------------------------------------------


def eager_app(name: str) -> tuple[Any, Any]:
    """An app for eager runs in this process (memory broker, no stored results) and its no-op task.

    Logging is off: the in-process benchmarks time the task's path, not log lines.
    """
    import logging

    from celery import Celery

    logging.disable(logging.CRITICAL)
    app = Celery(name, broker="memory://", backend=None, set_as_current=True)
    app.conf.task_store_eager_result = False

    @app.task
    def noop() -> None:
        return None

    return app, noop


def batch(apply: Callable[[], Any], runs: int) -> float:
    """Microseconds per call over *runs* calls.

    The cyclic garbage collector is held off during the batch (and run before it): a
    collection lands in whichever variant's batch happens to cross its threshold, a
    noise of several microseconds per task in a batch of a few thousand.
    """
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(runs):
            apply()
        return (time.perf_counter() - start) / runs * 1e6
    finally:
        gc.enable()
