"""The Celery app the demo runs (``celery -A bugsnag_celery.tools.demo.app worker|beat``).

Configured from the environment, so the same module serves ``bugsnag-celery demo``, the
compose stack and anyone's own worker:

- ``BUGSNAG_CELERY_DEMO_BROKER`` (default ``filesystem://``, the embedded broker),
- ``BUGSNAG_CELERY_DEMO_DIR`` (the embedded broker's folder and the beat schedule),
- ``BUGSNAG_CELERY_DEMO_QUEUE`` (default ``bugsnag-celery-demo``),
- ``BUGSNAG_CELERY_DEMO_COLLECTOR`` (default ``http://127.0.0.1:9339``, the local collector),
- ``BUGSNAG_CELERY_DEMO_DELIVERY_INTERVAL`` (seconds between beat deliveries, default 2),
- ``BUGSNAG_API_KEY`` (any 32 hex characters do for the collector).

Counts and events travel the product's real path: broker queue, beat task, HTTP.
"""

from __future__ import annotations

import os
import signal
import time

from celery import Task, signals

import bugsnag_celery
from bugsnag_celery.tools.demo.run import APP_VERSION, RELEASE_STAGE, demo_app

DEMO_DIR = os.environ.get("BUGSNAG_CELERY_DEMO_DIR", os.path.abspath("bugsnag-celery-demo"))
BROKER = os.environ.get("BUGSNAG_CELERY_DEMO_BROKER", "filesystem://")
QUEUE = os.environ.get("BUGSNAG_CELERY_DEMO_QUEUE", "bugsnag-celery-demo")
COLLECTOR = os.environ.get("BUGSNAG_CELERY_DEMO_COLLECTOR", "http://127.0.0.1:9339").rstrip("/")


# Beat keeps its schedule file here; with a real broker nothing else would create it.
os.makedirs(DEMO_DIR, exist_ok=True)
app = demo_app("bugsnag_celery_demo", BROKER, DEMO_DIR, QUEUE)
bugsnag_celery.configure(
    app,
    api_key=os.environ.get("BUGSNAG_API_KEY") or "0123456789abcdef0123456789abcdef",
    # Nothing leaves the machine: the local collector (bugsnag-celery collector).
    notify_endpoint=f"{COLLECTOR}/notify",
    sessions_endpoint=f"{COLLECTOR}/sessions",
    session_delivery_interval=float(os.environ.get("BUGSNAG_CELERY_DEMO_DELIVERY_INTERVAL", "2")),
    queue_prefix=f"{QUEUE}.bugsnag",
    app_version=APP_VERSION,
    release_stage=RELEASE_STAGE,
)


READY_FILE = os.path.join(DEMO_DIR, "worker.ready")


@signals.worker_ready.connect(weak=False)
def _mark_ready(**_: object) -> None:
    """A file that says the worker consumes: the compose stack's health check looks for it
    (remote control, and so ``celery inspect ping``, is off to keep brokers clean)."""
    os.makedirs(DEMO_DIR, exist_ok=True)
    with open(READY_FILE, "w") as fh:
        fh.write(str(os.getpid()))


@signals.worker_shutdown.connect(weak=False)
def _unmark_ready(**_: object) -> None:
    try:
        os.remove(READY_FILE)
    except OSError:
        pass


@app.task(name="demo.work")
def work(n: int) -> int:
    """An ordinary task: succeeds."""
    time.sleep(0.002)
    return n * 2


@app.task(name="demo.flaky")
def flaky(n: int) -> None:
    """Crashes: its session is a crashed session."""
    raise RuntimeError(f"demo failure {n}")


@app.task(bind=True, max_retries=1, name="demo.retrying")
def retrying(self: Task, n: int) -> str:
    """Fails once into a retry, then succeeds: two runs, two sessions, no crash."""
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "ok"


@app.task(name="demo.housekeeping")
def housekeeping(n: int) -> str:
    """Runs paused: a session, but its errors are reported without being attributed to it,
    so they do not lower the stability score (odd *n* fail)."""
    with bugsnag_celery.session_paused():
        time.sleep(0.002)
        if n % 2:
            raise OSError(f"housekeeping sweep {n} could not remove a temporary file")
    return "swept"


@app.task(name="demo.rebuild_cache")
@bugsnag_celery.no_session
def rebuild_cache(n: int) -> str:
    """Opted out: never a session."""
    return "rebuilt"


@app.task(name="demo.slow_report", soft_time_limit=0.5)
def slow_report() -> None:
    """Exceeds its soft time limit: SoftTimeLimitExceeded is raised inside it, a crash."""
    time.sleep(5)


@app.task(name="demo.memory_hog")
def memory_hog(settle: float = 2.5) -> None:
    """The pool child dies as under the kernel's OOM killer (SIGKILL): the worker's main
    process reports WorkerLostError on the child's session.

    It first runs for a while, as a real memory hog would, longer than the session flush
    interval (1 s): a child killed at once would take its last second of counts with it.
    """
    time.sleep(settle)
    os.kill(os.getpid(), signal.SIGKILL)
