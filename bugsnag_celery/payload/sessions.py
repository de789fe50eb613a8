"""Session counts on the wire: the v1.0 session payload, and the broker message that carries counts.

Pure functions, like the rest of the payload layer. The broker message is ours (JSON,
versioned ``"v": 1``); reading one validates every count and stamp, because whatever
is on the broker may have been written by another version, or by somebody else.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ..about import notifier_info, runtime_versions
from ..clock import minute_from_iso
from ..sessions.counts import PendingCounts, Release
from .wire import MAX_BODY_BYTES

__all__ = ["session_payload", "session_bodies", "counts_message", "counts_from_message", "MAX_COUNT"]

#: No process starts more sessions than this in one minute: anything above is garbage.
MAX_COUNT = 10**9
#: How far in the future a minute may be (clocks of other hosts drift a little).
MAX_SKEW_MINUTES = 5


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


def counts_message(pending: PendingCounts, unknown: int = 0) -> dict[str, object]:
    """The broker message for *pending* (one per flush of a process).

    *unknown*: these counts were sent once already with no answer (see ``transport/outcome.py``).
    """
    groups = [{"release": list(release), "counts": buckets} for release, buckets in pending.items()]
    message: dict[str, object] = {"v": 1, "pid": os.getpid(), "at": round(time.time(), 3), "groups": groups}
    if unknown:
        message["unknown"] = unknown
    return message


def counts_from_message(body: Any, now_minute: int | None = None) -> tuple[PendingCounts, int, int]:
    """The counts a broker message holds: ``(counts, entries dropped, unknown mark)``.

    Raises ``ValueError``/``KeyError``/``TypeError`` if the message's shape is wrong. Entries
    of the right shape but impossible values -- a count that is not a positive integer
    below :data:`MAX_COUNT`, a minute that does not parse or lies in the future -- are
    dropped and counted, so one bad entry costs only itself.
    """
    latest = (int(time.time()) // 60 if now_minute is None else now_minute) + MAX_SKEW_MINUTES
    pending: PendingCounts = {}
    dropped = 0
    unknown = body.get("unknown", 0)
    if not isinstance(unknown, int) or isinstance(unknown, bool):
        raise ValueError("bad unknown mark")
    for row in body["groups"]:
        version, stage, app_type, hostname = row["release"]
        release = Release(version, str(stage), str(app_type), str(hostname))
        buckets = pending.setdefault(release, {})
        for minute, n in row["counts"].items():
            try:
                if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= MAX_COUNT:
                    raise ValueError(f"bad count {n!r}")
                if minute_from_iso(minute) > latest:
                    raise ValueError(f"minute in the future: {minute!r}")
            except (ValueError, TypeError):
                dropped += 1
                continue
            buckets[minute] = buckets.get(minute, 0) + n
        if not buckets:
            del pending[release]
    return pending, dropped, unknown
