"""One HTTP request to BugSnag, and what its answer means.

Outcomes follow BugSnag's own notifiers: 2xx is delivered; 4xx other than 408/429 is
permanent (dropped with one log line naming the status; 401 means the API key); 408,
429, 5xx, connect time-outs and connection errors are worth retrying (by the sender
thread, or by a later delivery run).

One outcome is neither: a read time-out after the body was sent (a slow BugSnag) is
*unknown* -- the payload may well have arrived. Retrying it blindly on every run turned
100 sessions into 300; so an unknown outcome is retried at most once, and logged (the
callers keep the mark: ``Payload.unknown``, or the broker message's ``"unknown"``).
Connect and read time-outs are separate: connecting is quick or dead (at most 5 s), a
slow answer gets the whole ``delivery_timeout``, since deliveries run off the task's path.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

# requests imports these lazily on a session's first request (to read ~/.netrc). Our
# sender thread in a worker's main process makes that first request while billiard may
# be forking a replacement pool child: a fork taken while another thread holds a
# module's import lock leaves that lock held forever in the child, whose own first POST
# then hangs on the import (seen: a deliver_sessions run stuck after a child was
# SIGKILLed). Importing them here, before any fork, removes the race.
import netrc  # noqa: F401  # isort: skip
import shlex  # noqa: F401  # isort: skip

from ..clock import now_iso
from ..payload.encoding import encode_json

__all__ = [
    "Payload", "Outcome", "DELIVERED", "PERMANENT", "RETRY", "UNKNOWN", "post", "headers_for",
    "log_permanent", "log_unknown",
]  # fmt: skip

logger = logging.getLogger("bugsnag_celery")

DELIVERED, PERMANENT, RETRY, UNKNOWN = "delivered", "permanent", "retry", "unknown"
CONNECT_TIMEOUT = 5.0
Outcome = str


@dataclass
class Payload:
    """One request to BugSnag: where, with which key and payload version, and the body.

    An event payload may be handed over as its events rather than a body: ``encoded`` (each
    event's JSON, as the failure path hands them over) or ``events`` (dicts, encoded by the
    sender thread). The sender merges the events queued for the same endpoint and key into
    one request (BugSnag's v4 payload carries a list), so a burst of failures against a
    slow endpoint does not become a backlog of requests.
    """

    endpoint: str
    api_key: str = field(repr=False)  # never in a repr, a log line or a traceback's locals
    payload_version: str = "4.0"  # "4.0" events, "1.0" sessions
    body: bytes = b""
    kind: str = "event"
    attempts: int = 0
    unknown: int = 0  # sends whose outcome was unknown (read time-out): retried at most once
    retry_after: float = 0.0  # seconds BugSnag asked us to wait (429 with Retry-After)
    events: list[dict[str, Any]] | None = None
    # Events already encoded, one JSON object each. The failure path encodes on the task's
    # thread (~12 us an event): bytes waiting in the sender's queue give the cyclic garbage
    # collector nothing to walk, where a storm's queued event dicts made every collection
    # of the busy task thread longer, and the sender thread holds the GIL for less.
    encoded: list[bytes] | None = None
    # Called with the outcome once the payload is delivered, dropped or spooled (tests, flush).
    on_done: Callable[[Outcome], None] | None = field(default=None, repr=False)
    parts: list[Payload] = field(default_factory=list, repr=False)
    # Set when it is delivered, dropped or spooled; or when a shutdown flush took it over
    # from the sender thread (which then leaves it alone).
    finished: bool = field(default=False, repr=False)
    taken_over: bool = field(default=False, repr=False)

    def originals(self) -> list[Payload]:
        return self.parts or [self]

    def holds_events(self) -> bool:
        """Events still to be packed into a body (encoded or not)."""
        return self.events is not None or self.encoded is not None

    def event_count(self) -> int:
        return len(self.encoded if self.encoded is not None else self.events or ())

    def event_fragments(self) -> list[bytes]:
        """Each event's JSON: as handed over, or encoded now."""
        if self.encoded is not None:
            return self.encoded
        return [encode_json(event) for event in self.events or ()]

    def event_dicts(self) -> list[dict[str, Any]]:
        """The events as dicts (to trim one over the size limit, or to spool them)."""
        if self.events is not None:
            return self.events
        return [json.loads(fragment) for fragment in self.encoded or ()]


def headers_for(payload: Payload) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Bugsnag-Api-Key": payload.api_key,
        "Bugsnag-Payload-Version": payload.payload_version,
        "Bugsnag-Sent-At": now_iso(),
    }


_http: requests.Session | None = None
_http_pid = 0

# A fork waits for a request in flight. The main process of a prefork worker posts the
# crash it saw (a child SIGKILLed, a hard time limit) at the very moment billiard forks the
# replacement child; a fork taken while our thread is inside requests/urllib3 (their locks,
# a lazy import's module lock) leaves those held for ever in the child, which then hangs at
# its first request or at shutdown (seen: a warm shutdown stuck for 60 s). Holding this lock
# around every request, and taking it before a fork, makes the fork wait (at most one
# request's time-out) instead.
_request_lock = threading.Lock()


def _before_fork() -> None:
    _request_lock.acquire()


def _after_fork() -> None:
    _request_lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


def _session() -> requests.Session:
    global _http, _http_pid
    if _http is None or _http_pid != os.getpid():  # never share a connection pool across fork
        _http, _http_pid = requests.Session(), os.getpid()
    return _http


def post(payload: Payload, timeout: float) -> tuple[Outcome, str]:
    """POST once; classify the result. Never raises."""
    try:
        with _request_lock:
            response = _session().post(
                payload.endpoint,
                data=payload.body,
                headers=headers_for(payload),
                timeout=(min(timeout, CONNECT_TIMEOUT), timeout),
            )
            status = response.status_code
            if status == 429:
                payload.retry_after = _retry_after(response.headers.get("Retry-After"))
            response.close()
    except requests.ReadTimeout:
        return UNKNOWN, "no answer within the read time-out (the payload may have arrived)"
    except requests.RequestException as exc:
        return RETRY, f"{type(exc).__name__}"
    except Exception as exc:  # an adapter bug must not kill the sender thread
        return RETRY, f"{type(exc).__name__}"
    if 200 <= status < 300:
        return DELIVERED, str(status)
    if status in (408, 429) or status >= 500:
        return RETRY, f"HTTP {status}"
    return PERMANENT, f"HTTP {status}"


#: The longest wait a Retry-After may ask of the sender thread (then it retries anyway).
MAX_RETRY_AFTER = 60.0


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (a number; an HTTP date is read as 'a while')."""
    if not value:
        return 0.0
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return MAX_RETRY_AFTER / 6


def log_unknown(kind: str, count: int, again: bool) -> None:
    """One line per unknown outcome: what happens to the payload now."""
    if again:
        logger.error(
            "bugsnag_celery: a %s payload (%d) had no answer twice; not sent again (it may have "
            "arrived twice already). Is BugSnag slow? Raise delivery_timeout.", kind, count,
        )  # fmt: skip
    else:
        logger.warning(
            "bugsnag_celery: a %s payload (%d) had no answer within delivery_timeout; it may have "
            "arrived: sent once more, at most", kind, count,
        )  # fmt: skip


def log_permanent(payload: Payload, reason: str) -> None:
    hint = " (the API key was refused: check api_key)" if reason == "HTTP 401" else ""
    logger.error(
        "bugsnag_celery: BugSnag rejected a %s payload with %s%s; it is dropped, not retried",
        payload.kind,
        reason,
        hint,
    )
