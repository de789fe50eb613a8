"""The official client's breadcrumbs as v4 dicts and JSON, made once for as long as they hold
what they held.

Under the project's official policy (``reporting/official_event.py``) an event carries the
breadcrumbs the official client stored: those left outside any task run go with every
event of the process, so their v4 form (``params_filters`` and ``redacted_keys`` applied by
a :class:`~.official_filters.Cleaner`) and its JSON are made once and spliced into each
event's body (an :class:`~.encoding.EncodedList`). The official client keeps a breadcrumb's
metadata by reference, and its caller may change it later: what was made is reused only
while each breadcrumb still equals a deep copy of what it held.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

from .encoding import EncodedList, encode_json
from .official_filters import Cleaner
from .shapes import JSONObject

__all__ = ["crumb_dict", "stored_v4"]


def crumb_dict(crumb: Any, clean: Cleaner) -> JSONObject:
    metadata = crumb.metadata
    return {"timestamp": crumb.timestamp, "name": crumb.message, "type": crumb.type.value,
            "metaData": clean.dict(metadata) if metadata else {}}  # fmt: skip


#: id(stored breadcrumb) -> (it, the cleaner, what it held, its v4 dict and JSON). The same
#: stored breadcrumbs go with every event of a process (those left outside any task run):
#: their v4 form and its JSON are made once. A breadcrumb is cached the second time it is
#: sent (one left in a run goes with that run's events only: copying what it holds to
#: compare with later would cost more than it saves). Entries hold their breadcrumb (an id is
#: never reused while cached) and are cleared wholesale at :data:`_MAX_CRUMBS`.
_crumbs_v4: dict[int, tuple[Any, Cleaner, tuple[object, ...], tuple[JSONObject, bytes]]] = {}
_seen_once: dict[int, Any] = {}
_MAX_CRUMBS = 1024
#: The same for a whole list of stored breadcrumbs (the usual case: the process-wide ones, in
#: every event): key the ids, value (the list, the cleaner, what each held, the EncodedList).
_lists_v4: dict[tuple[int, ...], tuple[list[Any], Cleaner, list[tuple[object, ...]], EncodedList]] = {}
_MAX_LISTS = 64
_held = operator.attrgetter("message", "type", "metadata")


def stored_v4(stored: list[Any], clean: Cleaner) -> EncodedList:
    """The stored breadcrumbs *stored* as v4 dicts with their JSON (an :class:`EncodedList`).

    The official client keeps a breadcrumb's metadata by reference (its caller may change
    it later): what was made is used only while every breadcrumb's message, type and
    metadata still equal what they were (deep copies kept to compare with, compared in one
    ``==`` of two lists).
    """
    key = tuple(map(id, stored))
    cached = _lists_v4.get(key)
    if cached is not None and cached[1] is clean:
        try:
            if list(map(_held, stored)) == cached[2]:
                return cached[3]
        except Exception:  # a value whose ``==`` raises: made afresh
            pass
    v4s: list[JSONObject] = []
    parts: list[bytes] = []
    for crumb in stored:
        v4, json = _crumb_v4(crumb, clean)
        v4s.append(v4)
        parts.append(json)
    made = EncodedList(v4s, parts)
    try:
        held = [_crumbs_v4[id(crumb)][2] for crumb in stored]  # each cached: compared the same way
    except KeyError:  # one seen for the first time (or not copyable): not cached as a list yet
        return made
    if len(_lists_v4) >= _MAX_LISTS:
        _lists_v4.clear()
    _lists_v4[key] = (list(stored), clean, held, made)
    return made


def _crumb_v4(crumb: Any, clean: Cleaner) -> tuple[JSONObject, bytes]:
    """A stored breadcrumb's v4 dict and its JSON, shared between events while it holds what it held."""
    cached = _crumbs_v4.get(id(crumb))
    if cached is not None and cached[0] is crumb and cached[1] is clean:
        try:
            if _held(crumb) == cached[2]:
                return cached[3]
        except Exception:  # a value whose ``==`` raises: made afresh each time
            v4 = crumb_dict(crumb, clean)
            return v4, encode_json(v4)
    v4 = crumb_dict(crumb, clean)
    made = v4, encode_json(v4)
    if id(crumb) not in _seen_once:  # (held there: its id is not reused meanwhile)
        if len(_seen_once) >= _MAX_CRUMBS:
            _seen_once.clear()
        _seen_once[id(crumb)] = crumb
        return made
    try:
        held = (crumb.message, crumb.type, copy.deepcopy(crumb.metadata))
    except Exception:  # something in it cannot be copied: not cached
        return made
    if len(_crumbs_v4) >= _MAX_CRUMBS:
        _crumbs_v4.clear()
    _crumbs_v4[id(crumb)] = (crumb, clean, held, made)
    return made
