"""Failure -> event: building a BugSnag v4 event and handing it to the process's sender.

This is the failure path. It runs on the task's thread only for as long as it takes to
build and encode the event (well under a millisecond for an ordinary traceback); merging
and the HTTP request happen on the process's background sender (``transport/sender.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from types import CodeType, FrameType
from typing import Any, cast

from ..about import runtime_versions
from ..clock import now_iso
from ..delivery.flusher import LostEvents
from ..logs import log_every
from ..options.declared import Options
from ..payload.encoding import encode_event
from ..payload.exceptions import exception_entries
from ..payload.redaction import Redacted, redact, scrub
from ..payload.shapes import JSON, Event, SessionRef, SeverityReason, session_reference
from ..payload.text import type_name
from ..payload.wire import EVENTS_VERSION
from ..sessions.counts import Release
from ..sessions.current import PAUSED_MARK, Session
from ..transport.http import Request
from ..transport.sender import Sender
from . import official_event
from .official_event import configured_client

__all__ = ["Reporter", "UNHANDLED_REASON", "raised_while_paused", "hide_frames_of"]

logger = logging.getLogger("bugsnag_celery")

UNHANDLED_REASON: SeverityReason = {
    "type": "unhandledExceptionMiddleware",
    "attributes": {"framework": "Celery"},
}

# The hooks layer (the task wrapper, the signal handlers) is ours: its frames are never the
# user's stack. Told apart by their module, as Sentry does (``bugsnag_celery.hooks.*``, named
# from this package's own name), when the traceback is turned into frames; and by their code
# for the task wrapper, which runs with its task's globals and so carries the task's module.
_HOOKS_PREFIX = __name__.rsplit(".", 2)[0] + ".hooks."
_hidden_codes: set[CodeType] = set()


def hide_frames_of(codes: Iterable[CodeType]) -> None:
    """Leave the frames running *codes* out of every event's stack trace (the task wrapper's:
    its frames carry its task's module name, not ours)."""
    _hidden_codes.update(codes)


def _is_own_frame(frame: FrameType) -> bool:
    if frame.f_code in _hidden_codes:
        return True
    module = frame.f_globals.get("__name__")
    return isinstance(module, str) and module.startswith(_HOOKS_PREFIX)


