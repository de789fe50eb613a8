"""A local BugSnag-compatible collector: accepts event and session payloads as BugSnag does.

It checks every request against the wire rules (``shared/reference/bugsnag-wire.md``):
exact ``Content-Type``, a 32-hex ``Bugsnag-Api-Key`` (401 otherwise), the payload version
header matching the body (``4.0`` events, ``1.0`` sessions), ``Bugsnag-Sent-At`` in ISO-8601,
``Bugsnag-Integrity`` when sent, the required fields, and the 1 MB limit (400, as BugSnag
answers -- not 413). What it accepts goes to SQLite, so nothing is lost across restarts.

Routes, on the main port: ``POST /notify`` and ``POST /`` take events (as
notify.bugsnag.com does), ``POST /sessions`` takes sessions. On the optional second port
(``sessions_port``, like an on-premise install's 49003) ``POST /`` takes sessions, as
sessions.bugsnag.com does. ``GET /`` is the page (see :mod:`.collector_page`);
``GET /api/releases``, ``GET /api/events`` (``?task=``, ``?errorClass=``) and
``GET /api/events/<id>`` (the event exactly as received) give the same as JSON.

Faults can be injected for testing: ``fail_status`` (answer every POST with that status)
and ``delay`` (seconds before answering).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Collector", "validate"]

MAX_BYTES = 1_000_000
_KEY = re.compile(r"[0-9a-fA-F]{32}")
_SENT_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:[\d.]+(Z|[+-]\d{2}:\d{2})?$")
_SCHEMA = """
create table if not exists sessions (
    id integer primary key, app_version text, release_stage text, app_type text, hostname text,
    started_at text, count integer, received real);
create table if not exists events (
    id integer primary key, app_version text, release_stage text, context text, error_class text,
    message text, unhandled integer, severity text, session_id text, payload text, received real,
    session_started text);
