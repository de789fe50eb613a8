"""Building blocks of a BugSnag v4 event: exceptions, stack frames, safe metadata, the JSON body.

Everything here runs at the worst possible moment -- while a task is failing, sometimes
while the interpreter is short of stack after a ``RecursionError`` -- and it handles
objects we do not control: exceptions with hostile ``__str__``/``__repr__``/
``__getattribute__``, cyclic cause chains, task arguments that are huge, cyclic or not
JSON at all. So the rule for this module is that nothing in it raises for bad *input*:
each piece degrades to a smaller, still valid piece instead (a minimal exception entry, a
``"<unrepresentable T>"`` string, a trimmed payload). The one deliberate exception is
:class:`PayloadTooLarge`, because BugSnag answers an oversized body with a 400 and the
event would be lost anyway: the caller must drop it rather than retry it.

We only catch :class:`Exception`, never :class:`BaseException`: Celery stops workers by
raising ``SystemExit`` subclasses from signal handlers, and swallowing one of those while
formatting an error would make the worker ignore its shutdown.

Wire format facts (innermost frame first, ``errorClass`` module-qualified except for
``builtins`` and ``__main__``, ``code`` as a ``{line: text}`` map) follow bugsnag-python
4.9 so that users moving from its Celery handler keep their error groups.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import json
import linecache
import math
import os
import re
import reprlib
import sys
import sysconfig
from collections import deque
from types import TracebackType
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_REDACTED_KEYS",
    "MAX_PAYLOAD_BYTES",
    "PayloadTooLarge",
    "encode_payload",
    "error_class",
    "exception_entries",
    "redact",
    "safe_repr",
]

#: Keys (case-insensitive substrings) whose values never leave the process.
DEFAULT_REDACTED_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "session",
    "credit_card",
)

#: BugSnag's limit is "about 1 MB"; above it the pipeline answers 400 and the event is lost.
MAX_PAYLOAD_BYTES = 1_000_000

ELLIPSIS = "…"
REDACTED = "[REDACTED]"
MAX_MESSAGE_CHARS = 10_000
MAX_FRAMES = 200
#: Lines of source sent on either side of the line of a frame (bugsnag-python sends 7 in all).
CODE_CONTEXT_LINES = 3
#: A minified or generated file can have a single line of megabytes; nobody reads past this.
MAX_CODE_LINE_CHARS = 200
#: How much of a container nested deeper than ``max_depth`` survives, as text.
DEEP_REPR_CHARS = 128
#: json (and repr) refuse ints of more than 4300 digits (CVE-2020-10735), and JSON readers in
#: other languages lose precision past 64 bits: larger ints travel as their decimal text.
MAX_JSON_INT_BITS = 63

_SURROGATES = re.compile("[\ud800-\udfff]")

# The C-level slots of every exception. Reading them through the descriptors of
# BaseException itself bypasses whatever a hostile subclass does in __getattribute__ or
# shadows with a class attribute, and the C setters guarantee what we read is an
# exception (or None) and a traceback (or None).
_TRACEBACK = BaseException.__dict__["__traceback__"]
_CAUSE = BaseException.__dict__["__cause__"]
_CONTEXT = BaseException.__dict__["__context__"]
_SUPPRESS_CONTEXT = BaseException.__dict__["__suppress_context__"]
_TYPE_QUALNAME = type.__dict__["__qualname__"]
_TYPE_NAME = type.__dict__["__name__"]
_TYPE_MODULE = type.__dict__["__module__"]
# Python 3.11+; on 3.9/3.10 there are no exception groups to flatten (the ``exceptiongroup``
# backport is handled in :func:`_sub_exceptions` if the application loaded it).
_BASE_EXCEPTION_GROUP: Any = getattr(builtins, "BaseExceptionGroup", None)


class PayloadTooLarge(ValueError):
    """The payload is still larger than the limit after every trimming step.

    Raised instead of returning a body BugSnag would reject with a 400 (which nobody
    should retry); the caller drops the event and logs ``size``.
    """

    def __init__(self, size: int) -> None:
        super().__init__(f"BugSnag payload is {size} bytes even after trimming")
        self.size = size


# ---------------------------------------------------------------------------------------------
# Text helpers


def _cut(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters, with ``…`` appended so the cut is visible."""
    if len(text) <= limit:
        return text
    return text[: max(limit, 0)] + ELLIPSIS


