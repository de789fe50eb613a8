"""BugSnag's wire rules, as the collector enforces them: what it accepts is what BugSnag accepts.

Why these rules and no others: the collector stands in for BugSnag, so a payload it accepts
must be one BugSnag files, and one it refuses one BugSnag refuses -- with BugSnag's status
(400, and 401 for a malformed API key), never 413 or 500. The senders it must take are
this package and BugSnag's official Python notifier (4.9.2), whose quirks are real traffic
that BugSnag files: sessions sent with ``Bugsnag-Payload-Version: 4.0`` (the event
version), ``Bugsnag-Sent-At`` and ``startedAt`` with no time zone, the release stage at the
top of an event instead of in ``app``.

Checked: exact ``Content-Type``; a 32-hex API key (the header, or an event body's
``apiKey``; both must agree); the payload version (``4``/``4.0`` events, ``1.0`` or ``4.0``
sessions); ``Bugsnag-Sent-At`` a real time; ``Bugsnag-Integrity`` when sent; a body that is
UTF-8 JSON (no ``NaN``); the fields the figures are made of -- times that exist, session
counts that are whole, non-negative and fit in 64 bits. Every refusal says why.
"""

from __future__ import annotations

import hashlib
import json
import re
from email.message import Message
from typing import TYPE_CHECKING, NoReturn, TypedDict

from .times import parse_time

if TYPE_CHECKING:
    from ...payload.shapes import JSON, JSONObject

__all__ = [
    "MAX_BYTES", "MAX_COUNT", "SessionCountRow", "SessionsBody", "EventBody", "EventsBody",
    "session_count_problem", "shown", "validate",
]  # fmt: skip

MAX_BYTES = 1_000_000
MAX_COUNT = 2**63 - 1  # a session count must fit a signed 64-bit integer, as BugSnag stores it
_KEY = re.compile(r"[0-9a-fA-F]{32}")
_VERSIONS = {"notify": ("4", "4.0"), "sessions": ("1.0", "1", "4.0", "4")}

Verdict = tuple[int, str, "JSONObject | None"]


# What a payload that passed validate() is known to hold: the fields the store reads, with
# the types checked here (everything else is as the sender wrote it).


class SessionCountRow(TypedDict):
    startedAt: str  # a time parse_time() reads
    sessionsStarted: int  # whole, >= 0, 64-bit


class SessionsBody(TypedDict):
    app: JSONObject
    device: JSONObject
    sessionCounts: list[SessionCountRow]


class _EventFields(TypedDict):
    exceptions: list[JSONObject]  # at least one, each with an errorClass
    severity: str  # error, warning or info


class EventBody(_EventFields, total=False):
    app: JSONObject | None
    session: JSONObject | None  # with an id, when there is one
    releaseStage: JSON  # where the official notifier puts it
    context: JSON
    unhandled: JSON


class EventsBody(TypedDict):
    events: list[EventBody]


