"""One HTTP request to BugSnag, and what its answer means (an :class:`~.outcome.Outcome`).

This module moves bytes: the body is built elsewhere (``payload/``), and what to do with
an outcome is decided in ``outcome.py``. Connect and read time-outs are separate:
connecting is quick or dead (at most 5 s), a slow answer gets the whole
``delivery_timeout``, since deliveries run off the task's path.
"""

from __future__ import annotations

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
from .outcome import Fate, Outcome

__all__ = ["Request", "post", "headers_for", "route_through_proxy"]

CONNECT_TIMEOUT = 5.0


@dataclass
class Request:
    """One request to BugSnag (where, with which key and payload version, the body), and its bookkeeping.

    An event request may be handed over as its events rather than a body: ``encoded`` (each
    event's JSON, as the failure path hands them over) or ``events`` (dicts, encoded by the
    sender thread). The sender merges the events queued for the same endpoint and key into
    one request (BugSnag's v4 payload carries a list), so a burst of failures against a
    slow endpoint does not become a backlog of requests; the merged request keeps the
    handed-over ones as its ``parts``.
    """

    endpoint: str
    api_key: str = field(repr=False)  # never in a repr, a log line or a traceback's locals
    payload_version: str  # the ``payload/wire.py`` version of what the body holds
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
    # Called with how it ended once it is delivered, dropped or spooled (tests, flush).
    on_done: Callable[[Fate], None] | None = field(default=None, repr=False)
    parts: list[Request] = field(default_factory=list, repr=False)
    # Set when it is delivered, dropped or spooled; or when a shutdown flush took it over
    # from the sender thread (which then leaves it alone).
    finished: bool = field(default=False, repr=False)
    taken_over: bool = field(default=False, repr=False)

    def originals(self) -> list[Request]:
        return self.parts or [self]

    def holds_events(self) -> bool:
        """Events still to be packed into a body (encoded or not)."""
        return self.events is not None or self.encoded is not None

    def event_count(self) -> int:
        return len(self.encoded if self.encoded is not None else self.events or ())


def headers_for(request: Request) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Bugsnag-Api-Key": request.api_key,
        "Bugsnag-Payload-Version": request.payload_version,
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


#: ``scheme://host`` of an endpoint -> the HTTP proxy its requests go through (``proxy_host``):
#: requests' own per-host proxy keys, so that apps with different proxies share one session.
_proxies: dict[str, str] = {}


def route_through_proxy(endpoint: str | None, proxy: str | None) -> None:
    """Send every request to *endpoint*'s host through *proxy* (the official ``proxy_host``)."""
    if not endpoint or not proxy:
        return
    scheme, _, rest = endpoint.partition("://")
    _proxies[f"{scheme}://{rest.split('/', 1)[0]}"] = proxy if "://" in proxy else f"http://{proxy}"


def post(request: Request, timeout: float) -> tuple[Outcome, str]:
    """POST once; classify the result. Never raises."""
    try:
        with _request_lock:
            response = _session().post(
                request.endpoint,
                data=request.body,
                headers=headers_for(request),
                timeout=(min(timeout, CONNECT_TIMEOUT), timeout),
                proxies=_proxies or None,
            )
            status = response.status_code
            if status == 429:
                request.retry_after = _retry_after(response.headers.get("Retry-After"))
            response.close()
    except requests.ReadTimeout:
        return Outcome.UNKNOWN, "no answer within the read time-out (the payload may have arrived)"
    except requests.RequestException as exc:
        return Outcome.RETRY, f"{type(exc).__name__}"
    except Exception as exc:  # an adapter bug must not kill the sender thread
        return Outcome.RETRY, f"{type(exc).__name__}"
    if 200 <= status < 300:
        return Outcome.DELIVERED, str(status)
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY, f"HTTP {status}"
    return Outcome.PERMANENT, f"HTTP {status}"


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