def _plain_str(text: str) -> str:
    """An exact ``str`` copy of a ``str`` subclass, so no user method runs on it later."""
    return text if type(text) is str else str.__str__(text)


def _utf8_safe(text: str) -> str:
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


def _clean_text(text: str, limit: int) -> str:
    """Exact ``str``, valid UTF-8, at most ``limit`` characters (plus ``…`` when cut)."""
    text = _plain_str(text)
    cut = len(text) > limit
    if cut:
        text = text[:limit]  # before escaping, which is O(n) and may grow the text
    text = _utf8_safe(text)
    if len(text) > limit:
        text, cut = text[:limit], True
    return text + ELLIPSIS if cut else text


def _type_name(value: object) -> str:
    """The class name of ``value`` for placeholders; never raises."""
    try:
        name = type(value).__name__
        return _utf8_safe(_plain_str(name)) if isinstance(name, str) else "object"
    except Exception:
        return "object"


def safe_repr(value: Any, limit: int = 1024) -> str:
    """``repr(value)`` that never raises and is at most ``limit`` characters (plus ``…``).

    Task arguments and exception attributes are arbitrary objects: their ``__repr__``
    may raise, return a non-``str``, or produce megabytes; none of that may stop a report.
    """
    try:
        text = repr(value)
        if not isinstance(text, str):  # pragma: no cover - repr() itself enforces str
            raise TypeError("__repr__ returned non-string")
    except Exception:
        return f"<unrepresentable {_type_name(value)}>"
    try:
        return _clean_text(text, limit)
    except Exception:
        return f"<unrepresentable {_type_name(value)}>"


# ---------------------------------------------------------------------------------------------
# Exceptions


def error_class(exc: BaseException) -> str:
    """The ``errorClass`` BugSnag groups by: ``KeyError``, ``myapp.errors.PaymentDeclined``.

    Same rule as bugsnag-python 4.9 (``__qualname__``, module prefix except for
    ``builtins`` and ``__main__``), so error groups survive a switch from its handler.
    Read from the class through ``type``'s own descriptors, so neither a hostile
    ``__getattribute__`` on the instance nor one on a metaclass gets a say.
    """
    try:
        cls = type(exc)
        qualname = _TYPE_QUALNAME.__get__(cls)
        if not isinstance(qualname, str) or not qualname:
            qualname = _TYPE_NAME.__get__(cls)
        qualname = _utf8_safe(_plain_str(qualname))
    except Exception:
        return "<unknown>"
    try:
        module = _TYPE_MODULE.__get__(cls)
        if isinstance(module, str) and module and module not in ("builtins", "__main__"):
            return f"{_utf8_safe(_plain_str(module))}.{qualname}"
    except Exception:
        pass
    return qualname


def _message(exc: BaseException) -> str:
    """``str(exc)``, or ``repr(exc)`` if that fails, or a placeholder; UTF-8 safe, capped."""
    text: str | None
    try:
        text = str(exc)
    except Exception:
        try:
            text = repr(exc)
        except Exception:
            text = None
    if not isinstance(text, str):
        return f"<unprintable {_type_name(exc)}>"
    try:
        cleaned = _clean_text(text, MAX_MESSAGE_CHARS)
        if len(cleaned) > MAX_MESSAGE_CHARS:  # exactly MAX_MESSAGE_CHARS, the "…" included
            cleaned = cleaned[: MAX_MESSAGE_CHARS - 1] + ELLIPSIS
        return cleaned
    except Exception:
        return f"<unprintable {_type_name(exc)}>"


def _is_exception(value: object) -> bool:
    # type() and issubclass() on a plain class run no user code (unlike isinstance(),
    # which may consult a hostile ``__class__``).
    return issubclass(type(value), BaseException)


def _sub_exceptions(exc: BaseException, cap: int) -> list[BaseException]:
    """The direct members of an exception group (at most ``cap``), else ``[]``."""
    subs: Any = None
    if _BASE_EXCEPTION_GROUP is not None and issubclass(type(exc), _BASE_EXCEPTION_GROUP):
        subs = _BASE_EXCEPTION_GROUP.__dict__["exceptions"].__get__(exc)
    else:
        backport = sys.modules.get("exceptiongroup")
        group_type = getattr(backport, "BaseExceptionGroup", None) if backport else None
        if isinstance(group_type, type) and issubclass(type(exc), group_type):
            subs = object.__getattribute__(exc, "exceptions")
    if not isinstance(subs, (tuple, list)):
        return []
    return [sub for sub in itertools.islice(subs, cap) if _is_exception(sub)]


