"""A crash or handled event under the project's own BugSnag policy: the official client's configuration.

Most projects that add this package configured the official notifier (``bugsnag``) long
before, and that configuration is their policy: where events may go, what must never
leave, what is noise, what each report carries. Where the official client is configured in
the process (imported, with an API key), every event this package builds goes through that
policy exactly as ``bugsnag.notify`` would take it, in the same order as ``Client.notify``
and ``Client.deliver``:

1. ``notify_release_stages`` (``should_notify``) and, for a crash, ``auto_notify``;
2. an official :class:`bugsnag.event.Event` -- a subclass, so callbacks get the real thing --
   built with the options the official Celery failure handler passes; its frames follow
   the official rules (``lib_root`` first, then ``project_root``; the ``bugsnag`` package,
   ``logging`` and ``traceback_exclude_modules`` left out; ``send_code``) but are made by
   this package's frame builder, which caches what an error storm repeats;
3. ``ignore_classes`` (``should_ignore``), then the "error" breadcrumb the official client
   leaves for every event it notifies;
4. the internal middleware and the ``before_notify`` callbacks: ``False`` drops the event,
   a changed severity is reported as ``userCallbackSetSeverity``;
5. the event's attributes, after the callbacks, become the v4 event, with ``params_filters``
   applied where the official encoder applies them (``payload/official_filters.py``).

The package's own options apply on top of that, in the reporter (``redacted_keys``,
``before_notify``, ``enabled_release_stages``), and the run's session is counted only for
an event that passed everything.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..about import runtime_versions
from ..clock import now_iso
from ..payload.frames import HideFrame, Root, frames_from_text, frames_from_traceback
from ..payload.official_filters import cleaner_for
from ..payload.shapes import Event, Frame, JSONObject, SeverityReason

if TYPE_CHECKING:
    from ..options.declared import Options

__all__ = [
    "OfficialClient",
    "configured_client",
    "filled_in",
    "build",
    "is_task_event",
]

logger = logging.getLogger("bugsnag_celery")


class OfficialClient(Protocol):
    """The parts of ``bugsnag.Client`` this module uses (its default client, ``bugsnag.legacy``)."""

    configuration: object


#: ``id()`` of official configurations whose API key this package filled in (the worker's
#: client was never configured by the project: its policy is this package's options).
_filled_in: set[int] = set()


def filled_in(config: object, ours: bool) -> None:
    """Mark (or unmark) *config* as configured by this package, not by the project."""
    if ours:
        _filled_in.add(id(config))
    else:
        _filled_in.discard(id(config))


def configured_client() -> OfficialClient | None:
    """The official default client, if ``bugsnag`` is imported and the project configured it
    (an API key it set itself: one this package filled in does not make it the project's policy).

    One dictionary look-up when ``bugsnag`` was never imported: the failure path of projects
    without it pays nothing else.
    """
    module = sys.modules.get("bugsnag")
    if module is None:
        return None
    try:
        config = module.configuration
        if not getattr(config, "api_key", None) or id(config) in _filled_in:
            return None
        client: OfficialClient = module.legacy.default_client
        return client
    except Exception:
        return None


# --------------------------------------------------------------------------- the official rules


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


def _official_frames(
    frames: list[Frame], config: object, code_for: Callable[[str, int], object]
) -> list[Frame]:
    """Our frames (files absolute: built with no project root, no code) placed by the official
    rules, with the official client's source window (``Event._code_for``: seven lines, moved
    back from a file's end; None without ``send_code``)."""
    lib_root = _official_root(getattr(config, "lib_root", None))
    project_root = _official_root(getattr(config, "project_root", None))
    excluded = _excluded_paths(config)
    placed: list[Frame] = []
    for frame in frames:
        file = frame["file"]
        if not file.startswith("<"):
            file = os.path.abspath(file)
        if file.startswith(excluded):
            continue
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
        placed.append(out)
    return placed


_NO_ROOT = Root(None)  # absolute files: the official rules place them afterwards
_event_class: type | None = None


def _task_event_class() -> type:
    """``bugsnag.event.Event`` with its stack made by this package (built on first use)."""
    global _event_class
    if _event_class is None:
        from bugsnag.event import Event as OfficialEvent

        class TaskEvent(OfficialEvent):
            """The official event, its frames made fast (the rest is the official code)."""

            def __init__(
                self,
                exception: BaseException,
                config: object,
                request_config: object,
                *,
                hide: HideFrame | None,
                text: str | None,
                outer: FrameType | None,
                **options: object,
            ) -> None:
                self._bugsnag_celery_hide = hide
                self._bugsnag_celery_text = text
                self._bugsnag_celery_outer = outer
                super().__init__(exception, config, request_config, **options)

            def _generate_stacktrace(
                self, tb: TracebackType | None, source_func: object = None
            ) -> list[dict[str, Any]]:  # the official signature: frames as plain dicts
                if tb is not None:
                    frames = frames_from_traceback(tb, _NO_ROOT, False, self._bugsnag_celery_hide)
                elif self._bugsnag_celery_text:
                    frames = frames_from_text(self._bugsnag_celery_text, _NO_ROOT, False)
                    self._bugsnag_celery_text = None  # the raised exception's frames only
                else:
                    frames = []
                outer, self._bugsnag_celery_outer = self._bugsnag_celery_outer, None
                if outer is not None:  # the raised exception's traceback only
                    frames.append(_frame_of(outer))
                placed = _official_frames(frames, self.config, self._code_for)
                return cast("list[dict[str, Any]]", placed)

        _event_class = TaskEvent
    return _event_class


def is_task_event(event: object) -> bool:
    """Whether an official event is one this module built (the adoption's callback lets it be)."""
    return _event_class is not None and isinstance(event, _event_class)


def _caller_of_the_wrapper(hide: HideFrame) -> FrameType | None:
    """The first frame above ours on this thread's stack: what called the task wrapper."""
    frame: FrameType | None = sys._getframe(1)
    inside = False
    while frame is not None:
        if hide(frame):
            inside = True
        elif inside:
            return frame
        frame = frame.f_back
    return None


def _copy_of(crumb: Any) -> Any:
    copy = crumb.__class__.__new__(crumb.__class__)
    copy.__dict__.update(crumb.__dict__)
    copy.metadata = dict(crumb.metadata or {})
    return copy


def _frame_of(frame: FrameType) -> Frame:
    code = frame.f_code
    return {"file": code.co_filename, "lineNumber": frame.f_lineno or 0, "method": code.co_name,
            "inProject": False}  # fmt: skip


# --------------------------------------------------------------------------- building


def build(
    client: OfficialClient,
    exc: BaseException,
    *,
    unhandled: bool,
    severity: str,
    severity_reason: SeverityReason,
    context: str | None,
    metadata: Mapping[str, object],
    grouping_hash: str | None,
    user: Mapping[str, object] | None,
    traceback_text: str | None,
    hide_frame: HideFrame,
    ours: Options,
) -> Event | None:
    """The event the official client would send for *exc*, or None where its policy drops it."""
    from bugsnag.configuration import RequestConfiguration

    config = client.configuration
    # The release is the worker's (its sessions are counted in it: events must land in the
    # same one); it is the official client's own unless the worker was given another.
    stages = getattr(config, "notify_release_stages", None)
    if stages is not None and ours.release_stage not in stages:
        return None  # as ``should_notify()``, for the worker's release stage
    if unhandled and not getattr(config, "auto_notify", True):
        return None
    options: dict[str, object] = {
        "unhandled": unhandled,
        "severity": severity,
        "severity_reason": dict(severity_reason),
        "context": context,
        "release_stage": ours.release_stage,
        "app_version": ours.app_version,
        "metadata": dict(metadata),
        "feature_flag_delegate": client._context.feature_flag_delegate,  # type: ignore[attr-defined]
    }
    if grouping_hash:
        options["grouping_hash"] = grouping_hash
    if user:
        options["user"] = dict(user)
    # The official failure handler gets Celery's traceback, which starts in the frame that
    # called the task (``trace_task``); ours starts inside the task: that frame is added.
    outer = _caller_of_the_wrapper(hide_frame) if unhandled and traceback_text is None else None
    # The official constructor deep-copies every breadcrumb (~10 us each: 20 of them were most
    # of the cost of an event); it is given none, and gets copies of a level (each one's
    # metadata copied: what a callback may change) -- the same protection, a fifth the cost.
    crumbs_var = sys.modules["bugsnag.breadcrumbs"]._breadcrumbs
    crumbs = crumbs_var.get(None)
    token = crumbs_var.set(deque(maxlen=1))
    try:
        event = _task_event_class()(
            exc,
            config,
            RequestConfiguration.get_instance(),  # type: ignore[no-untyped-call]
            hide=hide_frame,
            text=traceback_text,
            outer=outer,
            traceback=exc.__traceback__,
            **options,
        )
    finally:
        crumbs_var.reset(token)
    event._breadcrumbs = [_copy_of(crumb) for crumb in crumbs or ()]
    if config.should_ignore(event.errors):  # type: ignore[attr-defined]
        return None
    leave = getattr(client, "_leave_breadcrumb_for_event", None)
    if leave is not None:
        leave(event)
    initial_severity, initial_reason = event.severity, dict(event.severity_reason)
    passed: list[bool] = []

    def delivered() -> None:
        passed.append(True)

    def run_callbacks() -> None:
        config.middleware.run(event, delivered)  # type: ignore[attr-defined]

    config.internal_middleware.run(event, run_callbacks)  # type: ignore[attr-defined]
    if not passed:
        return None  # a callback returned False
    if event.severity != initial_severity:
        event.severity_reason = {"type": "userCallbackSetSeverity"}
    else:
        event.severity_reason = initial_reason
    return _as_v4(event, config, ours)


def _as_v4(event: object, config: object, ours: Options) -> Event:
    """The official event's attributes, after the callbacks, as the v4 event (``Event._payload``).

    ``params_filters`` where the official encoder applies them (dicts of ``metaData``,
    ``user``, ``device`` and breadcrumbs' ``metaData``, not inside lists) and this package's
    ``redacted_keys`` everywhere, in one walk that copies only what it changes.
    """
    filters = tuple(str(f).lower() for f in getattr(config, "params_filters", None) or ())
    clean = cleaner_for(filters, ours.redacted_keys)
    versions: dict[str, str] = {**runtime_versions(), **(getattr(event, "runtime_versions", None) or {})}
    device = clean.dict({"hostname": event.hostname, "runtimeVersions": versions})  # type: ignore[attr-defined]
    crumbs: list[JSONObject] = []
    for crumb in event.breadcrumbs:  # type: ignore[attr-defined]
        metadata = crumb.metadata
        crumbs.append({"timestamp": crumb.timestamp, "name": crumb.message, "type": crumb.type.value,
                       "metaData": clean.dict(metadata) if metadata else {}})  # type: ignore[dict-item]  # fmt: skip
    app_type = event.app_type or ours.app_type  # type: ignore[attr-defined]
    out: Event = {
        "exceptions": [error.to_dict() for error in event.errors],  # type: ignore[attr-defined]
        "unhandled": bool(event.unhandled),  # type: ignore[attr-defined]
        "severity": event.severity,  # type: ignore[attr-defined]
        "severityReason": event.severity_reason,  # type: ignore[attr-defined]
        "context": event.context,  # type: ignore[attr-defined]
        "metaData": {tab: clean.dict(values) for tab, values in event.metadata.items()},  # type: ignore[attr-defined,misc]
        "user": clean.dict(event.user or {}),  # type: ignore[attr-defined,typeddict-item]
        "app": {"version": event.app_version, "releaseStage": event.release_stage, "type": app_type},  # type: ignore[attr-defined]
        "device": {**device, "time": now_iso()},  # type: ignore[typeddict-item]
        "breadcrumbs": crumbs,
        "featureFlags": event._feature_flag_delegate.to_json(),  # type: ignore[attr-defined]
    }
    grouping = event.grouping_hash  # type: ignore[attr-defined]
    if grouping:
        out["groupingHash"] = str(grouping)
    return out
