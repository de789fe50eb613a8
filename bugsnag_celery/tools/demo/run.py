"""``bugsnag-celery demo``: a real worker on an embedded broker, and what BugSnag receives.

Starts the local collector (:mod:`bugsnag_celery.tools.collector`) and ``celery worker -B`` (prefork, two
children, embedded beat) on kombu's filesystem transport in a temporary folder (or on
``--broker URL``), sends a workload whose truth is known, waits for the beat task to
deliver the session counts, and prints the collector's figures next to the truth:
sessions, crashed sessions, events, stability score. Exits 0 only if they match.

With ``--no-worker`` it only sends the workload and checks the figures of a collector
given by ``--collector URL``: the producer of the compose stack, where the worker, beat
and collector run in their own containers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

import requests
from celery import Celery

from ...transport.libraries import BrokerLibraryMissing
from ...transport.queues import check_broker_libraries
from ..fs_transport import TRANSPORT

APP_VERSION = "1.0.0-demo"
RELEASE_STAGE = "demo"
DEFAULT_QUEUE = "bugsnag-celery-demo"


def demo_app(name: str, broker: str, folder: str, queue: str) -> Celery:
    """The demo's Celery app, the same for the worker, beat and the producer."""
    app = Celery(name, broker=broker, backend=result_backend(broker, folder))
    app.conf.update(
        broker_transport=TRANSPORT if broker.startswith("filesystem") else None,
        broker_transport_options=broker_options(broker, folder),
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
        beat_schedule_filename=os.path.join(folder, "celerybeat-schedule"),
    )
    return app


def result_backend(broker: str, folder: str) -> str:
    """Where results go: a folder next to the embedded broker, Redis itself, or RPC."""
    if broker.startswith("filesystem"):
        os.makedirs(os.path.join(folder, "results"), exist_ok=True)
        return f"file://{os.path.join(folder, 'results')}"
    if broker.startswith(("redis://", "rediss://")):
        return broker
    return "rpc://"


def broker_options(broker: str, folder: str) -> dict[str, str | float]:
    """Transport options of the embedded (filesystem) broker; nothing for real brokers."""
    if not broker.startswith("filesystem"):
        return {}
    data, control = os.path.join(folder, "broker"), os.path.join(folder, "control")
    for path in (data, control):
        os.makedirs(path, exist_ok=True)
    return {
        "data_folder_in": data,
        "data_folder_out": data,
        "control_folder": control,
        "polling_interval": 0.05,
    }


def missing_library(broker: str) -> str | None:
    """What the broker's transport needs that is not installed (one line), or None."""
    if broker.startswith("filesystem"):
        return None  # kombu's own, and the demo's: nothing to install
    try:
        check_broker_libraries(Celery("demo-check", broker=broker, set_as_current=False))
    except BrokerLibraryMissing as exc:
        return str(exc)
    except Exception:  # a bad URL: said where the demo first connects
        return None
    return None


@dataclass
class Truth:
    """What the workload must produce, from the contract's rules."""

    tasks: int = 0
    runs: int = 0
    sessions: int = 0
    crashed: int = 0
    events: int = 0

    @property
    def stability(self) -> float:
        return round(100.0 * (1 - self.crashed / self.sessions), 2) if self.sessions else 100.0


def workload(scale: int = 1) -> tuple[list[tuple[str, tuple[int, ...]]], Truth]:
    """The tasks to send and the truth they make (about 300 tasks at scale 1)."""
    plan: list[tuple[str, tuple[int, ...]]] = []
    truth = Truth()

    def add(name: str, count: int, runs: int, sessions: int, crashed: int, events: int) -> None:
        for i in range(count):
            plan.append((name, (i,)))
        truth.tasks += count
        truth.runs += runs * count
        truth.sessions += sessions * count
        truth.crashed += crashed * count
        truth.events += events

    add("demo.work", 220 * scale, 1, 1, 0, 0)
    add("demo.flaky", 20 * scale, 1, 1, 1, 20 * scale)  # unhandled: a crashed session each
    add("demo.retrying", 10 * scale, 2, 2, 0, 0)  # a retry is two runs, not an error
    add("demo.housekeeping", 20 * scale, 1, 1, 0, 10 * scale)  # paused: errors not attributed
    add("demo.rebuild_cache", 20 * scale, 1, 0, 0, 0)  # opted out: no session
    plan.append(("demo.slow_report", ()))  # SoftTimeLimitExceeded: a crash
    plan.append(("demo.memory_hog", ()))  # SIGKILLed child: WorkerLostError, a crash
    truth.tasks, truth.runs, truth.sessions = truth.tasks + 2, truth.runs + 2, truth.sessions + 2
    truth.crashed, truth.events = truth.crashed + 2, truth.events + 2
    return plan, truth


