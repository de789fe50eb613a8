"""The collector's SQLite store: what it accepted, kept across restarts, and the figures read from it.

Why the figures are read so defensively: the file outlives the code. A database written by
an earlier version can hold what that version let through -- a ``startedAt`` of
``9999-99-99T99:99:00Z``, a count of -95, counts whose sum passes 2^63 (SQLite's ``sum()``
then raises) -- and a page that reads it must still answer. So sums are made in Python
(exact, unbounded), every stored time is parsed before it is used, and a row that cannot
be read is left out of the figures and reported as such (:meth:`Store.unreadable`),
never a 500.

On the way in, values go into their columns as text whatever JSON type the sender used
(``"version": 2`` and ``"version": "2"`` are one release), and times in one UTC form.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypedDict, Union, cast

from .times import minute_key, parse_time, utc_text
from .wire import EventsBody, SessionsBody, session_count_problem, shown

if TYPE_CHECKING:
    from ...payload.shapes import JSONObject

__all__ = ["Cell", "AppTypeFigures", "ReleaseFigures", "MinuteFigures", "ErrorGroup", "EventSummary", "Store"]

#: A value as SQLite hands it back: NULL, INTEGER, REAL, TEXT or BLOB. A stored version or
#: stage can be any of them (an earlier version, or a hand, wrote the file).
Cell = Union[None, int, float, str, bytes]


class AppTypeFigures(TypedDict):
    """One app type's share of a release (``appType`` None: sent without one)."""

    appType: Cell
    sessions: int
    crashedSessions: int
    stability: float | None


class _ReleaseFields(TypedDict):
    appVersion: Cell
    releaseStage: Cell
    sessions: int
    crashedSessions: int
    stability: float | None
    appTypes: list[AppTypeFigures]


class ReleaseFigures(_ReleaseFields, total=False):
    """One release's figures; ``unreadableRows`` only when some of its rows cannot be read."""

    unreadableRows: int


class MinuteFigures(TypedDict):
    minute: str
    sessions: int
    crashedSessions: int


class ErrorGroup(TypedDict):
    errorClass: Cell
    context: Cell
    events: int
    unhandled: int
    crashedSessions: int
    message: str
    eventIds: list[int]


class EventSummary(TypedDict):
    id: int
    context: Cell
    errorClass: Cell
    message: Cell
    unhandled: bool
    severity: Cell
    sessionId: Cell
    appVersion: Cell
    releaseStage: Cell


_SCHEMA = """
create table if not exists sessions (
    id integer primary key, app_version text, release_stage text, app_type text, hostname text,
    started_at text, count integer, received real);
create table if not exists events (
    id integer primary key, app_version text, release_stage text, context text, error_class text,
    message text, unhandled integer, severity text, session_id text, payload text, received real,
    session_started text, app_type text);
"""

_SHOWN_UNREADABLE = 20  # descriptions of unreadable rows listed per release


def _text(value: object) -> str | None:
    """A payload value as a column holds it: text (JSON for numbers and objects), or NULL."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    # a lone surrogate ("\ud800" is valid JSON) cannot be written as UTF-8: replaced
    return text.encode("utf-8", "replace").decode("utf-8")


def _time(value: object) -> str | None:
    moment = parse_time(value)
    return None if moment is None else utc_text(moment)


def _rank(v: Cell) -> tuple[int, Cell]:
    """SQLite's order for mixed values (NULL, numbers, text, blobs), as GROUP BY lists them."""
    if v is None:
        return (0, 0)
    if isinstance(v, (int, float)):
        return (1, v)
    return (2, v) if isinstance(v, str) else (3, bytes(v))


def _order(key: tuple[Cell, Cell]) -> tuple[int, Cell, int, Cell]:
    """Releases in SQLite's order."""
    return _rank(key[0]) + _rank(key[1])


