"""Reading the timestamps senders write, for the collector's checks and its figures.

Why not ``datetime.fromisoformat``: before Python 3.11 it refuses a ``Z``, and it takes
forms no notifier sends (week dates, ordinal dates). And why a parser at all, not a
pattern: ``9999-99-99T99:99:00Z`` matches any pattern of digits, and the figures must never
meet a time that does not exist. BugSnag's notifiers write ISO-8601 / RFC 3339 times, with
``Z``, with an offset, or -- the official Python notifier -- with no zone at all (UTC):
``2026-11-27T23:40:00``. Every such time is read here as UTC.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = ["parse_time", "utc_text", "minute_key"]

_STAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?(Z|z|[+-]\d{2}:?\d{2})?",
    re.ASCII,
)


def parse_time(value: object) -> datetime | None:
    """The moment *value* names, in UTC; None for anything that is not an existing moment.

    Takes the text of a ``Bugsnag-Sent-At`` header, a ``startedAt`` or a stored row; never
    raises (a stored row can hold anything).
    """
    if not isinstance(value, str) or len(value) > 40:
        return None
    found = _STAMP.fullmatch(value)
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = found.groups()
    try:
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro)
        if zone and zone not in ("Z", "z"):
            hours, minutes = int(zone[1:3]), int(zone[-2:])
            if hours > 23 or minutes > 59:
                return None
            offset = timedelta(hours=hours, minutes=minutes)
            moment = moment - offset if zone[0] == "+" else moment + offset
    except (ValueError, OverflowError):  # no such day or hour; or out of datetime's range once in UTC
        return None
    return moment.replace(tzinfo=timezone.utc)


def utc_text(moment: datetime) -> str:
    """``2026-11-27T23:40:00Z``: how the collector stores a time it accepted (one form, UTC)."""
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    return f"{text}.{moment.microsecond:06d}Z" if moment.microsecond else f"{text}Z"


def minute_key(value: object) -> str | None:
    """``2026-11-27T23:40``: the UTC minute bucket of a time, or None when it is not a time."""
    moment = parse_time(value)
    if moment is None:
        return None
    return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}"
