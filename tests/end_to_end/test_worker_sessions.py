"""Sessions in real ``celery worker`` processes, on real brokers, under every pool.

What is asserted is what BugSnag would be told: every task run that should count opened
exactly one session with the deterministic id of its task id and attempt, and the
counts the worker processes took add up exactly.

Covers: bugsnag_celery/hooks/runner.py, bugsnag_celery/hooks/signals.py
Covers: bugsnag_celery/delivery/flusher.py, bugsnag_celery/payload/sessions.py
Covers: bugsnag_celery/hooks/wiring.py, bugsnag_celery/options/sources.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker
from endpoint import Endpoint
from results import deliver_sessions, received_sessions, records, total, wait_for_records
from workers import Worker, wait_until

from bugsnag_celery import task_session_id

API_KEY = "c0ffee00c0ffee00c0ffee00c0ffee00"
CONFIG = {
    "api_key": API_KEY,
    "app_version": "9.9.9",
    "release_stage": "test",
    "hostname": "test-host",
    "exclude_tasks": [r"session_app\.housekeeping\..*"],
}


def local(endpoint: Endpoint, **config: Any) -> dict[str, Any]:
    """Point events and sessions at the test's endpoint: nothing may leave the machine."""
    return {
        **config,
        "notify_endpoint": f"{endpoint.url}/notify",
        "sessions_endpoint": f"{endpoint.url}/sessions",
    }


def send_mix(broker: Broker) -> tuple[int, int]:
    """Send a mixed workload; return (task runs expected, sessions expected)."""
    app = broker.producer()
    plan: list[tuple[str, tuple[Any, ...], int, int]] = [
        # name, args, how many, runs per task
        ("session_app.observe", ("plain",), 20, 1),
        ("session_app.crashing", (), 5, 1),
        ("session_app.ignored", (), 5, 1),
        ("session_app.paused_housekeeping", (), 5, 1),
        ("session_app.retrying", (3,), 5, 3),
        ("session_app.opted_out_below", (), 5, 1),
        ("session_app.opted_out_above", (), 5, 1),
        ("session_app.housekeeping.vacuum", (), 5, 1),
    ]
    runs = sessions = 0
    with app.connection_for_write() as conn:
        for name, args, count, per in plan:
            for _ in range(count):
                app.send_task(name, args, connection=conn)
                runs += per
                if "opted_out" not in name and "housekeeping.vacuum" not in name:
                    sessions += per
    return runs, sessions


def check_records(rows: list[dict[str, Any]]) -> None:
    ids_seen: set[str] = set()
    for row in rows:
        first = row["first"]
        if row["task"] in ("opted_out_below", "opted_out_above", "excluded"):
            assert first is None, row
            continue
        assert first is not None, row
        assert first["id"] == task_session_id(row["id"], row["retries"], row["delivery"]), row
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["startedAt"]), first
        assert first["paused"] is False and first["events"] == {"handled": 0, "unhandled": 0}, row
        assert first["id"] not in ids_seen, "two runs shared a session"
        ids_seen.add(first["id"])
        if row["task"] == "paused_housekeeping":
            assert row["inside"]["id"] == first["id"] and row["inside"]["paused"] is True
            assert row["last"]["id"] == first["id"] and row["last"]["paused"] is False


def delivered(broker: Broker, endpoint: Endpoint) -> dict[tuple[Any, ...], dict[str, int]]:
    """Drain the broker as the beat task would; return what the session API accepted."""
    deliver_sessions(broker, endpoint.url)
    return received_sessions(endpoint.requests)


