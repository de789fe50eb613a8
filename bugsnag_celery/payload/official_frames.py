"""Stack frames placed by the official client's rules: ``lib_root``, ``project_root``,
``traceback_exclude_modules``, ``send_code``.

Events built under the project's official BugSnag policy (``reporting/official_event.py``)
must group with the project's other events, so their frames are what the official client
makes of the same traceback: files under ``lib_root`` relative to it (not in project),
then under ``project_root`` relative to it (in project); the ``bugsnag`` package,
``logging`` and the modules of ``traceback_exclude_modules`` left out; the official source
window. This package's frame builder (``frames.py``) finds the frames; this module places
them. An error storm fails in the same few places thousands of times, so each placement is
kept (bounded), and copied out per event.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

from .shapes import Frame

__all__ = ["place_frames"]

logger = logging.getLogger("bugsnag_celery")


def _official_root(path: object) -> str | None:
    if not path:
        return None
    text = str(path)
    return text if text.endswith(os.sep) else text + os.sep


def _excluded_paths(config: object) -> tuple[str, ...]:
    """What the official client leaves out of a stack: its own package, ``logging``, and the
    modules of ``traceback_exclude_modules`` (by their file)."""
    try:
        return _excluded_paths_of(tuple(getattr(config, "traceback_exclude_modules", None) or ()))
    except TypeError:  # something unhashable in the list: worked out each time
        return _excluded_paths_of.__wrapped__(tuple(getattr(config, "traceback_exclude_modules", None) or ()))


@functools.lru_cache(maxsize=8)
def _excluded_paths_of(modules: tuple[object, ...]) -> tuple[str, ...]:
    import logging as logging_module

    import bugsnag

    paths = [os.path.dirname(bugsnag.__file__), os.path.dirname(logging_module.__file__)]
    for module in modules:
        try:
            file = module.__file__  # type: ignore[attr-defined]
            paths.append(file[:-1] if file.endswith(".pyc") else file)
        except Exception:
            logger.debug("bugsnag_celery: cannot exclude %r (no file)", module)
    return tuple(paths)


#: A placed frame per (file, line, method, the official rules in force): an error storm
#: fails in the same few places thousands of times, and placing a frame (an ``abspath``, the
#: roots, seven lines of source) cost ~10 us each. Cleared wholesale at :data:`_MAX_PLACED`.
_placed: dict[tuple[object, ...], Frame | None] = {}
_MAX_PLACED = 4096


def place_frames(frames: list[Frame], config: object, code_for: Callable[[str, int], object]) -> list[Frame]:
    """Our frames (files absolute: built with no project root, no code) placed by the official
    rules, with the official client's source window (``Event._code_for``: seven lines, moved
    back from a file's end; None without ``send_code``).

    Each frame is a fresh dict (a callback may change ``event.stacktrace``): what is kept
    between events is the placement, copied out.
    """
    lib_root = _official_root(getattr(config, "lib_root", None))
    project_root = _official_root(getattr(config, "project_root", None))
    excluded = _excluded_paths(config)
    rules = (lib_root, project_root, excluded, bool(getattr(config, "send_code", True)))
    placed: list[Frame] = []
    for frame in frames:
        key = (frame["file"], frame["lineNumber"], frame["method"], rules)
        try:
            done = _placed[key]
        except KeyError:
            done = _place(frame, lib_root, project_root, excluded, code_for)
            if len(_placed) >= _MAX_PLACED:
                _placed.clear()
            _placed[key] = done
        except TypeError:  # an unhashable root or module path: placed each time
            done = _place(frame, lib_root, project_root, excluded, code_for)
        if done is not None:
            out: Frame = {**done}
            if "code" in done:
                out["code"] = dict(done["code"])
            placed.append(out)
    return placed


def _place(
    frame: Frame,
    lib_root: str | None,
    project_root: str | None,
    excluded: tuple[str, ...],
    code_for: Callable[[str, int], object],
) -> Frame | None:
    """One frame by the official rules; None where the official client leaves it out."""
    file = frame["file"]
    if not file.startswith("<"):
        file = os.path.abspath(file)
    if file.startswith(excluded):
        return None
    code = code_for(file, frame["lineNumber"])
    in_project = False
    if lib_root and file.startswith(lib_root):
        file = file[len(lib_root) :]
    elif project_root and file.startswith(project_root):
        file = file[len(project_root) :]
        in_project = True
    out: Frame = {
        "file": file,
        "lineNumber": frame["lineNumber"],
        "method": frame["method"],
        "inProject": in_project,
    }
    if isinstance(code, dict) and code:
        out["code"] = {str(n): str(line) for n, line in code.items()}
    return out