def _next_in_chain(exc: BaseException) -> BaseException | None:
    """What Python's traceback printing shows below ``exc``: its cause, else its context."""
    cause = _CAUSE.__get__(exc)
    if cause is not None:
        return cause if _is_exception(cause) else None
    if _SUPPRESS_CONTEXT.__get__(exc):
        return None
    context = _CONTEXT.__get__(exc)
    return context if context is not None and _is_exception(context) else None


def _collect_exceptions(exc: BaseException, max_chain: int) -> list[BaseException]:
    """The exceptions to report, in BugSnag's order, at most ``max_chain``, no repeats.

    Depth-first: an exception, then (for a group) each member with everything below it,
    then its own cause/context. Iterative with an explicit stack, so a deep chain costs
    no interpreter stack, and ids are tracked so cycles end.
    """
    found: list[BaseException] = []
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack and len(found) < max_chain:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))  # ``found`` keeps ``current`` alive, so its id stays unique
        found.append(current)
        below: list[BaseException] = []
        try:
            below.extend(_sub_exceptions(current, max_chain))
        except Exception:
            pass
        try:
            nxt = _next_in_chain(current)
            if nxt is not None:
                below.append(nxt)
        except Exception:
            pass
        stack.extend(reversed(below))
    return found


class _Root(NamedTuple):
    """Where the project is, normalised once per report (``prefix`` ends with a separator)."""

    prefix: str | None


def _make_root(project_root: str | None) -> _Root:
    try:
        root = project_root if project_root is not None else os.getcwd()
        root = os.path.normcase(os.path.abspath(root))
    except Exception:  # a deleted working directory, a path that is not a str...
        return _Root(None)
    return _Root(root if root.endswith(os.sep) else root + os.sep)


@functools.lru_cache(maxsize=1)
def _library_prefixes() -> tuple[str, ...]:
    """Directories of the standard library and installed packages (never "in project")."""
    prefixes: set[str] = set()
    try:
        paths = sysconfig.get_paths()
    except Exception:
        return ()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = paths.get(key)
        if path:
            norm = os.path.normcase(os.path.abspath(path))
            prefixes.add(norm if norm.endswith(os.sep) else norm + os.sep)
    return tuple(sorted(prefixes))


_LIBRARY_DIRS = frozenset(("site-packages", "dist-packages"))


@functools.lru_cache(maxsize=4096)
def _place(filename: str, root_prefix: str | None) -> tuple[str, bool]:
    """``(file as reported, inProject)`` for a code object's file name.

    Cached: a worker reports the same few hundred files over and over, and this is
    string work (``abspath``) per frame.
    """
    if not filename or filename.startswith("<"):  # <string>, <frozen importlib._bootstrap>
        return _utf8_safe(filename), False
    path = os.path.abspath(filename)
    if root_prefix is None:
        return _utf8_safe(path), False
    norm = os.path.normcase(path)
    if not norm.startswith(root_prefix):
        return _utf8_safe(path), False
    relative = path[len(root_prefix) :]
    in_project = not any(part in _LIBRARY_DIRS for part in re.split(r"[\\/]", relative))
    if in_project:
        # A library directory excludes a file only when the project is not itself inside it
        # (an application deployed as an installed package is still the project).
        for prefix in _library_prefixes():
            if norm.startswith(prefix) and not root_prefix.startswith(prefix):
                in_project = False
                break
    return _utf8_safe(relative), in_project


def _code_around(filename: str, lineno: int) -> dict[str, str] | None:
    """``{"41": "...", "42": "...", ...}``: the source around ``lineno``, or None if unreadable."""
    try:
        linecache.checkcache(filename)  # a worker outlives edits of its source files
        lines = linecache.getlines(filename)
    except Exception:
        return None
    if not lines or not 1 <= lineno <= len(lines):
        return None  # no source, or not the source this code was compiled from
    first = max(1, lineno - CODE_CONTEXT_LINES)
    last = min(len(lines), lineno + CODE_CONTEXT_LINES)
    code: dict[str, str] = {}
    for number in range(first, last + 1):
        line = lines[number - 1].rstrip("\r\n")
        code[str(number)] = _utf8_safe(_cut(line, MAX_CODE_LINE_CHARS))
    return code


