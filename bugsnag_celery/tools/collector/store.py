"""The collector's SQLite store: what it accepted, kept across restarts, and the figures read from it."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

__all__ = ["Store"]

_SCHEMA = """
create table if not exists sessions (
    id integer primary key, app_version text, release_stage text, app_type text, hostname text,
    started_at text, count integer, received real);
create table if not exists events (
    id integer primary key, app_version text, release_stage text, context text, error_class text,
    message text, unhandled integer, severity text, session_id text, payload text, received real,
    session_started text);
"""


def _minute(stamp: Any) -> str:
    """``2026-01-01T12:00:05.123Z`` -> ``2026-01-01T12:00``: the minute bucket of a time."""
    return str(stamp or "")[:16]


class Store:
    """Accepted payloads in SQLite (``:memory:`` or a file); safe to use from the server's threads."""

    def __init__(self, db: str = ":memory:") -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        # Databases written by an earlier version lack the events' session start column.
        columns = {row[1] for row in self._db.execute("pragma table_info(events)")}
        if "session_started" not in columns:
            self._db.execute("alter table events add column session_started text")

    def close_db(self) -> None:
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
