"""Every event sent from a task run has the same task context, whoever built it (issue 25).

One run of ``producers_app``'s task (a real prefork worker, BugSnag's official client 4.9.2)
reports five times: ``bugsnag_celery.notify``, ``bugsnag.notify``, the official logging
handler's ``logger.error`` and ``logger.exception``, then it crashes. What the BugSnag
stand-in received must carry, on every one of the five, the task name as ``context``, the
same ``task`` tab, the worker's ``app`` (version, release stage, type) and the run's
session -- with the official client configured by the project, and configured only by
bugsnag_celery. The task name is a default: a ``context`` the call, a callback or
bugsnag_celery's ``before_notify`` sets is kept; the request configuration's is not used
in a task run (the official Celery handler gives crashes the task name over it too). (A
callback on an official client that bugsnag_celery filled in runs on that client's own
events only: its policy is bugsnag_celery's, README "The official client's settings".)

Covers: bugsnag_celery/hooks/official_delivery.py, bugsnag_celery/hooks/official.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker
from endpoint import Endpoint
from workers import Worker

from bugsnag_celery import task_session_id

API_KEY = "0ff1c1a10ff1c1a10ff1c1a10ff1c1a1"
TASK = "producers.every_way"
QUIET = 2.0  # after the five events: a sixth would have come by now
#: The worker's ``app``: bugsnag_celery's ``app_version`` (and, where the project configured the
#: official client, its ``app_type``) win over the official client's 5.0.1 and ``flask``.
APP = {
    "project": {"version": "5.0.2", "releaseStage": "test", "type": "billing-worker"},
    "unset": {"version": "5.0.2", "releaseStage": "test", "type": "celery"},
}
#: What a ``task`` tab holds for a run of ``producers.every_way`` (sent alone: no parent, eta or expiry).
TASK_KEYS = {
    "id", "name", "retries", "queue", "routing_key", "exchange", "redelivered", "delivery", "hostname",
    "origin", "root_id", "time_limit", "pool", "worker_pid", "eager", "args", "kwargs",
}  # fmt: skip
#: Each event by its first exception's class: who built it, and the run's counts it carries.
PRODUCERS = {
    "KeyError": ("bugsnag_celery.notify", {"handled": 1, "unhandled": 0}),
    "LookupError": ("bugsnag.notify", {"handled": 2, "unhandled": 0}),
    "LogERROR": ("logger.error", {"handled": 3, "unhandled": 0}),
    "IndexError": ("logger.exception", {"handled": 4, "unhandled": 0}),
    "ValueError": ("crash", {"handled": 4, "unhandled": 1}),
}
# From tests/support/apps/producers_app.py (not importable here: it configures an app on import).
CONTEXTS = {
    "official-callback": "set by an official callback",
    "ours-callback": "set by bugsnag_celery's before_notify",
    "request": "set by configure_request",
    "argument": "passed by the caller",
}
REQUEST_TAB = {"name": "the request's", "tenant": "t-1"}
GIVEN_TAB = {"retries": 99, "step": "charge"}
#: The producers that take ``context`` and ``metadata`` arguments.
NOTIFY_CALLS = ("bugsnag_celery.notify", "bugsnag.notify")


def run_once(broker: Broker, out: Path, ep: Endpoint, official: str, context_by: str) -> dict[str, Any]:
    """One run of the task on a prefork worker (one child); its five events by producer."""
    settings = {"api_key": API_KEY, "app_version": "5.0.2", "release_stage": "test"}
    configure: dict[str, Any] = {
        "notify_endpoint": f"{ep.url}/notify",
        "sessions_endpoint": f"{ep.url}/sessions",
    }
    env = {"PRODUCERS_OFFICIAL": official, "PRODUCERS_CONTEXT": context_by}
    if official == "project":  # the project's own bugsnag.configure; bugsnag_celery given others
        env["PRODUCERS_OFFICIAL_CONFIGURE"] = json.dumps({
            **settings, "app_version": "5.0.1", "app_type": "flask", "endpoint": f"{ep.url}/notify",
            "session_endpoint": f"{ep.url}/sessions",
        })  # fmt: skip
        configure.update(app_version=settings["app_version"], app_type="billing-worker")
    else:  # only bugsnag_celery is configured: it fills in the official client
        configure.update(settings)
    with Worker(broker, out, module="producers_app", concurrency=1, env=env, configure=configure) as w:
        broker.producer().send_task(TASK, kwargs={"tag": "a"})
        # 60 s: one run takes well under a second; the margin is for a loaded machine
        ep.wait_for_events(len(PRODUCERS), timeout=60)
        time.sleep(QUIET)
        assert w.stop() == 0, w.log()[-3000:]
    filled = "filled in the official bugsnag client's unset api_key" in w.log()
    assert filled is (official == "unset"), w.log()[-3000:]
    events = {event["exceptions"][0]["errorClass"]: event for event in ep.events()}
    assert sorted(events) == sorted(PRODUCERS) and len(ep.events()) == len(PRODUCERS), list(events)
    return events


@pytest.mark.parametrize(
    ("official", "context_by"),
    [
        ("project", ""),
        ("unset", ""),
        ("project", "request"),
        ("project", "argument"),
        ("project", "official-callback"),
        ("unset", "official-callback"),
        ("project", "ours-callback"),
    ],
    ids=[
        "official-configured-by-the-project",
        "official-filled-in-by-bugsnag_celery",
        "request-context-and-task-tab",
        "context-and-task-tab-given-to-the-call",
        "an-official-callback-sets-context",
        "an-official-callback-on-a-client-bugsnag_celery-filled-in",
        "bugsnag_celery-before_notify-sets-context",
    ],
)
def test_every_event_of_a_task_run_has_the_same_task_context(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint, official: str, context_by: str
) -> None:
    events = run_once(redis_broker, out_dir, endpoint, official, context_by)
    crash_tab = events["ValueError"]["metaData"]["task"]
    # the request configuration's task tab adds its own key and replaces none of ours
    assert set(crash_tab) == TASK_KEYS | ({"tenant"} if context_by == "request" else set())
    assert crash_tab["name"] == TASK and crash_tab["kwargs"] == {"tag": "a"} and crash_tab["retries"] == 0
    assert crash_tab.get("tenant") == ("t-1" if context_by == "request" else None)
    session = task_session_id(crash_tab["id"], crash_tab["retries"], crash_tab["delivery"])

    got, expected = {}, {}
    for kind, (producer, counts) in PRODUCERS.items():
        event = events[kind]
        got[producer] = (event["context"], event["app"], event["session"]["id"], event["session"]["events"],
                         event["metaData"]["task"])  # fmt: skip
        given = context_by == "argument" and producer in NOTIFY_CALLS
        tab = {**crash_tab, **GIVEN_TAB} if given else crash_tab  # what the call gave, on top
        expected[producer] = (context_of(producer, official, context_by), APP[official], session, counts, tab)
        if context_by == "official-callback" and ran_official_callbacks(producer, official):
            # it was shown what a crash event shows it
            seen = {"context": TASK, "task": TASK, "version": "5.0.2", "type": APP[official]["type"]}
            assert event["metaData"]["seen"] == seen, producer
        elif context_by == "official-callback":  # shown to be there when it runs, above
            assert "seen" not in event["metaData"], producer
    assert got == expected


def ran_official_callbacks(producer: str, official: str) -> bool:
    """On a client the project configured, every event goes through its callbacks; on one that
    bugsnag_celery filled in, only the client's own (its policy is bugsnag_celery's: README)."""
    return official == "project" or producer not in ("crash", "bugsnag_celery.notify")


def context_of(producer: str, official: str, context_by: str) -> str:
    """The task name, unless the call, a callback or bugsnag_celery's before_notify set one
    (the request configuration's is not used in a task run)."""
    if context_by == "ours-callback" or (
        context_by == "official-callback" and ran_official_callbacks(producer, official)
    ):
        return CONTEXTS[context_by]
    if context_by == "argument" and producer in NOTIFY_CALLS:
        return CONTEXTS["argument"]  # the logging handler takes no context
    return TASK
