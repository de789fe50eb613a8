"""What the payload tests feed the payload code: exceptions raised for real, events to encode.

Shared by tests/payload/ (moved from the former tests/test_events.py). The functions keep their
names: the tests assert them as the ``method`` of frames (``_raise_from``, ``_raise``...).
"""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path
from typing import Any

from bugsnag_celery.payload.shapes import ExceptionEntry

# The project's root (this file is in it): frames of its files are "in project".
ROOT = str(Path(__file__).resolve().parents[2])
# Built in from Python 3.11; before, the ``exceptiongroup`` backport (a test dependency there,
# and what libraries such as anyio raise): the product flattens both, and both are tested.
if sys.version_info >= (3, 11):
    ExcGroup: Any = builtins.ExceptionGroup
else:  # pragma: no cover (3.9, 3.10)
    from exceptiongroup import ExceptionGroup as ExcGroup


def _inner() -> None:
    raise ValueError("inner failed")


def _outer() -> None:
    _inner()


def _caught(func: Any, *args: Any) -> BaseException:
    try:
        func(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def _line(func: Any, offset: int) -> int:
    return int(func.__code__.co_firstlineno) + offset


def _payload(
    exceptions: list[ExceptionEntry] | None = None, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    event = {
        "severity": "error",
        "severityReason": {"type": "unhandledExceptionMiddleware", "attributes": {"framework": "Celery"}},
        "unhandled": True,
        "context": "myapp.tasks.add",
        "exceptions": exceptions
        if exceptions is not None
        else [{"errorClass": "KeyError", "message": "'b'", "type": "python", "stacktrace": []}],
        "metaData": meta if meta is not None else {},
        "user": {},
        "app": {"version": "1.2.3", "releaseStage": "production", "type": "celery"},
        "device": {"hostname": "worker-1", "runtimeVersions": {"python": "3.11.7", "celery": "5.3.6"}},
        "breadcrumbs": [],
        "featureFlags": [],
    }
    return {
        "apiKey": "a35a2a72bd230ac0aa0f52715bbdc6aa",
        "payloadVersion": "4.0",
        "notifier": {"name": "bugsnag-celery", "version": "0.1.0", "url": "https://example.invalid"},
        "events": [event],
    }


def _decode(body: bytes) -> Any:
    """Strict: the body must be UTF-8 and JSON without lone surrogates."""
    parsed = json.loads(body.decode("utf-8"))
    json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # raises on a surrogate
    return parsed


EMPTY: dict[str, int] = {}


def _raise_from() -> None:
    try:
        EMPTY["key"]
    except KeyError as exc:
        raise ValueError("explicit") from exc


def _raise_nested_group() -> None:
    try:
        raise KeyError("cause of b")
    except KeyError as exc:
        b = ValueError("b")
        b.__cause__ = exc
    raise ExcGroup(
        "outer",
        [
            TypeError("a"),
            b,
            ExcGroup("inner", [OSError("c"), ExcGroup("innermost", [ZeroDivisionError()])]),
        ],
    )


def _raise(exc: BaseException) -> None:
    raise exc


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")