@dataclass
class Figures:
    sessions: int = 0
    crashed: int = 0
    events: int = 0

    def minus(self, other: Figures) -> Figures:
        return Figures(
            self.sessions - other.sessions, self.crashed - other.crashed, self.events - other.events
        )


def collector_figures(url: str) -> Figures:
    """The demo release's figures, as the collector's JSON API gives them."""
    releases = requests.get(f"{url}/api/releases", timeout=10).json()
    events = requests.get(f"{url}/api/events", timeout=10).json()
    figures = Figures()
    for r in releases:
        if (r["appVersion"], r["releaseStage"]) == (APP_VERSION, RELEASE_STAGE):
            figures.sessions, figures.crashed = r["sessions"], r["crashedSessions"]
    release = (APP_VERSION, RELEASE_STAGE)
    figures.events = sum(1 for e in events if (e["appVersion"], e["releaseStage"]) == release)
    return figures


def _say(message: str) -> None:
    print(message, flush=True)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _start_worker(env: dict[str, str], folder: str, queue: str) -> subprocess.Popen[bytes]:
    log = open(os.path.join(folder, "worker.log"), "wb")
    cmd = [
        sys.executable, "-m", "celery", "-A", "bugsnag_celery.tools.demo.app", "worker",
        "--pool=prefork", "--concurrency=2", "--loglevel=INFO",
        "--without-mingle", "--without-gossip", "--without-heartbeat",
        "-Q", queue, "-n", f"demo-{uuid.uuid4().hex[:6]}@%h", "-B",
    ]  # fmt: skip
    # Its own process group: if it must be killed, its embedded beat and pool go too.
    proc = subprocess.Popen(
        cmd, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    return proc


def _wait_ready(proc: subprocess.Popen[bytes], folder: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    path = os.path.join(folder, "worker.log")
    while time.monotonic() < deadline:
        with open(path, errors="replace") as fh:
            if "ready." in fh.read():
                return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    with open(path, errors="replace") as fh:
        raise SystemExit(f"the demo worker did not start:\n{fh.read()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # warm shutdown: the last counts are flushed
        try:
            proc.wait(60)
            return
        except subprocess.TimeoutExpired:
            _say("  the worker did not stop within 60 s; killing it")
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the pool children and beat too, never orphans
    except OSError:
        pass
    proc.wait()


def _delete_queues(app: Celery, queue: str) -> None:
    """Remove what the demo created on a real broker, and nothing else: its queue name is
    its own (a random suffix), so every Redis key that holds it is the demo's."""
    names = [queue] + [f"{queue}.bugsnag.{kind}" for kind in ("sessions", "events", "status")]
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            client = getattr(channel, "client", None)
            if client is not None and hasattr(client, "scan_iter"):  # Redis
                for key in list(client.scan_iter(match=f"*{queue}*", count=1000)):
                    client.delete(key)
                return
            for name in names:
                for delete in (channel.queue_delete, channel.exchange_delete):
                    try:
                        delete(name)
                    except Exception:
                        pass
    except Exception as exc:
        _say(f"  (could not remove the demo's queues: {exc})")


def _send(producer: Celery, plan: list[tuple[str, tuple[int, ...]]], timeout: float) -> int:
    """Send the workload and wait for every task to finish, showing progress."""
    results = [producer.send_task(name, args) for name, args in plan]
    _say(f"  sent {len(results)} tasks")
    done, deadline, step = 0, time.monotonic() + timeout, max(1, len(results) // 6)
    for result in results:
        try:
            result.get(timeout=max(1.0, deadline - time.monotonic()), propagate=False)
            result.forget()
        except Exception as exc:  # a timeout: say so, and let the figures tell the rest
            _say(f"  a task did not finish in time ({type(exc).__name__}); comparing what arrived")
            break
        done += 1
        if done % step == 0 or done == len(results):
            _say(f"  {done}/{len(results)} tasks finished")
    return done


def _wait_for(url: str, baseline: Figures, truth: Truth, settle: float, timeout: float = 45) -> Figures:
    _say("  waiting for the beat task to deliver the session counts ...")
    deadline = time.monotonic() + timeout
    got = collector_figures(url).minus(baseline)
    while time.monotonic() < deadline:
        if got.sessions >= truth.sessions and got.crashed >= truth.crashed and got.events >= truth.events:
            break
        time.sleep(0.25)
        got = collector_figures(url).minus(baseline)
    time.sleep(settle)  # one more delivery period: a duplicate would show up now
    return collector_figures(url).minus(baseline)


def _report(truth: Truth, got: Figures) -> bool:
    stability = round(100.0 * (1 - got.crashed / got.sessions), 2) if got.sessions else 0.0
    _say(f"\nrelease {APP_VERSION} / {RELEASE_STAGE}: the known truth next to what the collector received")
    _say(f"  {'':18s}{'truth':>10s}{'received':>10s}")
    _say(f"  {'tasks sent':18s}{truth.tasks:>10d}")
    _say(f"  {'task runs':18s}{truth.runs:>10d}")
    _say(f"  {'sessions':18s}{truth.sessions:>10d}{got.sessions:>10d}")
    _say(f"  {'crashed':18s}{truth.crashed:>10d}{got.crashed:>10d}")
    _say(f"  {'events':18s}{truth.events:>10d}{got.events:>10d}")
    _say(f"  {'stability':18s}{truth.stability:>9.2f}%{stability:>9.2f}%")
    ok = (got.sessions, got.crashed, got.events) == (truth.sessions, truth.crashed, truth.events)
    _say("  MATCH" if ok else "  MISMATCH")
    return ok


def run(
    broker: str = "filesystem://",
    scale: int = 1,
    collector_url: str | None = None,
    start_worker: bool = True,
    port: int = 9339,
    serve: bool = False,
) -> int:
    """The whole demo; the exit status (0 only if the figures match the truth)."""
    from ..collector import Collector

    problem = missing_library(broker)
    if problem:  # before anything starts: one line, what to install
        print(f"bugsnag-celery demo: {problem}", file=sys.stderr, flush=True)
        return 2
    started = time.monotonic()
    folder = tempfile.mkdtemp(prefix="bugsnag-celery-demo-")
    queue = (
        f"{DEFAULT_QUEUE}-{uuid.uuid4().hex[:8]}"
        if start_worker
        else os.environ.get("BUGSNAG_CELERY_DEMO_QUEUE", DEFAULT_QUEUE)
    )
    collector = None
    if collector_url is None:
        db = os.path.join(folder, "collector.sqlite")
        collector = Collector("127.0.0.1", port if _free(port) else 0, db).start()
        collector_url = collector.url
    collector_url = collector_url.rstrip("/")
    plan, truth = workload(scale)
    interval = float(os.environ.get("BUGSNAG_CELERY_DEMO_DELIVERY_INTERVAL", "2"))
    env = {
        **os.environ,
        "BUGSNAG_CELERY_DEMO_DIR": folder,
        "BUGSNAG_CELERY_DEMO_BROKER": broker,
        "BUGSNAG_CELERY_DEMO_QUEUE": queue,
        "BUGSNAG_CELERY_DEMO_COLLECTOR": collector_url,
        "BUGSNAG_CELERY_DEMO_DELIVERY_INTERVAL": str(interval),
    }
    _say(f"bugsnag-celery demo: broker {broker}, queue {queue}, folder {folder}")
    _say(f"  collector (a local BugSnag) at {collector_url}/")
    proc = _start_worker(env, folder, queue) if start_worker else None
    producer = demo_app("demo-producer", broker, folder, queue)
    try:
        baseline = collector_figures(collector_url)
        if proc is not None:
            _wait_ready(proc, folder)
            _say(f"  worker ready (prefork, 2 children, embedded beat delivering every {interval:g} s)")
        _send(producer, plan, timeout=120)
        got = _wait_for(collector_url, baseline, truth, settle=interval + 0.5)
    finally:
        if proc is not None:
            _stop(proc)
            if not broker.startswith("filesystem"):
                _delete_queues(producer, queue)
    ok = _report(truth, got)
    _say(f"\n  took {time.monotonic() - started:.1f} s")
    _say(f"  the collector's page: {collector_url}/")
    if collector is not None:
        db_path = os.path.join(folder, "collector.sqlite")
        if serve:
            _say("  serving it until Ctrl-C ...")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        else:
            _say(f"  (see it again: bugsnag-celery collector --db {db_path}; or run the demo with --serve)")
        collector.close()
    return 0 if ok else 1
