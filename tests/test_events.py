"""Tests of bugsnag_celery.payload: exceptions as BugSnag sees them, safe data, the JSON body."""

from __future__ import annotations

import builtins
import copy
import enum
import importlib.util
import json
import linecache
import sys
import traceback
from collections import namedtuple
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bugsnag_celery.options.declared import DEFAULT_REDACTED_KEYS
from bugsnag_celery.payload.encoding import PayloadTooLarge, encode_payload
from bugsnag_celery.payload.exceptions import error_class, exception_entries
from bugsnag_celery.payload.redaction import redact
from bugsnag_celery.payload.shapes import ExceptionEntry, Frame
from bugsnag_celery.payload.text import safe_repr
from bugsnag_celery.payload.wire import MAX_BODY_BYTES

HERE = Path(__file__).resolve()
ROOT = str(HERE.parent.parent)  # /work/main: this file is in the project
# Built in from Python 3.11; before, the ``exceptiongroup`` backport (a test dependency there,
# and what libraries such as anyio raise): the product flattens both, and both are tested.
if sys.version_info >= (3, 11):
    ExcGroup: Any = builtins.ExceptionGroup
else:  # pragma: no cover (3.9, 3.10)
    from exceptiongroup import ExceptionGroup as ExcGroup


# ---------------------------------------------------------------------------------------------
# helpers


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


def _load_module(path: Path, source: str) -> ModuleType:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"events_test_{abs(hash(str(path)))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
# frames


def test_frames_innermost_first_with_line_method_and_code() -> None:
    exc = _caught(_outer)
    [entry] = exception_entries(exc, project_root=ROOT)
    assert entry["errorClass"] == "ValueError"
    assert entry["message"] == "inner failed"
    assert entry["type"] == "python"
    frames = entry["stacktrace"]
    assert [frame["method"] for frame in frames] == ["_inner", "_outer", "_caught"]
    assert frames[0]["lineNumber"] == _line(_inner, 1)
    assert frames[1]["lineNumber"] == _line(_outer, 1)
    for frame in frames:
        assert frame["file"] == "tests/test_events.py"
        assert frame["inProject"] is True
        line = frame["lineNumber"]
        assert list(frame["code"]) == [str(n) for n in range(line - 3, line + 4)]
        for number, text in frame["code"].items():
            assert text == linecache.getline(str(HERE), int(number)).rstrip("\r\n")
    assert "raise ValueError" in frames[0]["code"][str(frames[0]["lineNumber"])]


def test_send_code_false_omits_code() -> None:
    [entry] = exception_entries(_caught(_outer), project_root=ROOT, send_code=False)
    assert entry["stacktrace"] and all("code" not in frame for frame in entry["stacktrace"])


def test_code_window_is_clipped_at_the_start_of_a_file(tmp_path: Path) -> None:
    module = _load_module(tmp_path / "proj" / "first.py", "def boom():\n    raise RuntimeError('x')\n")
    frame = exception_entries(_caught(module.boom), project_root=str(tmp_path / "proj"))[0]["stacktrace"][0]
    assert frame["code"] == {"1": "def boom():", "2": "    raise RuntimeError('x')"}


