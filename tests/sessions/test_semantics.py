"""The seed's session semantics, call by call, in this process.

These run tasks eagerly (``task.apply()``: Celery's real tracer, in this process) and
call the API outside any task -- places a worker subprocess can't reach.

Covers: bugsnag_celery/sessions/current.py, bugsnag_celery/sessions/counts.py
Covers: bugsnag_celery/hooks/modes.py, bugsnag_celery/hooks/signals.py
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, Task

import bugsnag_celery
from bugsnag_celery.sessions import counts
from bugsnag_celery.sessions import current as sessions

KEY = "0123456789abcdef0123456789abcdef"
# Nothing may leave the machine, whatever a test makes fail: a closed local port.
LOCAL = {"notify_endpoint": "http://127.0.0.1:9/notify", "sessions_endpoint": "http://127.0.0.1:9/sessions"}


def pending_total() -> int:
    return sum(n for c in bugsnag_celery.take_pending_counts().values() for n in c.values())


@pytest.fixture(autouse=True)
def no_flusher() -> Iterator[None]:
    """These tests read the in-process counts: keep the flusher from moving them away."""
    from bugsnag_celery import registry

    registry.flusher.enabled = False
    yield
    registry.flusher.enabled = True


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery(f"t{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    app.conf.task_eager_propagates = True  # an exception in an eager run fails the test
    bugsnag_celery.configure(app, api_key=KEY, app_version="2.0", hostname="h1", **LOCAL)
    bugsnag_celery.take_pending_counts()
    sessions.CURRENT.set(None)
    yield app
    bugsnag_celery.unconfigure(app)
    sessions.CURRENT.set(None)
    bugsnag_celery.take_pending_counts()


def test_no_session_until_one_starts(app: Celery) -> None:
    assert bugsnag_celery.get_current_session() is None


def test_start_session_replaces_and_counts_each(app: Celery) -> None:
    bugsnag_celery.start_session()
    first = bugsnag_celery.get_current_session()
    bugsnag_celery.start_session()
    second = bugsnag_celery.get_current_session()
    assert first is not None and second is not None
    assert first["id"] != second["id"]
    assert uuid.UUID(first["id"]).version == 4  # sessions started by hand: random UUIDs
    assert second == {
        "id": second["id"],
        "startedAt": second["startedAt"],
        "paused": False,
        "events": {"handled": 0, "unhandled": 0},
    }
    taken = bugsnag_celery.take_pending_counts()
    # the app's release group, and its project: the key and sessions endpoint, fingerprinted
    identity = counts.identity_of(KEY, LOCAL["sessions_endpoint"])
    assert list(taken) == [bugsnag_celery.Release("2.0", "production", "celery", "h1", identity)]
    assert sum(taken[next(iter(taken))].values()) == 2


def test_pause_and_resume(app: Celery) -> None:
    bugsnag_celery.pause_session()  # no session: nothing happens
    assert bugsnag_celery.get_current_session() is None
    assert bugsnag_celery.resume_session() is False  # no session: starts one
    started = bugsnag_celery.get_current_session()
    assert started is not None and started["paused"] is False
    assert bugsnag_celery.resume_session() is False  # not paused: nothing changes
    assert bugsnag_celery.get_current_session() == started
    bugsnag_celery.pause_session()
    assert bugsnag_celery.get_current_session() == {**started, "paused": True}
    assert bugsnag_celery.resume_session() is True
    assert bugsnag_celery.get_current_session() == started
    bugsnag_celery.pause_session()
    bugsnag_celery.start_session()  # a new session is never paused
    replaced = bugsnag_celery.get_current_session()
    assert replaced is not None and replaced["paused"] is False and replaced["id"] != started["id"]
    assert pending_total() == 2


def test_snapshot_is_a_copy(app: Celery) -> None:
    bugsnag_celery.start_session()
    snap = bugsnag_celery.get_current_session()
    assert snap is not None
    snap["paused"] = True
    snap["events"]["handled"] = 9
    assert bugsnag_celery.get_current_session() == {
        **snap,
        "paused": False,
        "events": {"handled": 0, "unhandled": 0},
    }


def test_session_paused_block(app: Celery) -> None:
    with bugsnag_celery.session_paused():  # no session: stays none
        assert bugsnag_celery.get_current_session() is None
    bugsnag_celery.start_session()
    with bugsnag_celery.session_paused():
        inner = bugsnag_celery.get_current_session()
        assert inner is not None and inner["paused"] is True
    outer = bugsnag_celery.get_current_session()
    assert outer is not None and outer["paused"] is False
    bugsnag_celery.pause_session()
    with bugsnag_celery.session_paused():
        pass
    still = bugsnag_celery.get_current_session()
    assert still is not None and still["paused"] is True  # was paused before: stays paused
    with pytest.raises(KeyError), bugsnag_celery.session_paused():
        raise KeyError("x")


def test_threads_do_not_share_sessions(app: Celery) -> None:
    bugsnag_celery.start_session()
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(bugsnag_celery.get_current_session()))
    thread.start()
    thread.join()
    assert seen == [None]


def test_eager_run_opens_its_own_session_and_closes_it(app: Celery) -> None:
    seen: list[Any] = []

    @app.task(bind=True)
    def job(self: Task) -> None:
        seen.append((self.request.id, bugsnag_celery.get_current_session()))

    bugsnag_celery.start_session()
    outer = bugsnag_celery.get_current_session()
    for _ in range(5):
        job.apply()
    assert bugsnag_celery.get_current_session() == outer  # restored after each run
    assert len({s["id"] for _, s in seen}) == 5
    for task_id, session in seen:
        assert session["id"] == bugsnag_celery.task_session_id(task_id, 0)
        assert uuid.UUID(session["id"]).version == 5
    assert pending_total() == 6


def test_task_always_eager_and_nested_runs(app: Celery) -> None:
    app.conf.task_always_eager = True
    seen: dict[str, Any] = {}

    @app.task(bind=True)
    def inner(self: Task) -> None:
        seen["inner"] = bugsnag_celery.get_current_session()

    @app.task(bind=True)
    def outer(self: Task) -> None:
        seen["outer_before"] = bugsnag_celery.get_current_session()
        inner.delay()
        seen["outer_after"] = bugsnag_celery.get_current_session()

    outer.delay()
    assert seen["outer_before"] == seen["outer_after"]
    assert seen["inner"]["id"] != seen["outer_before"]["id"]
    assert bugsnag_celery.get_current_session() is None
    assert pending_total() == 2


def test_track_eager_false(app: Celery) -> None:
    bugsnag_celery.configure(app, api_key=KEY, track_eager=False, **LOCAL)
    seen: list[Any] = []

    @app.task
    def job() -> None:
        seen.append(bugsnag_celery.get_current_session())

    job.apply()
    assert seen == [None] and pending_total() == 0


def test_direct_call_is_not_a_task_run(app: Celery) -> None:
    seen: list[Any] = []

    @app.task
    def job() -> None:
        seen.append(bugsnag_celery.get_current_session())

    job()
    bugsnag_celery.start_session()
    current = bugsnag_celery.get_current_session()
    job()
    assert seen == [None, current]
    assert pending_total() == 1


def test_no_session_either_order_and_lazy_apps(app: Celery) -> None:
    seen: list[Any] = []

    @app.task
    @bugsnag_celery.no_session
    def below() -> None:
        seen.append(bugsnag_celery.get_current_session())

    @bugsnag_celery.no_session
    @app.task
    def above() -> None:
        seen.append(bugsnag_celery.get_current_session())

    @bugsnag_celery.no_session
    @app.task(bind=True, autoretry_for=(KeyError,))
    def above_autoretry(self: Task) -> None:
        seen.append(bugsnag_celery.get_current_session())

    below.apply()
    above.apply()
    above_autoretry.apply()
    assert seen == [None, None, None]
    assert pending_total() == 0


def test_no_session_hides_the_callers_session(app: Celery) -> None:
    seen: list[Any] = []

    @bugsnag_celery.no_session
    @app.task
    def quiet() -> None:
        seen.append(bugsnag_celery.get_current_session())

    bugsnag_celery.start_session()
    before = bugsnag_celery.get_current_session()
    quiet.apply()
    assert seen == [None]
    assert bugsnag_celery.get_current_session() == before


def test_exclude_tasks_names_and_patterns(app: Celery) -> None:
    bugsnag_celery.configure(app, **LOCAL, api_key=KEY, exclude_tasks=["proj.exact", r"proj\.cleanup\..*"])
    seen: dict[str, Any] = {}

    def make(name: str) -> Any:
        @app.task(name=name)
        def job() -> None:
            seen[name] = bugsnag_celery.get_current_session()

        return job

    for name in ("proj.exact", "proj.cleanup.logs", "proj.exactly", "proj.counted"):
        make(name).apply()
    assert seen["proj.exact"] is None and seen["proj.cleanup.logs"] is None
    assert seen["proj.exactly"] is not None and seen["proj.counted"] is not None
    assert pending_total() == 2


def test_internal_tasks_never_count(app: Celery) -> None:
    seen: list[Any] = []

    @app.task(name="bugsnag_celery.internal_probe")
    def internal() -> None:
        seen.append(bugsnag_celery.get_current_session())

    internal.apply(throw=True)
    assert seen == [None]  # asserted out here: apply() would keep an AssertionError as its result
    assert pending_total() == 0


def test_auto_track_off_leaves_sessions_to_the_user(app: Celery) -> None:
    bugsnag_celery.configure(app, api_key=KEY, auto_track_sessions=False, **LOCAL)
    seen: list[Any] = []

    @app.task
    def job() -> None:
        seen.append(bugsnag_celery.get_current_session())
        bugsnag_celery.start_session()
        seen.append(bugsnag_celery.get_current_session())

    job.apply()
    job.apply()
    assert seen[0] is None and seen[2] is None  # the session started in run 1 ended with it
    assert seen[1] is not None and seen[3] is not None
    assert pending_total() == 2


def test_custom_call_base_class(app: Celery) -> None:
    calls: list[Any] = []

    class Base(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(("base", bugsnag_celery.get_current_session()))
            return super().__call__(*args, **kwargs)

    @app.task(base=Base, bind=True)
    def job(self: Task) -> None:
        calls.append((self.request.id, bugsnag_celery.get_current_session()))

    result = job.apply()
    assert calls[0][1] is not None and calls[0][1] == calls[1][1]
    assert calls[0][1]["id"] == bugsnag_celery.task_session_id(result.id, 0)
    assert pending_total() == 1


def test_configure_twice_counts_once_and_unconfigure_undoes(app: Celery) -> None:
    from celery import signals

    bugsnag_celery.configure(app, api_key=KEY, app_version="2.0", hostname="h1", **LOCAL)
    uid = "bugsnag_celery.worker_init"
    assert sum(1 for (key, _), _r in signals.worker_init.receivers if key == uid) == 1

    @app.task
    def job() -> None:
        pass

    job.apply()
    job.apply()
    assert pending_total() == 2
    bugsnag_celery.unconfigure(app)
    assert not bugsnag_celery.is_configured(app)
    assert sum(1 for (key, _), _r in signals.worker_init.receivers if key == uid) == 0
    job.apply()
    assert pending_total() == 0
    assert "run" not in job.__dict__  # the wrapper is gone, the class's run is back
    bugsnag_celery.configure(app, api_key=KEY, **LOCAL)  # the fixture unconfigures again
    job.apply()
    assert pending_total() == 1


def test_counts_minute_buckets_and_restore() -> None:
    release = bugsnag_celery.Release("1", "production", "celery", "h")
    bugsnag_celery.take_pending_counts()
    counts.count_session(release, 1_700_000_000.0)  # 2023-11-14T22:13:20Z
    counts.count_session(release, 1_700_000_039.9)
    counts.count_session(release, 1_700_000_040.0)  # next minute
    taken = bugsnag_celery.take_pending_counts()
    assert taken == {release: {"2023-11-14T22:13:00Z": 2, "2023-11-14T22:14:00Z": 1}}
    assert bugsnag_celery.take_pending_counts() == {}
    bugsnag_celery.restore_pending_counts(taken)
    bugsnag_celery.restore_pending_counts(taken)
    assert bugsnag_celery.take_pending_counts() == {
        release: {"2023-11-14T22:13:00Z": 4, "2023-11-14T22:14:00Z": 2}
    }


def test_counts_taken_twice_from_one_minute_and_idle_minutes_dropped() -> None:
    """A minute's counter is read, not emptied: a second take gives exactly what came since.

    Reading never takes (``pending_total``, ``releases_with_counts``); a minute that has been
    idle for ``IDLE_MINUTES`` is dropped at a take (memory stays bounded), the current one stays.
    """
    import time

    from bugsnag_celery.clock import minute_iso

    release = bugsnag_celery.Release("2", "production", "celery", "idle")
    bugsnag_celery.take_pending_counts()
    now = time.time()
    old = now - 60 * (counts.IDLE_MINUTES + 2)
    for _ in range(3):
        counts.count_session(release, now)
    counts.count_session(release, old)
    assert counts.pending_total() == 4 and release in counts.releases_with_counts()
    assert counts.pending_total() == 4  # reading took nothing
    first = bugsnag_celery.take_pending_counts([release])[release]
    assert sorted(first.values()) == [1, 3]
    counts.count_session(release, now)
    counts.count_session(release, now)
    assert bugsnag_celery.take_pending_counts([release]) == {release: {minute_iso(int(now // 60)): 2}}
    live = counts.minutes_for(release)
    assert old // 60 not in live and now // 60 in live  # the idle old minute was dropped
    assert counts.pending_total() == 0 and release not in counts.releases_with_counts()
    counts.count_session(release, old)  # a late count into a dropped minute: a new counter
    assert bugsnag_celery.take_pending_counts([release]) == {release: {minute_iso(int(old // 60)): 1}}


def test_counts_survive_threads_exactly(app: Celery) -> None:
    @app.task
    def job() -> None:
        pass

    def hammer() -> None:
        for _ in range(2000):
            job.apply()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pending_total() == 16_000


def test_fork_child_starts_with_no_counts(app: Celery) -> None:
    from forking import in_child

    bugsnag_celery.start_session()
    child_saw = int(in_child(lambda: str(pending_total())))  # the parent's count must not be there
    assert child_saw == 0
    assert pending_total() == 1  # the parent still has its own


def test_task_class_that_is_the_base_of_another_task(app: Celery) -> None:
    """Parent with a custom __call__, Child(Parent): each runs its own body, one session each."""

    class Parent(app.Task):  # type: ignore[misc]  # bound to this app, not current_app
        name = "parent"

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return super().__call__(*args, **kwargs)

        def run(self) -> str:
            return "parent body"

    class Child(Parent):
        name = "child"

        def run(self) -> str:
            return "child body"

    parent, child = app.register_task(Parent()), app.register_task(Child())
    bodies = [parent.apply().get(), child.apply().get(), child.apply().get(), parent.apply().get()]
    assert bodies == ["parent body", "child body", "child body", "parent body"]
    assert pending_total() == 4


def test_unconfigure_keeps_counts_no_app_can_send_yet(app: Celery) -> None:
    from bugsnag_celery import registry

    for _ in range(3):
        bugsnag_celery.start_session()
    bugsnag_celery.unconfigure(app)
    assert registry.flusher.flush_once() == 0  # no app to send with: nothing taken away
    assert pending_total() == 3


def test_a_broker_down_for_over_a_day_merges_the_oldest_buckets_never_drops_one(app: Celery) -> None:
    """README: past a day of minute buckets per release group, the oldest are merged, never dropped.

    Through the real path: an app whose broker is down, a day and 100 minutes of counts in
    the process, and a flush that fails and puts them back. (A first flush's message is held
    in doubt, whole: its publish failed; the counts of the flushes after it are kept.)
    """
    from bugsnag_celery import registry
    from bugsnag_celery.clock import minute_iso as iso

    down = Celery(f"d{uuid.uuid4().hex[:6]}", broker="redis://127.0.0.1:1/15", set_as_current=False)
    bugsnag_celery.configure(down, api_key=KEY, app_version="down", hostname="h1", **LOCAL)
    try:
        release = bugsnag_celery.Release("down", "production", "celery", "h1")
        first = 29_000_000  # a minute in 2025
        minutes = counts.MAX_BUCKETS + 100
        counts.restore_pending_counts({release: {iso(first - 1): 7}})
        assert registry.flusher.flush_once() == 0  # the broker is down: that message is in doubt
        counts.restore_pending_counts({release: {iso(first + i): 1 for i in range(minutes)}})
        assert registry.flusher.flush_once() == 0  # still down: nothing moved, all kept
        assert counts.pending_total() == minutes + 7
        kept = bugsnag_celery.take_pending_counts()[release]
    finally:
        bugsnag_celery.unconfigure(down)
    assert bugsnag_celery.take_pending_counts() == {release: {iso(first - 1): 7}}  # given back
    assert len(kept) == counts.MAX_BUCKETS
    assert sum(kept.values()) == minutes  # never dropped
    oldest = sorted(kept)
    # the 100 oldest went into the oldest minute kept; every later minute holds its own count
    assert oldest[0] == iso(first + 100) and kept[oldest[0]] == 101
    assert oldest[-1] == iso(first + minutes - 1) and set(kept[m] for m in oldest[1:]) == {1}
