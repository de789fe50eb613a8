"""Per-process session counts: the seam between counting and delivery.

Every session that starts in this process is counted here, in a per-minute bucket
(``startedAt`` floored to the minute, UTC) per *release group*: app version, release
stage, app type and hostname -- the four values that BugSnag keys a session payload by --
of one BugSnag project, the app's *identity* (its API key and sessions endpoint). Two
configured apps that differ only in their key never share a counter: each app's counts
go to its own project, whatever their release.

Counting is the hot path of every task run, so it takes no lock: each release group's
minute has an ``itertools.count``, and counting a session is ``next()`` on it -- one
C call, atomic under the GIL (measured: 0.4 us a count, against 0.9 us for a dict update
under a lock, of the ~3 us a task run's session costs) -- and one 8-byte store of the
count into the process's ledger (``ledger.py``, ~0.04 us): memory that outlives the
process, so that a pool child killed by the kernel loses no count. Whoever moves the counts out
(a delivery path) calls :func:`take_pending_counts`, which reads each counter and
remembers how far it has taken it, and, if it could not hand them on,
:func:`restore_pending_counts` to put them back. Nothing here does I/O or starts a thread.

A minute's counter stays in place as long as sessions may still be counted in it, and
is dropped once it is :data:`IDLE_MINUTES` old and nothing new was counted in it since
the last take: a count into it would need a thread stopped for that long between reading
the minute's counter and counting (two bytecodes apart in the task wrapper).

Counts never cross a ``fork()``: a child starts with empty counters, so counts that the
parent took before forking are delivered by the parent only (bugsnag-python's timer
either loses them or sends them twice).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from ..clock import minute_from_iso, minute_iso
from . import ledger
from .ledger import NO_CELLS, Cells
from .ledger_file import ReleaseRow

if TYPE_CHECKING:
    from ..options.declared import Options

__all__ = [
    "Release",
    "identity_of",
    "PendingCounts",
    "Minutes",
    "count_session",
    "minutes_for",
    "open_minute",
    "take_pending_counts",
    "restore_pending_counts",
    "hold_in_doubt",
    "release_in_doubt",
    "settle",
    "Tally",
    "on_first_count",
    "releases_with_counts",
    "pending_total",
    "MAX_BUCKETS",
    "IDLE_MINUTES",
]


def identity_of(api_key: str | None, sessions_endpoint: str | None) -> str:
    """The identity of the BugSnag project that *api_key* and *sessions_endpoint* deliver to.

    A fingerprint (16 hex digits of a SHA-256), never the key itself: it travels with the
    counts on the broker, which must hold no key in plain text. ``""`` without a key: such
    counts belong to no project, and go with whichever app delivers them. A trailing ``/``
    of the endpoint does not count: processes that spell one URL two ways are one project.
    """
    if not api_key:
        return ""
    endpoint = (sessions_endpoint or "").rstrip("/")
    return hashlib.sha256(f"{api_key}\n{endpoint}".encode()).hexdigest()[:16]


class Release(NamedTuple):
    """What BugSnag groups session counts by, and whose they are: one counter, and one
    session payload, per release group of one BugSnag project.

    ``identity`` (:func:`identity_of` the app's key and sessions endpoint) keeps apps apart
    that share a release group: with no ``app_version`` on the same host, two apps with
    different keys would otherwise count into one counter and deliver under one key.
    ``""`` is no project's (counts built by hand, or written by an earlier version).
    """

    app_version: str | None
    release_stage: str
    app_type: str
    hostname: str
    identity: str = ""

    @classmethod
    def of(cls, options: Options) -> Release:
        """The release group of an app's options: the one place a ``Release`` is built from them."""
        return cls(
            options.app_version, options.release_stage, options.app_type, options.hostname,
            identity_of(options.api_key, options.endpoints.sessions),
        )  # fmt: skip


#: ``{release: {"2026-11-28T01:14:00Z": sessions_started, ...}}``
PendingCounts = dict[Release, dict[str, int]]

#: A minute's counter, and where a count is also written so that it outlives the process:
#: ``(itertools.count(1), cells, cell)``; counting is ``cells[cell] = next(counter)``
#: (``cells`` is the process's ledger, ``ledger.py``, or a stand-in without one).
Tally = tuple[Iterator[int], Cells, int]

#: A release group's live counters: ``{started // 60: Tally}`` (see ``minutes_for``).
Minutes = dict[float, Tally]

_lock = threading.Lock()  # for everything but the count itself (replaced after fork)
# release -> its live counters. The dicts are long-lived: the task wrapper keeps a
# reference to its release's (see ``minutes_for``) and reads it without the lock.
_live: dict[Release, Minutes] = {}
# release -> {minute -> how many of that minute's counter were taken already}
_taken: dict[Release, dict[float, int]] = {}
# release -> {epoch minute -> count}: counts given back (restore_pending_counts)
_kept: dict[Release, dict[int, int]] = {}
# message id -> its counts: a publish of them that failed with its outcome unknown (the broker
# may hold them); the flusher publishes the same message again. In the ledger's given-back area.
_in_doubt: dict[str, PendingCounts] = {}
# ledger cell -> count: taken, not yet recorded as such in the ledger (``settle``)
_unsettled: dict[int, int] = {}
_kept_changed = False


def minutes_for(release: Release) -> Minutes:
    """The (live) counters of *release*, created once: count with :func:`open_minute`/``next``.

    The task wrapper's hot path: ``tally = minutes.get(started // 60)``, then, only if
    that is None, ``tally = open_minute(release, started // 60)``; then, with
    ``counter, cells, cell = tally``, ``cells[cell] = next(counter)``.
    """
    with _lock:
        return _live.setdefault(release, {})


def open_minute(release: Release, minute: float) -> Tally:
    """The counter of *release*'s *minute* (``started // 60``), created on the minute's first count."""
    with _lock:
        minutes = _live.setdefault(release, {})
        tally = minutes.get(minute)
        if tally is None:
            book = ledger.current()
            cell = book.slot(tuple(release), int(minute)) if book is not None else None
            tally = minutes[minute] = (
                (itertools.count(1), book.cells, cell)
                if book is not None and cell is not None
                else (itertools.count(1), NO_CELLS, 0)
            )
    if not _watching:
        _start_watch()
    return tally


def count_session(release: Release, started: float) -> None:
    """Count one session of *release* that started at *started* (a ``time.time()``)."""
    minute = started // 60
    tally = _live.get(release, {}).get(minute)
    if tally is None:
        tally = open_minute(release, minute)
    counter, cells, cell = tally
    cells[cell] = next(counter)


def _value(counter: Iterator[int]) -> int:
    """How many times *counter* was counted: ``itertools.count(1)`` shows it only in its repr."""
    return int(repr(counter)[6:-1]) - 1  # "count(6)": five counted


# The delivery path learns that this process has counts to move (once per process: the
# flag is read when a minute's counter is created, and reset in a forked child).
_watching = False
_watch_hook: list[Callable[[], None]] = []


def on_first_count(hook: Callable[[], None]) -> None:
    """Call *hook* the first time this process (or a forked child) counts a session."""
    _watch_hook[:] = [hook]


def _start_watch() -> None:
    global _watching
    _watching = True
    for hook in _watch_hook:
        try:
            hook()
        except Exception:  # pragma: no cover - a hook must never break a task
            _watching = False


#: A minute's counter is dropped once this many minutes old and idle since the last take.
IDLE_MINUTES = 10


def _new_counts(release: Release, now_minute: float, prune: bool) -> dict[int, int]:
    """What was counted for *release* since the last take (under the lock); marks it taken."""
    got: dict[int, int] = {}
    taken = _taken.setdefault(release, {}) if prune else _taken.get(release, {})
    minutes = _live.get(release, {})
    for minute, (counter, cells, cell) in list(minutes.items()):
        value = _value(counter)
        new = value - taken.get(minute, 0)
        if new:
            got[int(minute)] = new
            if prune:
                taken[minute] = value
                if cells is not NO_CELLS:
                    _unsettled[cell] = value
        elif prune and minute < now_minute - IDLE_MINUTES and cell not in _unsettled:
            del minutes[minute]
            taken.pop(minute, None)
            if cells is not NO_CELLS:
                book = ledger.current()
                if book is not None and book.cells is cells:
                    book.free(cell)
    return got


def take_pending_counts(releases: Iterable[Release] | None = None, *, hold: bool = False) -> PendingCounts:
    """Take (and remove) every count this process holds (of *releases*, if given).

    Returns ``{Release: {minute_iso: sessions_started}}`` with only non-zero buckets.
    Whoever takes the counts owns them: if they cannot be delivered, give them back
    with :func:`restore_pending_counts`, or they are lost.

    *hold*: the process's ledger still shows them as its own until :func:`settle` (the
    flusher, once the broker took them): a kill while they are on their way loses nothing.
    """
    global _kept_changed
    out: PendingCounts = {}
    now_minute = time.time() // 60
    with _lock:
        wanted = _releases() if releases is None else set(releases)
        for release in wanted:
            got = _new_counts(release, now_minute, prune=True)
            kept = _kept.pop(release, {})
            _kept_changed = _kept_changed or bool(kept)
            for minute, n in kept.items():
                got[minute] = got.get(minute, 0) + n
            if got:
                out[release] = {minute_iso(m): n for m, n in sorted(got.items())}
    if not hold:
        settle()
    return out


def settle() -> None:
    """Record in the ledger that what was taken left this process (and what it keeps now)."""
    global _kept_changed
    book = ledger.current() if (_unsettled or _kept_changed) else None
    with _lock:
        marks, kept_changed = dict(_unsettled), _kept_changed
        _unsettled.clear()
        _kept_changed = False
        kept = _kept_snapshot() if kept_changed else None
    if book is not None:
        try:
            book.settle(marks, kept)
        except Exception:  # the ledger is a safety net: counting goes on without it
            pass


def _kept_snapshot() -> dict[ReleaseRow, dict[int, int]]:
    """What the ledger's given-back area holds (under the lock): counts given back, and
    those of messages in doubt (a kill before they are published again loses neither)."""
    kept: dict[ReleaseRow, dict[int, int]] = {tuple(r): dict(b) for r, b in _kept.items()}
    for pending in _in_doubt.values():
        for release, buckets in pending.items():
            _add_minutes(kept.setdefault(tuple(release), {}), buckets)
    return kept


def _add_minutes(into: dict[int, int], buckets: dict[str, int]) -> None:
    """Add *buckets* (``{minute_iso: n}``) into *into* (``{epoch minute: n}``)."""
    for stamp, n in buckets.items():
        minute = minute_from_iso(stamp)
        into[minute] = into.get(minute, 0) + n


def hold_in_doubt(message_id: str, pending: PendingCounts) -> None:
    """*pending* (taken, and published as message *message_id* with no answer) stays this
    process's until :func:`release_in_doubt`: in its ledger, and in :func:`pending_total`."""
    global _kept_changed
    with _lock:
        _in_doubt[message_id] = pending
        _kept_changed = True
    settle()


def release_in_doubt(message_id: str) -> PendingCounts:
    """Message *message_id*'s counts are no longer this process's to hold (published now, or
    given back with :func:`restore_pending_counts` by the caller): returns them."""
    global _kept_changed
    with _lock:
        pending = _in_doubt.pop(message_id, {})
        _kept_changed = True
    settle()
    return pending


#: Minute buckets kept per release group while counts cannot leave the process (a day).
MAX_BUCKETS = 24 * 60


def restore_pending_counts(pending: PendingCounts, max_buckets: int = MAX_BUCKETS) -> None:
    """Merge counts taken by :func:`take_pending_counts` back into this process.

    Memory stays bounded while the counts cannot leave (a broker down for days): past
    *max_buckets* minutes per release group, the oldest buckets are merged into the next
    oldest -- a count may be filed under a later minute, but it is never dropped.
    """
    global _kept_changed
    with _lock:
        _kept_changed = _kept_changed or bool(pending)
        for release, counts in pending.items():
            kept = _kept.setdefault(release, {})
            _add_minutes(kept, counts)
            if len(kept) > max_buckets:
                ordered = sorted(kept)
                excess = ordered[: len(ordered) - max_buckets]
                keep = ordered[len(ordered) - max_buckets]
                kept[keep] += sum(kept.pop(m) for m in excess)
    settle()


def _releases() -> set[Release]:
    """Every release group with live counters or counts given back (under the lock)."""
    return set(_live) | set(_kept)


def _held(release: Release) -> int:
    return sum(_new_counts(release, 0.0, prune=False).values()) + sum(_kept.get(release, {}).values())


def pending_total() -> int:
    """Sessions counted in this process and not on the broker yet (what an exit would lose)."""
    with _lock:
        doubt = sum(n for pending in _in_doubt.values() for b in pending.values() for n in b.values())
        return sum(_held(release) for release in _releases()) + doubt


def releases_with_counts() -> list[Release]:
    """The release groups that hold counts now (the flusher's strays: no app owns them)."""
    with _lock:
        return [release for release in _releases() if _held(release)]


def _after_fork_in_child() -> None:
    # The parent's lock may have been held by another thread at fork time, and the
    # parent's counts are the parent's to deliver: start the child clean. The live dicts
    # are emptied in place: task wrappers hold references to them.
    global _lock, _watching, _kept_changed
    _lock = threading.Lock()
    _watching = False
    for minutes in _live.values():
        minutes.clear()
    _taken.clear()
    _kept.clear()
    _in_doubt.clear()
    _unsettled.clear()
    _kept_changed = False


os.register_at_fork(after_in_child=_after_fork_in_child)
