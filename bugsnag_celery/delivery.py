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
from datetime import datetime, timezone

import requests

__all__ = ["Payload", "Sender", "post", "Outcome", "sent_at"]

logger = logging.getLogger("bugsnag_celery")

NOTIFIER = {"name": "bugsnag-celery", "url": "https://github.com/bugsnag-celery/bugsnag-celery"}

DELIVERED, PERMANENT, RETRY = "delivered", "permanent", "retry"
Outcome = str


@dataclass
class Payload:
    """One request to BugSnag: where, with which key and payload version, and the exact body."""

    endpoint: str
    api_key: str
    payload_version: str  # "4.0" events, "1.0" sessions
    body: bytes
    kind: str = "event"
    attempts: int = 0
    # Called with the outcome once the payload is delivered, dropped or spooled (tests, flush).
    on_done: Callable[[Outcome], None] | None = field(default=None, repr=False)


def sent_at() -> str:
    """``Bugsnag-Sent-At``: UTC, milliseconds, ``Z``."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


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
    ) -> None:
        self.spool = spool
        self.timeout = timeout
        self.max_queue = max_queue
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[Payload | None] = queue.Queue(self.max_queue)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()
        self._in_flight: Payload | None = None

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
            payload = self._queue.get()
            try:
                if payload is None:
                    return
                self._in_flight = payload
                self._deliver(payload)
            except Exception:  # keep the thread alive whatever happens
                logger.exception("bugsnag_celery: sender failed on a payload")
            finally:
                self._in_flight = None
                self._queue.task_done()

    def _deliver(self, payload: Payload) -> None:
        delay = self.backoff
        while True:
            payload.attempts += 1
            outcome, reason = post(payload, self.timeout)
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
            if self._stopping.wait(delay):  # shutting down: stop waiting, spool
                continue
            delay = min(delay * 2, self.max_backoff)

    def _give_up(self, payloads: list[Payload], reason: str) -> None:
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
        if payload.on_done is not None:
            try:
                payload.on_done(outcome)
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
        stuck = self._in_flight
        if stuck is not None:
            # give the thread a moment to spool it itself
            end = time.monotonic() + 0.5
            while self._in_flight is stuck and time.monotonic() < end:
                time.sleep(0.01)
            if self._in_flight is stuck:
                leftovers.append(stuck)
        if leftovers:
            self._give_up(leftovers, "process shutting down")
        self._stopping.clear()
