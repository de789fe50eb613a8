"""What a task run adds to the official client belongs to that run (issue 23).

The official client keeps breadcrumbs, feature flags and the request's metadata and user in
context variables a worker never resets. One worker process runs three tasks in turn, each
leaving items named after its own run (``tests/support/apps/official_app.py``): the first
also calls ``bugsnag.notify`` (an "error" breadcrumb), the next two crash. Each crash event
carries exactly its own run's items plus the process-wide ones (set at import, outside any
run): in one prefork child, in a threads pool and in a gevent pool.

Covers: bugsnag_celery/hooks/official.py, bugsnag_celery/reporting/official_event.py
Covers: bugsnag_celery/hooks/official_scope.py
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker
from endpoint import Endpoint
from results import records
from workers import Worker, wait_until

API_KEY = "0ff1c1a10ff1c1a10ff1c1a10ff1c1a1"
RUNS: list[dict[str, Any]] = [
    {"tag": "one", "notify": ["KeyError"]},
    {"tag": "two", "crash": "ValueError"},
    {"tag": "three", "crash": "RuntimeError"},
]


def own_items(event: dict[str, Any]) -> dict[str, Any]:
    """What a run can leave on an event: breadcrumbs, flags, the tabs it adds, the user."""
    return {
        "breadcrumbs": [(b["name"], b["type"], b["metaData"]) for b in event["breadcrumbs"]],
        "featureFlags": event["featureFlags"],
        "tabs": {k: event["metaData"].get(k) for k in ("process", "run")},
        "user": event["user"],
    }


def expected(tag: str) -> dict[str, Any]:
    return {
        "breadcrumbs": [
            ("process-wide breadcrumb", "manual", {}),
            (f"manual {tag}", "manual", {"tag": tag}),
            (f"log {tag}", "log", {"logLevel": "INFO"}),
        ],
        "featureFlags": [
            {"featureFlag": "process-flag", "variant": "on"},
            {"featureFlag": f"flag-{tag}", "variant": "v1"},
        ],
        "tabs": {"process": {"wide": "yes"}, "run": {"tag": tag}},
        "user": {"id": f"user-{tag}", "name": f"name-{tag}"},
    }


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_a_run_never_carries_another_runs_items(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint, pool: str
) -> None:
    settings = {
        "api_key": API_KEY, "endpoint": f"{endpoint.url}/notify",
        "session_endpoint": f"{endpoint.url}/sessions", "app_version": "5.0.1", "release_stage": "test",
    }  # fmt: skip
    env = {"OFFICIAL_CONFIGURE": json.dumps(settings)}
    with Worker(redis_broker, out_dir, module="official_app", pool=pool, concurrency=1, env=env) as w:
        app = redis_broker.producer()
        for kwargs in RUNS:  # one at a time (-c 1), in this order, in one process
            app.send_task("official.work", kwargs=kwargs)
        # 60 s: three short tasks; the margin is for a loaded machine
        wait_until(lambda: len(re.findall(r"Task official\.work\[[^\]]+\] (?:succeeded|raised)", w.log()))
                   >= len(RUNS), 60, "3 runs finished")  # fmt: skip
        endpoint.wait_for_events(3, timeout=60)
        time.sleep(2)  # a fourth event would have come by now
        assert w.stop() == 0, w.log()[-3000:]

    rows = records(out_dir)
    assert [r["tag"] for r in rows] == ["one", "two", "three"]
    assert len({r["pid"] for r in rows}) == 1, rows  # the same process ran all three

    events = endpoint.events()
    by_tag = {e["exceptions"][0]["message"].strip("'").split()[1]: e for e in events}
    assert len(events) == 3 and sorted(by_tag) == ["one", "three", "two"], [e["exceptions"] for e in events]
    for tag in ("two", "three"):
        event = by_tag[tag]
        assert event["unhandled"] is True and event["exceptions"][0]["message"] == f"crash {tag}"
        assert own_items(event) == expected(tag), tag
    handled = by_tag["one"]  # built by the official client itself: its own run's items, too
    assert handled["unhandled"] is False and own_items(handled) == expected("one")
