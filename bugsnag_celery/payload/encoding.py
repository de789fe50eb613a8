"""The JSON body of an event payload: UTF-8, at most BugSnag's 1 MB, trimmed cheapest loss first.

:class:`PayloadTooLarge` is the one deliberate exception of the payload layer: BugSnag
answers an oversized body with a 400 and the event would be lost anyway, so the caller
must drop it rather than retry it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .redaction import encodable
from .text import cut, safe_repr
from .wire import MAX_BODY_BYTES

__all__ = ["PayloadTooLarge", "EncodedList", "encode_payload", "encode_json", "encode_event"]

_SURROGATES = re.compile("[\ud800-\udfff]")


class PayloadTooLarge(ValueError):
    """The payload is still larger than the limit after every trimming step.

    Raised instead of returning a body BugSnag would reject with a 400 (which nobody
    should retry); the caller drops the event and logs ``size``.
    """

    def __init__(self, size: int) -> None:
        super().__init__(f"BugSnag payload is {size} bytes even after trimming")
        self.size = size


def _json_default(value: object) -> object:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return safe_repr(value)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)


def _escape_surrogate(match: re.Match[str]) -> str:
    # Inside a JSON string (the only place json output can hold one), "\\udcff" is an
    # escaped backslash and plain text: the same text _utf8_safe gives a message.
    return f"\\\\u{ord(match.group()):04x}"


def _encode(payload: object) -> bytes:
    """UTF-8 JSON for anything: the C encoder on the fast path, a cleaned copy otherwise."""
    try:
        text = _ENCODER.encode(payload)
    except Exception:  # NaN, a cycle, a huge int, a tuple key, a hostile mapping...
        text = _ENCODER.encode(encodable(payload))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub(_escape_surrogate, text).encode("utf-8")


def encode_json(value: object) -> bytes:
    """UTF-8 JSON of *value*, whatever it holds: how events are encoded once, one by one."""
    return _encode(value)


class EncodedList(list):  # type: ignore[type-arg]  # a list of JSON objects, as an event holds
    """A list whose JSON was made with its items: an event's breadcrumbs under the official
    policy, the same stored breadcrumbs in every event of a process (``reporting/official_event.py``).

    It is still the list (trimming and callbacks read it); :func:`encode_event` uses
    ``json`` as long as the list holds exactly the items it was made with.
    """

    __slots__ = ("_made_of", "json")

    def __init__(self, items: list[Any], parts: list[bytes]) -> None:
        super().__init__(items)
        self.json = b"[" + b",".join(parts) + b"]"
        self._made_of = tuple(map(id, items))

    def unchanged(self) -> bool:
        return len(self) == len(self._made_of) and all(map(int.__eq__, map(id, self), self._made_of))


def encode_event(event: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON of one event (``encode_json``), its breadcrumbs spliced in where their
    JSON is known (an :class:`EncodedList`): encoded once for every event that carries them."""
    crumbs = event.get("breadcrumbs")
    if type(crumbs) is not EncodedList or not crumbs.unchanged():
        return _encode(event)
    rest = _encode({key: value for key, value in event.items() if key != "breadcrumbs"})
    if rest == b"{}":
        return b'{"breadcrumbs":' + crumbs.json + b"}"
    return rest[:-1] + b',"breadcrumbs":' + crumbs.json + b"}"


def _note(event: dict[str, Any], what: str) -> None:
    trimmed = event["metaData"]["bugsnag_celery"]["trimmed"]
    if what not in trimmed:
        trimmed.append(what)


