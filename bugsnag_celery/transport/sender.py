"""Sending payloads to BugSnag: off the task's path, fork-aware, bounded, never silently lost.

A task that fails builds its event and hands the encoded body to this process's
:class:`Sender`; a daemon thread posts it. The thread is started lazily (a web process
that never reports starts nothing) and again after ``fork()``: a prefork child inherits
neither the thread nor any lock it held (``submit`` notices a new pid). The bodies are
packed by ``payload/packing.py``: this module queues, sends, retries and keeps the books.

What to do after each answer, and how long to wait for it, is ``outcome.py``'s:
retryable outcomes are retried with capped exponential backoff; no answer is sent once
more, waiting longer. A payload that still fails, that BugSnag left unanswered twice (it
is hung), or that is still queued when the process shuts down is handed to the *spool*
(a durable queue on the app's broker, see ``delivery/spool.py``) for the periodic
delivery task to send later: nothing is dropped for want of an answer.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from ..logs import log_every
from ..payload.packing import pack_events
from ..payload.wire import EVENTS_VERSION, MAX_BODY_BYTES
from .http import Request, post
from .journal import finished, journal
from .outcome import Fate, Next, Outcome, decide, log_decision, read_timeout, unknown_after

__all__ = ["Sender", "encoded"]

logger = logging.getLogger("bugsnag_celery")


def encoded(requests: list[Request], limit: int = MAX_BODY_BYTES) -> list[Request]:
    """Give every request a body: the events of those for the same endpoint and key, merged.

    The events of each endpoint and key are packed into as few bodies as fit under
    BugSnag's limit (``payload/packing.py``), each a request whose ``parts`` are the
    requests handed over. One with no events is done at once; one that cannot be brought
    under the limit even by trimming is dropped with a log line (BugSnag would answer 400
    and lose it anyway). Events sent before with no answer are packed apart from the
    others, keeping their mark (``unknown``): the policy's wait and order depend on it.
    """
    ready = [r for r in requests if r.body or not r.holds_events()]
    groups: dict[tuple[str, str, int], list[Request]] = {}
    for r in requests:
        if not r.body and r.holds_events():
            groups.setdefault((r.endpoint, r.api_key, r.unknown), []).append(r)
    for (endpoint, api_key, unknown), pending in groups.items():
        packed = pack_events(api_key, pending, limit)
        for request, too_large in packed.skipped:
            if too_large:
                logger.error("bugsnag_celery: an event is over 1 MB even after trimming; dropped")
            Sender._done(request, Fate.PERMANENT if too_large else Fate.DELIVERED)
        ready += [
            Request(endpoint, api_key, EVENTS_VERSION, body, unknown=unknown, parts=parts)
            for body, parts in packed.bodies
        ]
    return ready


def _size(item: Request | None) -> int:
    """Bytes a queued payload holds (events not yet encoded count 1 KB each: tests, spool)."""
    if item is None:
        return 0
    if item.encoded is not None:
        return sum(len(fragment) for fragment in item.encoded)
    return len(item.body) + 1024 * len(item.events or ())


class _RequestQueue:
    """A FIFO bounded by requests *and* bytes: full when either cap is reached.

    Encoded events make the bytes known at the door. Its own class over a deque and one
    ``threading.Condition`` -- not a ``queue.Queue`` subclass: gevent and eventlet replace
    ``queue.Queue`` when they patch the standard library, and a subclass of the class they
    replaced mixes the two (``task_done()`` raised, the sender thread died after every
    batch). ``threading.Condition`` is looked up when the queue is made, so a patched
    process gets the patched one. ``queue.Full``/``queue.Empty`` say full and empty, as
    before; a queue over its byte cap is full while it holds anything.
    """

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: deque[Request | None] = deque()
        self.unfinished_tasks = 0
        self._ready = threading.Condition(threading.Lock())

    def put_nowait(self, item: Request | None) -> None:
        with self._ready:
            n = len(self.items)
            if n and (n >= self.maxsize or self.bytes >= self.max_bytes):
                raise queue.Full
            self.items.append(item)
            self.bytes += _size(item)
            self.unfinished_tasks += 1
            self._ready.notify()

    def get(self) -> Request | None:
        with self._ready:
            while not self.items:
                self._ready.wait()
            return self._take()

    def get_nowait(self) -> Request | None:
        with self._ready:
            if not self.items:
                raise queue.Empty
            return self._take()

    def _take(self) -> Request | None:
        item = self.items.popleft()
        self.bytes -= _size(item)
        return item

    def task_done(self) -> None:
        with self._ready:
            if self.unfinished_tasks > 0:
                self.unfinished_tasks -= 1


class Sender:
    """A per-process background sender with a bounded queue.

    ``spool`` takes the requests that could not be delivered (returns True if it kept
    them); without one, they are logged and dropped.
    """

    def __init__(
        self,
        spool: Callable[[list[Request]], bool] | None = None,
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
        self._queue = _RequestQueue(self.max_queue, self.max_queue_bytes)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()
        self._in_flight: Request | None = None
        self._posting: Request | None = None  # the request whose answer the thread waits for
        self._current: list[Request] = []  # what the thread has taken from the queue
        self._last_request = 0.0  # monotonic time the last request began

    # ------------------------------------------------------------------ producer side

    def submit(self, request: Request) -> None:
        """Hand a payload over; returns at once. Never raises."""
        try:
            if self._pid != os.getpid():
                self._reset()  # forked without the at-fork hook having run (or a new pid)
            if self._thread is None or not self._thread.is_alive():
                self._start()
            if request.encoded is not None:
                journal(request)
            self._queue.put_nowait(request)
        except queue.Full:
            # Memory stays bounded in an error storm: the oldest queued payload goes to the
            # broker's spool (delivered by the next run), the new one takes its place.
            log_every("send-queue-full", 60.0, logging.WARNING,
                      "bugsnag_celery: send queue full (%d payloads or %d bytes); spilling the oldest "
                      "to the broker spool", self.max_queue, self.max_queue_bytes)  # fmt: skip
            self._spill_oldest_for(request)
        except Exception:
            logger.exception("bugsnag_celery: could not queue a %s for sending", request.kind)
            self._give_up([request], "queueing failed")

    def _spill_oldest_for(self, request: Request) -> None:
        try:
            oldest = self._queue.get_nowait()
            self._queue.task_done()
        except queue.Empty:
            oldest = None
        if oldest is not None:
            self._give_up([oldest], "send queue full")
        try:
            self._queue.put_nowait(request)
        except queue.Full:  # another producer took the place: this one goes to the spool
            self._give_up([request], "send queue full")

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
            batch: list[Request] = []
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
                for request in encoded(batch):
                    if any(p.taken_over for p in request.originals()):
                        continue  # a shutdown flush spooled it already
                    self._in_flight = request
                    self._deliver(request)
                    self._in_flight = None
            except Exception:  # keep the thread alive whatever happens
                logger.exception("bugsnag_celery: sender failed on a payload")
            finally:
                self._in_flight = None
                self._current = []
                for _ in range(taken):
                    self._queue.task_done()

    def _deliver(self, request: Request) -> None:
        delay = self.backoff
        while True:
            request.attempts += 1
            self._last_request = time.monotonic()
            self._posting = request
            try:
                outcome, reason = post(request, read_timeout(self.timeout, request.unknown))
            finally:
                self._posting = None
            if any(p.taken_over for p in request.originals()):
                return  # a shutdown flush spooled it while the request hung
            step = decide(outcome, request.unknown)
            count = sum(p.event_count() for p in request.originals())
            log_decision(step, request.kind, count, reason, self.timeout)
            request.unknown = unknown_after(outcome, request.unknown)
            if step is Next.DONE:
                self._done(request, Fate.DELIVERED)
                return
            if step is Next.DROP:
                self._done(request, Fate.PERMANENT)
                return
            if step is Next.KEEP:  # BugSnag is hung: kept on the broker, sent once it answers
                self._give_up([request], "no answer from BugSnag")
                return
            if request.attempts >= self.attempts or self._stopping.is_set():
                logger.warning(
                    "bugsnag_celery: %s not delivered after %d attempt(s) (%s); spooling it",
                    request.kind,
                    request.attempts,
                    reason,
                )
                self._give_up([request], reason)
                return
            # BugSnag's 429 says how long to wait: honoured (then the rest goes out)
            wait = max(delay, request.retry_after)
            request.retry_after = 0.0
            if self._stopping.wait(wait):  # shutting down: no more waiting, spool it now
                self._give_up([request], "process shutting down")
                return
            delay = min(delay * 2, self.max_backoff)

    def _give_up(self, requests: list[Request], reason: str) -> None:
        requests = encoded(requests)  # the spool keeps bodies, never Python objects
        if not requests:
            return
        kept = False
        if self.spool is not None:
            try:
                kept = self.spool(requests)
            except Exception:
                logger.exception("bugsnag_celery: spooling failed")
        if not kept:
            logger.error("bugsnag_celery: %d payload(s) lost (%s; no spool available)", len(requests), reason)
        for request in requests:
            self._done(request, Fate.SPOOLED if kept else Fate.LOST)

    @staticmethod
    def _done(request: Request, fate: Fate) -> None:
        for part in request.originals():
            part.finished = True
            if part.journaled:
                try:
                    finished(part)
                except Exception:
                    logger.exception("bugsnag_celery: could not mark an event finished in the ledger")
            if part.on_done is not None:
                try:
                    part.on_done(fate)
                except Exception:
                    logger.exception("bugsnag_celery: on_done callback failed")

    # ------------------------------------------------------------------ shutdown

    def _only_taken_over(self) -> bool:
        """All the thread holds was taken over by an earlier flush (a request hanging on BugSnag):
        a second flush (the exit flush after the worker's) does not wait for it again."""
        current = self._current
        return not self._queue.items and bool(current) and all(p.finished or p.taken_over for p in current)

    @property
    def pending(self) -> int:
        return self._queue.unfinished_tasks if self._pid == os.getpid() else 0

    def flush(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, waiting at most *timeout*; spool whatever is left.

        Called when a prefork child shuts down (it then leaves through ``os._exit``) and
        when the worker shuts down. A request still in flight at the deadline is spooled
        too, marked as one more send without an answer (``outcome.unknown_after``): a
        possible duplicate is better than a lost crash.
        """
        if self._pid != os.getpid() or self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and not self._only_taken_over() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stopping.set()  # a request backing off spools itself now
        leftovers: list[Request] = []
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
        while any(not p.finished and not p.taken_over for p in self._current) and time.monotonic() < end:
            time.sleep(0.01)
        posting = self._posting
        for request in list(self._current):
            if not request.finished and not request.taken_over:
                request.taken_over = True
                if posting is not None and any(request is p for p in posting.originals()):
                    # its body left: the answer, not yet come, is an unknown outcome
                    request.unknown = max(request.unknown, unknown_after(Outcome.UNKNOWN, posting.unknown))
                leftovers.append(request)
        if leftovers:
            self._give_up(leftovers, "process shutting down")
        self._stopping.clear()
