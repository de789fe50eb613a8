"""The ledger: what a killed process leaves, read back exactly (forked children killed here).

A real worker can't be made to die at the exact points these need (after a flush the broker
refused, after the broker took a batch, with an event in each state), so each child is
forked from this process, brought to that point and SIGKILLed; the parent reads what its
ledger holds and recovers it, as a worker's main process does.

Covers: bugsnag_celery/sessions/ledger.py, bugsnag_celery/sessions/ledger_file.py
Covers: bugsnag_celery/delivery/recovery.py, bugsnag_celery/sessions/counts.py
"""

from __future__ import annotations

import json
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery

import bugsnag_celery
from bugsnag_celery import registry
from bugsnag_celery.delivery.recovery import recover
from bugsnag_celery.sessions import counts, ledger
from bugsnag_celery.transport.http import Request
from bugsnag_celery.transport.journal import journal
from bugsnag_celery.transport.outcome import Fate
from bugsnag_celery.transport.sender import Sender

KEY = "0123456789abcdef0123456789abcdef"
LOCAL = {"notify_endpoint": "http://127.0.0.1:9/notify", "sessions_endpoint": "http://127.0.0.1:9/sessions"}


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    app = Celery("ledger-test", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True
    bugsnag_celery.configure(app, api_key=KEY, ledger_dir=str(tmp_path), queue_prefix="ledger-test", **LOCAL)
    registry.flusher.enabled = False
    bugsnag_celery.take_pending_counts()
    try:
        yield tmp_path
    finally:
        registry.flusher.enabled = True
        bugsnag_celery.unconfigure(app)
        bugsnag_celery.take_pending_counts()
        ledger.configure(None, list)


def killed_child(work: Callable[[], None]) -> int:
    """Fork a child that does *work* and is SIGKILLed; its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            work()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    return pid


def count(n: int) -> None:
    release = registry.states()[0].release
    for _ in range(n):
        counts.count_session(release, 1_800_000_000.0)


def held(folder: Path, pid: int) -> tuple[int, list[bytes]]:
    contents = ledger.read(str(folder / f"{pid}.ledger"))
    assert contents is not None
    return sum(n for b in contents.counts.values() for n in b.values()), [e for _, _, e in contents.events]


def test_a_killed_process_leaves_every_count_it_had_not_handed_on(folder: Path) -> None:
    def work() -> None:
        count(5)
        taken = counts.take_pending_counts(hold=True)  # a flush ...
        counts.restore_pending_counts(taken)  # ... the broker refused: kept
        count(3)
        counts.take_pending_counts(hold=True)  # a flush on its way when the kill comes

    assert held(folder, killed_child(work))[0] == 8


def test_a_message_in_doubt_is_left_until_it_is_published_again(folder: Path) -> None:
    """A flush whose publish got no answer holds that message in doubt: its counts stay in
    the ledger (a kill loses them not), and leave it once the same message is published."""

    def in_doubt(publish_again: bool) -> Callable[[], None]:
        def work() -> None:
            count(5)
            taken = counts.take_pending_counts(hold=True)
            counts.hold_in_doubt("m1", taken)  # the publish failed, its outcome unknown
            count(2)
            if publish_again:
                counts.release_in_doubt("m1")

        return work

    assert held(folder, killed_child(in_doubt(False)))[0] == 7
    assert held(folder, killed_child(in_doubt(True)))[0] == 2


def test_counts_the_broker_took_are_not_left_again(folder: Path) -> None:
    def work() -> None:
        count(5)
        counts.take_pending_counts(hold=True)
        counts.settle()  # the broker took them
        count(2)

    assert held(folder, killed_child(work))[0] == 2


def test_events_are_left_until_their_fate_is_known(folder: Path) -> None:
    done: list[Fate] = []

    def request(i: int) -> Request:
        r = Request(LOCAL["notify_endpoint"], KEY, "4.0", encoded=[b'{"n":%d}' % i], on_done=done.append)
        journal(r)
        assert r.journaled and r.on_done == done.append  # kept; its own callback still told of its end
        return r

    def work() -> None:
        first = request(0)
        request(1)
        Sender._done(first, Fate.DELIVERED)
        Sender._done(first, Fate.DELIVERED)  # a second end (a flush took it over) changes nothing more
        assert done == [Fate.DELIVERED, Fate.DELIVERED]
        request(2)

    assert held(folder, killed_child(work))[1] == [b'{"n":1}', b'{"n":2}']


def storm(total: int, waiting: int, late_every: int, late_by: int) -> Iterator[tuple[int, list[int]]]:
    """An error storm against a slow BugSnag, as the sender finishes its events: event *i*
    is queued, then the events finished by then (in order, *waiting* behind; every
    *late_every*-th one *late_by* events later). Yields (i, the events it finished)."""
    pending: deque[int] = deque()
    late: dict[int, int] = {}  # event -> when it finishes
    for i in range(total):
        pending.append(i)
        finished = []
        while len(pending) > waiting:
            first = pending.popleft()
            if first % late_every == 0 and first not in late:
                late[first] = i + late_by
            else:
                finished.append(first)
        finished += [e for e, at in late.items() if at == i]
        yield i, finished


def test_a_storm_keeps_its_waiting_events_in_a_ring_that_stays_small(folder: Path) -> None:
    """Some event is always waiting in a storm: the events area starts over behind the
    finished ones. It was reset only when every event was finished: it grew ~1.3 kB an
    event to its 32 MB (34.1 MB of the file allocated here, for 41 waiting events), and
    the events queued while it was full were not kept."""
    total, pad = 30_000, "x" * 1_200

    def work() -> None:
        queued: dict[int, Request] = {}
        for i, finished in storm(total, waiting=40, late_every=997, late_by=300):
            r = Request(LOCAL["notify_endpoint"], KEY, "4.0", on_done=lambda fate: None,
                        encoded=[json.dumps({"n": i, "pad": pad}).encode()])  # fmt: skip
            journal(r)
            queued[i] = r
            for e in finished:
                Sender._done(queued.pop(e), Fate.DELIVERED)

    pid = killed_child(work)
    waiting: set[int] = set()
    for i, finished in storm(total, waiting=40, late_every=997, late_by=300):
        waiting.add(i)
        waiting -= set(finished)
    assert 40 < len(waiting) < 50  # the last 40, and the late ones not yet finished
    kept = [json.loads(e)["n"] for e in held(folder, pid)[1]]
    assert sorted(kept) == sorted(waiting)
    assert len(kept) == len(set(kept))
    used = (folder / f"{pid}.ledger").stat().st_blocks * 512
    assert used < 4 * 1024 * 1024, f"{used / 1e6:.1f} MB of the ledger's file allocated"


def test_recovery_claims_a_dead_ledger_once_and_puts_its_counts_here(folder: Path) -> None:
    pid = killed_child(lambda: count(4))
    sent: list[tuple[str, str, bytes]] = []

    def submit(*event: object) -> bool:
        sent.append(event)  # type: ignore[arg-type]
        return True

    alive = ledger.current()
    assert alive is not None and Path(alive.path).exists()  # this process's own: never taken
    got = recover(str(folder), ["another app's scope"], submit)
    assert got.processes == 0 and (folder / f"{pid}.ledger").exists()  # not this app's: left alone
    scopes = ledger.read(str(folder / f"{pid}.ledger")).scopes  # type: ignore[union-attr]
    got = recover(str(folder), scopes, submit)
    assert (got.processes, got.sessions) == (1, 4)
    assert not (folder / f"{pid}.ledger").exists()
    assert sum(n for b in bugsnag_celery.take_pending_counts().values() for n in b.values()) == 4
    assert recover(str(folder), scopes, lambda *e: True).processes == 0  # once


def test_a_dead_ledger_of_another_app_is_read_once_not_at_every_look(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's main process looks for dead ledgers once per flush interval. One that no
    app here may deliver (another app's on the host) stays until a process of its own looks: it
    was read whole at every look (70 left by killed processes of other apps cost an error storm
    a sixth of its throughput, in the main process). Now its scopes are read once; a process
    of its scope still delivers it."""
    pid = killed_child(lambda: count(3))
    path = str(folder / f"{pid}.ledger")
    looked: list[tuple[str, str]] = []
    read, scopes = ledger.read, ledger.scopes

    def reading(p: str) -> object:
        looked.append(("read", p))
        return read(p)

    def reading_scopes(p: str) -> object:
        looked.append(("scopes", p))
        return scopes(p)

    monkeypatch.setattr(ledger, "read", reading)
    monkeypatch.setattr(ledger, "scopes", reading_scopes)
    for _ in range(5):
        assert recover(str(folder), ["another app's scope"], lambda *e: True).processes == 0
    assert [what for what, p in looked if p == path] == ["scopes"]
    theirs = scopes(path)
    assert theirs
    got = recover(str(folder), theirs, lambda *e: True)
    assert (got.processes, got.sessions) == (1, 3)
    assert sum(n for b in bugsnag_celery.take_pending_counts().values() for n in b.values()) == 3
