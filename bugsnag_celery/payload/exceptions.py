"""The ``exceptions`` of a BugSnag v4 event: class, message and frames of each exception in the chain.

Wire format facts (innermost frame first, ``errorClass`` module-qualified except for
``builtins`` and ``__main__``) follow bugsnag-python 4.9 so that users moving from its
Celery handler keep their error groups. Nothing here raises for bad input (see the
package docstring).
"""

from __future__ import annotations

import builtins
import itertools
import sys

from .frames import HideFrame, Root, frames_from_text, frames_from_traceback, make_root
from .shapes import ExceptionEntry, Frame
from .text import ELLIPSIS, clean_text, plain_str, type_name, utf8_safe

__all__ = ["error_class", "exception_entries"]

MAX_MESSAGE_CHARS = 10_000

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
_BASE_EXCEPTION_GROUP: type[BaseException] | None = getattr(builtins, "BaseExceptionGroup", None)


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
        qualname = utf8_safe(plain_str(qualname))
    except Exception:
        return "<unknown>"
    try:
        module = _TYPE_MODULE.__get__(cls)
        if isinstance(module, str) and module and module not in ("builtins", "__main__"):
            return f"{utf8_safe(plain_str(module))}.{qualname}"
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
        return f"<unprintable {type_name(exc)}>"
    try:
        cleaned = clean_text(text, MAX_MESSAGE_CHARS)
        if len(cleaned) > MAX_MESSAGE_CHARS:  # exactly MAX_MESSAGE_CHARS, the "…" included
            cleaned = cleaned[: MAX_MESSAGE_CHARS - 1] + ELLIPSIS
        return cleaned
    except Exception:
        return f"<unprintable {type_name(exc)}>"


def _is_exception(value: object) -> bool:
    # type() and issubclass() on a plain class run no user code (unlike isinstance(),
    # which may consult a hostile ``__class__``).
    return issubclass(type(value), BaseException)


def _sub_exceptions(exc: BaseException, cap: int) -> list[BaseException]:
    """The direct members of an exception group (at most ``cap``), else ``[]``."""
    subs: object = None
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


def _stacktrace(
    exc: BaseException, root: Root, send_code: bool, text: str | None, hide: HideFrame | None
) -> list[Frame]:
    tb = _TRACEBACK.__get__(exc) if _is_exception(exc) else None
    if tb is not None:
        return frames_from_traceback(tb, root, send_code, hide)
    if text:
        return frames_from_text(text, root, send_code)
    return []


def _entry(
    exc: BaseException, root: Root, send_code: bool, text: str | None, hide: HideFrame | None
) -> ExceptionEntry:
    entry: ExceptionEntry = {
        "errorClass": error_class(exc),
        "message": _message(exc),
        "type": "python",
        "stacktrace": [],
    }
    try:
        entry["stacktrace"] = _stacktrace(exc, root, send_code, text, hide)
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
    hide_frame: HideFrame | None = None,
) -> list[ExceptionEntry]:
    """The ``exceptions`` list of a BugSnag event for ``exc``; never raises.

    The raised exception comes first, then (depth-first) the members of an exception
    group and the causes/contexts, at most ``max_chain`` entries. ``traceback_text``
    (a formatted traceback) supplies the frames of ``exc`` when it carries no traceback
    object, as for a task whose worker child was killed. ``hide_frame`` leaves out the
    frames of a traceback object it says are not the user's (a formatted traceback has no
    frames to ask about).
    """
    try:
        root = make_root(project_root)
        chain = _collect_exceptions(exc, max(1, max_chain))
        entries: list[ExceptionEntry] = []
        for index, current in enumerate(chain):
            try:
                entries.append(
                    _entry(current, root, send_code, traceback_text if index == 0 else None, hide_frame)
                )
            except Exception:
                entries.append(
                    {"errorClass": error_class(current), "message": "", "type": "python", "stacktrace": []}
                )
        return entries
    except Exception:
        return [{"errorClass": error_class(exc), "message": "", "type": "python", "stacktrace": []}]
