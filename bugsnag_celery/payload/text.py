"""Text that is safe to send: exact ``str``, valid UTF-8, bounded, from objects we do not control.

Every other payload module builds on these. They never raise for bad input: an
exception's ``__str__`` or an argument's ``__repr__`` may raise, return megabytes or hold
lone surrogates, and none of that may stop a report (see :mod:`bugsnag_celery.payload`).
"""

from __future__ import annotations

__all__ = ["ELLIPSIS", "cut", "plain_str", "utf8_safe", "clean_text", "type_name", "safe_repr"]

ELLIPSIS = "…"


def cut(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters, with ``…`` appended so the cut is visible."""
    if len(text) <= limit:
        return text
    return text[: max(limit, 0)] + ELLIPSIS


def plain_str(text: str) -> str:
    """An exact ``str`` copy of a ``str`` subclass, so no user method runs on it later."""
    return text if type(text) is str else str.__str__(text)


def utf8_safe(text: str) -> str:
    """Replace lone surrogates (``\\udcff``) with their escape text.

    ``str`` can hold surrogates (``surrogateescape`` file names, broken decoders) that
    UTF-8 cannot encode; left alone they would make the final ``.encode("utf-8")`` fail.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def clean_text(text: str, limit: int) -> str:
    """Exact ``str``, valid UTF-8, at most ``limit`` characters (plus ``…`` when cut)."""
    text = plain_str(text)
    cut = len(text) > limit
    if cut:
        text = text[:limit]  # before escaping, which is O(n) and may grow the text
    text = utf8_safe(text)
    if len(text) > limit:
        text, cut = text[:limit], True
    return text + ELLIPSIS if cut else text


def type_name(value: object) -> str:
    """The class name of ``value`` for placeholders; never raises."""
    try:
        name = type(value).__name__
        return utf8_safe(plain_str(name)) if isinstance(name, str) else "object"
    except Exception:
        return "object"


def safe_repr(value: object, limit: int = 1024) -> str:
    """``repr(value)`` that never raises and is at most ``limit`` characters (plus ``…``).

    Task arguments and exception attributes are arbitrary objects: their ``__repr__``
    may raise, return a non-``str``, or produce megabytes; none of that may stop a report.
    """
    try:
        text = repr(value)
        if not isinstance(text, str):  # pragma: no cover - repr() itself enforces str
            raise TypeError("__repr__ returned non-string")
    except Exception:
        return f"<unrepresentable {type_name(value)}>"
    try:
        return clean_text(text, limit)
    except Exception:
        return f"<unrepresentable {type_name(value)}>"
