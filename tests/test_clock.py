"""Timestamps as BugSnag reads them, exactly as ``datetime`` formats them.

Covers: bugsnag_celery/clock.py
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(st.floats(min_value=0, max_value=4e9), st.integers(0, 4_000_000_000).map(lambda s: s + 0.0005))
)
def test_timestamps_read_exactly_as_datetime_formats_them(epoch: float) -> None:
    """clock.format_timestamp caches the text up to the second: every stamp must still be
    datetime's own (its rounding to the microsecond included)."""
    import datetime as dt

    from bugsnag_celery.clock import format_timestamp

    moment = dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)
    want = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    assert format_timestamp(epoch) == want
    assert format_timestamp(epoch) == want  # the cached path
