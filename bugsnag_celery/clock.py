"""Time as BugSnag reads it: one formatter for every timestamp the package writes.

``Bugsnag-Sent-At``, an event's ``device.time``, a session's ``startedAt``, a minute
bucket's ``startedAt`` and the delivery status all use these, so that no two places can
disagree on the format (UTC, ``Z``, milliseconds where BugSnag's notifiers send them).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

__all__ = ["format_timestamp", "now_iso", "minute_iso", "minute_from_iso"]


def format_timestamp(epoch: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as BugSnag's own notifiers send it."""
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now_iso() -> str:
    """The current time, formatted by :func:`format_timestamp`."""
    return format_timestamp(time.time())


def minute_iso(minute: int) -> str:
    """``28123456`` (minutes since the epoch) -> ``"2023-06-21T10:16:00Z"``: a bucket's ``startedAt``."""
    return datetime.fromtimestamp(minute * 60, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:00Z")


def minute_from_iso(text: str) -> int:
    """The inverse of :func:`minute_iso`; raises ``ValueError`` for anything else."""
    stamp = datetime.strptime(text, "%Y-%m-%dT%H:%M:00Z").replace(tzinfo=timezone.utc)
    return int(stamp.timestamp()) // 60
