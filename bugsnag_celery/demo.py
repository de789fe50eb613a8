"""``bugsnag-celery demo``: a real worker on an embedded broker, and what BugSnag receives.

Starts a local stand-in for BugSnag and ``celery worker -B`` (prefork, two children,
embedded beat) on kombu's filesystem transport in a temporary folder (or on ``--broker
URL``), sends a workload whose truth is known, waits for the beat task to deliver the
session counts, and prints what was received next to the truth: sessions, crashed
sessions, stability score. Exits 0 only if they match.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery import Celery


def demo_app(name: str, broker: str, folder: str, queue: str) -> Celery:
    """The demo's Celery app, the same for the worker and for the producer."""
    app = Celery(name, broker=broker, backend=f"file://{os.path.join(folder, 'results')}")
    app.conf.update(
        broker_transport_options=broker_options(broker, folder),
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
    )
    os.makedirs(os.path.join(folder, "results"), exist_ok=True)
    return app


def broker_options(broker: str, folder: str) -> dict[str, Any]:
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


def _say(message: str) -> None:
    print(message, flush=True)


def _start_worker(env: dict[str, str], folder: str) -> subprocess.Popen[bytes]:
    log = open(os.path.join(folder, "worker.log"), "wb")
    cmd = [
        sys.executable, "-m", "celery", "-A", "bugsnag_celery._demo_app", "worker",
        "--pool=prefork", "--concurrency=2", "--loglevel=INFO",
        "--without-mingle", "--without-gossip", "--without-heartbeat",
        "-Q", env["BUGSNAG_CELERY_DEMO_QUEUE"], "-n", f"demo-{uuid.uuid4().hex[:6]}@%h",
        "-B", "-s", os.path.join(folder, "celerybeat-schedule"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
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


class _Receiver:
    """A minimal local stand-in for BugSnag: records what the worker delivers."""

    def __init__(self) -> None:
        self.sessions: dict[str, int] = {}
        self.crashed: set[str] = set()
        self.events = 0
        self.unattributed = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    data = json.loads(body)
                    receiver.record(self.path, data)
                    status = 202 if self.path.startswith("/sessions") else 200
                except Exception:
                    status = 400
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def record(self, path: str, data: dict[str, Any]) -> None:
        with self.lock:
            if path.startswith("/sessions"):
                for row in data["sessionCounts"]:
                    stamp = row["startedAt"]
                    self.sessions[stamp] = self.sessions.get(stamp, 0) + row["sessionsStarted"]
            else:
                for event in data["events"]:
                    self.events += 1
                    session = event.get("session")
                    if session and event.get("unhandled"):
                        self.crashed.add(session["id"])
                    elif not session:
                        self.unattributed += 1

    @property
    def total_sessions(self) -> int:
        with self.lock:
            return sum(self.sessions.values())


def run(broker: str = "filesystem://", scale: int = 1) -> int:
    folder = tempfile.mkdtemp(prefix="bugsnag-celery-demo-")
    queue = f"bugsnag-celery-demo-{uuid.uuid4().hex[:8]}"
    receiver = _Receiver()
    env = {
        **os.environ,
        "BUGSNAG_CELERY_DEMO_DIR": folder,
        "BUGSNAG_CELERY_DEMO_BROKER": broker,
        "BUGSNAG_CELERY_DEMO_QUEUE": queue,
        "BUGSNAG_CELERY_DEMO_NOTIFY": f"{receiver.url}/notify",
        "BUGSNAG_CELERY_DEMO_SESSIONS": f"{receiver.url}/sessions",
    }
    _say(f"bugsnag-celery demo: broker {broker}, folder {folder}")
    _say(f"  local BugSnag stand-in at {receiver.url}")
    proc = _start_worker(env, folder)
    ok = False
    try:
        _wait_ready(proc, folder)
        _say("  worker ready (prefork, 2 children, embedded beat delivering every 2 s)")
        producer = demo_app("demo-producer", broker, folder, queue)
        plan = [  # name, how many, runs (sessions) each, counted?, crashes?
            ("work", 40 * scale, 1, True, False),
            ("flaky", 5 * scale, 1, True, True),
            ("retrying", 3 * scale, 2, True, False),
            ("housekeeping", 5 * scale, 1, True, False),
            ("rebuild_cache", 5 * scale, 1, False, False),
        ]
        results = []
        truth_runs = truth_sessions = truth_crashed = 0
        for name, count, runs, counted, crashes in plan:
            for i in range(count):
                args = (i,) if name in ("work", "flaky", "retrying") else ()
                results.append(producer.send_task(f"demo.{name}", args))
            truth_runs += count * runs
            truth_sessions += count * runs if counted else 0
            truth_crashed += count if crashes else 0
        _say(f"  sent {len(results)} tasks ({truth_runs} runs with retries)")
        done, deadline = 0, time.monotonic() + 120
        for result in results:
            result.get(timeout=max(1.0, deadline - time.monotonic()), propagate=False)
            done += 1
            if done % 20 == 0 or done == len(results):
                _say(f"  {done}/{len(results)} tasks finished")
        _say("  waiting for the beat task to deliver the session counts ...")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if receiver.total_sessions >= truth_sessions and len(receiver.crashed) >= truth_crashed:
                break
            time.sleep(0.2)
        time.sleep(2.5)  # one more delivery period: a duplicate would show up now
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    got_sessions, got_crashed = receiver.total_sessions, len(receiver.crashed)
    _say("\nwhat BugSnag received (sessions per minute, release 1.0.0-demo / demo):")
    for minute, n in sorted(receiver.sessions.items()):
        _say(f"  {minute}   {n}")
    stability = 100.0 * (1 - got_crashed / got_sessions) if got_sessions else 0.0
    truth_stability = 100.0 * (1 - truth_crashed / truth_sessions)
    _say(f"\n  {'':16s}{'truth':>10s}{'received':>10s}")
    _say(f"  {'task runs':16s}{truth_runs:>10d}{'':>10s}")
    _say(f"  {'sessions':16s}{truth_sessions:>10d}{got_sessions:>10d}")
    _say(f"  {'crashed':16s}{truth_crashed:>10d}{got_crashed:>10d}")
    _say(f"  {'stability':16s}{truth_stability:>9.2f}%{stability:>9.2f}%")
    ok = got_sessions == truth_sessions and got_crashed == truth_crashed
    _say("  MATCH" if ok else "  MISMATCH")
    receiver.server.shutdown()
    return 0 if ok else 1