def test_in_project_for_a_file_under_a_temp_project_root(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    module = _load_module(root / "app" / "tasks.py", "def boom():\n    raise RuntimeError('boom')\n")
    frames = exception_entries(_caught(module.boom), project_root=str(root))[0]["stacktrace"]
    assert frames[0] == {
        "file": "app/tasks.py",
        "lineNumber": 2,
        "method": "boom",
        "inProject": True,
        "code": {"1": "def boom():", "2": "    raise RuntimeError('boom')"},
    }
    # this test file is not under the temp root: absolute path, not in project
    assert frames[-1]["file"] == str(HERE)
    assert frames[-1]["inProject"] is False


def test_project_root_defaults_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cwdproj"
    module = _load_module(root / "job.py", "def boom():\n    raise RuntimeError('boom')\n")
    monkeypatch.chdir(root)
    frame = exception_entries(_caught(module.boom), project_root=None)[0]["stacktrace"][0]
    assert (frame["file"], frame["inProject"]) == ("job.py", True)


@pytest.mark.parametrize("libdir", ["site-packages", "dist-packages"])
def test_not_in_project_inside_site_packages(tmp_path: Path, libdir: str) -> None:
    root = tmp_path / "proj"
    path = root / ".venv" / "lib" / "python3.11" / libdir / "thirdparty.py"
    module = _load_module(path, "def boom():\n    raise RuntimeError('lib')\n")
    frame = exception_entries(_caught(module.boom), project_root=str(root))[0]["stacktrace"][0]
    assert frame["file"] == f".venv/lib/python3.11/{libdir}/thirdparty.py"
    assert frame["inProject"] is False


def test_in_project_when_the_project_itself_is_an_installed_package(tmp_path: Path) -> None:
    root = tmp_path / "venv" / "lib" / "site-packages" / "myapp"
    module = _load_module(root / "tasks.py", "def boom():\n    raise RuntimeError('app')\n")
    frame = exception_entries(_caught(module.boom), project_root=str(root))[0]["stacktrace"][0]
    assert (frame["file"], frame["inProject"]) == ("tasks.py", True)


def test_stdlib_frames_are_not_in_project_even_with_root_slash() -> None:
    exc = _caught(json.loads, "{")
    frames = exception_entries(exc, project_root="/")[0]["stacktrace"]
    stdlib = [frame for frame in frames if frame["file"].endswith(("json/decoder.py", "json/__init__.py"))]
    assert stdlib and all(frame["inProject"] is False for frame in stdlib)
    ours = [frame for frame in frames if frame["file"].endswith("tests/test_events.py")]
    assert ours and all(frame["inProject"] is True for frame in ours)
    assert frames[0]["method"] == "raw_decode"  # innermost: where json raised


def test_unreadable_source_file_has_no_code() -> None:
    namespace: dict[str, Any] = {}
    exec(
        compile("def boom():\n    raise RuntimeError('gone')\n", "/nonexistent/dir/gone.py", "exec"),
        namespace,
    )
    frame = exception_entries(_caught(namespace["boom"]), project_root=ROOT)[0]["stacktrace"][0]
    assert frame == {
        "file": "/nonexistent/dir/gone.py",
        "lineNumber": 2,
        "method": "boom",
        "inProject": False,
    }


def test_pseudo_file_names_are_kept_verbatim() -> None:
    namespace: dict[str, Any] = {}
    exec(compile("def boom():\n    raise RuntimeError('x')\n", "<string>", "exec"), namespace)
    frame = exception_entries(_caught(namespace["boom"]), project_root="/")[0]["stacktrace"][0]
    assert (frame["file"], frame["inProject"]) == ("<string>", False)


def test_exception_never_raised_has_no_frames() -> None:
    expected: list[ExceptionEntry] = [
        {"errorClass": "ValueError", "message": "x", "type": "python", "stacktrace": []}
    ]
    assert exception_entries(ValueError("x"), project_root=ROOT) == expected


# ---------------------------------------------------------------------------------------------
# chains and groups


EMPTY: dict[str, int] = {}


def _raise_from() -> None:
    try:
        EMPTY["key"]
    except KeyError as exc:
        raise ValueError("explicit") from exc


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


def _raise(exc: BaseException) -> None:
    raise exc


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


# ---------------------------------------------------------------------------------------------
# deep tracebacks


def _recurse(depth: int) -> None:
    if depth == 0:
        raise ValueError("bottom")
    _recurse(depth - 1)


def _recurse_forever(depth: int) -> int:
    return _recurse_forever(depth + 1) + 1


@pytest.fixture
def deep_stack() -> Any:
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(12_000)
    yield
    sys.setrecursionlimit(previous)


@pytest.mark.usefixtures("deep_stack")
def test_ten_thousand_frames_keep_the_innermost_200() -> None:
    exc = _caught(_recurse, 10_000)
    frames = exception_entries(exc, project_root=ROOT)[0]["stacktrace"]
    assert len(frames) == 200
    assert all(frame["method"] == "_recurse" for frame in frames)
    assert frames[0]["lineNumber"] == _line(_recurse, 2)  # the raise: innermost first
    assert all(frame["lineNumber"] == _line(_recurse, 3) for frame in frames[1:])


@pytest.mark.usefixtures("deep_stack")
def test_recursion_error_is_capped() -> None:
    exc = _caught(_recurse_forever, 0)
    assert isinstance(exc, RecursionError)
    [entry] = exception_entries(exc, project_root=ROOT)
    assert entry["errorClass"] == "RecursionError"
    assert len(entry["stacktrace"]) == 200
    assert {frame["method"] for frame in entry["stacktrace"]} == {"_recurse_forever"}
    body = encode_payload(_payload([entry]))
    assert len(body) <= MAX_BODY_BYTES


# ---------------------------------------------------------------------------------------------
# traceback text (what Celery's main process has for a killed child)


def _frames_only(frames: list[Frame]) -> list[tuple[Any, ...]]:
    return [(f["file"], f["lineNumber"], f["method"], f["inProject"], f.get("code")) for f in frames]


def test_frames_parsed_from_format_exc_text() -> None:
    try:
        _raise_from()
    except ValueError as exc:
        text = traceback.format_exc()
        real = exception_entries(exc, project_root=ROOT)[0]["stacktrace"]
    assert "The above exception was the direct cause" in text
    lost = RuntimeError("Worker exited prematurely: signal 9 (SIGKILL).")
    [entry] = exception_entries(lost, project_root=ROOT, traceback_text=text)
    # only the raised exception's block, not its cause's; innermost first; same as the real thing
    assert _frames_only(entry["stacktrace"]) == _frames_only(real)
    assert [f["method"] for f in entry["stacktrace"]] == [
        "_raise_from",
        "test_frames_parsed_from_format_exc_text",
    ]


def test_traceback_text_is_ignored_when_there_is_a_traceback() -> None:
    exc = _caught(_outer)
    text = 'Traceback (most recent call last):\n  File "/elsewhere.py", line 1, in nope\nX: y\n'
    frames = exception_entries(exc, project_root=ROOT, traceback_text=text)[0]["stacktrace"]
    assert frames[0]["method"] == "_inner"


def test_frames_parsed_from_exception_group_text() -> None:
    try:
        _raise_nested_group()
    except ExcGroup as exc:
        text = traceback.format_exc()
        real = exception_entries(exc, project_root=ROOT)[0]["stacktrace"]
    entry = exception_entries(Exception("lost"), project_root=ROOT, traceback_text=text)[0]
    assert _frames_only(entry["stacktrace"]) == _frames_only(real)


@pytest.mark.usefixtures("deep_stack")
def test_frames_parsed_from_recursion_text_are_capped() -> None:
    exc = _caught(_recurse, 3_000)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    frames = exception_entries(Exception(), project_root=ROOT, traceback_text=text)[0]["stacktrace"]
    assert 0 < len(frames) <= 200
    assert frames[0]["lineNumber"] == _line(_recurse, 2)


@pytest.mark.parametrize("text", ["", "garbage", 'File "x", line y', "Traceback (most recent call last):\n"])
def test_garbage_traceback_text(text: str) -> None:
    assert exception_entries(Exception("x"), project_root=ROOT, traceback_text=text)[0]["stacktrace"] == []


# ---------------------------------------------------------------------------------------------
# safe_repr


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class SurrogateRepr:
    def __repr__(self) -> str:
        return "<\udcff>"


def test_safe_repr() -> None:
    assert safe_repr([1, "a"]) == "[1, 'a']"
    assert safe_repr(BadRepr()) == "<unrepresentable BadRepr>"
    assert safe_repr("x" * 50, limit=10) == "'xxxxxxxxx" + "…"
    assert safe_repr(SurrogateRepr()) == "<\\udcff>"
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert safe_repr(cyclic) == "[[...]]"
    assert safe_repr(10**5000).startswith("<unrepresentable")  # int too large for repr()


# ---------------------------------------------------------------------------------------------
# redact


def test_redact_password_in_list_in_tuple_in_dict() -> None:
    data = {"outer": ({"items": [{"Password": "hunter2", "name": "bob"}]}, 2)}
    assert redact(data) == {"outer": [{"items": [{"Password": "[REDACTED]", "name": "bob"}]}, 2]}


def test_redact_case_insensitive_substrings_whatever_the_value() -> None:
    data = {
        "X-Api-Key": "k",
        "sessionid": "s",
        "AUTHORIZATION": {"nested": ["whole", "subtree"]},
        "db_passwd": ["a", "b"],
        "creditCard": 4111,
        "userToken": None,
        "username": "bob",
    }
    assert redact(data) == {
        "X-Api-Key": "[REDACTED]",
        "sessionid": "[REDACTED]",
        "AUTHORIZATION": "[REDACTED]",
        "db_passwd": "[REDACTED]",
        "creditCard": "[REDACTED]",
        "userToken": "[REDACTED]",
        "username": "bob",
    }
    assert redact({"password": 1, "pin": 2}, keys=("PIN",)) == {"password": 1, "pin": "[REDACTED]"}


def test_redact_scalars() -> None:
    assert redact(None) is None
    assert redact(True) is True
    assert redact(7) == 7
    assert redact(1.5) == 1.5
    assert [redact(float("nan")), redact(float("inf")), redact(float("-inf"))] == ["nan", "inf", "-inf"]
    assert redact("é\udcff") == "é\\udcff"
    assert redact(2**100) == str(2**100)  # beyond 64 bits JSON readers lose it: text


def test_redact_subclasses_and_objects() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    Creds = namedtuple("Creds", ["user", "password"])
    assert redact(Color.RED) == 1 and type(redact(Color.RED)) is int
    assert type(redact(Name("x"))) is str
    assert redact(Creds("bob", "hunter2")) == {"user": "bob", "password": "[REDACTED]"}
    assert redact({1, 2}) == "{1, 2}"
    assert redact(BadRepr()) == "<unrepresentable BadRepr>"
    assert redact({("a", 1): "tuple key", 3: "int key"}) == {"('a', 1)": "tuple key", "3": "int key"}


def test_redact_cycles() -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    assert redact(looped) == [1, "<cycle>"]
    mapping: dict[str, Any] = {"a": 1}
    mapping["self"] = {"back": mapping}
    assert redact(mapping) == {"a": 1, "self": {"back": "<cycle>"}}
    shared = [1]
    assert redact([shared, shared]) == [[1], [1]]  # repeated, not cyclic


def test_redact_bytes() -> None:
    assert redact(b"ok \xff\xfe") == "ok \\xff\\xfe"
    assert redact(bytearray(b"abc")) == "abc"
    assert redact(b"x" * 5000) == "x" * 1024 + "…"


def test_redact_huge_containers_and_strings() -> None:
    assert redact(list(range(1000)))[-1] == "… 900 more"
    assert redact(list(range(1000)))[:100] == list(range(100))
    assert len(redact(tuple(range(101)))) == 101
    cut = redact({f"k{n}": n for n in range(250)})
    assert len(cut) == 101 and cut["…"] == "150 more" and cut["k99"] == 99
    assert redact("s" * 5000) == "s" * 1024 + "…"
    assert redact("s" * 10, max_string=4) == "ssss…"
    assert redact(list(range(10)), max_items=3) == [0, 1, 2, "… 7 more"]


def test_redact_depth() -> None:
    deep: Any = "leaf"
    for _ in range(20):
        deep = [deep]
    out = redact(deep)
    for _ in range(8):
        assert isinstance(out, list)
        out = out[0]
    assert isinstance(out, str) and len(out) <= 129
    secret: Any = {"password": "hunter2"}
    for _ in range(10):
        secret = [secret]
    assert "hunter2" not in json.dumps(redact(secret))
    # past the depth limit: the kind and size of what was there, never its contents
    assert redact({"a": {"b": 1}}, max_depth=1) == {"a": "<dict of 1 item(s), nested too deep>"}
    # ... even where a repr would have cut the key that names the secret
    deep = {"x" * 60 + "password": "hunter2"}
    for _ in range(9):
        deep = [deep]
    assert "hunter2" not in json.dumps(redact(deep))


def test_redaction_decides_on_the_whole_key_with_every_separator_and_every_mapping() -> None:
    import collections
    import types

    secret = "s3cr3t-value"
    cases: list[Any] = [
        {"api key": secret},  # space
        {"credit.card": secret},  # dot
        {"Api-Key": secret, "API_KEY": secret, "apiKey": secret},
        {"k" * 2000 + "password": secret},  # the word past the 1,024 characters shown
        collections.UserDict({"token": secret}),
        types.MappingProxyType({"password": secret}),
        collections.OrderedDict(secret_sauce=secret),
    ]
    for case in cases:
        out = redact(case)
        assert secret not in json.dumps(out), (case, out)
        assert isinstance(out, dict) and set(out.values()) == {"[REDACTED]"}
    long_key = next(iter(redact({"k" * 2000 + "password": secret})))
    assert len(long_key) <= 1024 + 1  # shown cut, after the decision


def test_redact_hostile_containers() -> None:
    class ItemsRaise(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            raise RuntimeError("no items")

    class IterRaises(list):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            raise RuntimeError("no iter")

    assert redact(ItemsRaise(token="t", a=1)) == {"token": "[REDACTED]", "a": 1}
    assert redact(IterRaises([1])) == "<unrepresentable IterRaises>"


def test_default_redacted_keys() -> None:
    assert DEFAULT_REDACTED_KEYS == (
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


# ---------------------------------------------------------------------------------------------
# encode_payload


def test_encode_common_case_is_compact_utf8_json() -> None:
    payload = _payload(exception_entries(_caught(_outer), project_root=ROOT), {"task": {"name": "café"}})
    body = encode_payload(payload)
    assert body == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert "café".encode() in body
    assert _decode(body) == payload


def test_encode_5mb_argument_is_trimmed_and_recorded() -> None:
    payload = _payload(
        exception_entries(_caught(_raise_from), project_root=ROOT),
        {"task": redact({"args": ["x" * 5_000_000], "kwargs": {}}, max_string=10_000_000), "small": {"a": 1}},
    )
    before = copy.deepcopy(payload)
    body = encode_payload(payload)
    assert len(body) < 1_000_000
    parsed = _decode(body)
    event = parsed["events"][0]
    assert event["metaData"]["bugsnag_celery"]["trimmed"] == ["strings>1024"]
    assert event["metaData"]["bugsnag_celery"]["original_bytes"] > 5_000_000
    assert event["metaData"]["task"]["args"][0] == "x" * 1024 + "…"
    assert event["metaData"]["small"] == {"a": 1}
    assert event["exceptions"] == payload["events"][0]["exceptions"]  # untouched: not needed
    assert payload == before  # the caller's payload is not mutated


def test_encode_drops_largest_tabs_first() -> None:
    meta = {"big": {"n": list(range(200_000))}, "medium": {"n": list(range(50_000))}, "tiny": {"ok": True}}
    payload = _payload(meta=meta)
    before = copy.deepcopy(payload)
    parsed = _decode(encode_payload(payload, limit=400_000))
    tabs = parsed["events"][0]["metaData"]
    assert "big" not in tabs and tabs["medium"] == {"n": list(range(50_000))} and tabs["tiny"] == {"ok": True}
    assert tabs["bugsnag_celery"]["trimmed"] == ["metaData.big"]
    assert payload == before


def _frames_payload(exceptions: int = 3, frames: int = 200) -> dict[str, Any]:
    code = {str(n): "x = 1  # " + "c" * 150 for n in range(1, 8)}
    entries: list[ExceptionEntry] = [
        {
            "errorClass": f"E{e}",
            "message": "m",
            "type": "python",
            "stacktrace": [
                {
                    "file": f"app/f{n}.py",
                    "lineNumber": n,
                    "method": f"m{n}",
                    "inProject": True,
                    "code": dict(code),
                }
                for n in range(frames)
            ],
        }
        for e in range(exceptions)
    ]
    return _payload(entries)


@pytest.mark.parametrize(
    ("limit", "trimmed", "frames", "exceptions"),
    [
        (100_000, ["code"], 200, 3),
        (10_000, ["code", "frames"], 30, 3),
        (1_500, ["code", "frames"], 1, 3),
        (1_000, ["code", "frames", "exceptions"], 1, 1),
    ],
)
def test_encode_trims_code_then_frames_then_exceptions(
    limit: int, trimmed: list[str], frames: int, exceptions: int
) -> None:
    payload = _frames_payload()
    before = copy.deepcopy(payload)
    body = encode_payload(payload, limit=limit)
    assert len(body) <= limit
    event = _decode(body)["events"][0]
    assert event["metaData"]["bugsnag_celery"]["trimmed"] == trimmed
    assert len(event["exceptions"]) == exceptions
    for entry in event["exceptions"]:
        assert len(entry["stacktrace"]) == frames
        assert entry["stacktrace"][0]["method"] == "m0"  # innermost kept
        assert all("code" not in frame for frame in entry["stacktrace"])
    assert payload == before


def test_encode_cuts_long_strings_to_256_when_1024_is_not_enough() -> None:
    meta = {"task": {"args": ["y" * 2000] * 400}}
    event = _decode(encode_payload(_payload(meta=meta), limit=200_000))["events"][0]
    assert event["metaData"]["bugsnag_celery"]["trimmed"] == ["strings>1024", "strings>256"]
    assert event["metaData"]["task"]["args"][0] == "y" * 256 + "…"


def test_encode_raises_when_it_cannot_fit() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        encode_payload(_payload(), limit=100)
    assert isinstance(info.value, ValueError) and info.value.size > 100
    huge_context = _payload()
    huge_context["events"][0]["context"] = "c" * 2_000_000
    with pytest.raises(PayloadTooLarge):
        encode_payload(huge_context)


def test_encode_neutralises_lone_surrogates() -> None:
    payload = _payload(
        [{"errorClass": "E", "message": "bad \udcff", "type": "python", "stacktrace": []}],
        {"tab": {"k\ud800": "v\udfff"}},
    )
    parsed = _decode(encode_payload(payload))
    assert parsed["events"][0]["exceptions"][0]["message"] == "bad \\udcff"
    assert parsed["events"][0]["metaData"]["tab"] == {"k\\ud800": "v\\udfff"}


def test_encode_non_json_values() -> None:
    looped: list[Any] = []
    looped.append(looped)
    meta = {
        "tab": {
            "nan": float("nan"),
            "inf": float("inf"),
            "set": {1},
            "bytes": b"\xff",
            "obj": BadRepr(),
            "loop": looped,
            ("tuple", "key"): 1,
            "big": 10**5000,
        }
    }
    payload = _payload(meta=meta)
    tab = _decode(encode_payload(payload))["events"][0]["metaData"]["tab"]
    assert tab["nan"] == "nan" and tab["inf"] == "inf" and tab["set"] == "{1}"
    assert tab["bytes"] == "\\xff" and tab["obj"] == "<unrepresentable BadRepr>"
    assert tab["loop"] == ["<cycle>"] and tab["('tuple', 'key')"] == 1
    assert tab["big"] == "<unrepresentable int>"
    assert _decode(encode_payload({"events": [], "x": {1: b"ab"}})) == {"events": [], "x": {"1": "ab"}}


# ---------------------------------------------------------------------------------------------
# property tests

ANY_CHAR = st.characters(exclude_categories=()) | st.characters(categories=["Cs"])
TEXT = st.text(ANY_CHAR, max_size=20) | st.integers(0, 3000).map(lambda n: "é\udcff" * n)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([70, -1000, 13_000]).map(lambda bits: 2**bits if bits > 0 else -(2**-bits))
    | st.floats()
    | TEXT
    | st.binary(max_size=20)
)
TREES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(ANY_CHAR, max_size=8) | st.integers(), children, max_size=5)
        | st.tuples(children, children)
    ),
    max_leaves=30,
)
LIMITS = st.sampled_from([700, 2_000, 20_000, MAX_BODY_BYTES])  # an empty event is ~630 bytes