def _cut_long_strings(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """Cut, in place, every string longer than ``limit`` in a tree fresh from ``json.loads``.

    Exact type checks suffice (json makes no subclasses), and replacing values while
    iterating is safe because no container changes size.
    """
    changed = False
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        for key, item in node.items() if type(node) is dict else enumerate(node):
            kind = type(item)
            if kind is str:
                if len(item) > limit:
                    node[key] = cut(item, limit)
                    changed = True
            elif kind is dict or kind is list:
                stack.append(item)
    return changed


def _exceptions_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    found = event.get("exceptions")
    return [entry for entry in found if isinstance(entry, dict)] if isinstance(found, list) else []


def _frames_of(entry: dict[str, Any]) -> list[Any]:
    frames = entry.get("stacktrace")
    return frames if isinstance(frames, list) else []


def _step_strings(event: dict[str, Any], limit: int) -> bool:
    changed = False
    meta = event["metaData"]
    for name, tab in list(meta.items()):
        if isinstance(tab, str) and len(tab) > limit:
            meta[name] = cut(tab, limit)
            changed = True
        elif isinstance(tab, (dict, list)) and name != "bugsnag_celery":
            changed = _cut_long_strings(tab, limit) or changed
    for holder in (event.get("breadcrumbs"), event.get("user")):
        if isinstance(holder, (dict, list)):
            changed = _cut_long_strings(holder, limit) or changed
    for entry in _exceptions_of(event):
        message = entry.get("message")
        if isinstance(message, str) and len(message) > limit:
            entry["message"] = cut(message, limit)
            changed = True
    if changed:
        _note(event, f"strings>{limit}")
    return changed


def _step_code(event: dict[str, Any]) -> bool:
    changed = False
    for entry in _exceptions_of(event):
        for frame in _frames_of(entry):
            if isinstance(frame, dict) and frame.pop("code", None) is not None:
                changed = True
    if changed:
        _note(event, "code")
    return changed


def _step_frames(event: dict[str, Any], keep: int) -> bool:
    changed = False
    for entry in _exceptions_of(event):
        frames = _frames_of(entry)
        if len(frames) > keep:
            del frames[keep:]  # innermost first: the outermost frames go
            changed = True
    if changed:
        _note(event, "frames")
    return changed


def _step_exceptions(event: dict[str, Any]) -> bool:
    found = event.get("exceptions")
    if isinstance(found, list) and len(found) > 1:
        del found[1:]
        _note(event, "exceptions")
        return True
    return False


def _drop_tabs(work: dict[str, Any], events: list[dict[str, Any]], body: bytes, limit: int) -> bytes:
    """Drop metaData tabs, largest first, until the body fits; returns the last body.

    Re-encoding a megabyte takes milliseconds, so tabs are dropped in batches whose
    estimated size covers the excess, and the body re-encoded only after each batch.
    Our own tab is never dropped, only cut back to the trimming record.
    """
    candidates: list[tuple[int, int, str]] = []
    for number, event in enumerate(events):
        for name, tab in event["metaData"].items():
            size = len(_encode(tab)) + len(name.encode("utf-8", "backslashreplace")) + 4
            candidates.append((size, number, name))
    candidates.sort(key=lambda candidate: candidate[0], reverse=True)
    excess = len(body) - limit
    dropped = 0
    for index, (size, number, name) in enumerate(candidates):
        event = events[number]
        meta = event["metaData"]
        if name == "bugsnag_celery":
            ours = meta["bugsnag_celery"]
            if set(ours) <= {"trimmed", "original_bytes"}:
                continue
            meta["bugsnag_celery"] = {"trimmed": ours["trimmed"], "original_bytes": ours["original_bytes"]}
        else:
            del meta[name]
        _note(event, f"metaData.{name}")
        dropped += size
        if dropped >= excess or index == len(candidates) - 1:
            body = _encode(work)
            if len(body) <= limit:
                return body
            excess = len(body) - limit
            dropped = 0
    return _encode(work)


def _prepare_events(work: dict[str, Any], original: int) -> list[dict[str, Any]]:
    """The events of the working copy, each with a ``metaData.bugsnag_celery`` trimming record."""
    found = work.get("events")
    events = [event for event in found if isinstance(event, dict)] if isinstance(found, list) else []
    for event in events:
        meta = event.get("metaData")
        if not isinstance(meta, dict):
            meta = event["metaData"] = {}
        ours = meta.get("bugsnag_celery")
        if not isinstance(ours, dict):
            ours = meta["bugsnag_celery"] = {}
        ours["trimmed"] = []
        ours["original_bytes"] = original
    return events


def encode_payload(payload: Mapping[str, object], limit: int = MAX_BODY_BYTES) -> bytes:
    """The UTF-8 JSON body of a v4 payload, at most ``limit`` bytes; raises :class:`PayloadTooLarge`.

    A body over the limit is trimmed step by step, cheapest loss first -- long strings,
    metaData tabs (largest first), source code, outer stack frames, chained exceptions --
    re-encoding after each step and recording the steps in each event's
    ``metaData.bugsnag_celery``. Trimming works on a copy; ``payload`` is never mutated,
    and the common case (a body under the limit) makes no copy at all.
    """
    body = _encode(payload)
    if len(body) <= limit:
        return body
    original = len(body)
    # A fresh deep copy, already JSON-safe, made at C speed (walking a 5 MB argument list in
    # Python would take a good part of a second).
    work = json.loads(body)
    if not isinstance(work, dict):
        raise PayloadTooLarge(original)
    events = _prepare_events(work, original)
    steps = (
        lambda event: _step_strings(event, 1024),
        lambda event: _step_strings(event, 256),
        None,  # metaData tabs: see _drop_tabs
        _step_code,
        lambda event: _step_frames(event, 30),
        lambda event: _step_frames(event, 1),
        _step_exceptions,
    )
    body = _encode(work)
    for step in steps:
        if len(body) <= limit:
            return body
        if step is None:
            body = _drop_tabs(work, events, body, limit)
            continue
        changed = False
        for event in events:
            changed = step(event) or changed
        if changed:
            body = _encode(work)
    if len(body) <= limit:
        return body
    raise PayloadTooLarge(len(body))
