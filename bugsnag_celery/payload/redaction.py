"""Arbitrary data -> JSON-safe data, with secrets replaced: task arguments, metadata, users.

Bounded in depth, items and string length (task arguments can be huge or cyclic), and
never raising: a value that cannot be represented becomes a placeholder string.
"""

from __future__ import annotations

import math
import reprlib
import sys
from typing import Any, NamedTuple

from ..config import DEFAULT_REDACTED_KEYS
from .text import ELLIPSIS, clean_text, safe_repr, type_name

__all__ = ["REDACTED", "redact", "encodable"]

REDACTED = "[REDACTED]"
#: How much of a container nested deeper than ``max_depth`` survives, as text.
DEEP_REPR_CHARS = 128
#: json (and repr) refuse ints of more than 4300 digits (CVE-2020-10735), and JSON readers in
#: other languages lose precision past 64 bits: larger ints travel as their decimal text.
MAX_JSON_INT_BITS = 63


class _Limits(NamedTuple):
    """The explicit state of one :func:`redact` walk."""

    keys: tuple[str, ...]  # see _key_words
    max_depth: int
    max_items: int
    max_string: int


_deep_repr = reprlib.Repr()
_deep_repr.maxlevel = 2
_deep_repr.maxdict = _deep_repr.maxlist = _deep_repr.maxtuple = 4
_deep_repr.maxstring = _deep_repr.maxother = _deep_repr.maxlong = 40


# Separators do not count when matching keys: "X-Api-Key", "api key" and "apiKey" all
# contain "apikey", "creditCard" contains "creditcard".
_KEY_SEPARATORS = str.maketrans("", "", "-_ .")


def _key_words(keys: Any) -> tuple[str, ...]:
    words = (key.lower().translate(_KEY_SEPARATORS) for key in keys if isinstance(key, str))
    return tuple(word for word in words if word)


def _is_secret(key: str, words: tuple[str, ...]) -> bool:
    normalised = key.lower().translate(_KEY_SEPARATORS)
    return any(word in normalised for word in words)


def _key_text(key: Any, limits: _Limits) -> str:
    if type(key) is str or isinstance(key, str):
        return clean_text(key, limits.max_string)
    if isinstance(key, (bytes, bytearray)):
        return clean_text(
            bytes(key[: 4 * limits.max_string + 4]).decode("utf-8", "backslashreplace"), limits.max_string
        )
    return safe_repr(key, limits.max_string)


def _too_deep(value: Any, limits: _Limits) -> str:
    """A container nested past ``max_depth``: a short repr, unless it may show a secret.

    The repr shows dict keys before their values, so if no redacted word appears in
    the (cut) text, no redacted value can either.
    """
    try:
        text = _deep_repr.repr(value)
    except Exception:
        return f"<unrepresentable {type_name(value)}>"
    text = clean_text(text, DEEP_REPR_CHARS)
    return REDACTED if _is_secret(text, limits.keys) else text


def _jsonable(value: Any, limits: _Limits, depth: int, path: set[int]) -> Any:
    """One step of :func:`redact`; never raises (a failing value becomes a placeholder)."""
    try:
        kind = type(value)
        if value is None or kind is bool:
            return value
        if kind is str:
            return clean_text(value, limits.max_string)
        if kind is int:
            return value if value.bit_length() <= MAX_JSON_INT_BITS else safe_repr(value, limits.max_string)
        if kind is float:
            return value if math.isfinite(value) else repr(value)
        if isinstance(value, (dict, list, tuple)):
            return _container(value, limits, depth, path)
        if isinstance(value, str):
            return clean_text(str.__str__(value), limits.max_string)
        if isinstance(value, int):  # IntEnum, IntFlag...: their value, as json.dumps writes them
            return _jsonable(int.__int__(value), limits, depth, path)
        if isinstance(value, float):
            return _jsonable(float.__float__(value), limits, depth, path)
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value[: 4 * limits.max_string + 4])
            return clean_text(raw.decode("utf-8", "backslashreplace"), limits.max_string)
        return safe_repr(value, limits.max_string)
    except Exception:
        return f"<unrepresentable {type_name(value)}>"


def _container(value: Any, limits: _Limits, depth: int, path: set[int]) -> Any:
    if id(value) in path:
        return "<cycle>"
    if depth >= limits.max_depth:
        return _too_deep(value, limits)
    path.add(id(value))
    try:
        if isinstance(value, dict):
            result: dict[str, Any] = {}
            total = dict.__len__(value)
            for index, (key, item) in enumerate(dict.items(value)):
                if index >= limits.max_items:
                    result[ELLIPSIS] = f"{total - limits.max_items} more"
                    break
                text = _key_text(key, limits)
                if limits.keys and _is_secret(text, limits.keys):
                    result[text] = REDACTED
                else:
                    result[text] = _jsonable(item, limits, depth + 1, path)
            return result
        fields = getattr(type(value), "_fields", None)
        if isinstance(value, tuple) and isinstance(fields, tuple) and len(fields) == len(value):
            # A namedtuple: its field names are keys, and keys are what redaction looks at.
            return _container(dict(zip(fields, value)), limits, depth, path)
        items: list[Any] = []
        total = len(value)
        for index, item in enumerate(value):
            if index >= limits.max_items:
                items.append(f"{ELLIPSIS} {total - limits.max_items} more")
                break
            items.append(_jsonable(item, limits, depth + 1, path))
        return items
    finally:
        path.discard(id(value))


def redact(
    value: Any,
    keys: tuple[str, ...] = DEFAULT_REDACTED_KEYS,
    *,
    max_depth: int = 8,
    max_items: int = 100,
    max_string: int = 1024,
) -> Any:
    """Task arguments as JSON-safe data, with secrets replaced by ``"[REDACTED]"``; never raises.

    A dict entry whose key contains one of ``keys`` is redacted whatever its value; the
    match ignores case and the separators ``-``, ``_``, ``.`` and space, so that the
    default ``api_key`` also catches ``X-Api-Key`` and ``apiKey``. Everything is bounded
    -- depth, items per container, string length -- because task arguments can be
    arbitrarily large, and a cycle becomes ``"<cycle>"``. Unknown objects become their
    (bounded) ``repr``.
    """
    try:
        limits = _Limits(_key_words(keys), max_depth, max(max_items, 0), max(max_string, 0))
        return _jsonable(value, limits, 0, set())
    except Exception:
        return f"<unrepresentable {type_name(value)}>"


# No redaction, no item or string limits: this only makes a payload encodable, losslessly
# wherever JSON allows it. The depth limit just keeps the walk off the interpreter's limit.
_ENCODABLE = _Limits((), 64, sys.maxsize, sys.maxsize)


def encodable(value: Any) -> Any:
    """A JSON-safe copy of *value* that redacts and cuts nothing (for the encoder's slow path)."""
    return _jsonable(value, _ENCODABLE, 0, set())
