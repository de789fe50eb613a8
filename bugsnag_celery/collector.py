"""A local BugSnag-compatible collector: accepts event and session payloads as BugSnag does.

It checks every request against the wire rules (``shared/reference/bugsnag-wire.md``):
exact ``Content-Type``, a 32-hex ``Bugsnag-Api-Key`` (401 otherwise), the payload version
header matching the body (``4.0`` events, ``1.0`` sessions), ``Bugsnag-Sent-At`` in ISO-8601,
the required fields, and the 1 MB limit (400, as BugSnag answers -- not 413). What it
accepts goes to SQLite, so nothing is lost across restarts. ``GET /api/releases`` and
``GET /api/events`` give the figures as JSON. Faults can be injected for testing:
``fail_status`` (answer every request with that status) and ``delay`` (seconds).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
    message text, unhandled integer, severity text, session_id text, payload text, received real);
"""


def validate(path: str, headers: Any, raw: bytes) -> tuple[int, str, dict[str, Any] | None]:
    """(status, reason, body) for a request, as BugSnag would answer it."""
    kind = "sessions" if path.rstrip("/").endswith("sessions") else "notify"
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
    try:
        body = json.loads(raw)
    except ValueError:
        return 400, "body is not JSON", None
    if not isinstance(body, dict):
        return 400, "body is not a JSON object", None
    notifier = body.get("notifier")
    if not isinstance(notifier, dict) or not all(notifier.get(k) for k in ("name", "version", "url")):
        return 400, "notifier needs name, version and url", None
    if kind == "sessions":
        counts = body.get("sessionCounts")
        if "apiKey" in body or not isinstance(counts, list) or not counts:
            return 400, "a session payload has sessionCounts and no apiKey", None
        for row in counts:
            if not isinstance(row, dict) or not isinstance(row.get("sessionsStarted"), int):
                return 400, "every sessionCounts entry needs startedAt and sessionsStarted", None
            if not _SENT_AT.match(str(row.get("startedAt", ""))):
                return 400, "sessionCounts startedAt is not an ISO-8601 time", None
        if not isinstance(body.get("app"), dict) or not isinstance(body.get("device"), dict):
            return 400, "a session payload needs app and device", None
        return 202, "accepted", body
    if body.get("apiKey") != headers.get("Bugsnag-Api-Key") or body.get("payloadVersion") != "4.0":
        return 400, "apiKey and payloadVersion must match the headers", None
    events = body.get("events")
    if not isinstance(events, list) or not events:
        return 400, "events must be a non-empty list", None
    for event in events:
        exceptions = event.get("exceptions") if isinstance(event, dict) else None
        if not isinstance(exceptions, list) or not exceptions:
            return 400, "every event needs at least one exception", None
        if not all(isinstance(e, dict) and e.get("errorClass") for e in exceptions):
            return 400, "every exception needs an errorClass", None
        if event.get("severity") not in ("error", "warning", "info"):
            return 400, "severity must be error, warning or info", None
    return 200, "ok", body


class Collector:
    """The server: ``start()`` in a thread (tests, the demo) or ``serve_forever()`` (CLI)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9339, db: str = ":memory:") -> None:
        self.fail_status: int | None = None
        self.delay = 0.0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if collector.delay:
                    time.sleep(collector.delay)
                if collector.fail_status is not None:
                    status, reason = collector.fail_status, "injected fault"
                else:
                    status, reason, body = validate(self.path, self.headers, raw)
                    if body is not None:
                        collector.store(self.path, body)
                payload = json.dumps({"status": reason}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path.startswith("/api/releases"):
                    data: Any = collector.releases()
                elif self.path.startswith("/api/events"):
                    data = collector.events()
                else:
                    self.send_error(404)
                    return
                payload = json.dumps(data, indent=1).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"

    def start(self) -> Collector:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._db.close()

    def store(self, path: str, body: dict[str, Any]) -> None:
        now = time.time()
        with self._lock, self._db:
            if path.rstrip("/").endswith("sessions"):
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
                    " unhandled, severity, session_id, payload, received)"
                    " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (app.get("version"), app.get("releaseStage"), event.get("context"), first["errorClass"],
                     str(first.get("message", "")), int(bool(event.get("unhandled"))), event["severity"],
                     session.get("id"), json.dumps(event), now),
                )  # fmt: skip

    def releases(self) -> list[dict[str, Any]]:
        """Per release (app version + release stage): sessions, crashed sessions, stability."""
        with self._lock:
            sessions = self._db.execute(
                "select app_version, release_stage, sum(count) from sessions group by 1, 2"
            ).fetchall()
            crashed = dict(
                ((v, s), n)
                for v, s, n in self._db.execute(
                    "select app_version, release_stage, count(distinct session_id) from events"
                    " where unhandled = 1 and session_id is not null group by 1, 2"
                )
            )
        out = []
        for version, stage, total in sessions:
            bad = crashed.get((version, stage), 0)
            stability = round(100.0 * (1 - bad / total), 2) if total else None
            out.append({"appVersion": version, "releaseStage": stage, "sessions": total,
                        "crashedSessions": bad, "stability": stability})  # fmt: skip
        return out

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "select id, context, error_class, message, unhandled, severity, session_id"
                " from events order by id"
            ).fetchall()
        keys = ("id", "context", "errorClass", "message", "unhandled", "severity", "sessionId")
        return [dict(zip(keys, row)) for row in rows]
