"""The Celery app the demo's worker runs (``celery -A bugsnag_celery._demo_app worker``).

Configured from the environment the demo sets: ``BUGSNAG_CELERY_DEMO_DIR`` (a temporary
folder), ``BUGSNAG_CELERY_DEMO_BROKER``, ``BUGSNAG_CELERY_DEMO_QUEUE`` and the endpoints of
the local receiver. Counts and events travel the product's real path: broker queue, beat
task, HTTP.
"""

from __future__ import annotations

import os
import time
from typing import Any

import bugsnag_celery
from bugsnag_celery.demo import demo_app

DEMO_DIR = os.environ.get("BUGSNAG_CELERY_DEMO_DIR", os.path.abspath("bugsnag-celery-demo"))
BROKER = os.environ.get("BUGSNAG_CELERY_DEMO_BROKER", "filesystem://")
QUEUE = os.environ.get("BUGSNAG_CELERY_DEMO_QUEUE", "bugsnag-celery-demo")


app = demo_app("bugsnag_celery_demo", BROKER, DEMO_DIR, QUEUE)
bugsnag_celery.configure(
    app,
    api_key=os.environ.get("BUGSNAG_API_KEY") or "0123456789abcdef0123456789abcdef",
    # Nothing leaves the machine: the local collector's address (bugsnag-celery collector).
    notify_endpoint=os.environ.get("BUGSNAG_CELERY_DEMO_NOTIFY", "http://127.0.0.1:9339/notify"),
    sessions_endpoint=os.environ.get("BUGSNAG_CELERY_DEMO_SESSIONS", "http://127.0.0.1:9339/sessions"),
    session_delivery_interval=float(os.environ.get("BUGSNAG_CELERY_DEMO_DELIVERY_INTERVAL", "2")),
    queue_prefix=f"{QUEUE}.bugsnag",
    app_version="1.0.0-demo",
    release_stage="demo",
)


@app.task(name="demo.work")
def work(n: int) -> int:
    """An ordinary task: succeeds."""
    time.sleep(0.005)
    return n * 2


@app.task(name="demo.flaky")
def flaky(n: int) -> None:
    """Crashes: its session is a crashed session."""
    raise RuntimeError(f"demo failure {n}")


@app.task(bind=True, max_retries=1, name="demo.retrying")
def retrying(self: Any, n: int) -> str:
    """Fails once into a retry, then succeeds: two runs, two sessions."""
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "ok"


@app.task(name="demo.housekeeping")
def housekeeping() -> str:
    """Runs paused: its errors would be reported but not attributed. Still a session."""
    with bugsnag_celery.session_paused():
        time.sleep(0.005)
    return "swept"


@app.task(name="demo.rebuild_cache")
@bugsnag_celery.no_session
def rebuild_cache() -> str:
    """Opted out: never a session."""
    return "rebuilt"
