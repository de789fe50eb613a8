"""What a value may be: one check per kind of option, each failing loudly by the option's name.

A check takes the option's name (for the message) and the raw value from any source, and
returns the clean value or raises ``ValueError`` naming the option -- never echoing an API
key or a URL's credentials. Which option uses which check is declared in ``declared.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import SupportsFloat, cast
from urllib.parse import urlsplit

__all__ = [
    "Check",
    "api_key",
    "boolean",
    "folder_or_off",
    "seconds",
    "byte_count",
    "text",
    "optional_text",
    "endpoint",
    "patterns",
    "strings",
    "optional_strings",
    "lowered_strings",
    "path",
    "callbacks",
]

#: A check: ``(option name, raw value) -> clean value``; raises ``ValueError`` naming the option.
Check = Callable[[str, object], object]

_API_KEY = re.compile(r"[0-9a-fA-F]{32}")


def _fail(option: str, problem: str) -> ValueError:
    return ValueError(f"bugsnag_celery: option {option!r} {problem}")


def _shown(value: object) -> str:
    """A value for an error message: short, and never a URL's credentials."""
    text = repr(value) if not isinstance(value, str) else repr(_without_credentials(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _without_credentials(url: str) -> str:
    return re.sub(r"(?<=//)[^/@\s]*@", "***@", url)


def _listed(value: object) -> list[object]:
    """``list(value)``: list() itself decides what is iterable (a ``TypeError`` otherwise)."""
    return list(cast("Iterable[object]", value))


def api_key(option: str, value: object) -> str | None:
    """32 hexadecimal characters (lowered); None, or a string that is empty or only whitespace,
    is no key. Present but malformed fails, saying its length, never the key."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or not _API_KEY.fullmatch(value.strip()):
        # Never echo the key itself: it ends up in logs.
        if isinstance(value, str):
            size = len(value.strip())
            shown = f"{size} characters" + (", not all hexadecimal" if size == 32 else "")
        else:
            shown = type(value).__name__
        raise _fail(option, f"must be 32 hexadecimal characters (got {shown})")
    return value.strip().lower()


def boolean(option: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise _fail(option, f"must be a boolean, not {_shown(value)}")


def seconds(least: float) -> Check:
    """A positive number of seconds, at least *least*: below, a background thread or the
    beat would spin for nothing (1e-9 s burns a core)."""

    def check(option: str, value: object) -> float:
        try:
            number = float(cast(SupportsFloat, value))  # float() decides what is a number
        except (TypeError, ValueError, OverflowError):
            raise _fail(option, f"must be a number of seconds, not {_shown(value)}") from None
        if isinstance(value, bool) or not number > 0 or number != number or number == float("inf"):
            raise _fail(option, f"must be a positive number of seconds, not {_shown(value)}")
        if number < least:
            raise _fail(option, f"must be at least {least:g} seconds, not {number:g}")
        return number

    return check


def byte_count(least: int) -> Check:
    """A whole number of bytes, at least *least* (a string of digits is read as one)."""

    def check(option: str, value: object) -> int:
        number = value.strip() if isinstance(value, str) else value
        if isinstance(number, str) and number.isdigit():
            number = int(number)
        if not isinstance(number, int) or isinstance(number, bool):
            raise _fail(option, f"must be a whole number of bytes, not {_shown(value)}")
        if number < least:
            raise _fail(option, f"must be at least {least} bytes, not {number}")
        return number

    return check


def text(option: str, value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # app_version=2 is a common slip; BugSnag wants text
    if not isinstance(value, str) or not value.strip():
        raise _fail(option, f"must be a non-empty string, not {_shown(value)}")
    return value.strip()


def optional_text(option: str, value: object) -> str | None:
    return None if value is None else text(option, value)


def endpoint(option: str, value: object) -> str | None:
    """A whole URL: http(s), a host, a valid port, nothing unquoted, no credentials."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(option, f"must be an http:// or https:// URL, not {_shown(value)}")
    text = value.strip()
    problem = None
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for "notaport" or 99999
    except ValueError as exc:
        parts, port, problem = None, None, f"has a bad port or host ({exc})"
    if parts is not None:
        if parts.scheme not in ("http", "https"):
            problem = "must start with http:// or https://"
        elif not parts.hostname:
            problem = "has no host"
        elif re.search(r"\s", text):
            problem = "contains whitespace"
        elif parts.username is not None or parts.password is not None:
            problem = "must not contain credentials (BugSnag authenticates with the API key)"
        elif port == 0:
            problem = "has port 0"
    if problem is not None:
        raise _fail(option, f"{problem}: {_shown(text)}")
    return text


def patterns(option: str, value: object) -> tuple[str, ...]:
    try:
        items = _listed([value] if isinstance(value, str) else value)
    except TypeError:
        raise _fail(
            option, f"must be a task name or a list of names/regular expressions, not {_shown(value)}"
        ) from None
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _fail(option, f"entries must be strings, not {_shown(item)}")
        try:
            re.compile(item)
        except re.error as exc:
            raise _fail(option, f"has an invalid regular expression {item!r}: {exc}") from None
        names.append(item)
    return tuple(names)


def strings(option: str, value: object) -> tuple[str, ...]:
    try:
        items = _listed([value] if isinstance(value, str) else value)
    except TypeError:
        raise _fail(option, f"must be a list of strings, not {_shown(value)}") from None
    strings: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise _fail(option, f"entries must be non-empty strings, not {_shown(item)}")
        strings.append(item)
    return tuple(strings)


def optional_strings(option: str, value: object) -> tuple[str, ...] | None:
    return None if value is None else strings(option, value)


def lowered_strings(option: str, value: object) -> tuple[str, ...]:
    return tuple(item.lower() for item in strings(option, value))


def path(option: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _fail(option, f"must be a path (str or os.PathLike), not {_shown(value)}")
    return text(option, os.fspath(value))


def folder_or_off(option: str, value: object) -> str | None:
    """A folder, or ``""`` (off), or None (the default place)."""
    if value == "":
        return ""
    return path(option, value)


def callbacks(option: str, value: object) -> tuple[Callable[..., object], ...]:
    try:
        callbacks = _listed([value] if callable(value) else value)
    except TypeError:
        raise _fail(option, f"must be a callable or a list of callables, not {_shown(value)}") from None
    for callback in callbacks:
        if not callable(callback):
            raise _fail(option, f"entries must be callables, not {_shown(callback)}")
    return tuple(cast("list[Callable[..., object]]", callbacks))
