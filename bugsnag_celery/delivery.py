"""Sending payloads to BugSnag: off the task's path, fork-aware, bounded, never silently lost.

A task that fails builds its event and hands the encoded body to this process's
:class:`Sender`; a daemon thread posts it. The thread is started lazily (a web process
that never reports starts nothing) and again after ``fork()``: a prefork child inherits
neither the thread nor any lock it held (see ``_after_fork_in_child``).

Outcomes follow BugSnag's own notifiers: 2xx is delivered; 4xx other than 408/429 is
permanent (dropped with one log line naming the status; 401 means the API key); 408,
429, 5xx, timeouts and connection errors are retried with capped exponential backoff,
and a payload that still fails -- or is still queued when the process shuts down -- is
handed to the *spool* (a durable queue on the app's broker, see ``spool.py``) for the
periodic delivery task to send later.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
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

__all__ = ["Payload", "Sender", "post", "Outcome", "sent_at"]

logger = logging.getLogger("bugsnag_celery")

NOTIFIER = {"name": "bugsnag-celery", "url": "https://github.com/bugsnag-celery/bugsnag-celery"}

DELIVERED, PERMANENT, RETRY = "delivered", "permanent", "retry"
Outcome = str


@dataclass
class Payload:
    """One request to BugSnag: where, with which key and payload version, and the body.

    An event payload may be handed over as ``events`` (dicts) rather than a body: the
    sender thread encodes it, off the task's path, and merges the events queued for the
    same endpoint and key into one request (BugSnag's v4 payload carries a list), so a
    burst of failures against a slow endpoint does not become a backlog of requests.
    """

    endpoint: str
    api_key: str = field(repr=False)  # never in a repr, a log line or a traceback's locals
    payload_version: str = "4.0"  # "4.0" events, "1.0" sessions
    body: bytes = b""
    kind: str = "event"
    attempts: int = 0
    events: list[dict[str, Any]] | None = None
    # Called with the outcome once the payload is delivered, dropped or spooled (tests, flush).
    on_done: Callable[[Outcome], None] | None = field(default=None, repr=False)
    parts: list[Payload] = field(default_factory=list, repr=False)
    # Set when it is delivered, dropped or spooled; or when a shutdown flush took it over
    # from the sender thread (which then leaves it alone).
    finished: bool = field(default=False, repr=False)
    taken_over: bool = field(default=False, repr=False)

    def originals(self) -> list[Payload]:
        return self.parts or [self]

    def mergeable_with(self, other: Payload) -> bool:
        return (
            self.events is not None
            and other.events is not None
            and not self.body
            and not other.body
            and (self.endpoint, self.api_key) == (other.endpoint, other.api_key)
        )


def notifier_info() -> dict[str, str]:
    from . import __version__

    return {**NOTIFIER, "version": __version__}


def encoded(payloads: list[Payload]) -> list[Payload]:
    """Give every payload a body: merge event lists, split again if the merge is too big.

    Events that cannot be brought under BugSnag's 1 MB limit even alone are dropped with
    a log line (the endpoint would answer 400 and lose them anyway).
    """
    from .events import PayloadTooLarge, encode_payload

    ready: list[Payload] = []
    pending = [p for p in payloads if not p.body and p.events is not None]
    ready.extend(p for p in payloads if p.body or p.events is None)
    if not pending:
        return ready

    def envelope(events: list[dict[str, Any]], api_key: str) -> dict[str, Any]:
        return {"apiKey": api_key, "payloadVersion": "4.0", "notifier": notifier_info(), "events": events}

    first = pending[0]
    events = [event for p in pending for event in (p.events or [])]
    try:
        body = encode_payload(envelope(events, first.api_key))
        ready.append(Payload(first.endpoint, first.api_key, "4.0", body, kind="event", parts=pending))
        return ready
    except PayloadTooLarge:
        if len(pending) == 1 and len(events) == 1:
            logger.error("bugsnag_celery: an event is over 1 MB even after trimming; dropped")
            Sender._done(first, PERMANENT)
            return ready
    for p in pending:  # too big together: one request each
        try:
            body = encode_payload(envelope(list(p.events or []), p.api_key))
        except PayloadTooLarge:
            logger.error("bugsnag_celery: an event is over 1 MB even after trimming; dropped")
            Sender._done(p, PERMANENT)
            continue
        ready.append(Payload(p.endpoint, p.api_key, "4.0", body, kind="event", parts=[p]))
    return ready


def sent_at() -> str:
    """``Bugsnag-Sent-At``: UTC, milliseconds, ``Z``."""
    from .sessions import format_timestamp

    return format_timestamp(time.time())


def headers_for(payload: Payload) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Bugsnag-Api-Key": payload.api_key,
        "Bugsnag-Payload-Version": payload.payload_version,
        "Bugsnag-Sent-At": sent_at(),
    }


_http: requests.Session | None = None
_http_pid = 0


def _session() -> requests.Session:
    global _http, _http_pid
    if _http is None or _http_pid != os.getpid():  # never share a connection pool across fork
        _http, _http_pid = requests.Session(), os.getpid()
    return _http


def post(payload: Payload, timeout: float) -> tuple[Outcome, str]:
    """POST once; classify the result. Never raises."""
    try:
        response = _session().post(
            payload.endpoint,
            data=payload.body,
            headers=headers_for(payload),
            timeout=(min(timeout, 5.0), timeout),
        )
    except requests.RequestException as exc:
        return RETRY, f"{type(exc).__name__}"
    except Exception as exc:  # an adapter bug must not kill the sender thread
        return RETRY, f"{type(exc).__name__}"
    status = response.status_code
    response.close()
    if 200 <= status < 300:
        return DELIVERED, str(status)
    if status in (408, 429) or status >= 500:
        return RETRY, f"HTTP {status}"
    return PERMANENT, f"HTTP {status}"


def log_permanent(payload: Payload, reason: str) -> None:
    hint = " (the API key was refused: check api_key)" if reason == "HTTP 401" else ""
    logger.error(
        "bugsnag_celery: BugSnag rejected a %s payload with %s%s; it is dropped, not retried",
        payload.kind,
        reason,
        hint,
    )


class Sender:
    """A per-process background sender with a bounded queue.

    ``spool`` takes the payloads that could not be delivered (returns True if it kept
    them); without one, they are logged and dropped.
    """

    def __init__(
        self,
        spool: Callable[[list[Payload]], bool] | None = None,
        *,
        timeout: float = 10.0,
        max_queue: int = 1000,
        attempts: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_batch: int = 50,
    ) -> None:
        self.spool = spool
        self.timeout = timeout
        self.max_queue = max_queue
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_batch = max_batch
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[Payload | None] = queue.Queue(self.max_queue)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()
        self._in_flight: Payload | None = None
        self._current: list[Payload] = []  # what the thread has taken from the queue

    # ------------------------------------------------------------------ producer side

    def submit(self, payload: Payload) -> None:
        """Hand a payload over; returns at once. Never raises."""
        try:
            if self._pid != os.getpid():
                self._reset()  # forked without the at-fork hook having run (or a new pid)
            if self._thread is None or not self._thread.is_alive():
                self._start()
            self._queue.put_nowait(payload)
        except queue.Full:
            logger.warning(
                "bugsnag_celery: send queue full (%d); spooling a %s", self.max_queue, payload.kind
            )
            self._give_up([payload], "send queue full")
        except Exception:
            logger.exception("bugsnag_celery: could not queue a %s for sending", payload.kind)
            self._give_up([payload], "queueing failed")

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="bugsnag-celery-sender", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[Payload] = []
            taken = 1
            try:
                if item is None:
                    return
                batch.append(item)
                # Merge what else is waiting for the same endpoint into one request.
                while item.events is not None and len(batch) < self.max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    taken += 1
                    if nxt is None:
                        self._queue.put_nowait(None)  # keep the stop sentinel for the loop
                        taken -= 1
                        self._queue.task_done()
                        break
                    batch.append(nxt)
                self._current = batch
                merged = [p for p in batch if not p.mergeable_with(batch[0])] if len(batch) > 1 else []
                same = [p for p in batch if p not in merged]
                for payload in encoded(same) + encoded(merged):
                    if any(p.taken_over for p in payload.originals()):
                        continue  # a shutdown flush spooled it already
                    self._in_flight = payload
                    self._deliver(payload)
                    self._in_flight = None
            except Exception:  # keep the thread alive whatever happens
                logger.exception("bugsnag_celery: sender failed on a payload")
            finally:
                self._in_flight = None
                self._current = []
                for _ in range(taken):
                    self._queue.task_done()

    def _deliver(self, payload: Payload) -> None:
        delay = self.backoff
        while True:
            payload.attempts += 1
            outcome, reason = post(payload, self.timeout)
            if any(p.taken_over for p in payload.originals()):
                return  # a shutdown flush spooled it while the request hung
            if outcome == DELIVERED:
                self._done(payload, DELIVERED)
                return
            if outcome == PERMANENT:
                log_permanent(payload, reason)
                self._done(payload, PERMANENT)
                return
            if payload.attempts >= self.attempts or self._stopping.is_set():
                logger.warning(
                    "bugsnag_celery: %s not delivered after %d attempt(s) (%s); spooling it",
                    payload.kind,
                    payload.attempts,
                    reason,
                )
                self._give_up([payload], reason)
                return
            if self._stopping.wait(delay):  # shutting down: no more waiting, spool it now
                self._give_up([payload], "process shutting down")
                return
            delay = min(delay * 2, self.max_backoff)

    def _give_up(self, payloads: list[Payload], reason: str) -> None:
        payloads = encoded(payloads)  # the spool keeps bodies, never Python objects
        if not payloads:
            return
        kept = False
        if self.spool is not None:
            try:
                kept = self.spool(payloads)
            except Exception:
                logger.exception("bugsnag_celery: spooling failed")
        if not kept:
            logger.error("bugsnag_celery: %d payload(s) lost (%s; no spool available)", len(payloads), reason)
        for payload in payloads:
            self._done(payload, "spooled" if kept else "lost")

    @staticmethod
    def _done(payload: Payload, outcome: Outcome) -> None:
        for part in payload.originals():
            part.finished = True
            if part.on_done is not None:
                try:
                    part.on_done(outcome)
                except Exception:
                    logger.exception("bugsnag_celery: on_done callback failed")

    # ------------------------------------------------------------------ shutdown

    @property
    def pending(self) -> int:
        return self._queue.unfinished_tasks if self._pid == os.getpid() else 0

    def flush(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, waiting at most *timeout*; spool whatever is left.

        Called when a prefork child shuts down (it then leaves through ``os._exit``) and
        when the worker shuts down. A payload still in flight at the deadline is spooled
        too: a possible duplicate is better than a lost crash.
        """
        if self._pid != os.getpid() or self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stopping.set()  # a payload backing off spools itself now
        leftovers: list[Payload] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                leftovers.append(item)
            self._queue.task_done()
        # What the thread took but has not finished (in flight, possibly hanging on a
        # slow endpoint, or waiting behind it): give it a moment, then take it over. A
        # request that still succeeds later makes a duplicate; better than a lost crash.
        end = time.monotonic() + 0.5
        while any(not p.finished for p in self._current) and time.monotonic() < end:
            time.sleep(0.01)
        for payload in list(self._current):
            if not payload.finished and not payload.taken_over:
                payload.taken_over = True
                leftovers.append(payload)
        if leftovers:
            self._give_up(leftovers, "process shutting down")
        self._stopping.clear()
