"""Task failures as BugSnag events, from real workers to a real local HTTP endpoint.

Covers: bugsnag_celery/hooks/failures.py, bugsnag_celery/hooks/signals.py
Covers: bugsnag_celery/delivery/spool.py, bugsnag_celery/about.py
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker
from endpoint import Endpoint
from workers import APPS, Worker

from bugsnag_celery import task_session_id

API_KEY = "a35a2a72bd230ac0aa0f52715bbdc6aa"


def config(ep: Endpoint, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": API_KEY, "app_version": "3.1.4", "release_stage": "test", "hostname": "worker-host",
        "notify_endpoint": f"{ep.url}/notify", "sessions_endpoint": f"{ep.url}/sessions",
        "project_root": str(APPS), **extra,
    }  # fmt: skip


def worker(broker: Broker, out: Path, ep: Endpoint, **kw: Any) -> Worker:
    cfg = kw.pop("configure", {})
    return Worker(broker, out, module="events_app", configure=config(ep, **cfg), **kw)


def by_context(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        out.setdefault(event["context"], []).append(event)
    return out


def test_failures_reach_bugsnag_as_the_official_notifier_sends_them(
    fs_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    with worker(fs_broker, out_dir, endpoint) as w:
        app = fs_broker.producer()
        r1 = app.send_task("events.unpicklable", (120,))
        r2 = app.send_task("events.chained")
        for name in ("events.ignored", "events.rejected", "events.thrown", "events.ok"):
            app.send_task(name)
        r3 = app.send_task("events.handled")
        app.send_task("events.paused")
        app.send_task("events.autoretry")
        r4 = app.send_task("events.soft_limit")
        events = endpoint.wait_for_events(6, timeout=60)
        time.sleep(1.5)  # anything that should not come would have come by now
        assert w.stop() == 0
    events = endpoint.events()
    got = by_context(events)
    assert sorted(got) == sorted(
        ["events.unpicklable", "events.chained", "events.handled", "events.paused", "events.autoretry",
         "events.soft_limit"]
    ), sorted(got)  # fmt: skip
    assert all(len(v) == 1 for v in got.values()), {k: len(v) for k, v in got.items()}

    # headers and envelope, exactly
    request = next(r for r in endpoint.requests if r["path"] == "/notify")
    headers = request["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["Bugsnag-Api-Key"] == API_KEY and headers["Bugsnag-Payload-Version"] == "4.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", headers["Bugsnag-Sent-At"])
    body = request["body"]
    assert body["apiKey"] == API_KEY and body["payloadVersion"] == "4.0"
    assert set(body["notifier"]) == {"name", "version", "url"} and all(body["notifier"].values())

    event = got["events.unpicklable"][0]
    assert event["unhandled"] is True and event["severity"] == "error"
    assert event["severityReason"] == {
        "type": "unhandledExceptionMiddleware",
        "attributes": {"framework": "Celery"},
    }
    first = event["exceptions"][0]
    assert first["errorClass"] == "events_app.PaymentDeclined"  # the real class, not ValueError
    assert first["message"] == "declined 51: insufficient funds for 120" and first["type"] == "python"
    frames = first["stacktrace"]
    assert [f["method"] for f in frames[:2]] == ["_charge", "unpicklable"]  # innermost first
    assert frames[0]["inProject"] is True and frames[0]["file"].endswith("events_app.py")
    assert "raise PaymentDeclined" in frames[0]["code"][str(frames[0]["lineNumber"])]
    assert event["session"] == {
        "id": task_session_id(r1.id, 0, event["metaData"]["task"]["delivery"]),
        "startedAt": event["session"]["startedAt"],
        "events": {"handled": 0, "unhandled": 1},
    }  # fmt: skip
    assert event["app"] == {"version": "3.1.4", "releaseStage": "test", "type": "celery"}
    assert event["device"]["hostname"] == "worker-host"
    assert set(event["device"]["runtimeVersions"]) == {"python", "celery", "kombu"}
    task = event["metaData"]["task"]
    assert task["id"] == r1.id and task["name"] == "events.unpicklable" and task["retries"] == 0
    assert task["pool"] == "prefork" and task["eager"] is False and isinstance(task["worker_pid"], int)
    assert task["queue"] == task["routing_key"] == fs_broker.queue and "exchange" in task
    assert task["redelivered"] is False and task["hostname"].startswith("w1-")
    assert task["args"] == [120] and task["kwargs"] == {}

    chain = got["events.chained"][0]["exceptions"]
    assert [e["errorClass"] for e in chain] == ["RuntimeError", "KeyError"]
    chained = got["events.chained"][0]
    assert chained["session"]["id"] == task_session_id(r2.id, 0, chained["metaData"]["task"]["delivery"])

    handled = got["events.handled"][0]
    assert handled["unhandled"] is False and handled["severity"] == "warning"
    assert handled["severityReason"] == {"type": "handledException"}
    assert handled["session"]["id"] == task_session_id(r3.id, 0, handled["metaData"]["task"]["delivery"])
    assert handled["session"]["events"] == {"handled": 1, "unhandled": 0}
    assert handled["metaData"]["order"] == {"id": 7}

    assert "session" not in got["events.paused"][0]  # reported, not attributed

    retried = got["events.autoretry"][0]  # the final failure only, after 2 retries
    assert retried["metaData"]["task"]["retries"] == 2
    assert retried["exceptions"][0]["errorClass"] == "KeyError"

    soft = got["events.soft_limit"][0]
    assert soft["exceptions"][0]["errorClass"] == "billiard.exceptions.SoftTimeLimitExceeded"
    assert soft["unhandled"] is True and soft["session"]["id"] == task_session_id(
        r4.id, 0, soft["metaData"]["task"]["delivery"]
    )


def test_crashes_seen_only_by_the_main_process(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """SIGKILLed child and hard time limit: reported once, on the session the child opened.

    Redis, not the embedded broker: with a transport Celery cannot poll asynchronously,
    billiard's threaded pool forks replacement children from its supervisor thread, and
    Celery gives each child PR_SET_PDEATHSIG=SIGKILL, which fires when *that thread* ends at
    shutdown; a child killed inside a write to the result queue leaves its lock held and the
    warm shutdown waits for ever (reproduced 7 times in 60 runs on Python 3.9, Celery 5.3.6:
    both replacement children found dead by SIGKILL, the task handler waiting on the lock).
    """
    with worker(redis_broker, out_dir, endpoint) as w:
        app = redis_broker.producer()
        killed = app.send_task("events.killed")
        hard = app.send_task("events.hard_limit")
        endpoint.wait_for_events(2, timeout=60)
        time.sleep(2)
        assert w.stop() == 0
    got = by_context(endpoint.events())
    assert {k: len(v) for k, v in got.items()} == {"events.killed": 1, "events.hard_limit": 1}
    lost = got["events.killed"][0]
    assert lost["exceptions"][0]["errorClass"] == "billiard.exceptions.WorkerLostError"
    delivery = lost["metaData"]["task"]["delivery"]  # the main process's id of that delivery
    assert lost["unhandled"] is True and lost["session"]["id"] == task_session_id(killed.id, 0, delivery)
    assert lost["session"]["events"] == {"handled": 0, "unhandled": 1}
    limit = got["events.hard_limit"][0]
    assert limit["exceptions"][0]["errorClass"] == "billiard.exceptions.TimeLimitExceeded"
    assert limit["session"]["id"] == task_session_id(hard.id, 0, limit["metaData"]["task"]["delivery"])


def test_a_child_lost_under_acks_late_is_reported_on_every_delivery(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """``acks_late`` + ``reject_on_worker_lost``: Celery requeues the message of a killed child
    and sends no ``task_failure``. Each lost delivery is still reported, by the main process,
    and each delivery is a run of its own: three deliveries, three session ids (the same task
    id and attempt number: only the delivery tells them apart)."""
    with worker(redis_broker, out_dir, endpoint) as w:
        task = redis_broker.producer().send_task("events.lost_twice", (str(out_dir / "markers"),))
        endpoint.wait_for_events(3, timeout=60)
        time.sleep(2)  # a fourth (a duplicate report) would show up now
        assert w.stop() == 0
    events = endpoint.events()
    lost = [e for e in events if e["exceptions"][0]["errorClass"] == "billiard.exceptions.WorkerLostError"]
    handled = [e for e in events if e["exceptions"][0]["message"] == "third delivery"]
    assert (len(lost), len(handled), len(events)) == (2, 1, 3)
    sessions = [e["session"]["id"] for e in lost + handled]
    assert len(set(sessions)) == 3
    for event in lost + handled:
        tab = event["metaData"]["task"]
        assert tab["id"] == task.id and tab["retries"] == 0 and tab["delivery"]
        assert event["session"]["id"] == task_session_id(task.id, 0, tab["delivery"])
    assert [e["session"]["events"] for e in lost] == [{"handled": 0, "unhandled": 1}] * 2


def test_redaction_and_oversized_arguments(redis_broker: Broker, out_dir: Path, endpoint: Endpoint) -> None:
    # Redis: kombu's filesystem transport can read a 5 MB message while it is half written.
    with worker(redis_broker, out_dir, endpoint) as w:
        app = redis_broker.producer()
        app.send_task(
            "events.secret_args", ([1, {"Password": "hunter2", "ok": "visible"}],), {"token": "t0k"}
        )
        app.send_task("events.big_arg", ("x" * 5_000_000,))
        app.send_task("events.secret_args", (["card 4111"],), argsrepr="(<hidden>,)", kwargsrepr="{}")
        # tuples arrive as lists: Celery's default argsrepr must still not pass for a custom one
        app.send_task("events.secret_args", ([(1, 2), {"creds": {"api_key": "s3cr3t", "pair": (3, 4)}}],))
        endpoint.wait_for_events(4, timeout=60)
        assert w.stop() == 0
    got = by_context(endpoint.events())
    hidden = [e for e in got["events.secret_args"] if e["metaData"]["task"]["args"] == "(<hidden>,)"]
    # the caller's argsrepr wins ("card 4111", not "4111": a task id's hex can hold that)
    assert len(hidden) == 1 and "card 4111" not in str(got)
    secret = next(e for e in got["events.secret_args"] if "hunter2" in str(e["metaData"]["task"].get("args"))
                  or "Password" in str(e["metaData"]["task"].get("args")))["metaData"]["task"]  # fmt: skip
    assert secret["args"] == [[1, {"Password": "[REDACTED]", "ok": "visible"}]]
    assert secret["kwargs"] == {"token": "[REDACTED]"}
    assert "hunter2" not in str(got) and "t0k" not in str(got) and "s3cr3t" not in str(got)
    big = next(
        r for r in endpoint.requests if r["body"] and r["body"]["events"][0]["context"] == "events.big_arg"
    )
    assert len(big["raw"]) <= 1_000_000


@pytest.mark.parametrize("statuses", [[503, 200], [400]])
def test_endpoint_errors(fs_broker: Broker, out_dir: Path, endpoint: Endpoint, statuses: list[int]) -> None:
    endpoint.statuses = list(statuses)
    with worker(fs_broker, out_dir, endpoint) as w:
        fs_broker.producer().send_task("events.chained")
        deadline = time.monotonic() + 30
        while len(endpoint.requests) < len(statuses) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2)  # a retry of a 400 or a second delivery would show up now
        assert w.stop() == 0
    assert [r["status"] for r in endpoint.requests] == statuses  # 503 retried once; 400 never
    if statuses == [400]:
        assert "rejected a event payload with HTTP 400" in w.log() or "HTTP 400" in w.log()


def test_hanging_endpoint_does_not_hold_the_task(
    fs_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    endpoint.delay = 3.0
    with worker(fs_broker, out_dir, endpoint, configure={"delivery_timeout": 20}) as w:
        fs_broker.producer().send_task("events.handled")  # calls notify(), then returns
        endpoint.wait_for_events(1, timeout=30)
        assert w.stop() == 0
    runtime = re.search(r"Task events\.handled\[[^\]]+\] succeeded in ([0-9.e-]+)s", w.log())
    assert runtime, w.log()
    assert float(runtime.group(1)) < 1.0  # the endpoint took 3 s; the task did not wait for it


def test_endpoint_down_at_shutdown_spools_then_delivers_once(
    fs_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    from bugsnag_celery.delivery.spool import drain_spooled_events

    endpoint.default = 503
    with worker(fs_broker, out_dir, endpoint) as w:
        fs_broker.producer().send_task("events.chained")
        deadline = time.monotonic() + 30
        while not endpoint.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.stop() == 0  # warm shutdown while the endpoint is still failing
    assert endpoint.events() == []
    endpoint.default = 200
    where: dict[str, Any] = {
        "api_key": API_KEY,
        "endpoint": f"{endpoint.url}/notify",
        "prefix": fs_broker.queue,
    }
    stats = drain_spooled_events(fs_broker.producer(), **where)
    assert stats == {"delivered": 1, "dropped": 0, "requeued": 0, "unanswered": 0, "overflow": 0}
    assert drain_spooled_events(fs_broker.producer(), **where)["delivered"] == 0  # once
    got = endpoint.events()
    assert [e["context"] for e in got] == ["events.chained"]
    assert got[0]["session"]["events"]["unhandled"] == 1


def test_hostile_exceptions_never_break_a_task_or_the_worker(
    fs_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    kinds = ["str_raises", "str_bytes", "cyclic", "surrogates", "recursion", "bad_repr_arg"]
    with worker(fs_broker, out_dir, endpoint, concurrency=1) as w:
        app = fs_broker.producer()
        for kind in kinds:
            app.send_task("events.hostile", (kind,))
        app.send_task("events.ok")  # the worker is still alive and working after all of them
        events = endpoint.wait_for_events(len(kinds), timeout=60)
        deadline = time.monotonic() + 20
        while not re.search(r"Task events\.ok\[[^\]]+\] succeeded", w.log()):
            assert time.monotonic() < deadline, w.log()
            time.sleep(0.05)
        assert w.stop() == 0
    assert "could not report" not in w.log()
    by_class = {e["exceptions"][0]["errorClass"]: e for e in events}
    assert set(by_class) >= {"events_app.HostileStr", "events_app.BytesStr", "ValueError", "RecursionError"}
    assert by_class["events_app.HostileStr"]["exceptions"][0]["message"].startswith("<unprintable")
    recursion = by_class["RecursionError"]["exceptions"][0]["stacktrace"]
    assert 0 < len(recursion) <= 200 and recursion[0]["method"] == "down"
    cyclic = next(
        e for e in events if [x["errorClass"] for x in e["exceptions"]] == ["ValueError", "KeyError"]
    )
    assert cyclic["unhandled"] is True
    for event in events:
        assert event["unhandled"] is True and event["session"]["events"]["unhandled"] == 1


def test_report_retries_as_handled_warnings(fs_broker: Broker, out_dir: Path, endpoint: Endpoint) -> None:
    with worker(fs_broker, out_dir, endpoint, configure={"report_retries": True}) as w:
        result = fs_broker.producer().send_task("events.autoretry")
        events = endpoint.wait_for_events(3, timeout=60)
        time.sleep(1)
        assert w.stop() == 0
    events = sorted(endpoint.events(), key=lambda e: e["metaData"]["task"]["retries"])
    assert [(e["unhandled"], e["severity"], e["metaData"]["task"]["retries"]) for e in events] == [
        (False, "warning", 0), (False, "warning", 1), (True, "error", 2)]  # fmt: skip
    for event in events:  # each attempt's own session
        tab = event["metaData"]["task"]
        assert event["session"]["id"] == task_session_id(result.id, tab["retries"], tab["delivery"])


@pytest.mark.parametrize("pool", ["gevent", "eventlet"])
def test_green_pools_deliver_every_crash_and_spool_at_shutdown(
    fs_broker: Broker, out_dir: Path, endpoint: Endpoint, pool: str
) -> None:
    """gevent and eventlet replace the thread library's classes: the sender must neither die
    after a batch nor fail its shutdown flush (it once subclassed ``queue.Queue``: 15 of 20
    crashes arrived). 60 crashes on 20 greenlets against a slow endpoint, the worker stopped
    as soon as they ran: every crash arrives exactly once, sent or spooled and then drained."""
    from bugsnag_celery.delivery.spool import drain_spooled_events

    n = 60
    endpoint.delay = 0.5  # events still queued when the worker stops
    with worker(fs_broker, out_dir, endpoint, pool=pool, concurrency=20) as w:
        app = fs_broker.producer()
        for _ in range(n):
            app.send_task("events.chained")
        deadline = time.monotonic() + 60
        while len(re.findall(r"Task events\.chained\[[^\]]+\] raised", w.log())) < n:
            assert time.monotonic() < deadline, w.log()[-3000:]
            time.sleep(0.1)
        assert w.stop() == 0, w.log()[-3000:]
    endpoint.delay = 0.0
    where: dict[str, Any] = {
        "api_key": API_KEY,
        "endpoint": f"{endpoint.url}/notify",
        "prefix": fs_broker.queue,
    }
    drain_spooled_events(fs_broker.producer(), **where)
    ids = [e["metaData"]["task"]["id"] for e in endpoint.events()]
    assert len(ids) == n and len(set(ids)) == n, (len(ids), len(set(ids)))
    assert all(e["session"]["events"]["unhandled"] == 1 for e in endpoint.events())
    ours = [line for line in w.log().splitlines()
            if "Exception in thread" in line or ("bugsnag_celery" in line and "ERROR" in line)]  # fmt: skip
    assert ours == []


def test_no_class_of_the_package_subclasses_what_green_pools_replace() -> None:
    """gevent's and eventlet's monkey-patching replace ``threading``'s and ``queue``'s classes;
    a class of ours built on one of them (bound at import, before the patch) breaks under both.
    Read from the source: a ``class X(queue.Queue)`` or ``class X(threading.Thread)`` fails."""
    import ast

    import bugsnag_celery

    replaced = {"Queue", "LifoQueue", "PriorityQueue", "SimpleQueue", "Thread", "Timer", "Event",
                "Condition", "Lock", "RLock", "Semaphore", "BoundedSemaphore", "local"}  # fmt: skip
    package = Path(bugsnag_celery.__file__).parent
    found = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
                    if name in replaced:
                        found.append(f"{path.relative_to(package)}: {node.name}({name})")
    assert found == []
    # the check sees such a class
    probe = ast.parse("import queue\nclass Payloads(queue.Queue): pass\n")
    bases = [b for n in ast.walk(probe) if isinstance(n, ast.ClassDef) for b in n.bases]
    assert [b.attr for b in bases if isinstance(b, ast.Attribute)] == ["Queue"]
