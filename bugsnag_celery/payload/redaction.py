"""Arbitrary data -> JSON-safe data, with secrets replaced: task arguments, metadata, users.

Bounded in depth, items and string length (task arguments can be huge or cyclic), and
never raising: a value that cannot be represented becomes a placeholder string.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any, NamedTuple, Union

from ..options.declared import DEFAULT_REDACTED_KEYS
from .shapes import JSON
from .text import ELLIPSIS, clean_text, safe_repr, type_name

__all__ = ["REDACTED", "Redacted", "redact", "scrub", "secret_matcher", "encodable", "is_secret"]

REDACTED = "[REDACTED]"
#: What the official client's ``params_filters`` leave: :func:`scrub` keeps it as it is.
ALREADY_FILTERED = "[FILTERED]"


class Redacted(dict[str, JSON]):
    """A metadata tab built from values that are redacted already (the ``task`` tab): the
    event builder sends it as is instead of walking it a second time."""


#: json (and repr) refuse ints of more than 4300 digits (CVE-2020-10735), and JSON readers in
#: other languages lose precision past 64 bits: larger ints travel as their decimal text.
MAX_JSON_INT_BITS = 63


class _Limits(NamedTuple):
    """The explicit state of one :func:`redact` walk."""

    keys: tuple[str, ...]  # see _key_words
    max_depth: int
    max_items: int
    max_string: int


# Separators do not count when matching keys: "X-Api-Key", "api key" and "apiKey" all
# contain "apikey", "creditCard" contains "creditcard".
_KEY_SEPARATORS = str.maketrans("", "", "-_ .")


def _key_words(keys: Iterable[object]) -> tuple[str, ...]:
    try:
        return _cached_key_words(tuple(keys))
    except TypeError:  # unhashable entries: not worth caching
        return _normalised(keys)


@functools.lru_cache(maxsize=64)
def _cached_key_words(keys: tuple[object, ...]) -> tuple[str, ...]:
    """The options' keys, normalised once (every failure redacts with the same ones)."""
    return _normalised(keys)


def _normalised(keys: Iterable[object]) -> tuple[str, ...]:
    words = (key.lower().translate(_KEY_SEPARATORS) for key in keys if isinstance(key, str))
    return tuple(word for word in words if word)


def _is_secret(key: str, words: tuple[str, ...]) -> bool:
    normalised = key.lower().translate(_KEY_SEPARATORS)
    return any(word in normalised for word in words)


def is_secret(text: str, keys: tuple[str, ...]) -> bool:
    """Does *text* contain one of the redacted *keys*, matched as redaction matches keys?"""
    return _is_secret(text, _key_words(keys))


#: How much of a key is read to decide whether it names a secret (the decision is made on
#: the whole key, before it is cut to ``max_string`` for display).
MAX_KEY_CHECKED = 1 << 20


def _key(key: object, limits: _Limits) -> tuple[str, bool]:
    """A key as shown (cut to ``max_string``), and whether the *whole* key names a secret."""
    if isinstance(key, str):
        whole = str.__str__(key)
    elif isinstance(key, (bytes, bytearray)):
        whole = bytes(key[:MAX_KEY_CHECKED]).decode("utf-8", "backslashreplace")
    else:
        whole = safe_repr(key, MAX_KEY_CHECKED)
    secret = bool(limits.keys) and _is_secret(whole[:MAX_KEY_CHECKED], limits.keys)
    return clean_text(whole, limits.max_string), secret


def _too_deep(value: Sized, limits: _Limits) -> str:
    """A container nested past ``max_depth``: its kind and size, never its contents.

    A short repr could show a secret whose key the repr cut short; the kind and size say
    what was there without that risk.
    """
    try:
        size = len(value)
    except Exception:
        return f"<{type_name(value)} nested too deep>"
    return f"<{type_name(value)} of {size} item(s), nested too deep>"


def _jsonable(value: Any, limits: _Limits, depth: int, path: set[int]) -> JSON:
    """One step of :func:`redact`; never raises (a failing value becomes a placeholder).

    *value* is left dynamic, not ``object``: it is dispatched on its exact type (``kind is str``,
    the cheapest test on the failure path), which a type checker does not narrow on.
    """
    try:
        kind = type(value)
        if value is None:
            return None
        if kind is bool:
            return value is True  # the same object, typed
        if kind is str:
            return clean_text(value, limits.max_string)
        if kind is int:
            return value if value.bit_length() <= MAX_JSON_INT_BITS else safe_repr(value, limits.max_string)
        if kind is float:
            return value if math.isfinite(value) else repr(value)
        if isinstance(value, (dict, list, tuple, Mapping)):
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