def _mutable_containers(value: Any) -> list[Any]:
    found: list[Any] = []
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, dict)):
            found.append(node)
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return found


@st.composite
def maybe_cyclic(draw: st.DrawFn) -> Any:
    value = draw(TREES)
    containers = _mutable_containers(value)
    for _ in range(draw(st.integers(0, 2)) if containers else 0):
        holder = draw(st.sampled_from(containers))
        target = draw(st.sampled_from(containers))
        if isinstance(holder, list):
            holder.append(target)
        else:
            holder["cycle"] = target
    return value


# Below this, even an event with every trimmable part gone may not fit (an empty event is
# ~630 bytes): the one place PayloadTooLarge is a right answer for these inputs.
SIZE_FLOOR = 1_000


def _check_body(payload: dict[str, Any], limit: int) -> None:
    snapshot = repr(payload)
    try:
        body = encode_payload(payload, limit)
    except PayloadTooLarge:
        # Trimming must make room: with a limit above the floor, refusing is a bug.
        assert limit < SIZE_FLOOR, f"PayloadTooLarge at limit {limit}"
        event("PayloadTooLarge")
    else:
        assert len(body) <= limit
        parsed = _decode(body)
        event(f"trimmed: {parsed['events'][0]['metaData'].get('bugsnag_celery', {}).get('trimmed')}")
    assert repr(payload) == snapshot


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maybe_cyclic(), LIMITS)
def test_property_redact_then_encode_is_always_valid_json(value: Any, limit: int) -> None:
    safe = redact(value)
    json.dumps(safe, allow_nan=False)  # redact's output is plain JSON data already
    _check_body(_payload(meta={"task": {"args": safe}}), limit)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maybe_cyclic(), LIMITS)