def run_mix(broker: Broker, out: Path, pool: str, concurrency: int, endpoint: Endpoint) -> None:
    with Worker(
        broker, out, pool=pool, concurrency=concurrency, configure=local(endpoint, **CONFIG)
    ) as worker:
        runs, sessions = send_mix(broker)
        rows = wait_for_records(out, runs, worker=worker)
        assert worker.stop() == 0, worker.log()
    assert len(rows) == runs
    check_records(rows)
    retries = sorted(r["retries"] for r in rows if r["task"] == "retrying")
    assert retries == [0] * 5 + [1] * 5 + [2] * 5  # one session per attempt
    merged = delivered(broker, endpoint)
    assert total(merged) == sessions == runs - 15  # 65 runs, 15 opted out or excluded
    assert list(merged) == [("9.9.9", "test", "celery", "test-host")]
    for minute in next(iter(merged.values())):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", minute)


def test_exact_counts_prefork_every_broker(broker: Broker, out_dir: Path, endpoint: Endpoint) -> None:
    run_mix(broker, out_dir, "prefork", 2, endpoint)


@pytest.mark.parametrize(("pool", "concurrency"), [("threads", 8), ("solo", 1), ("gevent", 20)])
def test_exact_counts_other_pools(
    fs_broker: Broker, out_dir: Path, pool: str, concurrency: int, endpoint: Endpoint
) -> None:
    run_mix(fs_broker, out_dir, pool, concurrency, endpoint)


def test_one_child_per_task(fs_broker: Broker, out_dir: Path, endpoint: Endpoint) -> None:
    """--max-tasks-per-child=1: every child counts one session and exits through os._exit."""
    n = 12
    with Worker(
        fs_broker, out_dir, configure=local(endpoint, **CONFIG), extra_args=("--max-tasks-per-child=1",)
    ) as worker:
        app = fs_broker.producer()
        for i in range(n):
            app.send_task("session_app.observe", (f"t{i}",))
        rows = wait_for_records(out_dir, n, worker=worker)
        assert worker.stop() == 0
    assert len({r["pid"] for r in rows}) >= n - 1  # (nearly) a child per task
    check_records(rows)
    assert total(delivered(fs_broker, endpoint)) == n


@pytest.mark.parametrize(
    ("pool", "broker_kind"), [("threads", "filesystem"), ("threads", "redis"), ("gevent", "filesystem")]
)
def test_no_leak_between_concurrent_tasks(
    pool: str, broker_kind: str, tmp_path: Path, out_dir: Path, endpoint: Endpoint
) -> None:
    """200 tasks at once on one process: each sees only its own session, start to end."""
    from brokers import broker_fixture

    n = 200
    for broker in broker_fixture(broker_kind, tmp_path):
        with Worker(
            broker,
            out_dir,
            pool=pool,
            concurrency=n,
            configure=local(endpoint, **CONFIG),
            extra_args=("--prefetch-multiplier=1",),
        ) as worker:
            gate = out_dir / f"gate-{broker_kind}"
            app = broker.producer()
            with app.connection_for_write() as conn:
                for i in range(n):
                    app.send_task("session_app.observe", (f"c{i}", 0.0, str(gate)), connection=conn)
            # every run holds at the gate until all have started: they overlap by construction
            wait_until(lambda: len(records(out_dir, "started")) >= n, 120, f"{n} runs started at once")
            gate.touch()
            rows = wait_for_records(out_dir, n, worker=worker)
            assert worker.stop() == 0
            assert total(delivered(broker, endpoint)) == n
    assert len(rows) == n
    # The property only means something if the runs really overlapped: count the peak.
    edges = sorted([(r["started"], 1) for r in rows] + [(r["ended"], -1) for r in rows])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == n, f"only {peak} tasks ran at once"
    for row in rows:
        expected = task_session_id(row["id"], 0, row["delivery"])
        assert row["first"]["id"] == expected and row["last"]["id"] == expected, row
    assert len({r["first"]["id"] for r in rows}) == n