def _frame(filename: str, lineno: int, method: str, root: _Root, send_code: bool) -> dict[str, Any]:
    file, in_project = _place(filename, root.prefix)
    frame: dict[str, Any] = {
        "file": file,
        "lineNumber": lineno,
        "method": _utf8_safe(method),
        "inProject": in_project,
    }
    if send_code:
        code = _code_around(filename, lineno)
        if code:
            frame["code"] = code
    return frame


_UNKNOWN_FRAME: dict[str, Any] = {
    "file": "<unknown>",
    "lineNumber": 0,
    "method": "<unknown>",
    "inProject": False,
}


def _frames_from_traceback(tb: TracebackType, root: _Root, send_code: bool) -> list[dict[str, Any]]:
    """Innermost first, the innermost :data:`MAX_FRAMES` only (the top of a deep recursion
    is where the error is; its bottom is the same few frames of worker plumbing)."""
    window: deque[TracebackType] = deque(maxlen=MAX_FRAMES)
    current: TracebackType | None = tb
    while current is not None:
        window.append(current)
        current = current.tb_next
    frames: list[dict[str, Any]] = []
    for entry in reversed(window):
        try:
            code = entry.tb_frame.f_code
            lineno = entry.tb_lineno
            frames.append(
                _frame(
                    _plain_str(code.co_filename),
                    lineno if isinstance(lineno, int) else 0,
                    _plain_str(code.co_name),
                    root,
                    send_code,
                )
            )
        except Exception:
            frames.append(dict(_UNKNOWN_FRAME))
    return frames


_FRAME_LINE = re.compile(r'^\s*File "(?P<file>.+)", line (?P<line>\d+), in (?P<method>.+?)\s*$')
_TRACEBACK_HEADER = re.compile(
    r"^(?P<prefix>[ |+]*)(?:Exception Group )?Traceback \(most recent call last\):"
)
_CHAIN_SEPARATORS = frozenset(
    (
        "The above exception was the direct cause of the following exception:",
        "During handling of the above exception, another exception occurred:",
    )
)


def _frames_from_text(text: str, root: _Root, send_code: bool) -> list[dict[str, Any]]:
    """Frames of the *raised* exception in a formatted traceback, innermost first.

    Celery's main process only has the text of a traceback for a child that died (the
    traceback object cannot cross the process boundary). In ``format_exc()`` output the
    raised exception is the last top-level block (its causes come first), so only the
    frames between that block's header and its ``ValueError: ...`` line are used.
    """
    lines = text.splitlines()
    start = 0
    for index, line in enumerate(lines):
        if line.rstrip() in _CHAIN_SEPARATORS:
            start = index + 1
    header = None
    prefix_len = 0
    for index in range(start, len(lines)):
        match = _TRACEBACK_HEADER.match(lines[index])
        if match:
            header = index
            prefix_len = len(match.group("prefix"))
            break
    found: deque[tuple[str, int, str]] = deque(maxlen=MAX_FRAMES)
    body = lines[start:] if header is None else lines[header + 1 :]
    for line in body:
        # An exception group's lines carry a "  | " margin as wide as its header's "  + ".
        content = line[prefix_len:] if prefix_len else line
        match = _FRAME_LINE.match(content)
        if match:
            found.append((match.group("file"), int(match.group("line")), match.group("method")))
        elif header is not None and content and not content[0].isspace():
            break  # "ValueError: ..." ends the frames of this block
    return [_frame(file, lineno, method, root, send_code) for file, lineno, method in reversed(found)]


def _stacktrace(exc: BaseException, root: _Root, send_code: bool, text: str | None) -> list[dict[str, Any]]:
    tb = _TRACEBACK.__get__(exc) if _is_exception(exc) else None
    if tb is not None:
        return _frames_from_traceback(tb, root, send_code)
    if text:
        return _frames_from_text(text, root, send_code)
    return []


def _entry(exc: BaseException, root: _Root, send_code: bool, text: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "errorClass": error_class(exc),
        "message": _message(exc),
        "type": "python",
        "stacktrace": [],
    }
    try:
        entry["stacktrace"] = _stacktrace(exc, root, send_code, text)
    except Exception:
        pass  # the class and message are still worth sending
    return entry


