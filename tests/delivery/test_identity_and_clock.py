"""Whose counts they are, which minute they land in, and what status says was lost.

Apps that share a release group (no ``app_version``, one host) but not a key each get
exactly their own sessions, in one process and across workers sharing a queue; a worker
whose clock runs 6 minutes fast has every session delivered, in a minute no later than
the request that carries it; and every drop, a delivery run's or a worker's, shows in
``celery bugsnag status`` (whose ``dropped: 0`` then means nothing was). Assertions are on
what the BugSnag stand-in got, and on what ``celery bugsnag flush``/``status`` say.

Covers: bugsnag_celery/delivery/sessions.py, bugsnag_celery/delivery/status.py
Covers: bugsnag_celery/payload/sessions.py, bugsnag_celery/sessions/counts.py
Covers: bugsnag_celery/delivery/run.py, bugsnag_celery/hooks/beat.py
Covers: bugsnag_celery/delivery/flusher.py, bugsnag_celery/reporting/reporter.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from brokers import Broker
from endpoint import Endpoint
from results import deliver_sessions, records, wait_for_records
from workers import APPS, Worker, wait_until

import bugsnag_celery
from bugsnag_celery import Release
from bugsnag_celery.clock import minute_from_iso, minute_iso
from bugsnag_celery.transport.queues import publish, queue_names

KEY_A = "aaaa0000aaaa0000aaaa0000aaaa0000"
KEY_B = "bbbb0000bbbb0000bbbb0000bbbb0000"
CELERY = os.path.join(os.path.dirname(sys.executable), "celery")


def config(endpoint: Endpoint, key: str, **extra: Any) -> dict[str, Any]:
    """A release group with no app_version: only the key tells two such apps apart."""
    return {"api_key": key, "release_stage": "test", "hostname": "same-host",
            "notify_endpoint": f"{endpoint.url}/notify", "sessions_endpoint": f"{endpoint.url}/sessions",
            **extra}  # fmt: skip


def sessions_by_key(endpoint: Endpoint) -> dict[str, int]:
    """Sessions BugSnag accepted, per API key (the project they count in)."""
    out: dict[str, int] = {}
    for r in endpoint.requests:
        if r["path"] == "/sessions" and r["status"] < 300:
            key = r["headers"]["Bugsnag-Api-Key"]
            out[key] = out.get(key, 0) + sum(row["sessionsStarted"] for row in r["body"]["sessionCounts"])
    return out


def cli(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A session_app bugsnag ...`` with *worker*'s configuration (the real clock)."""
    env = {**worker.env, "PYTHONPATH": str(APPS)}
    env.pop("BSC_CLOCK_SKEW", None)
    return subprocess.run([CELERY, "-A", "session_app", "bugsnag", *args], env=env, cwd=worker.out,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


# -- identity --------------------------------------------------------------------------------


def test_two_apps_in_one_process_with_one_release_group_each_get_their_own_sessions(
    fs_broker: Broker, endpoint: Endpoint
) -> None:
    """Both on one broker and one queue prefix; A runs 3 tasks, B 5: was A 8, B 0."""
    from bugsnag_celery import registry

    a, b = fs_broker.producer(), fs_broker.producer()
    shared = {"queue_prefix": fs_broker.queue}
    bugsnag_celery.configure(a, **config(endpoint, KEY_A, **shared))
    bugsnag_celery.configure(b, **config(endpoint, KEY_B, **shared))
    registry.flusher.enabled = False  # the counts are looked at below before the flush moves them
    try:

        @a.task
        def job_a() -> None:
            pass

        @b.task
        def job_b() -> None:
            pass

        for _ in range(3):
            job_a.apply()
        for _ in range(5):
            job_b.apply()
        taken = bugsnag_celery.take_pending_counts()
        bugsnag_celery.restore_pending_counts(taken)  # only looked at: the flush below moves them
        ours = {r: sum(buckets.values()) for r, buckets in taken.items() if r.hostname == "same-host"}
        assert sorted(ours.values()) == [3, 5]  # a counter each, though the release group is one
        assert {r[:4] for r in ours} == {(None, "test", "celery", "same-host")}
        status = bugsnag_celery.flush(a)  # A's delivery run: B's counts go with B's key
    finally:
        registry.flusher.enabled = True
        bugsnag_celery.unconfigure(b)
        bugsnag_celery.unconfigure(a)
    assert sessions_by_key(endpoint) == {KEY_A: 3, KEY_B: 5}
    assert status["sessions"]["dropped"] == 0 and status["dropped"]["sessions"] == 0


def test_two_workers_on_one_queue_prefix_each_get_their_own_sessions(
    redis_broker: Broker, tmp_path: Path, endpoint: Endpoint
) -> None:
    """Worker A (with the beat) and worker B share the broker and the counts queue, not the key.

    A's delivery runs send A's counts and hand B's back to the queue; B's delivery run (made
    here, as B's beat would) sends them with B's key. Was: A's key got every session.
    """
    queue_b = dataclasses.replace(redis_broker, queue=f"{redis_broker.queue}-b")  # cleaned up with it
    shared = {"queue_prefix": redis_broker.queue, "session_delivery_interval": 1}
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    a = Worker(redis_broker, out_a, name="wa", configure=config(endpoint, KEY_A, **shared),
               extra_args=("-B", "-s", str(tmp_path / "beat")))  # fmt: skip
    b = Worker(queue_b, out_b, name="wb", configure=config(endpoint, KEY_B, **shared))
    n_a, n_b = 30, 21
    with a, b:
        for broker, n in ((redis_broker, n_a), (queue_b, n_b)):
            producer = broker.producer()
            for i in range(n):
                producer.send_task("session_app.observe", (f"t{i}",), queue=broker.queue)
        wait_for_records(out_a, n_a, worker=a)
        wait_for_records(out_b, n_b, worker=b)
        # A's beat delivers A's own, whatever else waits on the queue (60 s: a loaded machine)
        wait_until(lambda: sessions_by_key(endpoint).get(KEY_A) == n_a, 60, "A's sessions under A's key")
        assert a.stop() == 0 and b.stop() == 0
    assert KEY_B not in sessions_by_key(endpoint)  # A's runs never send B's counts
    deliver_sessions(redis_broker, endpoint.url, KEY_B)  # B's delivery run
    deliver_sessions(redis_broker, endpoint.url, KEY_A)  # and A's, for what A flushed at shutdown
    assert len(records(out_a)) == n_a and len(records(out_b)) == n_b
    assert sessions_by_key(endpoint) == {KEY_A: n_a, KEY_B: n_b}


# -- the clock ---------------------------------------------------------------------------------


def test_a_worker_whose_clock_is_6_minutes_fast_delivers_every_session(
    fs_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """Its minutes lie 6 minutes ahead of the delivering process: was 0 delivered, "dropped 0"."""
    n = 20
    cfg = config(endpoint, KEY_A, app_version="1.0", session_delivery_interval=120)  # no beat here
    with Worker(fs_broker, out_dir, configure=cfg, env={"BSC_CLOCK_SKEW": "360"}) as w:
        sent = int(time.time()) // 60
        for i in range(n):
            fs_broker.producer().send_task("session_app.observe", (f"t{i}",))
        rows = wait_for_records(out_dir, n, worker=w)
        assert w.stop() == 0
    assert all(minute_from_iso(r["first"]["startedAt"][:16] + ":00Z") >= sent + 6 for r in rows)
    flushed = cli(w, "flush")  # a delivery run on a host whose clock is right
    assert flushed.returncode == 0, flushed.stderr
    assert f"sessions: {n} delivered" in flushed.stdout and ", 0 dropped" in flushed.stdout, flushed.stdout
    assert f"{n} filed under the current minute" in flushed.stdout
    posts = [r for r in endpoint.requests if r["path"] == "/sessions"]
    assert sum(row["sessionsStarted"] for r in posts for row in r["body"]["sessionCounts"]) == n
    for r in posts:  # no bucket later than the request that carries it
        sent = r["headers"]["Bugsnag-Sent-At"][:16] + ":00Z"
        assert all(row["startedAt"] <= sent for row in r["body"]["sessionCounts"]), r["body"]
    status = cli(w, "status")
    assert status.returncode == 0 and "dropped: 0\n" in status.stdout, status.stdout + status.stderr


def test_the_clock_rule_files_minutes_ahead_under_the_current_one_and_drops_garbage() -> None:
    from bugsnag_celery.payload.sessions import MAX_AHEAD_MINUTES, counts_from_message, counts_message
    from bugsnag_celery.sessions.counts import identity_of

    now = 29_000_000
    release = Release("1", "test", "celery", "h", identity_of(KEY_A, "http://x/sessions"))
    body = counts_message({release: {
        minute_iso(now - 3): 1, minute_iso(now): 2, minute_iso(now + 6): 4,
        minute_iso(now + MAX_AHEAD_MINUTES): 8, minute_iso(now + MAX_AHEAD_MINUTES + 1): 16}})  # fmt: skip
    read = counts_from_message(json.loads(json.dumps(body)), now_minute=now)
    assert read.counts == {release: {minute_iso(now - 3): 1, minute_iso(now): 2 + 4 + 8}}
    assert (read.refiled, read.ahead_minutes, read.too_far_ahead) == (12, MAX_AHEAD_MINUTES, 16)
    # an earlier version's message (no identity) is read as no project's
    old = {"v": 1, "groups": [{"release": list(release[:4]), "counts": {minute_iso(now): 1}}]}
    assert list(counts_from_message(old, now_minute=now).counts) == [Release(*release[:4])]


def test_an_age_a_moment_old_reads_0_s_ago_never_minus_0() -> None:
    """``status`` rounds an age to 0.1 s before wording it: a stamp written a moment before it
    was read rounds to ``-0.0``, which ``%.0f`` prints as ``-0`` (a CI run showed
    "last sent: -0 s ago"); a writer's clock ahead by more than a second is still told apart."""
    from bugsnag_celery.delivery.status import describe_age

    for seconds in (-0.0, round(-0.04, 1), -0.4, 0.0, 0.4):
        assert describe_age(seconds) == "0 s ago", seconds
    assert (describe_age(0.6), describe_age(89.4), describe_age(120)) == ("1 s ago", "89 s ago", "2 min ago")
    assert describe_age(-30).startswith("30 s in the future")
    from bugsnag_celery.delivery.status import age_seconds  # the same age in ``status --json``

    assert json.dumps([age_seconds(100.0, 100.04), age_seconds(100.0, 103.04), age_seconds(1, None)]) == (
        "[0.0, -3.0, null]"
    )


# -- drops show in status ----------------------------------------------------------------------


def test_every_drop_is_counted_logged_and_shown_by_status(
    fs_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """A refused payload, an unreadable entry, a minute years ahead, counts nobody claimed for a day.

    ``status`` shows them (was: nothing at all, and ``flush`` said "0 dropped" for the
    unreadable and far-ahead ones); they stay in its totals after a clean run.
    """
    cfg = config(endpoint, KEY_A, app_version="2.0", session_delivery_interval=120)
    w = Worker(fs_broker, out_dir, configure=cfg)  # never started: its configuration, for the CLI
    release = ["2.0", "test", "celery", "same-host"]
    now = int(time.time()) // 60

    def message(groups: list[dict[str, Any]]) -> None:
        """Counts on the queue, as a worker's flush writes them (``"identity"``: another project's)."""
        publish(fs_broker.producer(), queue_names(fs_broker.queue).sessions,
                [{"v": 1, "pid": 1, "at": time.time(), "groups": groups}])  # fmt: skip

    message([
        {"release": release, "counts": {minute_iso(now - 1): 7, "9999-12-31T23:59:00Z": 5,
                                         "2026-01-01T00:00:00Z": 0}},  # refused; years ahead; impossible
        {"release": release, "identity": "0123456789abcdef", "counts": {minute_iso(now - 2 * 24 * 60): 3}},
    ])  # fmt: skip
    endpoint.default = 401
    flushed = cli(w, "flush")
    assert "0 delivered in 1 request(s), 0 kept for later, 15 dropped" in flushed.stdout, flushed.stdout
    assert "1 unreadable count entr(ies) dropped" in flushed.stdout
    for why in ("HTTP 401", "dropping 5 session(s) counted in minutes over a day ahead",
                "dropping 3 session(s): of a BugSnag project that no delivering app",
                "dropping 1 session-count entr(ies) with impossible values"):  # fmt: skip
        assert why in flushed.stderr, flushed.stderr
    expected = ("dropped: 15 session(s), 1 unreadable session-count entr(ies), 0 spooled event message(s), "
                "0 event(s) lost in worker processes")  # fmt: skip
    status = cli(w, "status")
    assert expected in status.stdout, status.stdout
    assert re.search(r"^last drop: \d+ (s|min) ago \(20\d\d-[^)]+\): ", status.stdout, re.M), status.stdout
    # a clean run adds nothing, and takes nothing away
    endpoint.default = 202
    message([{"release": release, "counts": {minute_iso(now): 4}}])
    assert "4 delivered in 1 request(s), 0 kept for later, 0 dropped" in cli(w, "flush").stdout
    report = json.loads(cli(w, "status", "--json").stdout)
    assert report["dropped"] == {"sessions": 15, "unreadable": 1, "events": 0, "events_lost": 0,
                                 "spool_full": 0}  # fmt: skip


def test_events_a_worker_lost_are_counted_in_status(
    fs_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    """BugSnag refuses the worker's events (401): the worker logs it, and status counts them.

    Was: only the worker's log said so; ``status`` (and ``dropped: 0``) did not.
    """
    endpoint.default = 401  # only events are sent while the worker runs (no beat)
    cfg = config(endpoint, KEY_A, app_version="3.0", session_delivery_interval=120)
    with Worker(fs_broker, out_dir, configure=cfg) as w:
        for _ in range(3):
            fs_broker.producer().send_task("session_app.crashing")

        def refused() -> int:
            return sum(len(r["body"]["events"]) for r in endpoint.received() if r["path"] == "/notify")

        wait_until(lambda: refused() >= 3, 60, "the three events refused")  # 60 s: a loaded machine
        assert w.stop() == 0  # the children's last flush reports what they lost
    assert "HTTP 401" in w.log()
    endpoint.default = 202
    flushed = cli(w, "flush")
    assert "sessions: 3 delivered" in flushed.stdout, flushed.stdout + flushed.stderr
    status = cli(w, "status")
    assert "dropped: 0 session(s), 0 unreadable session-count entr(ies), 0 spooled event message(s), " \
           "3 event(s) lost in worker processes" in status.stdout, status.stdout  # fmt: skip
