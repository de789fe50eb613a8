"""The collector's checks on the way in: what BugSnag refuses is refused, with the reason.

Every refusal is answered with BugSnag's status and the reason in the body, and written as
exactly one line on the collector's log; nothing refused is stored. What BugSnag takes --
times without a zone, with an offset, a legacy body-only API key -- is taken, and filed in
UTC. Figures stay exact past 2^63 and the page keeps answering.

Covers: bugsnag_celery/tools/collector/wire.py, bugsnag_celery/tools/collector/times.py
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bugsnag_celery.tools.collector import Collector

KEY = "a35a2a72bd230ac0aa0f52715bbdc6aa"
NOTIFIER = {"name": "n", "version": "1", "url": "u"}
SESSIONS = {
    "notifier": NOTIFIER,
    "app": {"version": "1", "releaseStage": "p"},
    "device": {"hostname": "h"},
    "sessionCounts": [{"startedAt": "2026-01-01T00:00:00Z", "sessionsStarted": 3}],
}
EVENT = {
    "exceptions": [{"errorClass": "KeyError", "message": "'b'"}],
    "severity": "error",
    "unhandled": True,
    "context": "t",
    "app": {"version": "1", "releaseStage": "p"},
    "session": {"id": "s1", "startedAt": "2026-01-01T00:00:00Z", "events": {"handled": 0, "unhandled": 1}},
}
EVENTS = {"apiKey": KEY, "payloadVersion": "4.0", "notifier": NOTIFIER, "events": [EVENT]}


class Logged:
    """A collector and the lines it logged."""

    def __init__(self, collector: Collector, lines: list[str]) -> None:
        self.collector, self.lines = collector, lines
        self.url = collector.url


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Logged]:
    lines: list[str] = []
    collector = Collector(port=0, db=str(tmp_path / "wire.sqlite"), log=lines.append).start()
    try:
        yield Logged(collector, lines)
    finally:
        collector.close()


def headers(version: str = "4.0", /, **over: str | None) -> dict[str, str]:
    base = {"Content-Type": "application/json", "Bugsnag-Api-Key": KEY, "Bugsnag-Payload-Version": version,
            "Bugsnag-Sent-At": "2026-01-01T00:00:05.123Z"}  # fmt: skip
    merged = {**base, **over}
    return {k: v for k, v in merged.items() if v is not None}


def post(url: str, body: Any, hdrs: dict[str, str]) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url, data=data, headers=hdrs, timeout=10)


def changed(body: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copied = copy.deepcopy(body)
    edit(copied)
    return copied


def _count(n: Any) -> Callable[[dict[str, Any]], None]:
    return lambda b: b["sessionCounts"][0].update(sessionsStarted=n)


def _started(t: Any) -> Callable[[dict[str, Any]], None]:
    return lambda b: b["sessionCounts"][0].update(startedAt=t)


REFUSED: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    # (case, endpoint, body, headers, status, a part of the reason)
    ("started 9999-99-99", "sessions", changed(SESSIONS, _started("9999-99-99T99:99:00Z")), headers("1.0"),
     400, "sessionCounts[0].startedAt '9999-99-99T99:99:00Z' is not an ISO-8601 time"),
    ("started Feb 30", "sessions", changed(SESSIONS, _started("2026-02-30T00:00:00Z")), headers("1.0"),
     400, "is not an ISO-8601 time"),
    ("started not text", "sessions", changed(SESSIONS, _started(1700000000)), headers("1.0"),
     400, "is not an ISO-8601 time"),
    ("negative count", "sessions", changed(SESSIONS, _count(-95)), headers("1.0"), 400,
     "sessionsStarted -95 is negative"),
    ("count past 64 bits", "sessions", changed(SESSIONS, _count(2**63)), headers("1.0"), 400,
     "does not fit in 64 bits"),
    ("count true", "sessions", changed(SESSIONS, _count(True)), headers("1.0"), 400, "is not a whole number"),
    ("count 1.5", "sessions", changed(SESSIONS, _count(1.5)), headers("1.0"), 400, "is not a whole number"),
    ("count missing", "sessions", changed(SESSIONS, lambda b: b["sessionCounts"][0].pop("sessionsStarted")),
     headers("1.0"), 400, "needs startedAt and sessionsStarted"),
    ("session version 2.0", "sessions", SESSIONS, headers("2.0"), 400, "Bugsnag-Payload-Version must be"),
    ("no key on sessions", "sessions", SESSIONS, headers("1.0", **{"Bugsnag-Api-Key": None}), 401,
     "Bugsnag-Api-Key is missing"),
    ("event session start garbage", "notify",
     changed(EVENTS, lambda b: b["events"][0]["session"].update(startedAt="garbage")), headers(), 400,
     "events[0].session.startedAt 'garbage' is not an ISO-8601 time"),
    ("event version 1.0", "notify", EVENTS, headers("1.0"), 400, "Bugsnag-Payload-Version must be 4.0"),
    ("sent-at yesterday", "notify", EVENTS, headers(**{"Bugsnag-Sent-At": "yesterday"}), 400,
     "Bugsnag-Sent-At 'yesterday' is not an ISO-8601 time"),
    ("sent-at hour 25", "notify", EVENTS, headers(**{"Bugsnag-Sent-At": "2026-01-01T25:00:00Z"}), 400,
     "is not an ISO-8601 time"),
    ("key malformed", "notify", EVENTS, headers(**{"Bugsnag-Api-Key": "nope"}), 401, "32 hexadecimal"),
    ("keys disagree", "notify", changed(EVENTS, lambda b: b.update(apiKey="b" * 32)), headers(), 400,
     "apiKey differs"),
    ("NaN", "notify", json.dumps(changed(EVENTS, lambda b: b.update(x=float("nan")))).encode(), headers(),
     400, "NaN is not JSON"),
    ("not UTF-8", "notify", json.dumps(EVENTS).replace("KeyError", "Key\u00e9rror").encode("latin-1"),
     headers(), 400, "body is not UTF-8"),
    ("deeply nested", "notify", b"[" * 100_000 + b"]" * 100_000, headers(), 400, "nested too deeply"),
    ("not an object", "notify", b"[]", headers(), 400, "body is not a JSON object"),
    ("empty", "notify", b"", headers(), 400, "the body is empty"),
    ("bad severity", "notify", changed(EVENTS, lambda b: b["events"][0].update(severity="fatal")), headers(),
     400, "severity 'fatal'"),
    ("unknown path", "elsewhere", EVENTS, headers(), 404, "no such endpoint"),
]  # fmt: skip


@pytest.mark.parametrize(("endpoint", "body", "hdrs", "status", "reason"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])  # fmt: skip
def test_a_refusal_has_bugsnags_status_its_reason_and_one_log_line(
    logged: Logged, endpoint: str, body: Any, hdrs: dict[str, str], status: int, reason: str
) -> None:
    response = post(f"{logged.url}/{endpoint}", body, hdrs)
    assert response.status_code == status
    assert reason in response.json()["status"]
    (line,) = logged.lines
    assert f"refused POST /{endpoint} HTTP/1.1 from 127.0.0.1 ({status}): " in line and reason in line
    assert logged.collector.releases() == [] and logged.collector.events() == []
    assert requests.get(f"{logged.url}/", timeout=10).status_code == 200


ACCEPTED_TIMES = [
    ("2026-11-27T23:40:00", "2026-11-27T23:40"),  # the official notifier: no zone (UTC)
    ("2026-11-27T23:40:59.999999Z", "2026-11-27T23:40"),
    ("2026-11-28T01:40:00+02:00", "2026-11-27T23:40"),  # an offset is taken into account
    ("2026-11-27T18:10:00-0530", "2026-11-27T23:40"),
    ("2026-11-27T23:40Z", "2026-11-27T23:40"),
]


@pytest.mark.parametrize(("started", "minute"), ACCEPTED_TIMES)
def test_times_bugsnag_takes_are_taken_and_filed_in_utc(logged: Logged, started: str, minute: str) -> None:
    body = changed(SESSIONS, _started(started))
    sent_at = {"Bugsnag-Sent-At": "2026-11-27T23:40:36"}  # as the official notifier sends it
    assert post(f"{logged.url}/sessions", body, headers("1.0", **sent_at)).status_code == 202
    event = changed(EVENTS, lambda b: b["events"][0]["session"].update(startedAt=started))
    assert post(f"{logged.url}/notify", event, headers(**sent_at)).status_code == 200
    assert logged.collector.minutes("1", "p") == [{"minute": minute, "sessions": 3, "crashedSessions": 1}]
    assert logged.lines == []


def test_other_forms_bugsnag_takes(logged: Logged) -> None:
    """Sessions sent as payload version 4.0 (the official notifier), events as ``4``, a
    legacy event with its key in the body only, an event with the stage at its top."""
    assert post(f"{logged.url}/sessions", SESSIONS, headers("4.0")).status_code == 202
    assert post(f"{logged.url}/notify", EVENTS, headers("4")).status_code == 200
    assert post(f"{logged.url}/notify", EVENTS, headers(**{"Bugsnag-Api-Key": None})).status_code == 200
    top = changed(EVENTS, lambda b: b["events"][0].update(app={"version": "1"}, releaseStage="p"))
    assert post(f"{logged.url}/notify", top, headers()).status_code == 200
    numeric = changed(SESSIONS, lambda b: b["app"].update(version=1))  # a number: the same release "1"
    assert post(f"{logged.url}/sessions", numeric, headers("1.0")).status_code == 202
    assert logged.lines == []
    untyped = {"appType": None, "sessions": 6, "crashedSessions": 1, "stability": 83.33}
    assert logged.collector.releases() == [{"appVersion": "1", "releaseStage": "p", "sessions": 6,
                                            "crashedSessions": 1, "stability": 83.33,
                                            "appTypes": [untyped]}]  # fmt: skip
    assert [e["releaseStage"] for e in logged.collector.events()] == ["p", "p", "p"]


def test_counts_summing_past_2_to_the_63_stay_exact(logged: Logged) -> None:
    """Each count fits in 64 bits, their sum does not: SQLite's sum() would raise; the
    figures are exact and the page and the API answer."""
    biggest = 2**63 - 1
    for _ in range(2):
        assert (
            post(f"{logged.url}/sessions", changed(SESSIONS, _count(biggest)), headers("1.0")).status_code
            == 202
        )
    page = requests.get(f"{logged.url}/", timeout=10)
    assert page.status_code == 200 and str(2 * biggest) in page.text
    releases = requests.get(f"{logged.url}/api/releases", timeout=10)
    assert releases.status_code == 200 and releases.json()[0]["sessions"] == 2 * biggest


def test_the_page_lists_the_refused_requests_and_why(logged: Logged) -> None:
    post(f"{logged.url}/sessions", changed(SESSIONS, _count(-95)), headers("1.0"))
    page = requests.get(f"{logged.url}/", timeout=10).text
    assert "id='rejected'" in page and "POST /sessions HTTP/1.1" in page
    assert "sessionCounts[0]: sessionsStarted -95 is negative" in page
    assert "sessions: -95" not in page and ">-95<" not in page  # never filed


def test_the_default_log_is_one_line_on_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    collector = Collector(port=0, db=str(tmp_path / "stderr.sqlite")).start()
    try:
        post(f"{collector.url}/sessions", changed(SESSIONS, _count(-95)), headers("1.0"))
    finally:
        collector.close()
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and "bugsnag-celery collector: refused POST /sessions" in err[0], err
    assert err[0].endswith("(400): sessionCounts[0]: sessionsStarted -95 is negative")
