"""Session counts, from the process that counted them to the broker: the first half of their way to BugSnag.

::

    task runs in a pool child / thread / greenlet, on any host
        | counts.py: +1 in the minute bucket of its release group (in memory)
        v
    flusher thread of that process: at most one message per flush interval,
        | and a last one when the process shuts down
        v
    durable queue <queue_prefix>.sessions on the app's own broker (JSON)
        | beat schedules bugsnag_celery.deliver_sessions every session_delivery_interval
        v
    one worker drains the queue (``sessions.py``), merges per release group and
        | minute, posts one v1.0 session payload per release group,
        v acknowledges only after a 2xx
    BugSnag's session API

Why the broker: counts are born in processes that die by ``os._exit`` (prefork
children), on many hosts; the beat task runs in one process of one worker. The broker
the app already has is durable and hands each message to exactly one consumer, so two
deliveries running at once never send a count twice, and no new server is needed.

A publish can fail after the broker stored the message (it stopped mid-publish and never
answered): such a message is *in doubt*. Its counts are not merged back and sent again as
new counts (a second message the delivery cannot tell from the first: counted twice);
the same message, with its id, is published again before anything new of that app, and
the delivery run keeps one copy of each id.

The same messages carry how many events each process lost (:class:`LostEvents`: refused
by BugSnag, unanswered twice, or neither sent nor spooled), so that the delivery run, the
one writer of the status, counts them where ``celery bugsnag status`` shows them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..logs import log_every
from ..payload.sessions import counts_messages
from ..sessions import counts
from ..sessions.counts import PendingCounts, Release
from ..transport.outcome import Fate
from ..transport.queues import DEFAULT_PREFIX, body_limit, broker_problem, publish, queue_names
from .status import diagnose_delivery

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["FlushTarget", "Flusher", "LostEvents", "publish_counts"]

logger = logging.getLogger("bugsnag_celery")


class LostEvents:
    """How many events of one app this process lost since the last flush: a fork-aware tally.

    ``note`` is an event request's ``on_done`` (the sender calls it from its thread, or a
    shutdown flush from another: hence the lock, taken only when an event ends badly).
    """

    _LOST = frozenset({Fate.PERMANENT, Fate.LOST})  # an unanswered one is kept (spooled), not lost

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._n = 0

    def note(self, fate: Fate) -> None:
        if fate in self._LOST:
            self.give_back(1)

    def give_back(self, n: int) -> None:
        """Add *n* (taken by :meth:`take` and not handed on)."""
        with self._lock:
            self._forked()
            self._n += n

    def take(self) -> int:
        """How many were lost since the last take (that many are now the taker's to report)."""
        with self._lock:
            self._forked()
            n, self._n = self._n, 0
            return n

    def _forked(self) -> None:
        # a forked child's tally starts at 0: the parent reports its own
        if self._pid != os.getpid():
            self._pid, self._n = os.getpid(), 0


class InDoubt(NamedTuple):
    """A counts message whose publish failed with its outcome unknown: published again as is."""

    app: Celery
    prefix: str
    message_id: str
    body: bytes


class FlushTarget(NamedTuple):
    """Where the counts of one configured app go."""

    app: Celery
    releases: list[Release]
    sends: bool  # False outside enabled_release_stages or without an API key: discarded
    prefix: str
    delivery_interval: float = 30.0  # the beat's: a delivery older than 3 of them means no beat
    lost: LostEvents | None = None  # the app's events lost in this process, reported with its counts


def publish_counts(
    app: Celery, pending: PendingCounts, prefix: str = DEFAULT_PREFIX, lost_events: int = 0
) -> bool:
    """Put *pending* (and *lost_events*) on the broker as one JSON message (more, each under the
    broker's limit, when they do not fit in one). True if the broker took the first: what it
    did not take after that is put back in this process's memory here; False if it took
    nothing (the caller puts everything back). For a caller that keeps no message in doubt
    (tests, tools): the flusher's own path is :meth:`Flusher.flush_once`."""
    done = _publish_counts(app, pending, prefix, lost_events)
    if done.doubt is None:
        return not done.untried
    if not done.sent:
        return False
    for part in [done.doubt[1], *done.rest]:  # kept by no one in doubt: a copy is possible
        counts.restore_pending_counts(part)
    return True


class _Published(NamedTuple):
    sent: int  # messages the broker took
    moved: int  # sessions in them
    doubt: tuple[str, PendingCounts, bytes] | None = None  # the failed message: id, counts, body
    rest: tuple[PendingCounts, ...] = ()  # the counts of the messages after it, not tried
    untried: bool = False  # nothing could be built (no broker library)


def _publish_counts(app: Celery, pending: PendingCounts, prefix: str, lost_events: int = 0) -> _Published:
    """Publish *pending*'s messages in turn, and say what became of them (:class:`_Published`):
    the broker may or may not hold the message whose publish failed."""
    if not pending and not lost_events:
        return _Published(0, 0)
    try:
        messages = counts_messages(pending, body_limit(app), lost_events=lost_events)
    except Exception as exc:
        _log_broker_problem(exc)
        return _Published(0, 0, untried=True)
    sent = moved = 0
    try:
        for part, body in messages:
            publish(app, queue_names(prefix).sessions, [body])
            sent, moved = sent + 1, moved + _total(part)
        return _Published(sent, moved)
    except Exception as exc:
        _log_broker_problem(exc)
        part, body = messages[sent]
        rest = tuple(later for later, _body in messages[sent + 1 :])
        return _Published(sent, moved, (json.loads(body)["id"], part, body), rest)


def _log_broker_problem(exc: BaseException) -> None:
    kind, problem = broker_problem(exc)
    log_every(f"broker-{kind}", 60.0, logging.WARNING, "bugsnag_celery: session counts kept in memory, %s",
              problem)  # fmt: skip


class Flusher:
    """Moves this process's counts onto the broker: a lazy, fork-aware daemon thread.

    ``targets()`` returns a :class:`FlushTarget` per configured app: its counts go to its
    broker; counts of apps outside ``enabled_release_stages`` or without an API
    key are discarded here, so the broker never fills with what will not be sent.
    """

    def __init__(self, targets: Callable[[], list[FlushTarget]], interval: Callable[[], float]) -> None:
        self.targets = targets
        self.interval = interval
        #: Off only in tests that inspect the in-process counts themselves.
        self.enabled = True
        self._after_fork()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # A lock held by the parent's flusher thread at fork time would stay held forever
        # in the child: every piece of state starts anew there.
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._first_moved = 0.0  # when this process first moved counts to the broker
        self._in_doubt: dict[tuple[int, str], InDoubt] = {}  # (id(app), prefix) -> its message in doubt
        self._checked: dict[str, float] = {}  # queue prefix -> when deliveries were last checked

    def start(self) -> None:
        with self._start_lock:  # two threads counting their first session at once
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._load_transports()
            self._thread = threading.Thread(target=self._run, name="bugsnag-celery-flusher", daemon=True)
            self._thread.start()

    def _load_transports(self) -> None:
        """Import each app's broker transport here, in the thread that counted first.

        Left to the flusher thread, the import competes for the GIL with that busy thread:
        every file read releases the GIL and the busy thread keeps it for a switch interval
        (5 ms), so an import that takes 50 ms alone took 7 s, and the CPU it burned in the
        meantime added ~10 us to every task run of those seconds (measured: eager runs of a
        no-op at 58 us instead of 49). Here it costs the first counted run of a process
        that never used its broker about that one import; a worker's pool children find
        it already imported by the parent. Building a kombu Connection opens nothing.
        """
        try:
            for target in self.targets():
                target.app.connection_for_write().transport_cls  # noqa: B018 - resolves and imports it
        except Exception:  # a bad broker URL shows up (and is logged) at the first flush
            pass

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval())
            self._wake.clear()
            if not self.enabled:
                continue
            try:
                if self.flush_once():
                    self._first_moved = self._first_moved or time.time()
                self._check_deliveries()
            except Exception:
                logger.exception("bugsnag_celery: moving session counts failed")

    def _check_deliveries(self) -> None:
        """Counts this process moved wait on the broker and no delivery ran: say why, hourly.

        Checked once per delivery interval: one status read and one queue count on the broker.
        """
        now = time.time()
        for target in self.targets():
            interval = target.delivery_interval
            if not self._first_moved or now - self._first_moved < 3 * interval:
                continue
            if now - self._checked.get(target.prefix, 0.0) < interval:
                continue
            self._checked[target.prefix] = now
            problem = diagnose_delivery(target.app, target.prefix, interval, now)
            if problem:  # hourly per diagnosis: a beat started after this check changes it
                log_every(
                    f"no-delivery:{target.prefix}:{problem.kind}",
                    3600.0,
                    logging.WARNING,
                    "bugsnag_celery: %s",
                    problem.text,
                )

    def flush_once(self, wait: float | None = None) -> int:
        """Take every count and hand it to its broker; put back what the broker refused.

        *wait* bounds how long to wait for a flush already under way (a shutdown must not
        hang behind a publish to a broker that stopped answering).
        """
        if not self._lock.acquire(timeout=-1 if wait is None else wait):
            logger.warning("bugsnag_celery: a flush is still under way; session counts not moved now")
            return 0
        try:
            return self._flush_locked()
        finally:
            self._lock.release()

    def _flush_locked(self) -> int:
        handled: set[Release] = set()
        targets = list(self.targets())
        moved, clear = self._resend_in_doubt(targets)  # clear: the targets with none in doubt left
        for target in targets:
            taken = counts.take_pending_counts(target.releases, hold=True)
            handled.update(target.releases)
            lost = target.lost.take() if target.lost is not None else 0
            if not taken and not lost:
                continue
            if not target.sends:
                continue  # outside enabled_release_stages / no API key: never sent
            published = None
            if _key(target.app, target.prefix) in clear:
                published = self._publish(target.app, target.prefix, taken, lost)
            else:  # its broker did not take the message in doubt again: nothing new is tried
                counts.restore_pending_counts(taken)
            if published is None and target.lost is not None:
                target.lost.give_back(lost)
            moved += published or 0
        # Counts of releases no configured app owns (sessions started by hand before
        # configure, or after unconfigure) go with the last app.
        strays = [r for r in counts.releases_with_counts() if r not in handled]
        orphans = counts.take_pending_counts(strays, hold=True) if strays else {}
        if orphans:
            last = targets[-1] if targets else None
            if last is not None and last.sends and _key(last.app, last.prefix) in clear:
                moved += self._publish(last.app, last.prefix, orphans) or 0
            else:  # no app to send them with (yet, or any more): they stay here
                counts.restore_pending_counts(orphans)
        counts.settle()  # what was discarded (not sent from this stage) is off the ledger too
        return moved

    def give_back_in_doubt(self, app: Celery, wait: float = 5.0) -> None:
        """*app* is unconfigured: its messages in doubt go back to this process's counts (taken
        with ``take_pending_counts``, or sent as strays with the last app), as they did
        before messages were held in doubt. Nothing is left to be sent by an app gone."""
        if not self._lock.acquire(timeout=wait):
            return  # a flush under way: its next one gives them back (the app is no target)
        try:
            for key, doubt in list(self._in_doubt.items()):
                if doubt.app is app:
                    del self._in_doubt[key]
                    counts.restore_pending_counts(counts.release_in_doubt(doubt.message_id))
        finally:
            self._lock.release()

    def _publish(self, app: Celery, prefix: str, pending: PendingCounts, lost: int = 0) -> int | None:
        """Publish *pending*: the sessions the broker took. A message whose publish failed is
        kept in doubt (published again, as is, by the next flush). None: nothing could be
        tried, the counts are put back (*lost* is the caller's to give back)."""
        done = _publish_counts(app, pending, prefix, lost)
        if done.untried:
            counts.restore_pending_counts(pending)
            return None
        for part in done.rest:
            counts.restore_pending_counts(part)
        if done.doubt is not None:
            message_id, part, body = done.doubt
            self._in_doubt[_key(app, prefix)] = InDoubt(app, prefix, message_id, body)
            counts.hold_in_doubt(message_id, part)  # settles: the rest is off the ledger
        else:
            counts.settle()
        return done.moved

    def _resend_in_doubt(self, targets: list[FlushTarget]) -> tuple[int, set[tuple[int, str]]]:
        """Publish again, as they were, the messages in doubt of *targets*: the sessions moved,
        and the keys of the targets with none left. Those of an app no longer configured go
        back to the counts (strays, for the last app)."""
        moved = 0
        live = {_key(t.app, t.prefix) for t in targets}
        for key, doubt in list(self._in_doubt.items()):
            if key not in live:  # unconfigured meanwhile: its counts become strays
                del self._in_doubt[key]
                counts.restore_pending_counts(counts.release_in_doubt(doubt.message_id))
                continue
            try:
                publish(doubt.app, queue_names(doubt.prefix).sessions, [doubt.body])
            except Exception as exc:
                _log_broker_problem(exc)
                continue
            del self._in_doubt[key]
            moved += _total(counts.release_in_doubt(doubt.message_id))
        return moved, live - set(self._in_doubt)


def _key(app: Celery, prefix: str) -> tuple[int, str]:
    return id(app), prefix


def _total(pending: PendingCounts) -> int:
    return sum(n for buckets in pending.values() for n in buckets.values())