def exception_entries(
    exc: BaseException,
    *,
    project_root: str | None,
    send_code: bool = True,
    traceback_text: str | None = None,
    max_chain: int = 32,
) -> list[dict[str, Any]]:
    """The ``exceptions`` list of a BugSnag event for ``exc``; never raises.

    The raised exception comes first, then (depth-first) the members of an exception
    group and the causes/contexts, at most ``max_chain`` entries. ``traceback_text``
    (a formatted traceback) supplies the frames of ``exc`` when it carries no traceback
    object, as for a task whose worker child was killed.
    """
    try:
        root = _make_root(project_root)
        chain = _collect_exceptions(exc, max(1, max_chain))
        entries: list[dict[str, Any]] = []
        for index, current in enumerate(chain):
            try:
                entries.append(_entry(current, root, send_code, traceback_text if index == 0 else None))
            except Exception:
                entries.append(
                    {"errorClass": error_class(current), "message": "", "type": "python", "stacktrace": []}
                )
        return entries
    except Exception:
        return [{"errorClass": error_class(exc), "message": "", "type": "python", "stacktrace": []}]


# ---------------------------------------------------------------------------------------------
# Arbitrary data -> JSON-safe data


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
        return _clean_text(key, limits.max_string)
    if isinstance(key, (bytes, bytearray)):
        return _clean_text(
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
        return f"<unrepresentable {_type_name(value)}>"
    text = _clean_text(text, DEEP_REPR_CHARS)
    return REDACTED if _is_secret(text, limits.keys) else text


def _jsonable(value: Any, limits: _Limits, depth: int, path: set[int]) -> Any:
    """One step of :func:`redact`; never raises (a failing value becomes a placeholder)."""
    try:
        kind = type(value)
        if value is None or kind is bool:
            return value
        if kind is str:
            return _clean_text(value, limits.max_string)
        if kind is int:
            return value if value.bit_length() <= MAX_JSON_INT_BITS else safe_repr(value, limits.max_string)
        if kind is float:
            return value if math.isfinite(value) else repr(value)
        if isinstance(value, (dict, list, tuple)):
            return _container(value, limits, depth, path)
        if isinstance(value, str):
            return _clean_text(str.__str__(value), limits.max_string)
        if isinstance(value, int):  # IntEnum, IntFlag...: their value, as json.dumps writes them
            return _jsonable(int.__int__(value), limits, depth, path)
        if isinstance(value, float):
            return _jsonable(float.__float__(value), limits, depth, path)
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value[: 4 * limits.max_string + 4])
            return _clean_text(raw.decode("utf-8", "backslashreplace"), limits.max_string)
        return safe_repr(value, limits.max_string)
    except Exception:
        return f"<unrepresentable {_type_name(value)}>"


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
        return f"<unrepresentable {_type_name(value)}>"


# ---------------------------------------------------------------------------------------------
# The JSON body

# No redaction, no item or string limits: this only makes a payload encodable, losslessly
# wherever JSON allows it. The depth limit just keeps the walk off the interpreter's limit.
_ENCODABLE = _Limits((), 64, sys.maxsize, sys.maxsize)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return safe_repr(value)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)


def _escape_surrogate(match: re.Match[str]) -> str:
    # Inside a JSON string (the only place json output can hold one), "\\udcff" is an
    # escaped backslash and plain text: the same text _utf8_safe gives a message.
    return f"\\\\u{ord(match.group()):04x}"


def _encode(payload: Any) -> bytes:
    """UTF-8 JSON for anything: the C encoder on the fast path, a cleaned copy otherwise."""
    try:
        text = _ENCODER.encode(payload)
    except Exception:  # NaN, a cycle, a huge int, a tuple key, a hostile mapping...
        text = _ENCODER.encode(_jsonable(payload, _ENCODABLE, 0, set()))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub(_escape_surrogate, text).encode("utf-8")


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
                    node[key] = _cut(item, limit)
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
            meta[name] = _cut(tab, limit)
            changed = True
        elif isinstance(tab, (dict, list)) and name != "bugsnag_celery":
            changed = _cut_long_strings(tab, limit) or changed
    for holder in (event.get("breadcrumbs"), event.get("user")):
        if isinstance(holder, (dict, list)):
            changed = _cut_long_strings(holder, limit) or changed
    for entry in _exceptions_of(event):
        message = entry.get("message")
        if isinstance(message, str) and len(message) > limit:
            entry["message"] = _cut(message, limit)
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


def encode_payload(payload: dict[str, Any], limit: int = MAX_PAYLOAD_BYTES) -> bytes:
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
