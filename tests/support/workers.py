"""Real ``celery worker`` subprocesses for the tests, on a broker of ``brokers.py``.

A worker runs one of the apps in ``apps/`` (by module name: ``apps/`` is its PYTHONPATH),
writes what its tasks saw under the test's output folder (read back with ``results.py``),
and is stopped the way production stops it (SIGTERM to the main pid).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker
from brokers import need_service as need_service  # tests/test_tooling.py imports it from here

APPS = Path(__file__).parent / "apps"


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


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out