def test_seed_semantics_inside_a_worker(fs_broker: Broker, out_dir: Path, endpoint: Endpoint) -> None:
    """The seed's calls inside a real task run; the next task in the process sees none of it."""
    with Worker(
        fs_broker, out_dir, pool="solo", concurrency=1, configure=local(endpoint, **CONFIG)
    ) as worker:
        app = fs_broker.producer()
        app.send_task("session_app.manual_calls")
        wait_for_records(out_dir, 1, worker=worker)
        app.send_task("session_app.after_manual")
        rows = wait_for_records(out_dir, 2, worker=worker)
        assert worker.stop() == 0
    manual = next(r for r in rows if r["task"] == "manual_calls")
    after = next(r for r in rows if r["task"] == "after_manual")
    task_id = task_session_id(manual["id"], 0, manual["delivery"])
    assert manual["start"]["id"] == task_id
    assert manual["resume_active"] is False  # not paused: nothing changes
    assert manual["after_pause"] == {**manual["start"], "paused": True}
    assert manual["resume_paused"] is True
    assert manual["after_resume"] == manual["start"]
    assert manual["after_start"]["id"] not in (task_id, None)  # replaced, random UUID
    assert manual["after_start"]["paused"] is False
    assert after["first"]["id"] == task_session_id(
        after["id"], 0, after["delivery"]
    )  # no leak into the next task
    assert total(delivered(fs_broker, endpoint)) == 3  # two task runs + one started by hand


#: Every place the worker says it looked for the key (README "Configuration").
KEY_PLACES = (
    "configure(api_key=...)",
    "app.conf.bugsnag_api_key",
    "the environment variable BUGSNAG_API_KEY",
    "Django's settings.BUGSNAG['api_key']",
    "the official bugsnag client's configuration.api_key",
)


@pytest.mark.parametrize(
    ("source", "held"),
    [
        ({}, "configure(api_key=...) (not set)"),
        ({"configure": {"api_key": "  "}}, "configure(api_key=...) (empty)"),
        ({"env": {"BUGSNAG_API_KEY": ""}}, "the environment variable BUGSNAG_API_KEY (empty)"),
        ({"conf": {"bugsnag_api_key": ""}}, "app.conf.bugsnag_api_key (empty)"),
    ],
    ids=["absent", "keyword-whitespace", "environment-empty", "celery-config-empty"],
)
def test_missing_api_key_warns_once_and_tasks_run(
    fs_broker: Broker, out_dir: Path, endpoint: Endpoint, source: dict[str, dict[str, str]], held: str
) -> None:
    """An empty key is no key, from any source: the worker starts (its module imports), warns
    once naming every place it looked, runs every task -- crashes too, in two pool children --
    and sends nothing."""
    config = local(
        endpoint, **{k: v for k, v in CONFIG.items() if k != "api_key"}, **source.get("configure", {})
    )
    env = {**source.get("env", {}), "BSC_APP_CONF": json.dumps(source.get("conf", {}))}
    with Worker(fs_broker, out_dir, configure=config, env=env) as worker:
        app = fs_broker.producer()
        for i in range(4):
            app.send_task("session_app.observe", (f"k{i}",))
        for _ in range(2):
            app.send_task("session_app.crashing")
        rows = wait_for_records(out_dir, 6, worker=worker)
        assert worker.stop() == 0
        log = worker.log()
    warnings = [line for line in log.splitlines() if "bugsnag_celery: no API key" in line]
    assert len(warnings) == 1, log  # at the start, and no pool child repeats it on a crash
    assert "WARNING" in warnings[0] and "nothing is sent to BugSnag" in warnings[0]
    assert all(place in warnings[0] for place in KEY_PLACES), warnings[0]
    assert held in warnings[0], warnings[0]
    assert "NO API key (nothing is sent)" in log  # the start-up line says it too
    check_records([r for r in rows if r["task"] == "observe"])  # every run had its session...
    assert sorted(r["task"] for r in rows) == ["crashing"] * 2 + ["observe"] * 4
    stats = deliver_sessions(fs_broker, endpoint.url)
    assert stats["messages"] == 0  # ...but without a key nothing is queued for BugSnag
    assert endpoint.requests == []  # and no crash was sent
