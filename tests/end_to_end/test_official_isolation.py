"""What a task run adds to the official client belongs to that run (issue 23).

The official client keeps breadcrumbs, feature flags and the request's metadata and user in
context variables a worker never resets. One worker process runs three tasks in turn, each
leaving items named after its own run (``tests/support/apps/official_app.py``): the first
also calls ``bugsnag.notify`` (an "error" breadcrumb), the next two crash. Each crash event
carries exactly its own run's items plus the process-wide ones (set at import, outside any
run): in one prefork child, in a threads pool and in a gevent pool. Then the corners: a run
inside another (a task called as a function), a run that replaces the official client's
per-context objects (as a web framework's middleware does), and process-wide items added
after the worker adopted the client.

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
        "tabs": {
            k: v for k, v in event["metaData"].items() if k in ("process", "run") or k.startswith("run ")
        },
        "user": event["user"],
    }


def items(tag: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The breadcrumbs one run (``leave_items``) leaves."""
    return [(f"manual {tag}", "manual", {"tag": tag}), (f"log {tag}", "log", {"logLevel": "INFO"})]


def expected(tag: str, late: bool = False) -> dict[str, Any]:
    process: list[tuple[str, str, dict[str, Any]]] = [("process-wide breadcrumb", "manual", {})]
    flags = [{"featureFlag": "process-flag", "variant": "on"}]
    if late:
        process.append(("late process-wide breadcrumb", "manual", {}))
        flags.append({"featureFlag": "late-flag", "variant": "on"})
    return {
        "breadcrumbs": [*process, *items(tag)],
        "featureFlags": [*flags, {"featureFlag": f"flag-{tag}", "variant": "v1"}],
        "tabs": {"process": {"wide": "yes"}, "run": {"tag": tag}, f"run {tag}": {"only": tag}},
        "user": {"id": f"user-{tag}", "name": f"name-{tag}"},
    }