def test_property_encode_of_raw_data_is_always_valid_json(value: Any, limit: int) -> None:
    _check_body(_payload(meta={"task": {"args": value}}), limit)


class CustomError(Exception):
    pass


@settings(max_examples=300, deadline=None)
@given(st.text(ANY_CHAR), st.sampled_from([ValueError, KeyError, CustomError]), LIMITS)
def test_property_exception_messages_encode(message: str, exc_type: type[Exception], limit: int) -> None:
    exc = _caught(_raise, exc_type(message))
    entries = exception_entries(exc, project_root=ROOT)
    expected_class = exc_type.__qualname__ if exc_type is not CustomError else "test_events.CustomError"
    assert entries[0]["errorClass"] == expected_class
    payload = _payload(entries)
    try:
        body = encode_payload(payload, limit)
    except PayloadTooLarge:
        assert limit < SIZE_FLOOR, f"PayloadTooLarge at limit {limit}"
        return
    assert len(body) <= limit
    sent = _decode(body)["events"][0]["exceptions"][0]["message"]
    expected = str(exc)
    if limit == MAX_BODY_BYTES and len(expected) <= 1024:
        if not any(0xD800 <= ord(c) <= 0xDFFF for c in expected):
            assert sent == expected
        else:
            assert sent == expected.encode("utf-8", "backslashreplace").decode("utf-8")


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(st.floats(min_value=0, max_value=4e9), st.integers(0, 4_000_000_000).map(lambda s: s + 0.0005))
)
def test_timestamps_read_exactly_as_datetime_formats_them(epoch: float) -> None:
    """clock.format_timestamp caches the text up to the second: every stamp must still be
    datetime's own (its rounding to the microsecond included)."""
    import datetime as dt

    from bugsnag_celery.clock import format_timestamp

    moment = dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)
    want = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    assert format_timestamp(epoch) == want
    assert format_timestamp(epoch) == want  # the cached path


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60), st.integers(0, 10_000))
def test_session_ids_are_the_uuid5_of_the_task_attempt(task_id: str, retries: int) -> None:
    import uuid

    from bugsnag_celery.sessions.current import SESSION_NAMESPACE, task_session_id

    assert task_session_id(task_id, retries) == str(uuid.uuid5(SESSION_NAMESPACE, f"{task_id}:{retries}"))


