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

from ..about import notifier_info
from ..logs import log_every
from ..payload.encoding import (
    MAX_PAYLOAD_BYTES,
    PayloadTooLarge,
    encode_payload,
    envelope_around,
)
from .http import DELIVERED, PERMANENT, UNKNOWN, Outcome, Payload, log_permanent, log_unknown, post

__all__ = ["Sender", "encoded"]

logger = logging.getLogger("bugsnag_celery")


def encoded(payloads: list[Payload], limit: int = MAX_PAYLOAD_BYTES) -> list[Payload]:
    """Give every payload a body: the events of those for the same endpoint and key, merged.

    Each handed-over payload's events are encoded once; then as many payloads as fit under
    BugSnag's 1 MB go into one request (a storm of failures becomes a few requests a
    second, not one per failure), and the next request starts where that one stopped. A
    payload too big alone goes through :func:`encode_payload`'s trimming; one that cannot
    be brought under the limit even then is dropped with a log line (BugSnag would answer
    400 and lose it anyway).
    """
    ready = [p for p in payloads if p.body or not p.holds_events()]
    groups: dict[tuple[str, str], list[Payload]] = {}
    for p in payloads:
        if not p.body and p.holds_events():
            groups.setdefault((p.endpoint, p.api_key), []).append(p)
    for (endpoint, api_key), pending in groups.items():
        ready += _packed(endpoint, api_key, pending, limit)
    return ready


def _packed(endpoint: str, api_key: str, pending: list[Payload], limit: int) -> list[Payload]:
    """*pending* (one endpoint and key) as few requests of at most *limit* bytes, in order."""
    envelope = {"apiKey": api_key, "payloadVersion": "4.0", "notifier": notifier_info(), "events": []}
    head, tail = envelope_around(envelope)
    room = limit - len(head) - len(tail)
    out: list[Payload] = []
    chunk: list[Payload] = []
    fragments: list[bytes] = []
    size = 0
    for p in pending:
        encoded_events = p.event_fragments()
        if not encoded_events:  # nothing to send: done
            Sender._done(p, DELIVERED)
            continue
        fragment = b",".join(encoded_events)
        if len(fragment) > room:
            try:
                body = encode_payload({**envelope, "events": p.event_dicts()}, limit)
            except PayloadTooLarge:
                logger.error("bugsnag_celery: an event is over 1 MB even after trimming; dropped")
                Sender._done(p, PERMANENT)
                continue
            out.append(Payload(endpoint, api_key, "4.0", body, kind="event", parts=[p]))
            continue
        if chunk and size + 1 + len(fragment) > room:
            out.append(Payload(endpoint, api_key, "4.0", head + b",".join(fragments) + tail, parts=chunk))
            chunk, fragments, size = [], [], 0
        size += len(fragment) + (1 if fragments else 0)
        chunk.append(p)
        fragments.append(fragment)
    if chunk:
        out.append(Payload(endpoint, api_key, "4.0", head + b",".join(fragments) + tail, parts=chunk))
    return out


def _size(item: Payload | None) -> int:
    """Bytes a queued payload holds (events not yet encoded count 1 KB each: tests, spool)."""
    if item is None:
        return 0
    if item.encoded is not None:
        return sum(len(fragment) for fragment in item.encoded)
    return len(item.body) + 1024 * len(item.events or ())


class _PayloadQueue(queue.Queue):  # type: ignore[type-arg]
    """A FIFO bounded by payloads *and* bytes: full when either cap is reached.

    Encoded events make the bytes known at the door. ``_put``/``_get``/``_qsize`` are
    ``queue.Queue``'s own extension points, called with its mutex held, so the byte count
    needs no lock of its own. A queue over its byte cap reports itself as full (``_qsize``
    says ``maxsize``) while it still holds items, so ``put_nowait`` raises ``queue.Full``
    and the sender spills the oldest, as for the payload cap.
    """

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        super().__init__(maxsize)

    def _qsize(self) -> int:
        n = len(self.queue)
        return self.maxsize if n and self.bytes >= self.max_bytes else n

    def _put(self, item: Payload | None) -> None:
        self.queue.append(item)
        self.bytes += _size(item)

    def _get(self) -> Payload | None:
        item: Payload | None = self.queue.popleft()
        self.bytes -= _size(item)
        return item


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
        max_queue: int = 10_000,
        max_queue_bytes: int = 16_000_000,
        attempts: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_batch: int = 1000,
        min_interval: float = 0.25,
    ) -> None:
        self.spool = spool
        self.timeout = timeout
        # Memory stays bounded: at most this many payloads and bytes of encoded events wait
        # (an error storm outruns a slow BugSnag); beyond either, the oldest spill to the
        # broker's spool. The byte cap binds first for ordinary events (~2.5 kB: ~6,400).
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_batch = max_batch
        self.min_interval = min_interval
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[Payload | None] = _PayloadQueue(self.max_queue, self.max_queue_bytes)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()
        self._in_flight: Payload | None = None
        self._current: list[Payload] = []  # what the thread has taken from the queue
        self._last_request = 0.0  # monotonic time the last request began

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
                      "bugsnag_celery: send queue full (%d payloads or %d bytes); spilling the oldest "
                      "to the broker spool", self.max_queue, self.max_queue_bytes)  # fmt: skip
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
                if item.holds_events():
                    # In a storm, wait out the rest of min_interval since the last request
                    # began, gathering what fails meanwhile into the same request: at most
                    # 1/min_interval requests a second from this process, whatever the rate
                    # of failures. A lone failure goes out at once.
                    wait = self._last_request + self.min_interval - time.monotonic()
                    if wait > 0 and self._stopping.wait(wait):
                        pass  # shutting down: send what we have now
                # Merge what else is waiting into the same request(s).
                while item.holds_events() and len(batch) < self.max_batch:
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
                for payload in encoded(batch):
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
            self._last_request = time.monotonic()
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
                count = sum(p.event_count() for p in payload.originals())
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
