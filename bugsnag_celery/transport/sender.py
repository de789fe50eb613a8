"""Sending payloads to BugSnag: off the task's path, fork-aware, bounded, never silently lost.

A task that fails builds its event and hands the encoded body to this process's
:class:`Sender`; a daemon thread posts it. The thread is started lazily (a web process
that never reports starts nothing) and again after ``fork()``: a prefork child inherits
neither the thread nor any lock it held (see ``_after_fork_in_child``).

Retryable outcomes (see ``http.py``) are retried with capped exponential backoff, and a
payload that still fails -- or is still queued when the process shuts down -- is
handed to the *spool* (a durable queue on the app's broker, see ``delivery/spool.py``) for the
periodic delivery task to send later.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..about import notifier_info
from ..logs import log_every
from ..payload.encoding import PayloadTooLarge, encode_payload
from .http import DELIVERED, PERMANENT, UNKNOWN, Outcome, Payload, log_permanent, log_unknown, post

__all__ = ["Sender", "encoded"]

logger = logging.getLogger("bugsnag_celery")


def encoded(payloads: list[Payload]) -> list[Payload]:
    """Give every payload a body: merge event lists, split again if the merge is too big.

    Events that cannot be brought under BugSnag's 1 MB limit even alone are dropped with
    a log line (the endpoint would answer 400 and lose them anyway).
    """
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
            # Memory stays bounded in an error storm: the oldest queued payload goes to the
            # broker's spool (delivered by the next run), the new one takes its place.
            log_every("send-queue-full", 60.0, logging.WARNING,
                      "bugsnag_celery: send queue full (%d); spilling the oldest to the broker spool",
                      self.max_queue)  # fmt: skip
            self._spill_oldest_for(payload)
        except Exception:
            logger.exception("bugsnag_celery: could not queue a %s for sending", payload.kind)
            self._give_up([payload], "queueing failed")

    def _spill_oldest_for(self, payload: Payload) -> None:
        try:
            oldest = self._queue.get_nowait()
            self._queue.task_done()
        except queue.Empty:
            oldest = None
        if oldest is not None:
            self._give_up([oldest], "send queue full")
        try:
            self._queue.put_nowait(payload)
        except queue.Full:  # another producer took the place: this one goes to the spool
            self._give_up([payload], "send queue full")

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
            if outcome == UNKNOWN:
                payload.unknown += 1
                count = sum(len(p.events or ()) for p in payload.originals())
                if payload.unknown > 1:  # it may have arrived twice already: never a third time
                    log_unknown(payload.kind, count, again=True)
                    self._done(payload, UNKNOWN)
                    return
                log_unknown(payload.kind, count, again=False)
            if payload.attempts >= self.attempts or self._stopping.is_set():
                logger.warning(
                    "bugsnag_celery: %s not delivered after %d attempt(s) (%s); spooling it",
                    payload.kind,
                    payload.attempts,
                    reason,
                )
                self._give_up([payload], reason)
                return
            # BugSnag's 429 says how long to wait: honoured (then the rest goes out)
            wait = max(delay, payload.retry_after)
            payload.retry_after = 0.0
            if self._stopping.wait(wait):  # shutting down: no more waiting, spool it now
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
