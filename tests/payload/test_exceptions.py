"""Exceptions as BugSnag sees them: the error class, chains and groups, hostile exceptions.

Covers: bugsnag_celery/payload/exceptions.py, bugsnag_celery/payload/shapes.py
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from payload_cases import (
    EMPTY,
    ROOT,
    ExcGroup,
    _caught,
    _decode,
    _line,
    _payload,
    _raise,
    _raise_from,
    _raise_nested_group,
)

from bugsnag_celery.payload.encoding import encode_payload
from bugsnag_celery.payload.exceptions import error_class, exception_entries
from bugsnag_celery.payload.shapes import ExceptionEntry

# ---------------------------------------------------------------------------------------------
# error_class


class Outer:
    class Inner(Exception):
        pass


def test_error_class_builtin() -> None:
    assert error_class(KeyError("b")) == "KeyError"
    assert error_class(OSError()) == "OSError"


def test_error_class_module_qualified() -> None:
    exc = _caught(json.loads, "{")
    assert error_class(exc) == "json.decoder.JSONDecodeError"


def test_error_class_nested_qualname() -> None:
    assert error_class(Outer.Inner()) == f"{__name__}.Outer.Inner"


def test_error_class_main_module_is_bare() -> None:
    cls = type("PaymentDeclined", (Exception,), {"__module__": "__main__"})
    assert error_class(cls()) == "PaymentDeclined"


def test_error_class_hostile_metaclass_and_instance() -> None:
    class Meta(type):
        def __getattribute__(cls, name: str) -> Any:
            raise RuntimeError("no attributes for you")

    class Hostile(Exception, metaclass=Meta):
        def __getattribute__(self, name: str) -> Any:
            raise RuntimeError("nor for you")

    assert (
        error_class(Hostile())
        == f"{__name__}.test_error_class_hostile_metaclass_and_instance.<locals>.Hostile"
    )


# ---------------------------------------------------------------------------------------------
# chains and groups


def _raise_during() -> None:
    try:
        EMPTY["key"]
    except KeyError:
        raise TypeError("implicit")  # noqa: B904 - the implicit context is the point


def _raise_from_none() -> None:
    try:
        EMPTY["key"]
    except KeyError:
        raise ValueError("suppressed") from None


def test_explicit_cause() -> None:
    entries = exception_entries(_caught(_raise_from), project_root=ROOT)
    assert [(e["errorClass"], e["message"]) for e in entries] == [
        ("ValueError", "explicit"),
        ("KeyError", "'key'"),
    ]
    assert entries[1]["stacktrace"][0]["method"] == "_raise_from"
    assert entries[1]["stacktrace"][0]["lineNumber"] == _line(_raise_from, 2)


def test_implicit_context() -> None:
    entries = exception_entries(_caught(_raise_during), project_root=ROOT)
    assert [e["errorClass"] for e in entries] == ["TypeError", "KeyError"]


def test_suppressed_context() -> None:
    entries = exception_entries(_caught(_raise_from_none), project_root=ROOT)
    assert [e["errorClass"] for e in entries] == ["ValueError"]


def test_cause_wins_over_context() -> None:
    exc = ValueError("top")
    exc.__context__ = KeyError("context")
    exc.__cause__ = TypeError("cause")
    assert [e["errorClass"] for e in exception_entries(exc, project_root=ROOT)] == ["ValueError", "TypeError"]


def test_cyclic_cause_chain_stops() -> None:
    first, second = ValueError("a"), KeyError("b")
    first.__cause__ = second
    second.__cause__ = first
    entries = exception_entries(first, project_root=ROOT)
    assert [e["errorClass"] for e in entries] == ["ValueError", "KeyError"]
    selfish = RuntimeError("me")
    selfish.__context__ = selfish
    assert len(exception_entries(selfish, project_root=ROOT)) == 1


def test_long_chain_is_capped() -> None:
    head = current = ValueError("0")
    for number in range(1, 100):
        nxt = ValueError(str(number))
        current.__cause__ = nxt
        current = nxt
    assert len(exception_entries(head, project_root=ROOT)) == 32
    entries = exception_entries(head, project_root=ROOT, max_chain=5)
    assert [e["message"] for e in entries] == ["0", "1", "2", "3", "4"]


def test_exception_groups_are_flattened_depth_first() -> None:
    entries = exception_entries(_caught(_raise_nested_group), project_root=ROOT)
    # module-qualified outside builtins, as bugsnag-python: the backport's class on 3.9/3.10
    group = "ExceptionGroup" if sys.version_info >= (3, 11) else "exceptiongroup.ExceptionGroup"
    assert [(e["errorClass"], e["message"]) for e in entries] == [
        (group, "outer (3 sub-exceptions)"),
        ("TypeError", "a"),
        ("ValueError", "b"),
        ("KeyError", "'cause of b'"),
        (group, "inner (2 sub-exceptions)"),
        ("OSError", "c"),
        (group, "innermost (1 sub-exception)"),
        ("ZeroDivisionError", ""),
    ]
    assert entries[0]["stacktrace"][0]["method"] == "_raise_nested_group"
    assert entries[3]["stacktrace"][0]["lineNumber"] == _line(_raise_nested_group, 2)


def test_exception_group_repeats_and_size_are_capped() -> None:
    same = ValueError("same")
    group = ExcGroup("g", [same, same, *[KeyError(n) for n in range(1000)]])
    entries = exception_entries(group, project_root=ROOT)
    assert len(entries) == 32
    assert [e["message"] for e in entries[:3]] == ["g (1002 sub-exceptions)", "same", "0"]


# ---------------------------------------------------------------------------------------------
# hostile exceptions


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


class StrReturnsBytes(Exception):
    def __str__(self) -> Any:
        return b"bytes"


class StrReturnsInt(Exception):
    def __str__(self) -> Any:
        return 42


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class AttributesRaise(Exception):
    def __getattribute__(self, name: str) -> Any:
        raise RuntimeError(f"no {name}")


class FakeCause(Exception):
    __cause__ = "not an exception"  # type: ignore[assignment]
    __context__ = 42  # type: ignore[assignment]


class WeirdStr(str):
    def __len__(self) -> int:
        raise RuntimeError("no len")


class StrSubclassMessage(Exception):
    def __str__(self) -> str:
        return WeirdStr("subclass message")


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (StrRaises("x"), "StrRaises('x')"),
        (StrReturnsBytes("x"), "StrReturnsBytes('x')"),
        (StrReturnsInt(), "StrReturnsInt()"),
        (Unprintable(), "<unprintable Unprintable>"),
        (StrSubclassMessage(), "subclass message"),
        (ValueError("bad \udcff byte \ud800"), "bad \\udcff byte \\ud800"),
    ],
)
def test_hostile_messages(exc: BaseException, message: str) -> None:
    try:
        raise exc
    except BaseException as caught:
        entries = exception_entries(caught, project_root=ROOT)
    assert entries[0]["message"] == message
    assert type(entries[0]["message"]) is str
    assert entries[0]["stacktrace"][0]["method"] == "test_hostile_messages"
    _decode(encode_payload(_payload(entries)))


def test_hostile_getattribute_and_fake_causes() -> None:
    for exc_type in (AttributesRaise, FakeCause):
        exc = _caught(_raise, exc_type("boom"))
        entries = exception_entries(exc, project_root=ROOT)
        assert len(entries) == 1
        assert entries[0]["errorClass"] == f"{__name__}.{exc_type.__qualname__}"
        assert entries[0]["message"] == "boom"
        assert entries[0]["stacktrace"][0]["method"] == "_raise"


def test_long_message_is_cut_to_10000() -> None:
    message = exception_entries(ValueError("x" * 50_000), project_root=ROOT)[0]["message"]
    assert len(message) == 10_000 and message.endswith("…")
    assert exception_entries(ValueError("y" * 10_000), project_root=ROOT)[0]["message"] == "y" * 10_000


def test_not_an_exception_at_all() -> None:
    entries = exception_entries("just a string", project_root=ROOT)  # type: ignore[arg-type]
    expected: list[ExceptionEntry] = [
        {"errorClass": "str", "message": "just a string", "type": "python", "stacktrace": []}
    ]
    assert entries == expected
