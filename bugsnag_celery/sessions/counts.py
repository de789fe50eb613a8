"""Per-process session counts: the seam between counting and delivery.

Every session that starts in this process is counted here, in a per-minute bucket
(``startedAt`` floored to the minute, UTC) per *release group*: app version, release
stage, app type and hostname -- the four values that BugSnag keys a session payload by.

Counting is the hot path of every task run, so it takes no lock: each release group's
minute has an ``itertools.count``, and counting a session is ``next()`` on it -- one
C call, atomic under the GIL (measured: 0.4 us a count, against 0.9 us for a dict update
under a lock, of the ~3 us a task run's session costs). Whoever moves the counts out
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

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from ..clock import minute_from_iso, minute_iso

if TYPE_CHECKING:
    from ..options.declared import Options

__all__ = [
    "Release",
    "PendingCounts",
    "Minutes",
    "count_session",
    "minutes_for",
    "open_minute",
    "take_pending_counts",
    "restore_pending_counts",
    "on_first_count",
    "releases_with_counts",
    "pending_total",
    "MAX_BUCKETS",
    "IDLE_MINUTES",
]


class Release(NamedTuple):
    """What BugSnag groups session counts by (one session payload per release group)."""

    app_version: str | None
    release_stage: str
    app_type: str
    hostname: str

    @classmethod
    def of(cls, options: Options) -> Release:
        """The release group of an app's options: the one place a ``Release`` is built from them."""
        return cls(options.app_version, options.release_stage, options.app_type, options.hostname)


#: ``{release: {"2026-11-28T01:14:00Z": sessions_started, ...}}``
PendingCounts = dict[Release, dict[str, int]]

#: A release group's live counters: ``{started // 60: itertools.count()}`` (see ``minutes_for``).
Minutes = dict[float, Iterator[int]]

_lock = threading.Lock()  # for everything but the count itself (replaced after fork)
# release -> its live counters. The dicts are long-lived: the task wrapper keeps a
# reference to its release's (see ``minutes_for``) and reads it without the lock.
_live: dict[Release, Minutes] = {}
# release -> {minute -> how many of that minute's counter were taken already}
_taken: dict[Release, dict[float, int]] = {}
# release -> {epoch minute -> count}: counts given back (restore_pending_counts)
_kept: dict[Release, dict[int, int]] = {}


def minutes_for(release: Release) -> Minutes:
    """The (live) counters of *release*, created once: count with :func:`open_minute`/``next``.

    The task wrapper's hot path: ``counter = minutes.get(started // 60)``, then, only if
    that is None, ``counter = open_minute(release, started // 60)``; then ``next(counter)``.
    """
    with _lock:
        return _live.setdefault(release, {})


def open_minute(release: Release, minute: float) -> Iterator[int]:
    """The counter of *release*'s *minute* (``started // 60``), created on the minute's first count."""
    with _lock:
        minutes = _live.setdefault(release, {})
        counter = minutes.get(minute)
        if counter is None:
            counter = minutes[minute] = itertools.count()
    if not _watching:
        _start_watch()
    return counter


def count_session(release: Release, started: float) -> None:
    """Count one session of *release* that started at *started* (a ``time.time()``)."""
    minute = started // 60
    counter = _live.get(release, {}).get(minute)
    if counter is None:
        counter = open_minute(release, minute)
    next(counter)


def _value(counter: Iterator[int]) -> int:
    """How many times *counter* was counted: ``itertools.count`` shows it only in its repr."""
    return int(repr(counter)[6:-1])  # "count(5)"


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
    for minute, counter in list(minutes.items()):
        value = _value(counter)
        new = value - taken.get(minute, 0)
        if new:
            got[int(minute)] = new
            if prune:
                taken[minute] = value
        elif prune and minute < now_minute - IDLE_MINUTES:
            del minutes[minute]
            taken.pop(minute, None)
    return got


def take_pending_counts(releases: Iterable[Release] | None = None) -> PendingCounts:
    """Take (and remove) every count this process holds (of *releases*, if given).

    Returns ``{Release: {minute_iso: sessions_started}}`` with only non-zero buckets.
    Whoever takes the counts owns them: if they cannot be delivered, give them back
    with :func:`restore_pending_counts`, or they are lost.
    """
    out: PendingCounts = {}
    now_minute = time.time() // 60
    with _lock:
        wanted = _releases() if releases is None else set(releases)
        for release in wanted:
            got = _new_counts(release, now_minute, prune=True)
            for minute, n in _kept.pop(release, {}).items():
                got[minute] = got.get(minute, 0) + n
            if got:
                out[release] = {minute_iso(m): n for m, n in sorted(got.items())}
    return out


#: Minute buckets kept per release group while counts cannot leave the process (a day).
MAX_BUCKETS = 24 * 60


def restore_pending_counts(pending: PendingCounts, max_buckets: int = MAX_BUCKETS) -> None:
    """Merge counts taken by :func:`take_pending_counts` back into this process.

    Memory stays bounded while the counts cannot leave (a broker down for days): past
    *max_buckets* minutes per release group, the oldest buckets are merged into the next
    oldest -- a count may be filed under a later minute, but it is never dropped.
    """
    with _lock:
        for release, counts in pending.items():
            kept = _kept.setdefault(release, {})
            for stamp, n in counts.items():
                minute = minute_from_iso(stamp)
                kept[minute] = kept.get(minute, 0) + n
            if len(kept) > max_buckets:
                ordered = sorted(kept)
                excess = ordered[: len(ordered) - max_buckets]
                keep = ordered[len(ordered) - max_buckets]
                kept[keep] += sum(kept.pop(m) for m in excess)


def _releases() -> set[Release]:
    """Every release group with live counters or counts given back (under the lock)."""
    return set(_live) | set(_kept)


def _held(release: Release) -> int:
    return sum(_new_counts(release, 0.0, prune=False).values()) + sum(_kept.get(release, {}).values())


def pending_total() -> int:
    """Sessions counted in this process and not taken yet (what an exit would lose)."""
    with _lock:
        return sum(_held(release) for release in _releases())


def releases_with_counts() -> list[Release]:
    """The release groups that hold counts now (the flusher's strays: no app owns them)."""
    with _lock:
        return [release for release in _releases() if _held(release)]


def _after_fork_in_child() -> None:
    # The parent's lock may have been held by another thread at fork time, and the
    # parent's counts are the parent's to deliver: start the child clean. The live dicts
    # are emptied in place: task wrappers hold references to them.
    global _lock, _watching
    _lock = threading.Lock()
    _watching = False
    for minutes in _live.values():
        minutes.clear()
    _taken.clear()
    _kept.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
