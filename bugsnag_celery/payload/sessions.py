"""Session counts on the wire: the v1.0 session payload, and the broker message that carries counts.

Pure functions, like the rest of the payload layer. The broker message is ours (JSON,
versioned ``"v": 1``); reading one validates every count and stamp, because whatever
is on the broker may have been written by another version, or by somebody else.
"""

from __future__ import annotations

import os
from typing import Any

from ..about import notifier_info, runtime_versions
from ..clock import minute_from_iso
from ..sessions.counts import PendingCounts, Release

__all__ = ["session_payload", "counts_message", "counts_from_message"]


def session_payload(release: Release, buckets: dict[str, int]) -> dict[str, Any]:
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


def counts_message(pending: PendingCounts) -> dict[str, Any]:
    """The broker message for *pending* (one per flush of a process)."""
    groups = [{"release": list(release), "counts": buckets} for release, buckets in pending.items()]
    return {"v": 1, "pid": os.getpid(), "groups": groups}


def counts_from_message(body: Any) -> PendingCounts:
    """The counts a broker message holds; raises ``ValueError``/``KeyError``/``TypeError`` if malformed."""
    pending: PendingCounts = {}
    for row in body["groups"]:
        version, stage, app_type, hostname = row["release"]
        release = Release(version, str(stage), str(app_type), str(hostname))
        buckets = pending.setdefault(release, {})
        for minute, n in row["counts"].items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"bad count {n!r}")
            minute_from_iso(minute)  # validates the stamp
            buckets[minute] = buckets.get(minute, 0) + n
    return pending
