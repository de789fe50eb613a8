"""BugSnag's wire rules, as the collector enforces them.

Exact ``Content-Type``, a 32-hex ``Bugsnag-Api-Key`` (401 otherwise), the payload version
header matching the body (``4.0`` events, ``1.0`` sessions), ``Bugsnag-Sent-At`` in
ISO-8601, ``Bugsnag-Integrity`` when sent, the required fields, and the 1 MB limit (400,
as BugSnag answers -- not 413).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

__all__ = ["MAX_BYTES", "validate"]

MAX_BYTES = 1_000_000
_KEY = re.compile(r"[0-9a-fA-F]{32}")
_SENT_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:[\d.]+(Z|[+-]\d{2}:\d{2})?$")


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