@pytest.mark.parametrize(
    ("text", "value", "custom"),
    [
        ("()", [], False), ("{}", {}, False), ("(1, 'a')", [1, "a"], False), ("(1,)", [1], False),
        ("{'x': 1}", {"x": 1}, False), ("{1: 2}", {"1": 2}, False), ("('<hidden>',)", ["card 4111"], True),
        ("(<hidden>,)", ["card 4111"], True), ("{'password': '***'}", {"password": "hunter2"}, False),
        ("[...]", [1, 2], True), (None, [1], False),
    ],
)  # fmt: skip
def test_a_custom_argsrepr_is_told_from_celerys_default(text: Any, value: Any, custom: bool) -> None:
    """What the worker sees: arguments after JSON, and the sender's argsrepr. Celery's default
    (``saferepr`` of the sender's values) is no wish to hide anything; a text naming a key we
    redact is never sent."""
    from bugsnag_celery.options.declared import DEFAULT_REDACTED_KEYS
    from bugsnag_celery.reporting.task_tab import task_metadata

    class Request:
        id, retries, args, argsrepr, kwargsrepr = "t", 0, value, text, None
        kwargs: ClassVar[dict[str, Any]] = {}

    class Options:
        send_task_args, redacted_keys = True, DEFAULT_REDACTED_KEYS

    meta = task_metadata(object(), Request(), Options())  # type: ignore[arg-type]
    assert (meta["args"] == text) is custom, meta
