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
   ``logging`` and ``traceback_exclude_modules`` left out; ``send_code``:
   ``payload/official_frames.py``) but are found by this package's frame builder, which
   caches what an error storm repeats;
3. ``ignore_classes`` (``should_ignore``), then the "error" breadcrumb the official client
   leaves for every event it notifies;
4. the internal middleware and the ``before_notify`` callbacks: ``False`` drops the event,
   a changed severity is reported as ``userCallbackSetSeverity``;
5. the event's attributes, after the callbacks, become the v4 event, with ``params_filters``
   applied where the official encoder applies them (``payload/official_filters.py``); the
   stored breadcrumbs, untouched by the callbacks, as made once (``payload/official_crumbs.py``).

The package's own options apply on top of that, in the reporter (``redacted_keys``,
``before_notify``, ``enabled_release_stages``), and the run's session is counted only for
an event that passed everything.
"""

from __future__ import annotations

import builtins
import functools
import logging
import sys
from collections import deque
from collections.abc import Mapping
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..about import runtime_versions
from ..clock import now_iso
from ..payload.frames import HideFrame, Root, frames_from_text, frames_from_traceback
from ..payload.official_crumbs import crumb_dict, stored_v4
from ..payload.official_filters import Cleaner, cleaner_for
from ..payload.official_frames import place_frames
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


_NO_ROOT = Root(None)  # absolute files: the official rules place them afterwards
_event_class: type | None = None


def _task_event_class() -> type:
    """``bugsnag.event.Event`` with its stack made by this package (built on first use)."""
    global _event_class
    if _event_class is None:
        import bugsnag.event
        from bugsnag.error import Error as error_class
        from bugsnag.event import Event as OfficialEvent

        # as bugsnag.event finds it: the built-in from Python 3.11, else the backport, else none
        group_class: Any = getattr(builtins, "BaseExceptionGroup", None) or getattr(
            bugsnag.event, "BaseExceptionGroup", ()
        )

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
                #: the stored breadcrumbs, not yet copied (see ``breadcrumbs``)
                self._bugsnag_celery_crumbs: list[Any] | None = None
                super().__init__(exception, config, request_config, **options)

            @property
            def breadcrumbs(self) -> list[Any]:
                """The official property (a list of the event's own copies), copied on first use:
                a callback may change what it gets, the stored breadcrumbs never change."""
                stored, self._bugsnag_celery_crumbs = self._bugsnag_celery_crumbs, None
                if stored is not None:
                    self._breadcrumbs = [_copy_of(crumb) for crumb in stored]
                return list(self._breadcrumbs)

            def _generate_error_list(self, exception: BaseException, first: list[Any]) -> list[Any]:
                """The official method (bugsnag 4.x, ``Event._generate_error_list``) with its class
                names found by :func:`_class_name`: the same names, without a scan of every
                loaded module per built-in exception (~8 us each)."""
                errors = [error_class(_class_name(exception), str(exception), first)]
                if not isinstance(exception, BaseException):
                    return errors
                while True:
                    if exception.__cause__:
                        exception = exception.__cause__
                    elif exception.__context__ and not exception.__suppress_context__:
                        exception = exception.__context__
                    else:
                        break
                    stack = self._generate_stacktrace(exception.__traceback__)
                    errors.append(error_class(_class_name(exception), str(exception), stack))
                if isinstance(self._original_error, group_class):
                    for sub in self._original_error.exceptions:
                        stack = self._generate_stacktrace(sub.__traceback__)
                        errors.append(error_class(_class_name(sub), str(sub), stack))
                return errors

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
                placed = place_frames(frames, self.config, self._code_for)
                return cast("list[dict[str, Any]]", placed)

        _event_class = TaskEvent
    return _event_class


def _class_name(exc: BaseException) -> str:
    """``bugsnag.utils.fully_qualified_class_name(exc)``, the same name, found at once for an
    exception without ``__module__`` (built-in ones: ``ValueError()`` has none).

    For those the official function asks ``inspect.getmodule``, which, finding no module
    name, looks for the object's source file among every loaded module's and, an instance
    having no file, answers None: the bare class name.
    """
    if hasattr(exc, "__module__"):
        from bugsnag.utils import fully_qualified_class_name

        return str(fully_qualified_class_name(exc))  # type: ignore[no-untyped-call]
    cls = exc.__class__
    return str(getattr(cls, "__qualname__", None) or cls.__name__)


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


def _first_shown(frame: FrameType | None, hide: HideFrame) -> FrameType | None:
    """*frame*, or the first frame above it that is not ours (a wrapper called by another)."""
    while frame is not None and hide(frame):
        frame = frame.f_back
    return frame


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
    caller: FrameType | None = None,
) -> Event | None:
    """The event the official client would send for *exc*, or None where its policy drops it.

    *caller*: the frame that called the task wrapper, where it is known (else it is looked
    for on this thread's stack).
    """
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
        "app_type": ours.app_type,  # the worker's, as its sessions' (the official one unless told otherwise)
        "metadata": dict(metadata),
        "feature_flag_delegate": client._context.feature_flag_delegate,  # type: ignore[attr-defined]
    }
    if grouping_hash:
        options["grouping_hash"] = grouping_hash
    if user:
        options["user"] = dict(user)
    # The official failure handler gets Celery's traceback, which starts in the frame that
    # called the task (``trace_task``); ours starts inside the task: that frame is added.
    outer = None
    if unhandled and traceback_text is None:
        outer = _first_shown(caller, hide_frame) if caller is not None else _caller_of_the_wrapper(hide_frame)
    # The official constructor deep-copies every breadcrumb (~10 us each: 20 of them were most
    # of the cost of an event); it is given none. The event copies them (a level: each one's
    # metadata copied, what a callback may change) only if something asks for
    # ``event.breadcrumbs``; untouched, they are sent as stored (see ``_crumb_v4``).
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
    event._bugsnag_celery_crumbs = list(crumbs or ())
    if config.should_ignore(event.errors):  # type: ignore[attr-defined]
        return None
    leave = getattr(client, "_leave_breadcrumb_for_event", None)
    if leave is not None:
        leave(event)
    initial_severity, initial_reason = event.severity, dict(event.severity_reason)
    passed: list[bool] = []
    # ``MiddlewareStack.run`` makes a function that refers to itself (a reference cycle) and
    # holds the callback it is given: were the callback to hold the event, the event --
    # its exception, traceback and frames -- would wait for the cyclic garbage collector,
    # which then cost more than the rest of the event (measured: ~150 us per failing run
    # in an error storm). The callback reaches the event through a list emptied after.
    held = [event]

    def delivered() -> None:
        passed.append(True)

    def run_callbacks() -> None:
        config.middleware.run(held[0], delivered)  # type: ignore[attr-defined]

    try:
        config.internal_middleware.run(event, run_callbacks)  # type: ignore[attr-defined]
    finally:
        held.clear()
    if not passed:
        return None  # a callback returned False
    if event.severity != initial_severity:
        event.severity_reason = {"type": "userCallbackSetSeverity"}
    else:
        event.severity_reason = initial_reason
    return _as_v4(event, config, ours)


@functools.lru_cache(maxsize=8)
def _cleaner(params_filters: tuple[object, ...], redacted_keys: tuple[str, ...]) -> Cleaner:
    """The cleaner of the official ``params_filters`` (compared in lower case) and our keys."""
    return cleaner_for(tuple(str(f).lower() for f in params_filters), redacted_keys)


def _as_v4(event: object, config: object, ours: Options) -> Event:
    """The official event's attributes, after the callbacks, as the v4 event (``Event._payload``).

    ``params_filters`` where the official encoder applies them (dicts of ``metaData``,
    ``user``, ``device`` and breadcrumbs' ``metaData``, not inside lists) and this package's
    ``redacted_keys`` everywhere, in one walk that copies only what it changes.
    """
    filters = tuple(getattr(config, "params_filters", None) or ())
    try:
        clean = _cleaner(filters, ours.redacted_keys)
    except TypeError:  # an unhashable filter: worked out each time
        clean = _cleaner.__wrapped__(filters, ours.redacted_keys)
    versions: dict[str, str] = {**runtime_versions(), **(getattr(event, "runtime_versions", None) or {})}
    device = clean.dict({"hostname": event.hostname, "runtimeVersions": versions})  # type: ignore[attr-defined]
    stored = event._bugsnag_celery_crumbs  # type: ignore[attr-defined]
    crumbs: list[JSONObject]
    if stored is not None and not ours.before_notify:  # as stored, and nothing of ours may change them
        crumbs = stored_v4(stored, clean)
    else:
        crumbs = [crumb_dict(crumb, clean) for crumb in event.breadcrumbs]  # type: ignore[attr-defined]
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