"""


def validate(kind: str, headers: Any, raw: bytes) -> tuple[int, str, dict[str, Any] | None]:
    """(status, reason, body) for a request to the ``"notify"`` or ``"sessions"`` endpoint,
    as BugSnag would answer it. *body* is None unless the payload is accepted."""
    if len(raw) > MAX_BYTES:
        return 400, f"payload of {len(raw)} bytes is over the 1 MB limit", None
    if headers.get("Content-Type") != "application/json":
        return 400, "Content-Type must be exactly application/json", None
    if not _KEY.fullmatch(headers.get("Bugsnag-Api-Key") or ""):
        return 401, "Bugsnag-Api-Key is not 32 hexadecimal characters", None
    version = "1.0" if kind == "sessions" else "4.0"
    if headers.get("Bugsnag-Payload-Version") != version:
        return 400, f"Bugsnag-Payload-Version must be {version}", None
    if not _SENT_AT.match(headers.get("Bugsnag-Sent-At") or ""):
        return 400, "Bugsnag-Sent-At is not an ISO-8601 time", None
    integrity = headers.get("Bugsnag-Integrity")
    if integrity is not None and integrity != f"sha1 {hashlib.sha1(raw).hexdigest()}":
        return 400, "Bugsnag-Integrity does not match the body", None
    try:
        body = json.loads(raw)
    except ValueError:
        return 400, "body is not JSON", None
    if not isinstance(body, dict):
        return 400, "body is not a JSON object", None
    notifier = body.get("notifier")
    if not isinstance(notifier, dict) or not all(notifier.get(k) for k in ("name", "version", "url")):
        return 400, "notifier needs name, version and url", None
    problem = _session_problem(body) if kind == "sessions" else _event_problem(body, headers)
    if problem:
        return 400, problem, None
    return (202, "accepted", body) if kind == "sessions" else (200, "ok", body)


def _session_problem(body: dict[str, Any]) -> str | None:
    counts = body.get("sessionCounts")
    if "apiKey" in body or not isinstance(counts, list) or not counts:
        return "a session payload has sessionCounts and no apiKey"
    for row in counts:
        if not isinstance(row, dict) or not isinstance(row.get("sessionsStarted"), int):
            return "every sessionCounts entry needs startedAt and sessionsStarted"
        if not _SENT_AT.match(str(row.get("startedAt", ""))):
            return "sessionCounts startedAt is not an ISO-8601 time"
    if not isinstance(body.get("app"), dict) or not isinstance(body.get("device"), dict):
        return "a session payload needs app and device"
    return None


def _event_problem(body: dict[str, Any], headers: Any) -> str | None:
    if body.get("apiKey") != headers.get("Bugsnag-Api-Key") or body.get("payloadVersion") != "4.0":
        return "apiKey and payloadVersion must match the headers"
    events = body.get("events")
    if not isinstance(events, list) or not events:
        return "events must be a non-empty list"
    for event in events:
        exceptions = event.get("exceptions") if isinstance(event, dict) else None
        if not isinstance(exceptions, list) or not exceptions:
            return "every event needs at least one exception"
        if not all(isinstance(e, dict) and e.get("errorClass") for e in exceptions):
            return "every exception needs an errorClass"
        if event.get("severity") not in ("error", "warning", "info"):
            return "severity must be error, warning or info"
        session = event.get("session")
        if session is not None and not (isinstance(session, dict) and session.get("id")):
            return "an event's session needs an id"
    return None


def _kind(path: str, sessions_port: bool) -> str | None:
    """Which endpoint a POST path means on the main port or on the sessions port."""
    path = urlsplit(path).path.rstrip("/")
    if path == "/sessions":
        return "sessions"
    if path == "/notify":
        return "notify"
    if path == "":
        return "sessions" if sessions_port else "notify"
    return None


def _minute(stamp: Any) -> str:
    """``2026-01-01T12:00:05.123Z`` -> ``2026-01-01T12:00``: the minute bucket of a time."""
    return str(stamp or "")[:16]


class Collector:
    """The server: ``start()`` in threads (tests, the demo) or ``serve_forever()`` (CLI)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9339,
        db: str = ":memory:",
        sessions_port: int | None = None,
    ) -> None:
        self.fail_status: int | None = None
        self.delay = 0.0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._migrate()
        self.server = ThreadingHTTPServer((host, port), self._handler(sessions_port=False))
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.sessions_server: ThreadingHTTPServer | None = None
        self.sessions_url: str | None = None
        if sessions_port is not None:
            handler = self._handler(sessions_port=True)
            self.sessions_server = ThreadingHTTPServer((host, sessions_port), handler)
            self.sessions_server.daemon_threads = True
            self.sessions_url = f"http://{host}:{self.sessions_server.server_address[1]}"

    def _migrate(self) -> None:
        # Databases written by an earlier version lack the events' session start column.
        columns = {row[1] for row in self._db.execute("pragma table_info(events)")}
        if "session_started" not in columns:
            self._db.execute("alter table events add column session_started text")

    def _handler(self, sessions_port: bool) -> type[BaseHTTPRequestHandler]:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if collector.delay:
                    time.sleep(collector.delay)
                kind = _kind(self.path, sessions_port)
                if collector.fail_status is not None:
                    status, reason = collector.fail_status, "injected fault"
                elif kind is None:
                    status, reason = 404, "no such endpoint"
                else:
                    status, reason, body = validate(kind, self.headers, raw)
                    if body is not None:
                        collector.store(kind, body)
                self._answer(status, json.dumps({"status": reason}).encode(), "application/json")

            def do_GET(self) -> None:
                try:
                    answer = collector.get(self.path)
                except Exception as exc:  # a page must never take the server down
                    answer = (500, f"error: {exc}".encode(), "text/plain; charset=utf-8")
                self._answer(*answer)

            def _answer(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def get(self, target: str) -> tuple[int, bytes, str]:
        """(status, body, content type) of a GET: the page or the JSON API."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/")
        data: Any
        if path == "":
            from .collector_page import render

            return 200, render(self).encode(), "text/html; charset=utf-8"
        if path == "/api/releases":
            data = self.releases()
        elif path == "/api/events":
            data = self.events(task=query.get("task"), error_class=query.get("errorClass"))
        elif path.startswith("/api/events/") and path[len("/api/events/") :].isdigit():
            data = self.payload(int(path[len("/api/events/") :]))
            if data is None:
                return 404, b'{"status": "no such event"}', "application/json"
        else:
            return 404, b'{"status": "not found"}', "application/json"
        return 200, json.dumps(data, indent=1).encode(), "application/json"

    def start(self) -> Collector:
        for server in (self.server, self.sessions_server):
            if server is not None:
                threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def serve_forever(self) -> None:
        if self.sessions_server is not None:
            threading.Thread(target=self.sessions_server.serve_forever, daemon=True).start()
        self.server.serve_forever()

    def close(self) -> None:
        for server in (self.server, self.sessions_server):
            if server is not None:
                server.shutdown()
                server.server_close()
        with self._lock:
            self._db.close()

    def store(self, kind: str, body: dict[str, Any]) -> None:
        now = time.time()
        with self._lock, self._db:
            if kind == "sessions":
                app, device = body["app"], body["device"]
                for row in body["sessionCounts"]:
                    self._db.execute(
                        "insert into sessions (app_version, release_stage, app_type, hostname, started_at,"
                        " count, received) values (?, ?, ?, ?, ?, ?, ?)",
                        (app.get("version"), app.get("releaseStage"), app.get("type"), device.get("hostname"),
                         row["startedAt"], row["sessionsStarted"], now),
                    )  # fmt: skip
                return
            for event in body["events"]:
                app, first = event.get("app") or {}, event["exceptions"][0]
                session = event.get("session") or {}
                self._db.execute(
                    "insert into events (app_version, release_stage, context, error_class, message,"
                    " unhandled, severity, session_id, payload, received, session_started)"
                    " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (app.get("version"), app.get("releaseStage"), event.get("context"), first["errorClass"],
                     str(first.get("message", "")), int(bool(event.get("unhandled"))), event["severity"],
                     session.get("id"), json.dumps(event), now, session.get("startedAt")),
                )  # fmt: skip

    def _query(self, sql: str, *args: Any) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def releases(self) -> list[dict[str, Any]]:
        """Per release (app version + release stage): sessions, crashed sessions, stability.

        A crashed session is a distinct session id with at least one unhandled event, as
        BugSnag counts it; events without a session do not count.
        """
        sessions = self._query("select app_version, release_stage, sum(count) from sessions group by 1, 2")
        crashed = {
            (v, s): n
            for v, s, n in self._query(
                "select app_version, release_stage, count(distinct session_id) from events"
                " where unhandled = 1 and session_id is not null group by 1, 2"
            )
        }
        out = []
        for version, stage, total in sessions:
            bad = crashed.get((version, stage), 0)
            stability = round(100.0 * (1 - bad / total), 2) if total else None
            out.append({"appVersion": version, "releaseStage": stage, "sessions": total,
                        "crashedSessions": bad, "stability": stability})  # fmt: skip
        return out

    def minutes(self, version: str | None, stage: str | None) -> list[dict[str, Any]]:
        """Sessions started and sessions crashed per minute of one release, oldest first."""
        started: dict[str, int] = {}
        for stamp, n in self._query(
            "select started_at, count from sessions where app_version is ? and release_stage is ?",
            version, stage,
        ):  # fmt: skip
            started[_minute(stamp)] = started.get(_minute(stamp), 0) + n
        crashed: dict[str, set[str]] = {}
        for stamp, session_id in self._query(
            "select session_started, session_id from events where unhandled = 1 and session_id is not null"
            " and app_version is ? and release_stage is ?",
            version, stage,
        ):  # fmt: skip
            crashed.setdefault(_minute(stamp), set()).add(session_id)
        return [
            {"minute": m, "sessions": started.get(m, 0), "crashedSessions": len(crashed.get(m, ()))}
            for m in sorted(set(started) | set(crashed))
        ]

    def top_errors(self, version: str | None, stage: str | None, limit: int = 10) -> list[dict[str, Any]]:
        """Error groups (class + task) of one release, most frequent first, with their event ids."""
        rows = self._query(
            "select error_class, context, count(*), sum(unhandled), group_concat(id),"
            " count(distinct case when unhandled = 1 then session_id end), max(id)"
            " from events where app_version is ? and release_stage is ?"
            " group by 1, 2 order by 3 desc, 1 limit ?",
            version, stage, limit,
        )  # fmt: skip
        return [
            {
                "errorClass": cls,
                "context": ctx,
                "events": n,
                "unhandled": u,
                "crashedSessions": crashed,
                "message": self._message(latest),
                "eventIds": sorted(int(i) for i in ids.split(",")),
            }
            for cls, ctx, n, u, ids, crashed, latest in rows
        ]

    def _message(self, event_id: int) -> str:
        rows = self._query("select message from events where id = ?", event_id)
        return str(rows[0][0]) if rows else ""

    def events(self, task: str | None = None, error_class: str | None = None) -> list[dict[str, Any]]:
        """Every event received (oldest first), optionally only one task's or one class's."""
        sql = (
            "select id, context, error_class, message, unhandled, severity, session_id, app_version,"
            " release_stage from events where (? is null or context = ?) and (? is null or error_class = ?)"
            " order by id"
        )
        keys = ("id", "context", "errorClass", "message", "unhandled", "severity", "sessionId", "appVersion",
                "releaseStage")  # fmt: skip
        rows = self._query(sql, task, task, error_class, error_class)
        return [{**dict(zip(keys, row)), "unhandled": bool(row[4])} for row in rows]

    def payload(self, event_id: int) -> dict[str, Any] | None:
        """One event exactly as it was received."""
        rows = self._query("select payload from events where id = ?", event_id)
        return json.loads(rows[0][0]) if rows else None