#: What :func:`_container` walks: mappings by their keys, sequences by their items.
_Container = Union[Mapping[object, object], list[object], tuple[object, ...]]


def _container(value: _Container, limits: _Limits, depth: int, path: set[int]) -> JSON:
    if id(value) in path:
        return "<cycle>"
    if depth >= limits.max_depth:
        return _too_deep(value, limits)
    path.add(id(value))
    try:
        if isinstance(value, (dict, Mapping)):
            # Every mapping by its keys (UserDict, MappingProxyType...), never by its repr.
            result: dict[str, JSON] = {}
            pairs = dict.items(value) if isinstance(value, dict) else value.items()
            total = dict.__len__(value) if isinstance(value, dict) else len(value)
            for index, (key, item) in enumerate(pairs):
                if index >= limits.max_items:
                    result[ELLIPSIS] = f"{total - limits.max_items} more"
                    break
                text, secret = _key(key, limits)
                result[text] = REDACTED if secret else _jsonable(item, limits, depth + 1, path)
            return result
        fields = getattr(type(value), "_fields", None)
        if isinstance(value, tuple) and isinstance(fields, tuple) and len(fields) == len(value):
            # A namedtuple: its field names are keys, and keys are what redaction looks at.
            return _container(dict(zip(fields, value)), limits, depth, path)
        items: list[JSON] = []
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
    value: object,
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

    The result is JSON of the input's shape (a dict for a mapping, a list for a sequence),
    which is why it is left dynamic: callers index it as the shape they passed in.
    """
    try:
        limits = _Limits(_key_words(keys), max_depth, max(max_items, 0), max(max_string, 0))
        return _jsonable(value, limits, 0, set())
    except Exception:
        return f"<unrepresentable {type_name(value)}>"


def scrub(value: object, keys: tuple[str, ...]) -> object:
    """*value* with the values of secret keys (matched as :func:`redact` matches them)
    replaced by ``"[REDACTED]"``, copying only the containers that change.

    For data that is JSON-like already (an event the official client built and filtered):
    no bounds, no ``repr`` -- the encoder makes the rest encodable -- so a clean event costs
    one walk and no copy. Deeper than 32 levels is left as it is (a cycle ends there too).
    """
    if not isinstance(value, (dict, list, tuple)):
        return value
    try:
        return _scrub(value, _secret_pattern(_key_words(keys)).search, 0)
    except Exception:
        return value


def secret_matcher(keys: tuple[str, ...]) -> Callable[[str], bool]:
    """A test of one key against *keys*, as :func:`redact` matches keys (one search a key)."""
    search = _secret_pattern(_key_words(keys)).search
    separators = _KEY_SEPARATORS

    def secret(key: str) -> bool:
        return search(key.lower().translate(separators)) is not None

    return secret


@functools.lru_cache(maxsize=16)
def _secret_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    """Any of *words* in a normalised key, as one search (``_is_secret`` in one call)."""
    return re.compile("|".join(re.escape(w) for w in words) or "(?!)")


def _scrub(value: object, search: Callable[[str], object], depth: int) -> object:
    if depth > 32:
        return value
    if isinstance(value, dict):
        out: dict[object, object] | None = None
        for key, item in value.items():
            if type(key) is str and search(key.lower().translate(_KEY_SEPARATORS)) is not None:
                if item == ALREADY_FILTERED:
                    continue  # the official client's params_filters got there first: it says so
                new: object = REDACTED
            elif isinstance(item, (dict, list, tuple)):
                new = _scrub(item, search, depth + 1)
            else:
                continue
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out
    items: list[object] | None = None
    for index, item in enumerate(value):  # type: ignore[arg-type]
        if not isinstance(item, (dict, list, tuple)):
            continue
        new = _scrub(item, search, depth + 1)
        if new is not item:
            if items is None:
                items = list(value)  # type: ignore[call-overload]
            items[index] = new
    return value if items is None else items


# No redaction, no item or string limits: this only makes a payload encodable, losslessly
# wherever JSON allows it. The depth limit just keeps the walk off the interpreter's limit.
_ENCODABLE = _Limits((), 64, sys.maxsize, sys.maxsize)


def encodable(value: object) -> JSON:
    """A JSON-safe copy of *value* that redacts and cuts nothing (for the encoder's slow path)."""
    return _jsonable(value, _ENCODABLE, 0, set())
