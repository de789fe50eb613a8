"""``bugsnag-celery demo``: a real worker on an embedded broker, and the sessions it counted.

Starts ``celery worker`` (prefork, two children) on kombu's filesystem transport in a
temporary folder (or on ``--broker URL``), sends a workload whose truth is known, stops
the worker with a warm shutdown, and prints the session counts the worker processes took
next to the truth. Exits 0 only if they match.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from celery import Celery


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


def _counted(folder: str) -> dict[tuple[Any, ...], dict[str, int]]:
    merged: dict[tuple[Any, ...], dict[str, int]] = {}
    for path in glob.glob(os.path.join(folder, "counts-*.json")):
        with open(path) as fh:
            for row in json.load(fh):
                buckets = merged.setdefault(tuple(row["release"]), {})
                for minute, n in row["counts"].items():
                    buckets[minute] = buckets.get(minute, 0) + n
    return merged


def run(broker: str = "filesystem://", scale: int = 1) -> int:
    folder = tempfile.mkdtemp(prefix="bugsnag-celery-demo-")
    queue = f"bugsnag-celery-demo-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "BUGSNAG_CELERY_DEMO_DIR": folder,
        "BUGSNAG_CELERY_DEMO_BROKER": broker,
        "BUGSNAG_CELERY_DEMO_QUEUE": queue,
    }
    _say(f"bugsnag-celery demo: broker {broker}, folder {folder}")
    proc = _start_worker(env, folder)
    try:
        _wait_ready(proc, folder)
        _say("  worker ready (prefork, 2 children)")
        producer = Celery("demo-producer", broker=broker, backend=f"file://{os.path.join(folder, 'results')}")
        producer.conf.update(
            broker_transport_options=broker_options(broker, folder),
            task_default_queue=queue,
            task_default_exchange=queue,
            task_default_routing_key=queue,
        )
        plan = [  # name, how many, runs (sessions) each, counted?
            ("work", 40 * scale, 1, True),
            ("flaky", 5 * scale, 1, True),
            ("retrying", 3 * scale, 2, True),
            ("housekeeping", 5 * scale, 1, True),
            ("rebuild_cache", 5 * scale, 1, False),
        ]
        results = []
        truth_runs = truth_sessions = 0
        for name, count, runs, counted in plan:
            for i in range(count):
                results.append(
                    producer.send_task(f"demo.{name}", (i,) if name in ("work", "flaky", "retrying") else ())
                )
            truth_runs += count * runs
            truth_sessions += count * runs if counted else 0
        _say(f"  sent {len(results)} tasks ({truth_runs} runs with retries)")
        done, deadline = 0, time.monotonic() + 120
        for result in results:
            result.get(timeout=max(1.0, deadline - time.monotonic()), propagate=False)
            done += 1
            if done % 20 == 0 or done == len(results):
                _say(f"  {done}/{len(results)} tasks finished")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: children flush their counts
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    merged = _counted(folder)
    counted_total = sum(n for buckets in merged.values() for n in buckets.values())
    _say("\nsession counts taken by the worker processes (release group -> minute -> sessions):")
    for (version, stage, app_type, host), buckets in merged.items():
        for minute, n in sorted(buckets.items()):
            _say(f"  {version} / {stage} / {app_type} / {host}   {minute}   {n}")
    _say(
        f"\n  known truth: {truth_runs} task runs, {truth_runs - truth_sessions} opted out"
        f" -> {truth_sessions} sessions"
    )
    _say(f"  counted:     {counted_total} sessions")
    ok = counted_total == truth_sessions
    _say("  MATCH" if ok else "  MISMATCH")
    return 0 if ok else 1
