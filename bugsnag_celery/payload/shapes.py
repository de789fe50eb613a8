"""The shapes of what BugSnag receives: the v4 event and the v1.0 session payload, as types.

Why types and not plain dicts: an event is built in several modules (the exception
chain here in ``payload/``, the event around it in ``reporting/``, the ``task`` tab, the
session reference) and read by others (the encoder that trims it, the tests, the collector
that stands in for BugSnag). With one declaration of each field, a misspelt key or a
wrong value type is a type error in whichever of them makes it, not an event BugSnag
files without the field. They cost nothing at run time: a ``TypedDict`` is a plain
``dict``.

Optional fields are declared in ``total=False`` classes (``NotRequired`` needs Python 3.11
or ``typing_extensions``; the package supports 3.9 without it). Field names are BugSnag's,
camelCase as on the wire.
"""

from __future__ import annotations

from typing import TypedDict, Union

from ..sessions.current import EventCounts

__all__ = [
    "JSON", "JSONObject", "Frame", "ExceptionEntry", "SeverityReason", "EventCounts", "SessionRef",
    "session_reference", "EventApp", "EventDevice", "Event", "Notifier", "SessionApp", "SessionDevice",
    "SessionCount", "SessionPayload",
]  # fmt: skip

#: A JSON value: what redacted task arguments, metadata tabs and users are made of.
JSON = Union[None, bool, int, float, str, list["JSON"], dict[str, "JSON"]]
#: A JSON object.
JSONObject = dict[str, JSON]


# ---------------------------------------------------------------------- the exception chain


class _FrameFields(TypedDict):
    file: str
    lineNumber: int
    method: str
    inProject: bool


class Frame(_FrameFields, total=False):
    """One stack frame; ``code`` (the source around the line, by line number) when it is known."""

    code: dict[str, str]


class ExceptionEntry(TypedDict):
    """One exception of the chain, innermost frame first (``type`` is always ``"python"``)."""

    errorClass: str
    message: str
    type: str
    stacktrace: list[Frame]


# ---------------------------------------------------------------------- the event around it


class _SeverityReasonFields(TypedDict):
    type: str


class SeverityReason(_SeverityReasonFields, total=False):
    """Why the event has its severity: ``handledException``, ``unhandledExceptionMiddleware``..."""

    attributes: dict[str, str]


class SessionRef(TypedDict):
    """The session an event belongs to: BugSnag counts a session with an unhandled event as crashed."""

    id: str
    startedAt: str
    events: EventCounts


def session_reference(session_id: str, started_at: str, handled: int, unhandled: int) -> SessionRef:
    """An event's ``session``: the one place its shape is written."""
    return {"id": session_id, "startedAt": started_at, "events": {"handled": handled, "unhandled": unhandled}}


class EventApp(TypedDict):
    version: str | None
    releaseStage: str
    type: str


class EventDevice(TypedDict):
    hostname: str
    time: str
    runtimeVersions: dict[str, str]


class _EventFields(TypedDict):
    exceptions: list[ExceptionEntry]
    unhandled: bool
    severity: str
    severityReason: SeverityReason
    context: str | None
    #: tab name -> its values, redacted (the ``task`` tab: see ``reporting/task_tab.py``)
    metaData: dict[str, JSON]
    #: redacted; ``{}`` when no user was given
    user: JSON
    app: EventApp
    device: EventDevice
    breadcrumbs: list[JSONObject]
    featureFlags: list[JSONObject]


class Event(_EventFields, total=False):
    """A v4 event, as ``Reporter.build_event`` makes it and ``before_notify`` callbacks see it."""

    groupingHash: str
    session: SessionRef


# ---------------------------------------------------------------------- the v1.0 session payload


class Notifier(TypedDict):
    name: str
    url: str
    version: str


class SessionApp(TypedDict):
    version: str | None
    releaseStage: str
    type: str


class SessionDevice(TypedDict):
    hostname: str
    runtimeVersions: dict[str, str]


class SessionCount(TypedDict):
    """Sessions started in one UTC minute (``startedAt`` is the minute)."""

    startedAt: str
    sessionsStarted: int


class SessionPayload(TypedDict):
    """The body of one request to the session API: one release group's counts by minute."""

    notifier: Notifier
    app: SessionApp
    device: SessionDevice
    sessionCounts: list[SessionCount]
