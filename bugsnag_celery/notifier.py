"""Events: building a BugSnag v4 event for a failure and handing it to the sender.

This is the failure path. It runs on the task's thread only for as long as it takes to
build and encode the event (well under a millisecond for an ordinary traceback); the
HTTP request happens on the process's background sender (``delivery.py``).
"""

from __future__ import annotations

import logging
import os
import platform
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeGuard

import celery
import kombu

from .config import Options
from .counts import Release
from .delivery import Payload, Sender
from .events import exception_entries, redact, safe_repr
from .sessions import PAUSED_MARK, Session, current_session, format_timestamp

__all__ = ["Reporter", "notify"]

logger = logging.getLogger("bugsnag_celery")

UNHANDLED_REASON = {"type": "unhandledExceptionMiddleware", "attributes": {"framework": "Celery"}}
_RUNTIME = {"python": platform.python_version(), "celery": celery.__version__, "kombu": kombu.__version__}
_VALID_SEVERITIES = ("error", "warning", "info")
_OWN_FILES = (os.path.join("bugsnag_celery", "integration.py"), os.path.join("bugsnag_celery", "notifier.py"))

# Set by the worker_init handler (main process), inherited by prefork children.
worker_pool: str | None = None


class Reporter:
    """Builds and sends the events of one configured app."""

    def __init__(self, app: Any, options: Options, release: Release) -> None:
        from .spool import spool_payloads

        self.app = app
        self.options = options
        self.release = release
        self.notify_endpoint = options.endpoints[0]
        self.sender = Sender(
            lambda payloads: spool_payloads(app, payloads, options.queue_prefix),
            timeout=options.delivery_timeout,
        )
        self._warned_no_key = False

    # ------------------------------------------------------------------ building

    def build_event(
        self,
        exc: BaseException,
        *,
        unhandled: bool,
        severity: str,
        severity_reason: dict[str, Any],
        context: str | None,
        session: Session | None,
        metadata: Mapping[str, Any] | None = None,
        grouping_hash: str | None = None,
        user: Mapping[str, Any] | None = None,
        traceback_text: str | None = None,
        session_override: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        opts = self.options
        entries = exception_entries(
            exc, project_root=opts.project_root, send_code=opts.send_code, traceback_text=traceback_text
        )
        for entry in entries:  # our own wrapper frames are not the user's stack
            entry["stacktrace"] = [
                f for f in entry["stacktrace"] if not str(f.get("file", "")).endswith(_OWN_FILES)
            ]
        meta: dict[str, Any] = {}
        for tab, values in (metadata or {}).items():
            meta[str(tab)] = redact(values, opts.redacted_keys)
        event: dict[str, Any] = {
            "exceptions": entries,
            "unhandled": unhandled,
            "severity": severity,
            "severityReason": severity_reason,
            "context": context,
            "metaData": meta,
            "user": redact(dict(user), opts.redacted_keys) if user else {},
            "app": {"version": self.release.app_version, "releaseStage": self.release.release_stage,
                    "type": self.release.app_type},
            "device": {"hostname": self.release.hostname, "time": format_timestamp(_now()),
                       "runtimeVersions": dict(_RUNTIME)},
            "breadcrumbs": [],
            "featureFlags": [],
        }  # fmt: skip
        if grouping_hash:
            event["groupingHash"] = grouping_hash
        if session_override is not None:
            event["session"] = session_override
        elif session is not None and not session.paused and not _raised_while_paused(exc):
            if unhandled:
                session.unhandled += 1
            else:
                session.handled += 1
            event["session"] = {
                "id": session.id,
                "startedAt": session.started_at,
                "events": {"handled": session.handled, "unhandled": session.unhandled},
            }
        return event

    # ------------------------------------------------------------------ sending

    def send(self, event: dict[str, Any]) -> bool:
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
                if callback(event) is False:
                    return False
            except Exception:
                logger.exception("bugsnag_celery: before_notify callback %r raised; skipped", callback)
        # Encoding (and merging with other queued events) happens on the sender thread.
        self.sender.submit(Payload(self.notify_endpoint, opts.api_key, "4.0", events=[event]))
        return True


def _raised_while_paused(exc: BaseException) -> bool:
    try:
        return bool(getattr(exc, PAUSED_MARK, False))
    except Exception:
        return False


def _now() -> float:
    import time

    return time.time()


# ---------------------------------------------------------------------- task metadata


def task_metadata(task: Any, request: Any, options: Options) -> dict[str, Any]:
    """The ``task`` tab: what a person debugging the failure wants to know about the run."""
    info = getattr(request, "delivery_info", None) or {}
    meta: dict[str, Any] = {
        "id": getattr(request, "id", None),
        "name": getattr(task, "name", None),
        "retries": getattr(request, "retries", 0) or 0,
        "queue": info.get("queue") or info.get("routing_key"),
        "routing_key": info.get("routing_key"),
        "exchange": info.get("exchange"),
        "redelivered": info.get("redelivered"),
        "hostname": getattr(request, "hostname", None),
        "origin": getattr(request, "origin", None),
        "root_id": getattr(request, "root_id", None),
        "parent_id": getattr(request, "parent_id", None),
        "eta": _text(getattr(request, "eta", None)),
        "expires": _text(getattr(request, "expires", None)),
        "time_limit": list(getattr(request, "timelimit", None) or ()) or None,
        "pool": worker_pool,
        "worker_pid": os.getpid(),
        "eager": bool(getattr(request, "is_eager", False)),
    }
    if options.send_task_args:
        keys = options.redacted_keys
        args, kwargs = getattr(request, "args", None), getattr(request, "kwargs", None)
        argsrepr, kwargsrepr = getattr(request, "argsrepr", None), getattr(request, "kwargsrepr", None)
        meta["args"] = argsrepr[:1024] if _set_by_caller(argsrepr, args, keys) else redact(args, keys)
        meta["kwargs"] = (
            kwargsrepr[:1024] if _set_by_caller(kwargsrepr, kwargs, keys) else redact(kwargs, keys)
        )
    return {k: v for k, v in meta.items() if v is not None}


def _set_by_caller(text: Any, value: Any, keys: tuple[str, ...]) -> TypeGuard[str]:
    """Did the caller pass ``argsrepr``/``kwargsrepr`` to hide the arguments?

    Celery fills both in by default with ``saferepr(args)`` of the *sender's* values: that
    default is no wish to hide anything, and it is not redacted, so then the real values
    are sent, redacted. The worker sees the arguments after JSON (tuples became lists), so
    the comparison ignores the kind of brackets. And whatever looks like it holds a key we
    redact is never sent as text: a leak is worse than a missing custom repr.
    """
    if not isinstance(text, str):
        return False
    from celery.utils.saferepr import saferepr

    lowered = text.lower().replace("-", "").replace("_", "")
    if any(key.lower().replace("-", "").replace("_", "") in lowered for key in keys):
        return False
    shape = str.maketrans("()", "[]")
    seen = text.translate(shape).replace(",]", "]")
    return all(
        seen != saferepr(value, maxsize).translate(shape).replace(",]", "]") for maxsize in (1024, 4096)
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else safe_repr(value, 64)


# ---------------------------------------------------------------------- dedupe (main process)


class Seen:
    """A bounded set of recent keys: Celery can report a crash twice (hard limits on main)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._keys: OrderedDict[Any, None] = OrderedDict()

    def add(self, key: Any) -> bool:
        """True if *key* is new."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return True


def severity_of(severity: str | None) -> tuple[str, dict[str, Any]]:
    if severity is None:
        return "warning", {"type": "handledException"}
    if severity not in _VALID_SEVERITIES:
        raise ValueError(
            f"bugsnag_celery.notify: severity must be one of {_VALID_SEVERITIES}, not {severity!r}"
        )
    return severity, {"type": "userSpecifiedSeverity"}


def notify(
    exception: BaseException,
    severity: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    context: str | None = None,
    grouping_hash: str | None = None,
    user: Mapping[str, Any] | None = None,
) -> None:
    """Report a handled exception from any code, attributed to the current session unless paused."""
    from .integration import reporter_for_current

    level, reason = severity_of(severity)  # a wrong severity is the caller's bug: say so
    try:
        reporter, task, request = reporter_for_current()
        if reporter is None:
            logger.warning("bugsnag_celery.notify: no configured app; event not sent")
            return
        meta: dict[str, Any] = dict(metadata or {})
        if task is not None and request is not None and "task" not in meta:
            meta["task"] = task_metadata(task, request, reporter.options)
        if context is None and task is not None:
            context = task.name
        event = reporter.build_event(
            exception, unhandled=False, severity=level, severity_reason=reason, context=context,
            session=current_session(), metadata=meta, grouping_hash=grouping_hash, user=user,
        )  # fmt: skip
        reporter.send(event)
    except Exception:
        logger.exception("bugsnag_celery.notify failed")
