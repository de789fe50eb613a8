"""Time as BugSnag reads it: one formatter for every timestamp the package writes.

``Bugsnag-Sent-At``, an event's ``device.time``, a session's ``startedAt``, a minute
bucket's ``startedAt`` and the delivery status all use these, so that no two places can
disagree on the format (UTC, ``Z``, milliseconds where BugSnag's notifiers send them).
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any

__all__ = ["format_timestamp", "parse_timestamp", "now_iso", "minute_iso", "minute_from_iso"]


_last_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def format_timestamp(epoch: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as BugSnag's own notifiers send it.

    The text up to the second is kept for the next call (an error storm formats two stamps
    per failure, mostly within the same second); rounding is ``datetime``'s (to the
    microsecond), so a stamp reads exactly as it did when each call built a datetime.
    """
    frac, whole = math.modf(epoch)  # datetime.fromtimestamp's own split and rounding
    micro = round(frac * 1e6)
    second = int(whole)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    elif micro < 0:
        second, micro = second - 1, micro + 1_000_000
    cached = _last_second
    if cached[0] != second:
        text = datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
        cached[0], cached[1] = second, text  # two stores; a race only re-formats
    else:
        text = cached[1]
    if cached[0] != second:  # another thread moved it between the test and the read
        text = datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{text}{micro // 1000:03d}Z"


def parse_timestamp(text: object) -> float | None:
    """The epoch time of the :func:`format_timestamp` stamp that *text* starts with; None if
    it starts with none. The delivery status keeps its times as such text (``last_delivery``,
    ``last_error``'s ``"<stamp>: why"``): ``celery bugsnag status`` turns them into ages."""
    if not isinstance(text, str) or len(text) < 24:
        return None
    try:
        stamp = datetime.strptime(text[:24], "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return stamp.replace(tzinfo=timezone.utc).timestamp()


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
