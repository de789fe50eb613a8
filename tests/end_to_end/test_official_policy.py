"""The official client's configuration is the policy of every event a worker sends (issue 23).

A real prefork worker (``tests/support/apps/official_app.py``) with BugSnag's official client
4.9.2 configured as its Python guide shows and ``bugsnag_celery.configure(app)`` given nothing
of its own: key, endpoints and every setting come from ``bugsnag.configure``. Assertions are on
what the BugSnag stand-in received: events (``/notify``) and, after the worker stopped, the
session counts the app's own ``celery bugsnag flush`` delivered where the app's options say.
Where the official client alone is the reference, it runs the same task in the same test
(``OFFICIAL_PLAIN=1``: its own ``bugsnag.celery`` failure handler, no bugsnag_celery) and its
events are compared with ours.

Covers: bugsnag_celery/reporting/official_event.py, bugsnag_celery/hooks/official.py
Covers: bugsnag_celery/hooks/official_delivery.py, bugsnag_celery/payload/official_filters.py
Covers: bugsnag_celery/payload/official_frames.py, bugsnag_celery/payload/official_crumbs.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import celery
import pytest
from brokers import Broker
from endpoint import Endpoint
from results import received_sessions, total
from workers import APPS, Worker, wait_until

API_KEY = "0ff1c1a10ff1c1a10ff1c1a10ff1c1a1"
QUIET = 2.0  # after the expected events: anything that should not come would have come by now
SSN, IBAN = "078-05-1120", "GB82WEST12345698765432"
LIB_ROOT = str(Path(celery.__file__).resolve().parent.parent)  # site-packages
PROJECT_ROOT = os.path.commonpath([str(APPS.resolve()), LIB_ROOT])  # holds both: lib_root must win


def official(ep: Endpoint, **settings: Any) -> dict[str, Any]:
    """``bugsnag.configure`` keywords: an on-premise project (its own endpoints) plus *settings*."""
    base: dict[str, Any] = {
        "api_key": API_KEY, "endpoint": f"{ep.url}/notify", "session_endpoint": f"{ep.url}/sessions",
        "app_version": "5.0.1", "release_stage": "test", "hostname": "official-host",
    }  # fmt: skip
    return {**base, **settings}


def run_worker(
    broker: Broker,
    out: Path,
    ep: Endpoint,
    settings: dict[str, Any],
    runs: list[dict[str, Any]],
    *,
    events: int,
    callback: str | None = None,
    plain: bool = False,
    name: str = "w1",
) -> Worker:
    """Start a prefork worker (one child), send *runs* (``official.work`` kwargs), wait until
    each has finished and exactly *events* events arrived (then a quiet period), stop it."""
    env = {"OFFICIAL_CONFIGURE": json.dumps(settings)}
    if callback:
        env["OFFICIAL_CALLBACK"] = callback
    if plain:
        env["OFFICIAL_PLAIN"] = "1"
    before = len(ep.events())
    out.mkdir(parents=True, exist_ok=True)
    with Worker(broker, out, module="official_app", concurrency=1, name=name, env=env) as w:
        app = broker.producer()
        for kwargs in runs:
            app.send_task("official.work", kwargs=kwargs)
        # 60 s: a few tasks on one child take well under a second; the margin is for a loaded machine
        wait_until(lambda: len(re.findall(r"Task official\.work\[[^\]]+\] (?:succeeded|raised)", w.log()))
                   >= len(runs), 60, f"{len(runs)} runs finished")  # fmt: skip
        if events:
            ep.wait_for_events(before + events, timeout=60)
        time.sleep(QUIET)
        assert w.stop() == 0, w.log()[-3000:]
    got = len(ep.events()) - before
    assert got == events, f"{got} events, expected {events}: {[e['exceptions'][0] for e in ep.events()]}"
    return w


def flush_sessions(w: Worker) -> str:
    """``celery -A official_app bugsnag flush`` with the worker's environment: the app's own
    delivery, to wherever its options (read from the official client) point."""
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "official_app", "bugsnag", "flush"],
        env=w.env, cwd=str(w.out), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.stdout + done.stderr


def frame_diff(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    """Where two events' frames differ, one line per frame (code shown only where it differs)."""
    lines = []
    for n, (ours, alone) in enumerate(zip(frames(mine), frames(theirs))):
        lines.append(
            f"exception {n}: {len(ours)} frames sent by bugsnag_celery, {len(alone)} by the official client"
        )
        for i in range(max(len(ours), len(alone))):
            a = ours[i] if i < len(ours) else None
            b = alone[i] if i < len(alone) else None
            if a != b:
                show_code = a is not None and b is not None and a[:4] == b[:4]
                lines.append(f"  #{i} ours {a if show_code or a is None else a[:4]}")
                lines.append(f"  #{i} alone {b if show_code or b is None else b[:4]}")
    return "\n".join(lines)


