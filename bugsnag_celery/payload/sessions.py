"""Session counts on the wire: the v1.0 session payload, and the broker message that carries counts.

Pure functions, like the rest of the payload layer. The broker message is ours (JSON,
versioned ``"v": 1``); reading one validates every count and stamp, because whatever
is on the broker may have been written by another version, or by somebody else.

Each group of a message says whose counts it holds (``"identity"``: see
``Release.identity``), beside the release list of four that earlier versions read: an
earlier version ignores the key (and delivers the group as before); a group without one,
from an earlier version, is delivered by whichever app drains it. ``"lost_events"`` is how
many events the writing process lost since its last flush (``flusher.LostEvents``).
``"id"`` names one message (64 random bits, fixed before its first publish): a publish whose
answer the broker never sent (it stopped mid-publish) is sent again with the same body, and
the delivery run keeps one copy of each id.

**The clock rule.** A minute is read against the clock of the process reading it (the
delivery's). A minute *ahead* of it -- a worker whose clock runs fast -- is filed under
the reader's current minute, so no bucket BugSnag receives lies in the future of the
request that carries it (``Bugsnag-Sent-At`` is written by the same clock). That holds up
to :data:`MAX_AHEAD_MINUTES` ahead; a stamp further ahead is not a clock that is off but
garbage (year 9999), and its sessions are dropped and counted. Minutes in the past are
kept as they are: BugSnag takes a backlog. (Before this rule, a minute over 5 ahead was
dropped: a worker 6 minutes fast lost every session.)
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

from ..about import notifier_info, runtime_versions
from ..clock import minute_from_iso, minute_iso
from ..sessions.counts import PendingCounts, Release
from .wire import MAX_BODY_BYTES

__all__ = [
    "session_payload",
    "session_bodies",
    "counts_message",
    "counts_messages",
    "counts_from_message",
    "MessageCounts",
    "MAX_COUNT",
    "MAX_AHEAD_MINUTES",
]

#: No process starts more sessions than this in one minute: anything above is garbage.
MAX_COUNT = 10**9
#: How far ahead of the reader's clock a minute is still a fast clock's (filed under the
#: reader's current minute); beyond it, a stamp is garbage and its sessions are dropped.
MAX_AHEAD_MINUTES = 24 * 60


def session_payload(release: Release, buckets: dict[str, int]) -> dict[str, object]:
    """The body BugSnag's session API takes for one release group (``sessionCounts`` by minute)."""
    return {
        "notifier": notifier_info(),
        "app": {
            "version": release.app_version,
            "releaseStage": release.release_stage,
            "type": release.app_type,
        },
        "device": {"hostname": release.hostname, "runtimeVersions": runtime_versions()},
        "sessionCounts": [
            {"startedAt": minute, "sessionsStarted": n} for minute, n in sorted(buckets.items())
        ],
    }


