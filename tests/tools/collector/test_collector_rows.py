"""Rows an older collector let through, or a hand wrote: the page and the API still answer.

The SQLite file outlives the code that wrote it. Before the checks on the way in, a
``startedAt`` of ``9999-99-99T99:99:00Z``, a count of -95 or counts summing past 2^63 were
stored, and from then on ``GET /`` answered 500, also after a restart. Here such rows are
written straight into the file with sqlite3; the collector must show what it can, say which
rows it cannot read, and never answer 500 -- before and after a restart.

Covers: bugsnag_celery/tools/collector/store.py, bugsnag_celery/tools/collector/page.py
Covers: bugsnag_celery/tools/collector/api.py
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import requests

from bugsnag_celery.tools.collector import Collector

BIG = 2**63 - 1
SESSION_ROWS = [  # (started_at, count): what older versions stored, and worse
    ("2026-01-01T00:00:00Z", 4),  # good
    ("2026-01-01T00:00:00Z", BIG),  # good, and with the next one the sum passes 2^63
    ("2026-01-01T00:01:00Z", BIG),
    ("9999-99-99T99:99:00Z", 5),  # the time does not exist
    ("2026-01-01T00:00:00Z", -95),  # negative
    ("2026-01-01T00:00:00Z", "abc"),  # not a number
    ("2026-01-01T00:00:00Z", 1.5),
    (None, 3),  # no time
    ("0001-01-01T00:00:00Z", 2),  # the first minute there is
]
UNREADABLE_SESSION_ROWS = 5


def write_old_rows(db: str) -> dict[str, int]:
    """Create the file as the collector does, then add rows behind its back; the events' ids."""
    Collector(port=0, db=db).server.server_close()  # the schema, nothing served
    ids = {}
    with sqlite3.connect(db) as conn:
        for started, count in SESSION_ROWS:
            conn.execute(
                "insert into sessions (app_version, release_stage, started_at, count, received)"
                " values ('1.0', 'old', ?, ?, 0)",
                (started, count),
            )
        # a release whose latest minute is the first there is: the chart has no minute before it
        conn.execute(
            "insert into sessions (app_version, release_stage, started_at, count, received)"
            " values ('0.1', 'first', '0001-01-01T00:00:00Z', 1, 0)"
        )
        events = {
            "garbage start": ("'E'", "'t'", "'m'", "1", "'s1'", "'{\"a\": 1}'", "'9999-99-99T99:99:00Z'"),
            "not json": ("'E'", "'t'", "'m'", "1", "'s2'", "'not json {'", "'2026-01-01T00:00:00Z'"),
            "nan payload": ("'E'", "'t'", "'m'", "0", "null", '\'{"x": NaN, "y": Infinity}\'', "null"),
            "nulls": ("null", "null", "null", "'x'", "null", "null", "null"),
            "blob": ("x'ff00'", "x'00'", "x'41'", "0", "null", "'[1, 2]'", "null"),
        }
        for name, (cls, ctx, msg, unhandled, session, payload, started) in events.items():
            cursor = conn.execute(
                "insert into events (app_version, release_stage, error_class, context, message, unhandled,"
                f" severity, session_id, payload, received, session_started) values ('1.0', 'old', {cls},"
                f" {ctx}, {msg}, {unhandled}, 'error', {session}, {payload}, 0, {started})"
            )
            ids[name] = int(cursor.lastrowid or 0)
    return ids


def check(url: str, ids: dict[str, int]) -> None:
    page = requests.get(f"{url}/", timeout=10)
    assert page.status_code == 200, page.text[-2000:]
    text = page.text
    assert "Not shown:" not in text  # every part was drawn, none fell back
    assert f"{UNREADABLE_SESSION_ROWS + 1} stored row(s) could not be read" in text
    assert "session row 4: startedAt &#x27;9999-99-99T99:99:00Z&#x27; is not a time" in text
    assert "session row 5: sessionsStarted -95 is negative" in text
    assert "its session&#x27;s startedAt &#x27;9999-99-99T99:99:00Z&#x27; is not a time" in text
    assert "(no error class)" in text and "(no task)" in text and ">None<" not in text
    assert "data-version='0.1' data-stage='first'" in text  # its chart starts at year 1's first minute

    first, release = requests.get(f"{url}/api/releases", timeout=10).json()
    assert first == {"appVersion": "0.1", "releaseStage": "first", "sessions": 1, "crashedSessions": 0,
                     "stability": 100.0, "appTypes": [{"appType": None, "sessions": 1, "crashedSessions": 0,
                                                       "stability": 100.0}]}  # fmt: skip
    total = 4 + 2 * BIG + 2
    assert release == {"appVersion": "1.0", "releaseStage": "old", "sessions": total,
                       "crashedSessions": 2, "stability": 100.0,
                       "appTypes": [{"appType": None, "sessions": total, "crashedSessions": 2,
                                     "stability": 100.0}],
                       "unreadableRows": UNREADABLE_SESSION_ROWS + 1}  # fmt: skip

    events = requests.get(f"{url}/api/events", timeout=10)
    assert events.status_code == 200 and len(events.json()) == len(ids)
    bad = requests.get(f"{url}/api/events/{ids['not json']}", timeout=10)
    assert bad.status_code == 200
    assert bad.json() == {"id": ids["not json"], "unreadable": "the stored payload is not a JSON object",
                          "stored": "not json {"}  # fmt: skip
    nan = requests.get(f"{url}/api/events/{ids['nan payload']}", timeout=10)
    assert nan.status_code == 200 and nan.json() == {"x": "nan", "y": "inf"}  # strict JSON, no NaN
    assert requests.get(f"{url}/api/events/{ids['nulls']}", timeout=10).json()["unreadable"]
    assert requests.get(f"{url}/api/events/{ids['blob']}", timeout=10).json()["unreadable"]


def test_bad_rows_are_shown_as_such_never_a_500(tmp_path: Path) -> None:
    db = str(tmp_path / "old.sqlite")
    ids = write_old_rows(db)
    for _ in range(2):  # and again after a restart
        collector = Collector(port=0, db=db, log=lambda line: None).start()
        try:
            check(collector.url, ids)
        finally:
            collector.close()


def test_figures_leave_out_what_they_cannot_read(tmp_path: Path) -> None:
    db = str(tmp_path / "old.sqlite")
    write_old_rows(db)
    collector = Collector(port=0, db=db)
    try:
        assert collector.minutes("1.0", "old") == [
            {"minute": "0001-01-01T00:00", "sessions": 2, "crashedSessions": 0},
            {"minute": "2026-01-01T00:00", "sessions": 4 + BIG, "crashedSessions": 1},
            {"minute": "2026-01-01T00:01", "sessions": BIG, "crashedSessions": 0},
        ]
        rows, total = collector.unreadable("1.0", "old")
        assert total == len(rows) == UNREADABLE_SESSION_ROWS + 1
        json.dumps(collector.top_errors("1.0", "old"), default=repr)  # readable whatever the cells hold
    finally:
        collector.server.server_close()
        collector.close_db()