def by_message(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Events by (errorClass, message), each exactly once."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        first = event["exceptions"][0]
        key = (first["errorClass"], first["message"])
        assert key not in out, f"{key} sent twice"
        out[key] = event
    return out


def frames(event: dict[str, Any]) -> list[list[tuple[Any, ...]]]:
    return [
        [(f["file"], f["lineNumber"], f["method"], f["inProject"], f.get("code")) for f in e["stacktrace"]]
        for e in event["exceptions"]
    ]


# ---- where events and sessions go ----------------------------------------------------------------


@pytest.mark.parametrize("sessions", [True, False], ids=["endpoint-and-session_endpoint", "endpoint-only"])
def test_events_and_sessions_go_to_the_official_endpoints(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint, sessions: bool
) -> None:
    settings = official(endpoint)
    if not sessions:  # as bugsnag-python: only `endpoint` set -> no sessions, never the public host
        del settings["session_endpoint"]
    runs: list[dict[str, Any]] = [
        {"tag": "a", "crash": "ValueError"},
        {"tag": "b", "notify": ["KeyError"]},
        {"tag": "c"},
    ]
    w = run_worker(redis_broker, out_dir, endpoint, settings, runs, events=2)
    got = by_message(endpoint.events())
    assert set(got) == {("ValueError", "crash a"), ("KeyError", "'handled b'")}
    notify_posts = [r for r in endpoint.received() if r["path"] == "/notify"]
    assert notify_posts and all(r["headers"]["Bugsnag-Api-Key"] == API_KEY for r in notify_posts)
    assert got[("ValueError", "crash a")]["unhandled"] is True
    if sessions:
        assert got[("ValueError", "crash a")]["session"]["events"] == {"handled": 0, "unhandled": 1}
        assert got[("KeyError", "'handled b'")]["session"]["events"] == {"handled": 1, "unhandled": 0}

    said = flush_sessions(w)
    received = received_sessions(endpoint.received())
    posts = [r for r in endpoint.received() if r["path"] == "/sessions"]
    assert {r["path"] for r in endpoint.received()} <= {"/notify", "/sessions"}
    if sessions:
        assert total(received) == 3, said  # one per run, all of them here (none elsewhere)
        assert "sessions: 3 delivered" in said, said
        assert all(r["headers"]["Bugsnag-Api-Key"] == API_KEY for r in posts)
        assert {key[:2] + key[3:] for key in received} == {("5.0.1", "test", "official-host")}
    else:
        assert posts == [] and "sessions: 0 delivered" in said, said


# ---- what must never leave ---------------------------------------------------------------------


@pytest.mark.parametrize("filtered", [False, True], ids=["no-filter", "params_filters"])
def test_params_filters(redis_broker: Broker, out_dir: Path, endpoint: Endpoint, filtered: bool) -> None:
    settings = official(endpoint, **({"params_filters": ["password", "ssn", "iban"]} if filtered else {}))
    runs: list[dict[str, Any]] = [
        {"tag": "a", "notify": ["KeyError"], "crash": "ValueError", "ssn": SSN, "iban": IBAN}
    ]
    run_worker(redis_broker, out_dir, endpoint, settings, runs, events=2)
    got = by_message(endpoint.events())
    assert set(got) == {("ValueError", "crash a"), ("KeyError", "'handled a'")}
    for key, event in got.items():
        text = json.dumps(event)
        if not filtered:  # the values are there to be found: the search below can fail
            assert SSN in text and IBAN in text, key
            continue
        assert SSN not in text and IBAN not in text, (key, text)
        assert event["metaData"]["run"] == {"tag": "a", "ssn": "[FILTERED]", "iban": "[FILTERED]"}, key
        manual = next(b for b in event["breadcrumbs"] if b["name"] == "manual a")
        assert manual["metaData"] == {"tag": "a", "ssn": "[FILTERED]", "iban": "[FILTERED]"}, key
    if filtered:  # the crash's task tab: the run's keyword arguments
        kwargs = got[("ValueError", "crash a")]["metaData"]["task"]["kwargs"]
        assert kwargs["ssn"] == "[FILTERED]" and kwargs["iban"] == "[FILTERED]", kwargs
    raw = b"".join(r["raw"] for r in endpoint.received())
    assert (SSN.encode() in raw) is not filtered


@pytest.mark.parametrize("send_code", [True, False])
def test_send_code(redis_broker: Broker, out_dir: Path, endpoint: Endpoint, send_code: bool) -> None:
    settings = official(endpoint, send_code=send_code)
    runs: list[dict[str, Any]] = [{"tag": "a", "notify": ["KeyError"], "crash": "ValueError"}]
    run_worker(redis_broker, out_dir, endpoint, settings, runs, events=2)
    for event in endpoint.events():
        every = [f for e in event["exceptions"] for f in e["stacktrace"]]
        assert every, event
        if send_code:
            work = next(f for f in every if f["method"] == "work")
            assert "fail(KINDS[" in work["code"][str(work["lineNumber"])], work
        else:
            assert [f for f in every if f.get("code")] == [], event["exceptions"][0]["errorClass"]


# ---- what must not be sent at all --------------------------------------------------------------


def test_ignore_classes_bare_builtin_and_qualified(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    settings = official(endpoint, ignore_classes=["ValueError", "official_app.PaymentDeclined"])
    runs: list[dict[str, Any]] = [
        {"tag": "v", "crash": "ValueError"},
        {"tag": "p", "crash": "PaymentDeclined"},
        {"tag": "k", "notify": ["ValueError", "PaymentDeclined", "RuntimeError"], "crash": "KeyError"},
    ]
    w = run_worker(redis_broker, out_dir, endpoint, settings, runs, events=2)
    got = by_message(endpoint.events())
    assert set(got) == {("RuntimeError", "handled k"), ("KeyError", "'crash k'")}, set(got)
    # the ignored handled events were never counted: only the one that was sent
    assert got[("RuntimeError", "handled k")]["session"]["events"] == {"handled": 1, "unhandled": 0}
    assert got[("KeyError", "'crash k'")]["session"]["events"] == {"handled": 1, "unhandled": 1}
    flush_sessions(w)
    assert total(received_sessions(endpoint.received())) == 3  # the runs themselves still count


@pytest.mark.parametrize("listed", [True, False], ids=["stage-listed", "stage-not-listed"])
def test_notify_release_stages(redis_broker: Broker, out_dir: Path, endpoint: Endpoint, listed: bool) -> None:
    stages = ["production", "staging"] if listed else ["production"]
    settings = official(endpoint, release_stage="staging", notify_release_stages=stages)
    runs: list[dict[str, Any]] = [{"tag": "a", "crash": "ValueError"}, {"tag": "b", "notify": ["KeyError"]}]
    w = run_worker(redis_broker, out_dir, endpoint, settings, runs, events=2 if listed else 0)
    said = flush_sessions(w)
    received = received_sessions(endpoint.received())
    if listed:
        assert total(received) == 2, said
        assert {key[1] for key in received} == {"staging"}
    else:  # a stage that sends nothing sends no session counts either
        assert [r["path"] for r in endpoint.received()] == [], said


def test_auto_notify_false(redis_broker: Broker, out_dir: Path, endpoint: Endpoint) -> None:
    settings = official(endpoint, auto_notify=False)
    runs: list[dict[str, Any]] = [
        {"tag": "a", "crash": "ValueError"},
        {"tag": "b", "notify": ["KeyError"], "crash": "RuntimeError"},
    ]
    w = run_worker(redis_broker, out_dir, endpoint, settings, runs, events=1)
    (handled,) = endpoint.events()  # bugsnag.notify still sends (auto_notify is about crashes)
    assert handled["exceptions"][0]["errorClass"] == "KeyError" and handled["unhandled"] is False
    assert handled["session"]["events"] == {"handled": 1, "unhandled": 0}
    flush_sessions(w)
    assert total(received_sessions(endpoint.received())) == 2  # both runs: sessions, healthy


# ---- before_notify callbacks ---------------------------------------------------------------------


def test_a_callback_returning_false_drops_the_event_and_it_is_never_counted(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    settings = official(endpoint)
    runs: list[dict[str, Any]] = [
        {"tag": "a", "notify": ["PaymentDeclined", "KeyError"], "crash": "ValueError"},
        {"tag": "b", "notify": ["KeyError"], "crash": "PaymentDeclined"},
    ]
    w = run_worker(redis_broker, out_dir, endpoint, settings, runs, events=3, callback="drop_declined")
    got = by_message(endpoint.events())
    assert set(got) == {("KeyError", "'handled a'"), ("ValueError", "crash a"), ("KeyError", "'handled b'")}
    # the dropped bugsnag.notify of run a was never counted: the crash after it says handled 1, not 2
    assert got[("KeyError", "'handled a'")]["session"]["events"] == {"handled": 1, "unhandled": 0}
    assert got[("ValueError", "crash a")]["session"]["events"] == {"handled": 1, "unhandled": 1}
    assert got[("KeyError", "'handled b'")]["session"]["events"] == {"handled": 1, "unhandled": 0}
    flush_sessions(w)
    assert total(received_sessions(endpoint.received())) == 2


def test_a_callback_that_decorates_the_crash(redis_broker: Broker, out_dir: Path, endpoint: Endpoint) -> None:
    settings = official(endpoint)
    runs: list[dict[str, Any]] = [{"tag": "a", "notify": ["KeyError"], "crash": "ValueError"}]
    run_worker(redis_broker, out_dir, endpoint, settings, runs, events=2, callback="decorate")
    got = by_message(endpoint.events())
    crash, handled = got[("ValueError", "crash a")], got[("KeyError", "'handled a'")]
    for event, unhandled, error in ((crash, True, "ValueError"), (handled, False, "KeyError")):
        assert event["metaData"]["callback"] == {"added": "by decorate", "error": error}
        assert event["user"] == {"id": "callback-user", "name": "name-a", "email": "cb@example.com"}
        assert event["context"] == "callback-context" and event["groupingHash"] == "callback-group"
        assert event["severity"] == "info" and event["severityReason"] == {"type": "userCallbackSetSeverity"}
        assert event["unhandled"] is unhandled  # a callback's severity never makes a crash handled


# ---- what the run adds travels with its crash -----------------------------------------------------


def test_breadcrumbs_feature_flags_metadata_and_user_of_the_run(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    settings = official(endpoint)
    runs: list[dict[str, Any]] = [{"tag": "a", "notify": ["KeyError"], "crash": "ValueError"}]
    run_worker(redis_broker, out_dir, endpoint, settings, runs, events=2)
    crash = by_message(endpoint.events())[("ValueError", "crash a")]
    assert [(b["name"], b["type"], b["metaData"]) for b in crash["breadcrumbs"]] == [
        ("process-wide breadcrumb", "manual", {}),
        ("manual a", "manual", {"tag": "a"}),
        ("log a", "log", {"logLevel": "INFO"}),
        ("KeyError", "error",  # the automatic breadcrumb of the run's earlier bugsnag.notify
         {"errorClass": "KeyError", "message": "'handled a'", "unhandled": False, "severity": "warning"}),
    ]  # fmt: skip
    assert crash["featureFlags"] == [
        {"featureFlag": "process-flag", "variant": "on"},
        {"featureFlag": "flag-a", "variant": "v1"},
    ]
    assert crash["metaData"]["run"] == {"tag": "a"} and crash["metaData"]["process"] == {"wide": "yes"}
    assert crash["user"] == {"id": "user-a", "name": "name-a"}


# ---- frames, paths and everything else: as the official client alone sends the same crash ----------


@pytest.mark.parametrize("roots", [True, False], ids=["project_root-lib_root-exclude", "defaults"])
def test_the_same_crash_as_the_official_client_alone_sends_it(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint, roots: bool
) -> None:
    """project_root / lib_root / traceback_exclude_modules shape the frames exactly as the
    official client shapes them: its own failure handler on plain Celery is the reference."""
    extra: dict[str, Any] = {}
    if roots:  # project_root holds lib_root: lib_root wins (official: checked first)
        extra = {"project_root": PROJECT_ROOT, "lib_root": LIB_ROOT,
                 "traceback_exclude_modules": ["official_helpers"]}  # fmt: skip
    settings = official(endpoint, **extra)
    runs: list[dict[str, Any]] = [{"tag": "a", "notify": ["KeyError"], "crash": "PaymentDeclined"}]
    run_worker(redis_broker, out_dir / "alone", endpoint, settings, runs, events=2, plain=True, name="plain")
    alone = by_message(endpoint.events())
    endpoint.reset()
    run_worker(redis_broker, out_dir / "ours", endpoint, settings, runs, events=2)
    ours = by_message(endpoint.events())
    crash = ("official_app.PaymentDeclined", "crash a")
    assert set(alone) == set(ours) == {crash, ("KeyError", "'handled a'")}
    theirs, mine = alone[crash], ours[crash]
    assert [e["errorClass"] for e in mine["exceptions"]] == [e["errorClass"] for e in theirs["exceptions"]]
    assert frames(mine) == frames(theirs), frame_diff(mine, theirs)
    for key in ("unhandled", "severity", "severityReason", "context", "user", "featureFlags"):
        assert mine[key] == theirs[key], key
    assert [(b["name"], b["type"], b["metaData"]) for b in mine["breadcrumbs"]] == [
        (b["name"], b["type"], b["metaData"]) for b in theirs["breadcrumbs"]
    ]
    assert {k: mine["metaData"][k] for k in ("run", "process")} == {
        k: theirs["metaData"][k] for k in ("run", "process")
    }

    stack = mine["exceptions"][0]["stacktrace"]
    work = next(f for f in stack if f["method"] == "work")
    if roots:
        assert stack[0] is work and not any("official_helpers" in f["file"] for f in stack)  # left out
        assert work["inProject"] is True
        assert work["file"] == os.path.relpath(APPS / "official_app.py", PROJECT_ROOT)
        celery_frames = [f for f in stack if "celery" in f["file"] and f is not work]
        assert celery_frames and all(f["file"].startswith("celery/") and not f["inProject"]
                                     for f in celery_frames)  # fmt: skip
    else:  # the official default project_root is the worker's cwd: nothing of the apps is under it
        assert stack[0]["method"] == "fail" and not any(f["inProject"] for f in stack)