def session_bodies(
    release: Release, buckets: dict[str, int], limit: int = MAX_BODY_BYTES
) -> list[tuple[dict[str, int], bytes]]:
    """The encoded payloads for *buckets*, each under *limit* bytes, with the buckets each carries.

    BugSnag refuses bodies over its limit, and a backlog (18 days of minute buckets) is one.

    A backlog of any age goes out whole: the minutes are split across as many bodies as it
    takes (an entry is ~60 bytes, so one body carries some 16,000 minutes).
    """
    minutes = sorted(buckets)
    out: list[tuple[dict[str, int], bytes]] = []
    start, size = 0, max(len(minutes), 1)
    while start < len(minutes) or not out:
        chunk = {m: buckets[m] for m in minutes[start : start + size]}
        body = json.dumps(session_payload(release, chunk), separators=(",", ":")).encode()
        if len(body) > limit and size > 1:
            size = max(1, size * limit // len(body) * 9 // 10)  # shrink, and try again
            continue
        out.append((chunk, body))
        start += size
        if not minutes:
            break
    return out


def counts_message(pending: PendingCounts, unknown: int = 0, lost_events: int = 0) -> dict[str, object]:
    """The broker message for *pending* (one per flush of a process).

    *unknown*: these counts were sent once already with no answer (see ``transport/outcome.py``).
    *lost_events*: events the process lost since its last flush, for the delivery run to count.
    Each message gets a new random id; a copy is the same body published again.
    """
    groups: list[dict[str, object]] = []
    for release, buckets in pending.items():
        group: dict[str, object] = {"release": list(release[:4]), "counts": buckets}
        if release.identity:
            group["identity"] = release.identity
        groups.append(group)
    message: dict[str, object] = {
        "v": 1, "id": os.urandom(8).hex(), "pid": os.getpid(), "at": round(time.time(), 3),
        "groups": groups,
    }  # fmt: skip
    if unknown:
        message["unknown"] = unknown
    if lost_events:
        message["lost_events"] = lost_events
    return message


def counts_messages(
    pending: PendingCounts, limit: int, unknown: int = 0, lost_events: int = 0
) -> list[tuple[PendingCounts, bytes]]:
    """*pending* as broker messages of at most *limit* bytes of JSON each, with the counts
    each carries (*lost_events* in the first): one message, unless the counts are too many
    for the broker (a day of minute buckets of several release groups: 250 kB, and SQS
    takes 146 kB of JSON), then split by minute entries."""
    entries = [(release, minute, n) for release, buckets in pending.items() for minute, n in buckets.items()]
    out: list[tuple[PendingCounts, bytes]] = []

    def split(part: list[tuple[Release, str, int]], lost: int) -> None:
        counts: PendingCounts = {}
        for release, minute, n in part:
            counts.setdefault(release, {})[minute] = n
        body = json.dumps(
            counts_message(counts, unknown, lost), separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        if len(body) <= limit or len(part) <= 1:
            out.append((counts, body))
            return
        half = len(part) // 2
        split(part[:half], lost)
        split(part[half:], 0)

    split(entries, lost_events)
    return out


class MessageCounts(NamedTuple):
    """What :func:`counts_from_message` read from one broker message."""

    counts: PendingCounts  # what can be delivered, future minutes filed under the reader's
    unknown: int  # the unknown-outcome mark (see ``transport/outcome.py``)
    unreadable: int  # entries whose count or minute could not be read: dropped, sessions unknown
    too_far_ahead: int  # sessions in minutes over MAX_AHEAD_MINUTES ahead: dropped
    refiled: int  # sessions in minutes ahead of the reader's: filed under its current minute
    ahead_minutes: int  # the most minutes ahead of those refiled (0: none)
    lost_events: int = 0  # events the writing process lost (refused, unanswered twice, not spooled)
    message_id: str = ""  # "": none (a message of an earlier version), never a copy of another


def counts_from_message(body: Any, now_minute: int | None = None) -> MessageCounts:
    """The counts a broker message holds, read against the clock rule (module docstring).

    Raises ``ValueError``/``KeyError``/``TypeError`` if the message's shape is wrong. Entries
    of the right shape but impossible values -- a count that is not a positive integer
    below :data:`MAX_COUNT`, a minute that does not parse -- are dropped and counted, so
    one bad entry costs only itself; so are the sessions of a minute too far ahead.
    """
    now = int(time.time()) // 60 if now_minute is None else now_minute
    current = minute_iso(now)
    pending: PendingCounts = {}
    unreadable = too_far = refiled = ahead_most = 0
    unknown, lost = body.get("unknown", 0), body.get("lost_events", 0)
    for mark in (unknown, lost):
        if not isinstance(mark, int) or isinstance(mark, bool) or not 0 <= mark <= MAX_COUNT:
            raise ValueError("bad unknown mark or lost-event count")
    for row in body["groups"]:
        # four values (what counts_message writes); five from a list(Release) built by hand
        version, stage, app_type, hostname, *rest = row["release"]
        identity = row.get("identity", rest[0] if rest else "")
        if len(rest) > 1 or not isinstance(identity, str):
            raise ValueError("bad release or identity")
        release = Release(version, str(stage), str(app_type), str(hostname), identity)
        buckets = pending.setdefault(release, {})
        for minute, n in row["counts"].items():
            try:
                if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= MAX_COUNT:
                    raise ValueError(f"bad count {n!r}")
                ahead = minute_from_iso(minute) - now
            except (ValueError, TypeError):
                unreadable += 1
                continue
            if ahead > MAX_AHEAD_MINUTES:
                too_far += n
                continue
            if ahead > 0:
                refiled += n
                ahead_most = max(ahead_most, ahead)
                minute = current
            buckets[minute] = buckets.get(minute, 0) + n
        if not buckets:
            del pending[release]
    message_id = body.get("id", "")
    if not isinstance(message_id, str):
        raise ValueError("bad message id")
    return MessageCounts(pending, unknown, unreadable, too_far, refiled, ahead_most, lost, message_id)
