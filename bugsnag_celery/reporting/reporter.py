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
from ..options.declared import Options
from ..payload.encoding import encode_json
from ..payload.exceptions import exception_entries
from ..payload.redaction import Redacted, redact
from ..payload.shapes import JSON, Event, SessionRef, SeverityReason, session_reference
from ..payload.wire import EVENTS_VERSION
from ..sessions.counts import Release
from ..sessions.current import PAUSED_MARK, Session
from ..transport.http import Request
from ..transport.sender import Sender

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
        self._warned_no_key = False

    # ------------------------------------------------------------------ building

    def build_event(
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
    ) -> Event:
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
        if session_override is not None:
            event["session"] = session_override  # a crash seen by the main process (hooks/failures.py)
        elif session is not None and not session.paused and not raised_while_paused(exc):
            if unhandled:
                session.unhandled += 1
            else:
                session.handled += 1
            event["session"] = session_reference(
                session.id, session.started_at, session.handled, session.unhandled
            )
        return event

    # ------------------------------------------------------------------ sending

    def send(self, event: Event) -> bool:
        """Run callbacks, encode, hand over. True if it was handed to the sender."""
        opts = self.options
        if not opts.sends:
            return False
        if not opts.api_key:
            if not self._warned_no_key:
                self._warned_no_key = True
                logger.warning("bugsnag_celery: no API key configured; events are not sent")
            return False
        for callback in opts.before_notify:
            try:
                # The option's callbacks take a plain dict (which an event is at run time).
                if callback(cast("dict[str, Any]", event)) is False:
                    return False
            except Exception:
                logger.exception("bugsnag_celery: before_notify callback %r raised; skipped", callback)
        # Encoded here, once (see ``Request.encoded``); merged with other queued events into
        # one request on the sender thread.
        self.sender.submit(
            Request(self.notify_endpoint, opts.api_key, EVENTS_VERSION, encoded=[encode_json(event)])
        )
        return True


def raised_while_paused(exc: BaseException) -> bool:
    try:
        return bool(getattr(exc, PAUSED_MARK, False))
    except Exception:
        return False