def run_in_turn(
    redis_broker: Broker,
    out_dir: Path,
    endpoint: Endpoint,
    pool: str,
    runs: list[tuple[str, dict[str, Any]]],
    events: int,
    late: bool = False,
) -> list[dict[str, Any]]:
    """*runs* (task name, kwargs) one at a time, in order, in one worker process; the events."""
    settings = {
        "api_key": API_KEY, "endpoint": f"{endpoint.url}/notify",
        "session_endpoint": f"{endpoint.url}/sessions", "app_version": "5.0.1", "release_stage": "test",
    }  # fmt: skip
    env = {"OFFICIAL_CONFIGURE": json.dumps(settings), "OFFICIAL_LATE": "1" if late else "0"}
    with Worker(redis_broker, out_dir, module="official_app", pool=pool, concurrency=1, env=env) as w:
        app = redis_broker.producer()
        for name, kwargs in runs:  # one at a time (-c 1), in this order, in one process
            app.send_task(name, kwargs=kwargs)
        # 60 s: a few short tasks; the margin is for a loaded machine
        wait_until(lambda: len(re.findall(r"Task official\.\w+\[[^\]]+\] (?:succeeded|raised)", w.log()))
                   >= len(runs), 60, f"{len(runs)} runs finished")  # fmt: skip
        endpoint.wait_for_events(events, timeout=60)
        time.sleep(2)  # one more event would have come by now
        assert w.stop() == 0, w.log()[-3000:]
    rows = records(out_dir)
    assert len({r["pid"] for r in rows}) == 1, rows  # the same process ran them all
    found = endpoint.events()
    assert len(found) == events, [e["exceptions"] for e in found]
    return found


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_a_run_never_carries_another_runs_items(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint, pool: str
) -> None:
    runs = [("official.work", kwargs) for kwargs in RUNS]
    events = run_in_turn(redis_broker, out_dir, endpoint, pool, runs, 3)
    assert [r["tag"] for r in records(out_dir)] == ["one", "two", "three"]
    by_tag = {e["exceptions"][0]["message"].strip("'").split()[1]: e for e in events}
    assert sorted(by_tag) == ["one", "three", "two"], [e["exceptions"] for e in events]
    for tag in ("two", "three"):
        event = by_tag[tag]
        assert event["unhandled"] is True and event["exceptions"][0]["message"] == f"crash {tag}"
        assert own_items(event) == expected(tag), tag
    handled = by_tag["one"]  # built by the official client itself: its own run's items, too
    assert handled["unhandled"] is False and own_items(handled) == expected("one")


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_run_inside_a_run_adds_to_it_and_leaves_nothing_behind(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint, pool: str
) -> None:
    """``nest`` leaves its items, calls ``work`` as a function (a run inside it, which leaves
    its own and sends a ``bugsnag.notify``), then crashes; then a run of its own crashes. The
    inner event has the outer run's items and its own; the outer crash, only the outer's (not
    the inner run's, nor the "error" breadcrumb its notify left); the next run, only its own."""
    runs = [
        ("official.nest", {"tag": "outer", "inner": "inner"}),
        ("official.work", {"tag": "next", "crash": "ValueError"}),
    ]
    events = run_in_turn(redis_broker, out_dir, endpoint, pool, runs, 3)
    by_message = {e["exceptions"][0]["message"].strip("'"): e for e in events}
    assert sorted(by_message) == ["crash next", "crash outer", "handled inner"], list(by_message)
    inner = own_items(by_message["handled inner"])
    assert inner["breadcrumbs"] == [
        ("process-wide breadcrumb", "manual", {}),
        *items("outer"),
        *items("inner"),
    ]
    assert inner["featureFlags"] == [
        {"featureFlag": "process-flag", "variant": "on"},
        {"featureFlag": "flag-outer", "variant": "v1"},
        {"featureFlag": "flag-inner", "variant": "v1"},
    ]
    assert inner["tabs"] == {
        "process": {"wide": "yes"}, "run": {"tag": "inner"},
        "run outer": {"only": "outer"}, "run inner": {"only": "inner"},
    }  # fmt: skip
    assert inner["user"] == {"id": "user-inner", "name": "name-inner"}
    assert own_items(by_message["crash outer"]) == expected("outer")
    assert own_items(by_message["crash next"]) == expected("next")


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_run_that_starts_a_new_context_leaves_nothing_behind(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint, pool: str
) -> None:
    """The first run clears the request configuration and starts a new context (what Django's
    and WSGI's middleware do per request), then leaves its items again in the new objects;
    the next two runs crash, each with its own items and the process-wide ones, added to the
    context after adoption included (``OFFICIAL_LATE``) -- none of the first run's."""
    runs: list[tuple[str, dict[str, Any]]] = [
        ("official.work", {"tag": "one", "replace": True}),
        ("official.work", {"tag": "two", "crash": "ValueError"}),
        ("official.work", {"tag": "three", "crash": "RuntimeError"}),
    ]
    events = run_in_turn(redis_broker, out_dir, endpoint, pool, runs, 2, late=True)
    by_message = {e["exceptions"][0]["message"]: e for e in events}
    assert sorted(by_message) == ["crash three", "crash two"], list(by_message)
    for tag in ("two", "three"):
        assert own_items(by_message[f"crash {tag}"]) == expected(tag, late=True), tag


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_run_that_adds_one_thing_leaves_nothing_behind(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint, pool: str
) -> None:
    """Runs that each add one thing and nothing else -- a flag, a metadata tab, a new context
    with a flag in it (every way the official client changes what runs keep is seen, not only
    the breadcrumbs most runs leave) -- each followed by a run that crashes with its own items
    and the process-wide ones, none of the run before."""
    runs: list[tuple[str, dict[str, Any]]] = []
    for only, crash in (("flag", "two"), ("new-context-flag", "four"), ("tab", "six")):
        runs += [("official.work", {"tag": f"before-{crash}", "only": only}),
                 ("official.work", {"tag": crash, "crash": "ValueError"})]  # fmt: skip
    events = run_in_turn(redis_broker, out_dir, endpoint, pool, runs, 3)
    by_message = {e["exceptions"][0]["message"]: e for e in events}
    assert sorted(by_message) == ["crash four", "crash six", "crash two"], list(by_message)
    for tag in ("two", "four", "six"):
        assert own_items(by_message[f"crash {tag}"]) == expected(tag), tag
