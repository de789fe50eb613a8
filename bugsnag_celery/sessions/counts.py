"""Per-process session counts: the seam between counting and delivery.

Every session that starts in this process is counted here, in a per-minute bucket
(``startedAt`` floored to the minute, UTC) per *release group*: app version, release
stage, app type and hostname -- the four values that BugSnag keys a session payload by.

Counting is the hot path of every task run, so it is one dict update under an
uncontended lock. Moving the counts out of the process is somebody else's job: a
delivery path calls :func:`take_pending_counts` (which empties the buckets) and, if it
could not hand them on, :func:`restore_pending_counts` to put them back. Nothing in
this module does I/O or starts a thread.

Counts never cross a ``fork()``: a child starts with empty buckets, so counts that the
parent took before forking are delivered by the parent only (bugsnag-python's timer
either loses them or sends them twice).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..clock import minute_from_iso, minute_iso

__all__ = [
    "Release",
    "PendingCounts",
    "count_session",
    "take_pending_counts",
    "restore_pending_counts",
    "add_to_buckets",
    "buckets_for",
    "on_first_count",
    "releases_with_counts",
    "pending_total",
    "MAX_BUCKETS",
]


class Release(NamedTuple):
    """What BugSnag groups session counts by (one session payload per release group)."""

    app_version: str | None
    release_stage: str
    app_type: str
    hostname: str


#: ``{release: {"2026-11-28T01:14:00Z": sessions_started, ...}}``
PendingCounts = dict[Release, dict[str, int]]

_lock = threading.Lock()
# release -> {epoch minute -> count}. The inner dicts are long-lived: callers on the
# hot path keep a reference to theirs (see ``buckets_for``) and mutate it in place.
_buckets: dict[Release, dict[int, int]] = {}


def buckets_for(release: Release) -> dict[int, int]:
    """Return the (live) minute buckets of *release*, creating them once."""
    with _lock:
        buckets = _buckets.get(release)
        if buckets is None:
            buckets = _buckets[release] = {}
        return buckets


def count_session(release: Release, started: float) -> None:
    """Count one session of *release* that started at *started* (a ``time.time()``)."""
    minute = int(started // 60)
    with _lock:
        buckets = _buckets.get(release)
        if buckets is None:
            buckets = _buckets[release] = {}
        buckets[minute] = buckets.get(minute, 0) + 1
    if not _watching:
        _start_watch()


def add_to_buckets(buckets: dict[int, int], started: float) -> None:
    """Count one session in *buckets* (from :func:`buckets_for`): the task wrapper's hot path.

    The caller keeps its release's live buckets, so this is one dict update under the
    (module-level, replaced after fork) lock and one global read.
    """
    minute = int(started // 60)
    with _lock:
        buckets[minute] = buckets.get(minute, 0) + 1
    if not _watching:
        _start_watch()


# The delivery path learns that this process has counts to move (once per process: the
# flag is one global read on the hot path, reset in a forked child).
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


def take_pending_counts(releases: Iterable[Release] | None = None) -> PendingCounts:
    """Take (and remove) every count this process holds (of *releases*, if given).

    Returns ``{Release: {minute_iso: sessions_started}}`` with only non-zero buckets.
    Whoever takes the counts owns them: if they cannot be delivered, give them back
    with :func:`restore_pending_counts`, or they are lost.
    """
    taken: PendingCounts = {}
    wanted = None if releases is None else set(releases)
    with _lock:
        for release, buckets in _buckets.items():
            if buckets and (wanted is None or release in wanted):
                taken[release] = {minute_iso(m): n for m, n in sorted(buckets.items())}
                buckets.clear()
    return taken


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
            buckets = _buckets.get(release)
            if buckets is None:
                buckets = _buckets[release] = {}
            for stamp, n in counts.items():
                minute = minute_from_iso(stamp)
                buckets[minute] = buckets.get(minute, 0) + n
            if len(buckets) > max_buckets:
                ordered = sorted(buckets)
                excess = ordered[: len(ordered) - max_buckets]
                keep = ordered[len(ordered) - max_buckets]
                buckets[keep] += sum(buckets.pop(m) for m in excess)


def pending_total() -> int:
    """Sessions counted in this process and not taken yet (what an exit would lose)."""
    with _lock:
        return sum(n for buckets in _buckets.values() for n in buckets.values())


def releases_with_counts() -> list[Release]:
    """The release groups that hold counts now (the flusher's strays: no app owns them)."""
    with _lock:
        return [release for release, buckets in _buckets.items() if buckets]


def _after_fork_in_child() -> None:
    # The parent's lock may have been held by another thread at fork time, and the
    # parent's counts are the parent's to deliver: start the child clean.
    global _lock, _watching
    _lock = threading.Lock()
    _watching = False
    for buckets in _buckets.values():
        buckets.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
