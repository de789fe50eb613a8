"""Stack frames as BugSnag shows them: innermost first, file relative to the project, source around the line.

Frames come from a traceback object (the process that ran the task) or, for a pool child
that died, from the text of a formatted traceback (the only thing that crosses the
process boundary). ``inProject`` follows bugsnag-python: under the project root, and not
in the standard library or an installed package.
"""

from __future__ import annotations

import functools
import linecache
import os
import re
import sysconfig
import time
from collections import deque
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import NamedTuple

from .shapes import Frame
from .text import cut, plain_str, utf8_safe

__all__ = ["MAX_FRAMES", "Root", "HideFrame", "make_root", "frames_from_traceback", "frames_from_text"]

MAX_FRAMES = 200
#: Lines of source sent on either side of the line of a frame (bugsnag-python sends 7 in all).
CODE_CONTEXT_LINES = 3
#: A minified or generated file can have a single line of megabytes; nobody reads past this.
MAX_CODE_LINE_CHARS = 200


#: A worker outlives edits of its source files, so a file's lines are checked against the
#: disk -- but at most once a second: one ``stat`` per frame per failure was a fifth of the
#: failure path's cost in an error storm, where the same few locations fail thousands of times.
RECHECK_SECONDS = 1.0


class Root(NamedTuple):
    """Where the project is, normalised once per report (``prefix`` ends with a separator)."""

    prefix: str | None


_roots: dict[str | None, tuple[float, Root]] = {}


def make_root(project_root: str | None) -> Root:
    """The normalised project root; worked out at most once a second (``getcwd`` is a syscall,
    and the same root serves every failure of an error storm)."""
    now = time.monotonic()
    known = _roots.get(project_root)
    if known is not None and now - known[0] < RECHECK_SECONDS:
        return known[1]
    try:
        root = project_root if project_root is not None else os.getcwd()
        root = os.path.normcase(os.path.abspath(root))
        made = Root(root if root.endswith(os.sep) else root + os.sep)
    except Exception:  # a deleted working directory, a path that is not a str...
        made = Root(None)
    if len(_roots) >= 64:
        _roots.clear()
    _roots[project_root] = (now, made)
    return made


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
        return utf8_safe(filename), False
    path = os.path.abspath(filename)
    if root_prefix is None:
        return utf8_safe(path), False
    norm = os.path.normcase(path)
    if not norm.startswith(root_prefix):
        return utf8_safe(path), False
    relative = path[len(root_prefix) :]
    in_project = not any(part in _LIBRARY_DIRS for part in re.split(r"[\\/]", relative))
    if in_project:
        # A library directory excludes a file only when the project is not itself inside it
        # (an application deployed as an installed package is still the project).
        for prefix in _library_prefixes():
            if norm.startswith(prefix) and not root_prefix.startswith(prefix):
                in_project = False
                break
    return utf8_safe(relative), in_project


_MAX_CACHED = 4096
_lines_of: dict[str, tuple[float, list[str]]] = {}
_snippets: dict[tuple[str, int, int], dict[str, str] | None] = {}


def _source_lines(filename: str) -> list[str]:
    now = time.monotonic()
    known = _lines_of.get(filename)
    if known is not None and now - known[0] < RECHECK_SECONDS:
        return known[1]
    linecache.checkcache(filename)
    lines = linecache.getlines(filename)
    if len(_lines_of) >= _MAX_CACHED:
        _lines_of.clear()
    _lines_of[filename] = (now, lines)
    return lines


def _code_around(filename: str, lineno: int) -> dict[str, str] | None:
    """``{"41": "...", "42": "...", ...}``: the source around ``lineno``, or None if unreadable.

    The same code location fails again and again: its snippet is built once per version of
    the file (the list ``linecache`` holds for it), and handed out as a copy.
    """
    try:
        lines = _source_lines(filename)
    except Exception:
        return None
    key = (filename, lineno, id(lines))
    if key in _snippets:
        cached = _snippets[key]
        return dict(cached) if cached is not None else None
    code = _build_code(lines, lineno)
    if len(_snippets) >= _MAX_CACHED:
        _snippets.clear()
    _snippets[key] = code
    return dict(code) if code is not None else None


def _build_code(lines: list[str], lineno: int) -> dict[str, str] | None:
    if not lines or not 1 <= lineno <= len(lines):
        return None  # no source, or not the source this code was compiled from
    first = max(1, lineno - CODE_CONTEXT_LINES)
    last = min(len(lines), lineno + CODE_CONTEXT_LINES)
    code: dict[str, str] = {}
    for number in range(first, last + 1):
        line = lines[number - 1].rstrip("\r\n")
        code[str(number)] = utf8_safe(cut(line, MAX_CODE_LINE_CHARS))
    return code


def _frame(filename: str, lineno: int, method: str, root: Root, send_code: bool) -> Frame:
    file, in_project = _place(filename, root.prefix)
    frame: Frame = {
        "file": file,
        "lineNumber": lineno,
        "method": utf8_safe(method),
        "inProject": in_project,
    }
    if send_code:
        code = _code_around(filename, lineno)
        if code:
            frame["code"] = code
    return frame


_UNKNOWN_FRAME: Frame = {
    "file": "<unknown>",
    "lineNumber": 0,
    "method": "<unknown>",
    "inProject": False,
}


#: Whether a frame is not the user's stack (then it is left out): cheap, and never raises.
HideFrame = Callable[[FrameType], bool]


def frames_from_traceback(
    tb: TracebackType, root: Root, send_code: bool, hide: HideFrame | None = None
) -> list[Frame]:
    """Innermost first, the innermost :data:`MAX_FRAMES` only (the top of a deep recursion
    is where the error is; its bottom is the same few frames of worker plumbing).

    Frames *hide* says are not the user's stack (the package's own) are left out of those.
    """
    window: deque[TracebackType] = deque(maxlen=MAX_FRAMES)
    current: TracebackType | None = tb
    while current is not None:
        window.append(current)
        current = current.tb_next
    frames: list[Frame] = []
    for entry in reversed(window):
        try:
            if hide is not None and hide(entry.tb_frame):
                continue
            code = entry.tb_frame.f_code
            lineno = entry.tb_lineno
            frames.append(
                _frame(
                    plain_str(code.co_filename),
                    lineno if isinstance(lineno, int) else 0,
                    plain_str(code.co_name),
                    root,
                    send_code,
                )
            )
        except Exception:
            frames.append(_UNKNOWN_FRAME.copy())
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


def frames_from_text(text: str, root: Root, send_code: bool) -> list[Frame]:
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
