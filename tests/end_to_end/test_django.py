"""A Django project that already uses BugSnag's official notifier (``tests/support/django_shop``).

Celery's documented Django layout (``shop/celery.py``, settings under ``CELERY_``), the
official notifier configured the three ways projects do it, and ``bugsnag.notify`` in the
task code; and the same project with an empty key in ``settings.BUGSNAG`` (development). A real
prefork worker; assertions on what the BugSnag endpoint receives.

Covers: bugsnag_celery/hooks/official.py, bugsnag_celery/options/sources.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker
from endpoint import Endpoint
from results import deliver_sessions, received_sessions, total, wait_for_records
from workers import APPS, Worker

from bugsnag_celery import task_session_id

SHOP = Path(__file__).resolve().parents[1] / "support" / "django_shop"
N = 30  # orders 1..30: every 3rd notifies (handled), every 5th crashes, order 7 notifies while paused


def run_shop(broker: Broker, out: Path, endpoint: Endpoint, **env: str) -> tuple[list[dict[str, Any]], str]:
    environment = {
        "SHOP_ENDPOINT": endpoint.url,
        "PYTHONPATH": os.pathsep.join([str(SHOP), str(APPS), os.environ.get("PYTHONPATH", "")]),
        **env,
    }
    with Worker(broker, out, module="shop", env=environment) as worker:
        app = broker.producer()
        for order in range(1, N + 1):
            app.send_task("orders.charge", (order,), queue=broker.queue)
        rows = wait_for_records(out, N, worker=worker)
        expected = sum(r["notified"] for r in rows) + sum(r["crashes"] for r in rows) + 1
        endpoint.wait_for_events(expected, timeout=60)
        assert worker.stop() == 0
    return rows, worker.log()


@pytest.mark.parametrize(
    ("official", "configure_first"),
    [("settings", False), ("settings", True), ("configure", False), ("handler", False)],
    ids=["django-settings-only", "configure-before-django", "bugsnag.configure", "plus-failure-handler"],
)
def test_a_django_project_that_already_uses_the_official_notifier(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint, official: str, configure_first: bool
) -> None:
    env = {"SHOP_BUGSNAG": official, **({"SHOP_CONFIGURE_FIRST": "1"} if configure_first else {})}
    rows, log = run_shop(redis_broker, out_dir, endpoint, **env)
    by_order = {r["order_id"]: r for r in rows}
    assert sorted(by_order) == list(range(1, N + 1))
    events = endpoint.events()

    # Each bugsnag.notify inside a task: once, with its run's session, counted as handled.
    handled = [e for e in events if e["exceptions"][0]["message"].startswith("order ")
               and e["exceptions"][0]["errorClass"] == "orders.tasks.CardDeclined"]  # fmt: skip
    notified = sorted(o for o, r in by_order.items() if r["notified"])
    assert sorted(int(e["exceptions"][0]["message"].split()[1]) for e in handled) == notified
    for event in handled:
        row = by_order[int(event["exceptions"][0]["message"].split()[1])]
        assert event["unhandled"] is False
        assert event["session"]["id"] == task_session_id(row["id"], 0, event["metaData"]["task"]["delivery"])
        assert event["session"]["events"] == {"handled": 1, "unhandled": 0}

    # Each crash: once (whatever the official failure handler does), with its session.
    crashes = [e for e in events if e["exceptions"][0]["errorClass"] == "RuntimeError"]
    crashed = sorted(o for o, r in by_order.items() if r["crashes"])
    assert sorted(int(e["exceptions"][0]["message"].split()[1]) for e in crashes) == crashed
    for event in crashes:
        row = by_order[int(event["exceptions"][0]["message"].split()[1])]
        assert event["unhandled"] is True
        assert event["session"]["id"] == task_session_id(row["id"], 0, event["metaData"]["task"]["delivery"])
        assert event["session"]["events"] == {"handled": int(row["notified"]), "unhandled": 1}
        # settings.BUGSNAG is the project's policy in the worker too (its params_filters here)
        assert event["metaData"]["task"]["retries"] == "[FILTERED]", event["metaData"]["task"]
    assert all(e["metaData"]["task"]["retries"] == "[FILTERED]" for e in handled)

    # Paused: still reported by the official client, but not attributed to the run's session.
    (paused,) = [e for e in events if e["exceptions"][0]["message"] == "paused 7"]
    assert not paused.get("session")
    assert len(events) == len(handled) + len(crashes) + 1

    # Web and worker report one release: DEBUG -> development, as the official Django integration.
    # (the official notifier puts the stage at the top of the event, this package in "app")
    stages = {(e["app"].get("releaseStage", e.get("releaseStage")), e["app"]["version"]) for e in events}
    assert stages == {("development", "3.1.0")}

    # Sessions: one per run, in that release, from the settings under CELERY_.
    deliver_sessions(redis_broker, endpoint.url)
    received = received_sessions(endpoint.requests)
    assert total(received) == N
    assert {key[:2] + key[3:] for key in received} == {("3.1.0", "development", "shop-worker")}

    # The worker says what it does, once, at start (never the key).
    status = re.findall(r"bugsnag_celery [\d.]+: active; .*", log)
    assert len(status) == 1, log[-3000:]
    assert "API key present; release stage 'development', app version '3.1.0'" in status[0]
    assert "a beat must run" in status[0] and "c0ffee00" not in log
    if official == "handler":
        assert "failure handler" in log and ("redundant" in log or "can be removed" in log)
    counts = Counter(e["exceptions"][0]["errorClass"] for e in events)
    print(f"\n{official}{' (configure first)' if configure_first else ''}: sent {N} runs, "
          f"{len(notified)} notify, {len(crashed)} crashes, 1 paused notify; received {total(received)} "
          f"sessions, events {dict(counts)}")  # fmt: skip


def test_an_empty_key_in_django_settings_is_no_key(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """``BUGSNAG = {"api_key": os.environ.get(..., "")}``, the usual way to leave the key out of
    development: ``manage.py check`` passes (the Celery module imports), and a real worker runs
    every task, warns once naming settings.BUGSNAG among the places it looked, and sends nothing."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BUGSNAG_API")},
        **redis_broker.env(),
        "BSC_OUT": str(out_dir),
        "SHOP_ENDPOINT": endpoint.url,
        "SHOP_API_KEY": "",
        "PYTHONPATH": os.pathsep.join([str(SHOP), str(APPS), os.environ.get("PYTHONPATH", "")]),
    }
    check = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=SHOP, env=env, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no issues" in check.stdout and "ValueError" not in check.stderr, check.stdout + check.stderr

    shop_env = {k: env[k] for k in ("SHOP_ENDPOINT", "SHOP_API_KEY", "PYTHONPATH")}
    with Worker(redis_broker, out_dir, module="shop", env=shop_env) as worker:
        app = redis_broker.producer()
        for order in range(1, N + 1):
            app.send_task("orders.charge", (order,), queue=redis_broker.queue)
        rows = wait_for_records(out_dir, N, worker=worker)
        assert worker.stop() == 0
        log = worker.log()
    assert sorted(r["order_id"] for r in rows) == list(range(1, N + 1))  # every task ran
    warnings = [line for line in log.splitlines() if "bugsnag_celery: no API key" in line]
    assert len(warnings) == 1, log[-5000:]
    assert "Django's settings.BUGSNAG['api_key'] (empty)" in warnings[0], warnings[0]
    assert "CELERY_BUGSNAG_API_KEY" in warnings[0], warnings[0]  # the namespace's spelling too
    deliver_sessions(redis_broker, endpoint.url)
    assert endpoint.requests == [], endpoint.requests  # no event, no session count
