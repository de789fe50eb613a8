"""Frames: file, line, method, code and in-project, from a traceback or from its text.

Covers: bugsnag_celery/payload/frames.py
"""

from __future__ import annotations

import importlib.util
import json
import linecache
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from payload_cases import (
    ROOT,
    ExcGroup,
    _line,
    _payload,
    _raise_from,
    _raise_nested_group,
)

from bugsnag_celery.payload.encoding import encode_payload
from bugsnag_celery.payload.exceptions import exception_entries
from bugsnag_celery.payload.shapes import ExceptionEntry, Frame
from bugsnag_celery.payload.wire import MAX_BODY_BYTES

HERE = Path(__file__).resolve()


# Local, not from payload_cases: the frames asserted here are this file's own (its path, its lines).


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


def _load_module(path: Path, source: str) -> ModuleType:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"events_test_{abs(hash(str(path)))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        assert frame["file"] == "tests/payload/test_frames.py"
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
    ours = [frame for frame in frames if frame["file"].endswith("tests/payload/test_frames.py")]
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
