"""The collector's read side: ``GET /`` (the page) and the JSON API.

Why it is written against the database's worst case: what it reads may come from an older
version or from someone's hand, so it answers whatever a row holds -- strict JSON always
(no ``NaN``, no bytes), an unreadable payload shown as unreadable -- and anything in a
path that is not an event id is a 404, never a 500: ``/api/events/²`` (``"²".isdigit()``
is true, ``int("²")`` raises) and ``/api/events/<23 digits>`` (SQLite's integers stop at
2^63) included.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from .page import render

if TYPE_CHECKING:
    from ...payload.shapes import JSONObject
    from .server import Collector

__all__ = ["answer_get", "is_event_id"]

MAX_ID_DIGITS = 18  # every id of 18 digits fits SQLite's 64-bit integers
_JSON = "application/json"


def is_event_id(text: str) -> bool:
    """ASCII digits only, and few enough of them to be an id at all."""
    return text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS


def json_safe(value: object) -> object:
    """*value* with what strict JSON cannot hold turned into text: bytes, ``NaN``, infinities."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _dump(data: object) -> bytes:
    try:
        return json.dumps(data, indent=1, allow_nan=False).encode()
    except (TypeError, ValueError):
        return json.dumps(json_safe(data), indent=1, allow_nan=False).encode()


def _event(event_id: int, text: str) -> JSONObject:
    """The event as received; or, for a row that cannot be read as one, that row said plainly."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        event = None
    if isinstance(event, dict):
        return event
    return {"id": event_id, "unreadable": "the stored payload is not a JSON object", "stored": text[:10_000]}


def answer_get(collector: Collector, target: str) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET: the page or the JSON API."""
    url = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    path = unquote(url.path).rstrip("/")
    data: object
    if path == "":
        return 200, render(collector).encode(), "text/html; charset=utf-8"
    if path == "/favicon.ico":  # asked for by every browser: nothing to refuse
        return 204, b"", "image/x-icon"
    if path == "/api/releases":
        data = collector.releases()
    elif path == "/api/events":
        data = collector.events(
            task=query.get("task"),
            error_class=query.get("errorClass"),
            app_version=query.get("appVersion"),
            release_stage=query.get("releaseStage"),
        )
    elif path.startswith("/api/events/"):
        ident = path[len("/api/events/") :]
        text = collector.payload_text(int(ident)) if is_event_id(ident) else None
        if text is None:
            return 404, _dump({"status": f"no such event: {ident[:40]!r}"}), _JSON
        data = _event(int(ident), text)
    else:
        return 404, _dump({"status": "not found"}), _JSON
    return 200, _dump(data), _JSON