class Reporter:
    """Builds and sends the events of one configured app."""

    def __init__(
        self, options: Options, release: Release, spool: Callable[[list[Request]], bool] | None
    ) -> None:
        """*spool* keeps what the sender could not deliver (the app's broker queue)."""
        self.options = options
        self.release = release
        self.notify_endpoint = options.endpoints.notify
        self.sender = Sender(spool, timeout=options.delivery_timeout)
        #: Events this process lost (refused, unanswered twice, neither sent nor spooled):
        #: the flusher reports them with the counts, for ``celery bugsnag status``.
        self.lost = LostEvents()
        #: One bound method for every event handed over (not one more object per event).
        self._note_fate = self.lost.note
        #: The missing key was said (here, or by the worker's start, whose children inherit it):
        #: one warning, not one more per process.
        self.warned_no_key = False

    # ------------------------------------------------------------------ reporting

    def report(
        self,
        exc: BaseException,
        *,
        unhandled: bool,
        severity: str,
        severity_reason: SeverityReason,
        context: str | None,
        session: Session | None,
        metadata: Mapping[str, object] | None = None,
        grouping_hash: str | None = None,
        user: Mapping[str, object] | None = None,
        traceback_text: str | None = None,
        session_override: SessionRef | None = None,
        caller: FrameType | None = None,
    ) -> bool:
        """Build *exc*'s event, pass it through the project's policy, count it, hand it over.

        The policy is the official client's configuration where it is configured in the
        process (``official_event.py``), then this package's options on top. The run's
        session counts the event only once it is handed to the sender: BugSnag learns that
        a session had an error only through an event carrying it, so one the policy drops
        leaves its run as healthy as it looks to BugSnag. True if handed over. Never raises
        for a bad exception (the payload layer degrades instead).
        """
        opts = self.options
        if not opts.sends:
            return False
        if not opts.api_key:
            if not self.warned_no_key:
                self.warned_no_key = True
                logger.warning("bugsnag_celery: no API key; events are not sent")
            return False
        client = configured_client()
        official: Event | None = None
        if client is not None:
            try:
                official = official_event.build(
                    client, exc, unhandled=unhandled, severity=severity, severity_reason=severity_reason,
                    context=context, metadata=metadata or {}, grouping_hash=grouping_hash, user=user,
                    traceback_text=traceback_text, hide_frame=_is_own_frame, ours=opts, caller=caller,
                )  # fmt: skip
            except Exception:
                # A hostile exception (its ``__str__`` raises...) or a callback of the project's
                # that raises: the official code does not survive what ours does. The crash is
                # still reported, by this package's rules, rather than lost.
                log_every("official-build", 60.0, logging.ERROR,
                          "bugsnag_celery: the official client could not build an event for %s; "
                          "sent as bugsnag_celery builds it", type_name(exc))  # fmt: skip
                client = None
            else:
                if official is None:
                    return False  # the official client's policy drops it
        if official is not None:
            event = official  # redacted_keys applied where params_filters are (official_event.py)
        else:
            event = self.build_event(
                exc, unhandled=unhandled, severity=severity, severity_reason=severity_reason,
                context=context, metadata=metadata, grouping_hash=grouping_hash, user=user,
                traceback_text=traceback_text,
            )  # fmt: skip
        paused = session is not None and raised_while_paused(exc)
        return self._finish(event, None if paused else session, session_override)

    def take_over(self, event: dict[str, Any], session: Session | None) -> bool:
        """An event the official client built and sent through its callbacks and filters
        (``bugsnag.notify`` in a task run), as it encoded it: this package's options on top,
        counted in *session*, sent.

        It is a task event already: its task context was given before the callbacks
        (``hooks/official_delivery.py``), so what they changed is kept. The official payload
        names the release stage outside ``app``: put where a crash event has it (and the
        worker's ``app_type`` where a callback left none, as for a crash).
        """
        opts = self.options
        if not opts.sends or not opts.api_key:
            return False
        event.pop("session", None)  # the official client's own session tracking: not this run's
        app = event.get("app") or {}
        event["app"] = {"version": app.get("version"), "releaseStage": event.get("releaseStage"),
                        "type": app.get("type") or self.release.app_type}  # fmt: skip
        return self._finish(self._ours_on_top(cast("Event", event)), session, None)

    def _finish(self, event: Event, session: Session | None, session_override: SessionRef | None) -> bool:
        """This package's callbacks; then, if it is still to be sent, counted and handed over."""
        for callback in self.options.before_notify:
            try:
                # The option's callbacks take a plain dict (which an event is at run time).
                if callback(cast("dict[str, Any]", event)) is False:
                    return False
            except Exception:
                logger.exception("bugsnag_celery: before_notify callback %r raised; skipped", callback)
        if session_override is not None:
            event["session"] = session_override  # a crash seen by the main process (hooks/failures.py)
        elif session is not None and not session.paused:
            if event["unhandled"]:
                session.unhandled += 1
            else:
                session.handled += 1
            event["session"] = session_reference(
                session.id, session.started_at, session.handled, session.unhandled
            )
        self.submit(event)
        return True

    def build_event(
        self,
        exc: BaseException,
        *,
        unhandled: bool,
        severity: str,
        severity_reason: SeverityReason,
        context: str | None,
        metadata: Mapping[str, object] | None = None,
        grouping_hash: str | None = None,
        user: Mapping[str, object] | None = None,
        traceback_text: str | None = None,
    ) -> Event:
        """The event by this package's own rules (no official client configured); no session yet."""
        opts = self.options
        entries = exception_entries(
            exc,
            project_root=opts.project_root,
            send_code=opts.send_code,
            traceback_text=traceback_text,
            hide_frame=_is_own_frame,  # our own frames are not the user's stack
        )
        meta: dict[str, JSON] = {}
        for tab, values in (metadata or {}).items():
            # the task tab's arguments are redacted where it is built: not walked twice
            meta[str(tab)] = values if type(values) is Redacted else redact(values, opts.redacted_keys)
        event: Event = {
            "exceptions": entries,
            "unhandled": unhandled,
            "severity": severity,
            "severityReason": severity_reason,
            "context": context,
            "metaData": meta,
            "user": redact(dict(user), opts.redacted_keys) if user else {},
            "app": {"version": self.release.app_version, "releaseStage": self.release.release_stage,
                    "type": self.release.app_type},
            "device": {"hostname": self.release.hostname, "time": now_iso(),
                       "runtimeVersions": runtime_versions()},
            "breadcrumbs": [],
            "featureFlags": [],
        }  # fmt: skip
        if grouping_hash:
            event["groupingHash"] = grouping_hash
        return event

    def _ours_on_top(self, event: Event) -> Event:
        """This package's ``redacted_keys`` over what the official policy let through."""
        keys = self.options.redacted_keys
        event["metaData"] = {  # the task tab is redacted where it is built: not walked twice
            str(tab): values if type(values) is Redacted else scrub(values, keys)  # type: ignore[misc]
            for tab, values in event["metaData"].items()
        }
        event["user"] = scrub(event["user"], keys) if event["user"] else {}  # type: ignore[typeddict-item]
        for crumb in event["breadcrumbs"]:
            if crumb.get("metaData"):
                crumb["metaData"] = scrub(crumb["metaData"], keys)  # type: ignore[assignment]
        return event

    # ------------------------------------------------------------------ sending

    def submit(self, event: Event) -> None:
        """Encode (here, once: see ``Request.encoded``) and hand over to the sender thread,
        which merges it with other queued events into one request."""
        api_key = self.options.api_key
        if api_key:
            self.sender.submit(
                Request(self.notify_endpoint, api_key, EVENTS_VERSION, encoded=[encode_event(event)],
                        on_done=self._note_fate)
            )  # fmt: skip


def raised_while_paused(exc: BaseException) -> bool:
    try:
        return bool(getattr(exc, PAUSED_MARK, False))
    except Exception:
        return False