def shown(value: object, limit: int = 60) -> str:
    """A sender's value as a reason quotes it: ``repr``, cut short (a reason is one log line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def validate(kind: str, headers: Message, raw: bytes) -> Verdict:
    """(status, reason, body) for a request to the ``"notify"`` or ``"sessions"`` endpoint,
    as BugSnag would answer it. *body* is None unless the payload is accepted."""
    if len(raw) > MAX_BYTES:
        return 400, f"payload of {len(raw)} bytes is over the 1 MB limit", None
    if headers.get("Content-Type") != "application/json":
        return (
            400,
            f"Content-Type must be exactly application/json, not {shown(headers.get('Content-Type'))}",
            None,
        )
    key: str | None = headers.get("Bugsnag-Api-Key")
    if key is not None and not _KEY.fullmatch(key):
        return 401, "Bugsnag-Api-Key is not 32 hexadecimal characters", None
    version = headers.get("Bugsnag-Payload-Version")
    if version not in _VERSIONS[kind]:
        wanted = "4.0" if kind == "notify" else "1.0 (or 4.0)"
        return 400, f"Bugsnag-Payload-Version must be {wanted} on /{kind}, not {shown(version)}", None
    if parse_time(headers.get("Bugsnag-Sent-At")) is None:
        return 400, f"Bugsnag-Sent-At {shown(headers.get('Bugsnag-Sent-At'))} is not an ISO-8601 time", None
    integrity = headers.get("Bugsnag-Integrity")
    if integrity is not None and integrity != f"sha1 {hashlib.sha1(raw).hexdigest()}":
        return 400, "Bugsnag-Integrity does not match the body", None
    body, unreadable = _parse(raw)
    if body is None:
        return 400, unreadable, None
    if kind == "notify" and key is None:  # a legacy sender puts the key in the body only
        in_body = body.get("apiKey")
        key = in_body if isinstance(in_body, str) else None
        if key is None or not _KEY.fullmatch(key):
            return 401, "no API key of 32 hexadecimal characters (Bugsnag-Api-Key or apiKey)", None
    if key is None:
        return 401, "Bugsnag-Api-Key is missing", None
    notifier = body.get("notifier")
    if not isinstance(notifier, dict) or not all(notifier.get(k) for k in ("name", "version", "url")):
        return 400, "notifier needs name, version and url", None
    problem = _session_problem(body) if kind == "sessions" else _event_problem(body, key)
    if problem:
        return 400, problem, None
    return (202, "accepted", body) if kind == "sessions" else (200, "ok", body)


def _parse(raw: bytes) -> tuple[JSONObject | None, str]:
    if not raw:
        return None, "the body is empty"
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        return None, "body is not UTF-8"
    except RecursionError:
        return None, "body is nested too deeply to read"
    except ValueError as exc:
        return None, f"body is not JSON ({str(exc)[:80]})"
    if not isinstance(body, dict):
        return None, "body is not a JSON object"
    return body, ""


def session_count_problem(n: object) -> str | None:
    """Why *n* is not a number of sessions (None when it is one): whole, >= 0, 64-bit."""
    if isinstance(n, bool) or not isinstance(n, int):
        return f"sessionsStarted {shown(n)} is not a whole number"
    if n < 0:
        return f"sessionsStarted {n} is negative"
    if n > MAX_COUNT:
        return f"sessionsStarted {n} does not fit in 64 bits"
    return None


def _session_problem(body: JSONObject) -> str | None:
    counts = body.get("sessionCounts")
    if "apiKey" in body or not isinstance(counts, list) or not counts:
        return "a session payload has sessionCounts and no apiKey"
    for i, row in enumerate(counts):
        if not isinstance(row, dict) or "startedAt" not in row or "sessionsStarted" not in row:
            return f"sessionCounts[{i}] needs startedAt and sessionsStarted"
        problem = session_count_problem(row["sessionsStarted"])
        if problem:
            return f"sessionCounts[{i}]: {problem}"
        if parse_time(row["startedAt"]) is None:
            return f"sessionCounts[{i}].startedAt {shown(row['startedAt'])} is not an ISO-8601 time"
    if not isinstance(body.get("app"), dict) or not isinstance(body.get("device"), dict):
        return "a session payload needs app and device objects"
    return None


def _event_problem(body: JSONObject, key: str) -> str | None:
    if "apiKey" in body and body["apiKey"] != key:
        return "the body's apiKey differs from Bugsnag-Api-Key"
    if "payloadVersion" in body and body["payloadVersion"] not in _VERSIONS["notify"]:
        return f"payloadVersion {shown(body['payloadVersion'])} is not 4.0"
    events = body.get("events")
    if not isinstance(events, list) or not events:
        return "events must be a non-empty list"
    for i, event in enumerate(events):
        exceptions = event.get("exceptions") if isinstance(event, dict) else None
        if not isinstance(event, dict) or not isinstance(exceptions, list) or not exceptions:
            return f"events[{i}] needs at least one exception"
        if not all(isinstance(e, dict) and e.get("errorClass") for e in exceptions):
            return f"events[{i}]: every exception needs an errorClass"
        if event.get("severity") not in ("error", "warning", "info"):
            return f"events[{i}].severity {shown(event.get('severity'))} is not error, warning or info"
        if event.get("app") is not None and not isinstance(event["app"], dict):
            return f"events[{i}].app is not an object"
        session = event.get("session")
        if session is None:
            continue
        if not (isinstance(session, dict) and session.get("id")):
            return f"events[{i}].session needs an id"
        if session.get("startedAt") is not None and parse_time(session["startedAt"]) is None:
            return f"events[{i}].session.startedAt {shown(session['startedAt'])} is not an ISO-8601 time"
    return None