def _stability(sessions: int, crashed: int) -> float | None:
    return round(100.0 * (1 - crashed / sessions), 2) if sessions else None


def _payload_type(payload: object) -> str | None:
    """The ``app.type`` of a stored event payload; None when it has none or cannot be read."""
    try:
        event = json.loads(payload) if isinstance(payload, (str, bytes)) else None
    except (ValueError, RecursionError):
        return None
    app = event.get("app") if isinstance(event, dict) else None
    return _text(app.get("type")) if isinstance(app, dict) else None


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
        if "app_type" not in columns:
            # ... and the app type: read once from the payloads they kept, a batch at a time.
            self._db.execute("alter table events add column app_type text")
            last = -(2**63)
            with self._db:
                while batch := self._db.execute(
                    "select id, payload from events where id > ? order by id limit 500", (last,)
                ).fetchall():
                    last = batch[-1][0]
                    found = [(t, i) for i, payload in batch if (t := _payload_type(payload)) is not None]
                    self._db.executemany("update events set app_type = ? where id = ?", found)

    def close_db(self) -> None:
        with self._lock:
            self._db.close()

    def store(self, kind: str, body: JSONObject) -> None:
        """File a payload that passed the wire rules (``wire.validate``: what it checked is what
        the casts below say)."""
        now = time.time()
        with self._lock, self._db:
            if kind == "sessions":
                sessions = cast("SessionsBody", body)
                app, device = sessions["app"], sessions["device"]
                for row in sessions["sessionCounts"]:
                    self._db.execute(
                        "insert into sessions (app_version, release_stage, app_type, hostname, started_at,"
                        " count, received) values (?, ?, ?, ?, ?, ?, ?)",
                        (_text(app.get("version")), _text(app.get("releaseStage")), _text(app.get("type")),
                         _text(device.get("hostname")), _time(row["startedAt"]), row["sessionsStarted"], now),
                    )  # fmt: skip
                return
            for event in cast("EventsBody", body)["events"]:
                app, first = event.get("app") or {}, event["exceptions"][0]
                session = event.get("session") or {}
                # The stage is where the sender put it: in app (BugSnag's place, this package) or
                # at the top of the event (the official Python notifier).
                stage = app.get("releaseStage")
                stage = event.get("releaseStage") if stage is None else stage
                self._db.execute(
                    "insert into events (app_version, release_stage, context, error_class, message,"
                    " unhandled, severity, session_id, payload, received, session_started, app_type)"
                    " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (_text(app.get("version")), _text(stage), _text(event.get("context")),
                     _text(first["errorClass"]), _text(first.get("message")) or "",
                     int(bool(event.get("unhandled"))), event["severity"], _text(session.get("id")),
                     json.dumps(event), now, _time(session.get("startedAt")), _text(app.get("type"))),
                )  # fmt: skip

    def _query(self, sql: str, *args: Cell) -> list[Any]:
        """The rows of *sql*: typed by the query (SQLite's own cells), not by Python."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ rows, as they can be read

    def _session_rows(
        self, release: tuple[Cell, Cell] | None = None
    ) -> Iterator[tuple[Cell, Cell, Cell, int, str | None, int, str | None]]:
        """``(version, stage, app type, row id, minute or None, count, why unreadable or None)`` per
        sessions row (the count is 0 when the row cannot be read)."""
        sql = "select app_version, release_stage, app_type, id, started_at, count from sessions"
        args: tuple[Cell, ...] = ()
        if release is not None:
            sql, args = sql + " where app_version is ? and release_stage is ?", release
        for version, stage, app_type, row_id, started, n in self._query(sql + " order by id", *args):
            minute = minute_key(started)
            problem = session_count_problem(n)
            if problem is None and minute is None:
                problem = f"startedAt {shown(started)} is not a time"
            yield version, stage, app_type, row_id, minute, n if problem is None else 0, problem

    def _crash_rows(
        self, release: tuple[Cell, Cell] | None = None
    ) -> Iterator[tuple[Cell, Cell, Cell, int, Cell, str | None, str | None]]:
        """``(version, stage, app type, event id, session id, minute or None, why unreadable or None)``
        per unhandled event in a session. An event stored before session start times were kept
        has none: not unreadable, just not in the chart."""
        sql = (
            "select app_version, release_stage, app_type, id, session_id, session_started from events"
            " where unhandled = 1 and session_id is not null"
        )
        args: tuple[Cell, ...] = ()
        if release is not None:
            sql, args = sql + " and app_version is ? and release_stage is ?", release
        rows = self._query(sql + " order by id", *args)
        for version, stage, app_type, event_id, session_id, started in rows:
            minute = minute_key(started)
            problem = None
            if minute is None and started is not None:
                problem = f"its session's startedAt {shown(started)} is not a time (left out of the chart)"
            yield version, stage, app_type, event_id, session_id, minute, problem

    # ------------------------------------------------------------------ figures

    def releases(self) -> list[ReleaseFigures]:
        """Per release (app version + release stage): sessions, crashed sessions, stability; and
        the same per app type in ``appTypes``.

        A crashed session is a distinct session id with at least one unhandled event, as
        BugSnag counts it; events without a session do not count. A release with rows that
        cannot be read (an older version's) also has ``unreadableRows``: see :meth:`unreadable`.

        Why per app type: web processes running BugSnag's official integrations count a
        session per request in the same release as the workers, so the release's figure blends
        both. Sessions are split by the ``app.type`` of their payload, crashed sessions by the
        ``app.type`` of their unhandled events (None: sent without one).
        """
        totals: dict[tuple[Cell, Cell], dict[Cell, int]] = {}  # release -> app type -> sessions
        unreadable: dict[tuple[Cell, Cell], int] = {}
        for version, stage, app_type, _id, _minute, n, problem in self._session_rows():
            by_type = totals.setdefault((version, stage), {})
            by_type[app_type] = by_type.get(app_type, 0) + n
            if problem is not None:
                unreadable[(version, stage)] = unreadable.get((version, stage), 0) + 1
        crashed: dict[tuple[Cell, Cell], dict[Cell, set[Cell]]] = {}
        for version, stage, app_type, _id, session_id, _minute, problem in self._crash_rows():
            crashed.setdefault((version, stage), {}).setdefault(app_type, set()).add(session_id)
            if problem is not None and (version, stage) in totals:
                unreadable[(version, stage)] = unreadable.get((version, stage), 0) + 1
        out = []
        for key in sorted(totals, key=_order):
            sessions, crashes = totals[key], crashed.get(key, {})
            total, bad = sum(sessions.values()), len(set().union(*crashes.values()))
            types: list[AppTypeFigures] = [
                {"appType": t, "sessions": sessions.get(t, 0), "crashedSessions": len(crashes.get(t, ())),
                 "stability": _stability(sessions.get(t, 0), len(crashes.get(t, ())))}
                for t in sorted(set(sessions) | set(crashes), key=_rank)
            ]  # fmt: skip
            release: ReleaseFigures = {"appVersion": key[0], "releaseStage": key[1], "sessions": total,
                                       "crashedSessions": bad, "stability": _stability(total, bad),
                                       "appTypes": types}  # fmt: skip
            if unreadable.get(key):
                release["unreadableRows"] = unreadable[key]
            out.append(release)
        return out

    def unreadable(self, version: Cell, stage: Cell) -> tuple[list[str], int]:
        """(descriptions of the first rows of one release that cannot be read, how many there are)."""
        release = (version, stage)
        found = [f"session row {row[3]}: {row[-1]}" for row in self._session_rows(release) if row[-1]]
        found += [f"event {row[3]}: {row[-1]}" for row in self._crash_rows(release) if row[-1]]
        return found[:_SHOWN_UNREADABLE], len(found)

    def minutes(self, version: Cell, stage: Cell) -> list[MinuteFigures]:
        """Sessions started and sessions crashed per UTC minute of one release, oldest first."""
        started: dict[str, int] = {}
        for _v, _s, _t, _id, minute, n, problem in self._session_rows((version, stage)):
            if problem is None and minute is not None:  # (a row without a minute has a problem)
                started[minute] = started.get(minute, 0) + n
        crashed: dict[str, set[Cell]] = {}
        for _v, _s, _t, _id, session_id, minute, _problem in self._crash_rows((version, stage)):
            if minute is not None:
                crashed.setdefault(minute, set()).add(session_id)
        return [
            {"minute": m, "sessions": started.get(m, 0), "crashedSessions": len(crashed.get(m, ()))}
            for m in sorted(set(started) | set(crashed))
        ]

    def top_errors(self, version: Cell, stage: Cell, limit: int = 10, ids: int = 8) -> list[ErrorGroup]:
        """Error groups (class + task) of one release, most frequent first.

        ``eventIds`` are the group's latest *ids* events (oldest first), not all of them: a
        group of a million events must not make a million links; ``events`` is the count.
        """
        rows = self._query(
            "select error_class, context, count(*), sum(unhandled = 1),"
            " count(distinct case when unhandled = 1 then session_id end), max(id)"
            " from events where app_version is ? and release_stage is ?"
            " group by 1, 2 order by 3 desc, 1 limit ?",
            version, stage, limit,
        )  # fmt: skip
        out: list[ErrorGroup] = []
        for cls, ctx, n, unhandled, crashed, latest in rows:
            latest_ids = self._query(
                "select id from events where app_version is ? and release_stage is ? and error_class is ?"
                " and context is ? order by id desc limit ?",
                version, stage, cls, ctx, ids,
            )  # fmt: skip
            out.append({"errorClass": cls, "context": ctx, "events": n, "unhandled": unhandled,
                        "crashedSessions": crashed, "message": self._message(latest),
                        "eventIds": sorted(int(i) for (i,) in latest_ids)})  # fmt: skip
        return out

    def _message(self, event_id: int) -> str:
        rows = self._query("select message from events where id = ?", event_id)
        return "" if not rows or rows[0][0] is None else str(rows[0][0])

    def events(
        self,
        task: str | None = None,
        error_class: str | None = None,
        app_version: str | None = None,
        release_stage: str | None = None,
    ) -> list[EventSummary]:
        """Every event received (oldest first); each filter left as None matches everything."""
        sql = (
            "select id, context, error_class, message, unhandled, severity, session_id, app_version,"
            " release_stage from events where (? is null or context = ?) and (? is null or error_class = ?)"
            " and (? is null or app_version = ?) and (? is null or release_stage = ?) order by id"
        )
        rows = self._query(sql, task, task, error_class, error_class, app_version, app_version,
                           release_stage, release_stage)  # fmt: skip
        return [
            {"id": i, "context": ctx, "errorClass": cls, "message": msg, "unhandled": unhandled == 1,
             "severity": severity, "sessionId": sid, "appVersion": version, "releaseStage": stage}
            for i, ctx, cls, msg, unhandled, severity, sid, version, stage in rows
        ]  # fmt: skip

    def payload_text(self, event_id: int) -> str | None:
        """One event's payload as stored (None: no such event); see :meth:`payload`."""
        rows = self._query("select payload from events where id = ?", event_id)
        if not rows:
            return None
        return "" if rows[0][0] is None else str(rows[0][0])

    def payload(self, event_id: int) -> JSONObject | None:
        """One event exactly as it was received; None when there is no such event, or when its
        stored payload cannot be read as one (a row damaged or written by hand)."""
        text = self.payload_text(event_id)
        try:
            event = json.loads(text) if text is not None else None
        except (ValueError, RecursionError):
            return None
        return event if isinstance(event, dict) else None
