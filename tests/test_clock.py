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


@settings(max_examples=1000, deadline=None)
@given(st.floats(min_value=0, max_value=4e9), st.sampled_from(["", ": BugSnag unreachable", "Z"]))
def test_a_stamp_reads_back_to_its_millisecond_whatever_follows_it(epoch: float, tail: str) -> None:
    """``celery bugsnag status`` turns the stamps the status keeps (``last_delivery``, and the
    ``"<stamp>: why"`` of ``last_error``) back into times, to say how long ago they were."""
    from bugsnag_celery.clock import format_timestamp, parse_timestamp

    stamp = format_timestamp(epoch)
    back = parse_timestamp(stamp + tail)
    assert back is not None and format_timestamp(back) == stamp and abs(back - epoch) < 0.001


def test_what_starts_with_no_stamp_reads_as_none() -> None:
    from bugsnag_celery.clock import parse_timestamp

    for text in (None, 12.5, "", "never", "2026-01-01T00:00:00Z: a bucket", "2026-13-01T00:00:00.000Z"):
        assert parse_timestamp(text) is None, text
