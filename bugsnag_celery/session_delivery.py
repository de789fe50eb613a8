"""Session counts, from the process that counted them to BugSnag, exactly once.

::

    task runs in a pool child / thread / greenlet, on any host
        | counts.py: +1 in the minute bucket of its release group (in memory)
        v
    flusher thread of that process: at most one message per flush interval,
        | and a last one when the process shuts down
        v
    durable queue "bugsnag_celery.sessions" on the app's own broker (JSON)
        | beat schedules bugsnag_celery.deliver_sessions every session_delivery_interval
        v
    one worker drains the queue, merges per release group and minute,
        | posts one v1.0 session payload per release group,
        v acknowledges only after a 2xx
    BugSnag's session API

Why the broker: counts are born in processes that die by ``os._exit`` (prefork
children), on many hosts; the beat task runs in one process of one worker. The broker
the app already has is durable and hands each message to exactly one consumer, so two
deliveries running at once never send a count twice, and no new server is needed.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
from collections.abc import Iterable
from typing import Any

import celery

from . import counts
from .counts import PendingCounts, Release
from .delivery import DELIVERED, PERMANENT, Payload, log_permanent, notifier_info, post
from .queues import DEFAULT_PREFIX, bound_queue, connection, message_count, publish, take_batch

__all__ = [
    "DELIVER_TASK",
    "Flusher",
    "publish_counts",
    "deliver_session_counts",
    "pending_session_messages",
]

logger = logging.getLogger("bugsnag_celery")

DELIVER_TASK = "bugsnag_celery.deliver_sessions"
_RUNTIME = {"python": platform.python_version(), "celery": celery.__version__}


def _rows(pending: PendingCounts) -> list[dict[str, Any]]:
    return [{"release": list(release), "counts": buckets} for release, buckets in pending.items()]


def _from_rows(rows: Any) -> PendingCounts:
    pending: PendingCounts = {}
    for row in rows:
        version, stage, app_type, hostname = row["release"]
        release = Release(version, str(stage), str(app_type), str(hostname))
        buckets = pending.setdefault(release, {})
        for minute, n in row["counts"].items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"bad count {n!r}")
            counts._minute_from_iso(minute)  # validates the stamp
            buckets[minute] = buckets.get(minute, 0) + n
    return pending


def publish_counts(app: Any, pending: PendingCounts, prefix: str = DEFAULT_PREFIX) -> bool:
    """Put *pending* on the broker as one JSON message. True if the broker took it."""
    if not pending:
        return True
    try:
        publish(app, f"{prefix}.sessions", [{"v": 1, "pid": os.getpid(), "groups": _rows(pending)}])
        return True
    except Exception as exc:
        logger.warning("bugsnag_celery: session counts kept in memory, the broker is unreachable: %s", exc)
        return False


class Flusher:
    """Moves this process's counts onto the broker: a lazy, fork-aware daemon thread.

    ``targets()`` returns ``(app, releases, sends, prefix)`` per configured app: its counts
    go to its broker; counts of apps outside ``enabled_release_stages`` or without an API
    key are discarded here, so the broker never fills with what will not be sent.
    """

    def __init__(self, targets: Any, interval: Any) -> None:
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
            for app, _releases, _sends, _prefix in self.targets():
                app.connection_for_write().transport_cls  # noqa: B018 - resolves and imports it
        except Exception:  # a bad broker URL shows up (and is logged) at the first flush
            pass

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval())
            self._wake.clear()
            if not self.enabled:
                continue
            try:
                self.flush_once()
            except Exception:
                logger.exception("bugsnag_celery: moving session counts failed")

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
        moved = 0
        handled: set[Release] = set()
        for app, releases, sends, prefix in self.targets():
            taken = counts.take_pending_counts(releases)
            handled.update(releases)
            if not taken:
                continue
            if not sends:
                continue  # outside enabled_release_stages / no API key: never sent
            if publish_counts(app, taken, prefix):
                moved += sum(n for b in taken.values() for n in b.values())
            else:
                counts.restore_pending_counts(taken)
        # Counts of releases no configured app owns (sessions started by hand before
        # configure, or after unconfigure) go with the last app.
        strays = [r for r in counts.releases_with_counts() if r not in handled]
        orphans = counts.take_pending_counts(strays) if strays else {}
        if orphans:
            targets = list(self.targets())
            if targets and targets[-1][2] and publish_counts(targets[-1][0], orphans, targets[-1][3]):
                moved += sum(n for b in orphans.values() for n in b.values())
            else:  # no app to send them with (yet, or any more): they stay here
                counts.restore_pending_counts(orphans)
        return moved


# ---------------------------------------------------------------------- delivery (beat task)


def session_payload(release: Release, buckets: dict[str, int]) -> dict[str, Any]:
    return {
        "notifier": notifier_info(),
        "app": {
            "version": release.app_version,
            "releaseStage": release.release_stage,
            "type": release.app_type,
        },
        "device": {"hostname": release.hostname, "runtimeVersions": dict(_RUNTIME)},
        "sessionCounts": [
            {"startedAt": minute, "sessionsStarted": n} for minute, n in sorted(buckets.items())
        ],
    }


def deliver_session_counts(
    app: Any,
    *,
    api_key: str | None,
    endpoint: str | None,
    enabled_release_stages: Iterable[str] | None,
    timeout: float = 10.0,
    limit: int = 100_000,
    prefix: str = DEFAULT_PREFIX,
) -> dict[str, int]:
    """Drain the sessions queue, post one payload per release group, ack after a 2xx.

    Groups that fail with a retryable error are published again as one new message
    before the drained ones are acknowledged (a crash in between can duplicate, never
    lose). Permanent 4xx: dropped with one log line.
    """
    stats = {"messages": 0, "sessions": 0, "delivered": 0, "dropped": 0, "retry": 0, "requests": 0}
    stages = None if enabled_release_stages is None else set(enabled_release_stages)
    with connection(app, write=False) as conn:
        batch = take_batch(conn, f"{prefix}.sessions", limit)
        merged: PendingCounts = {}
        for body in batch.bodies:
            try:
                for release, buckets in _from_rows(body["groups"]).items():
                    into = merged.setdefault(release, {})
                    for minute, n in buckets.items():
                        into[minute] = into.get(minute, 0) + n
            except Exception:
                batch.malformed += 1
        if batch.malformed:
            logger.error("bugsnag_celery: dropping %d malformed session-count message(s)", batch.malformed)
        stats["messages"] = len(batch.bodies) + batch.malformed
        if not stats["messages"]:
            return stats
        retry: PendingCounts = {}
        warned = False
        for release, buckets in merged.items():
            total = sum(buckets.values())
            stats["sessions"] += total
            if stages is not None and release.release_stage not in stages:
                stats["dropped"] += total
                continue
            if not api_key or endpoint is None:
                if not warned:
                    warned = True
                    why = (
                        "no API key" if not api_key else "notify_endpoint is set but sessions_endpoint is not"
                    )
                    logger.warning("bugsnag_celery: session counts dropped (%s)", why)
                stats["dropped"] += total
                continue
            body = json.dumps(session_payload(release, buckets), separators=(",", ":")).encode()
            outcome, reason = post(Payload(endpoint, api_key, "1.0", body, kind="session"), timeout)
            stats["requests"] += 1
            if outcome == DELIVERED:
                stats["delivered"] += total
            elif outcome == PERMANENT:
                log_permanent(Payload(endpoint, api_key, "1.0", b"", kind="session"), reason)
                stats["dropped"] += total
            else:
                logger.warning("bugsnag_celery: session delivery failed (%s); kept for the next run", reason)
                retry[release] = buckets
                stats["retry"] += total
        if retry and not publish_counts(app, retry, prefix):
            if stats["delivered"] or stats["dropped"]:
                # Part went out: handing the whole batch back would send that part twice.
                # Keep the rest in this process; its flusher publishes it when it can.
                batch.ack()
                counts.restore_pending_counts(retry)
            else:
                batch.requeue()  # the broker is gone: let it hand everything out again
            return stats
        batch.ack()
    return stats


def pending_session_messages(app: Any, prefix: str = DEFAULT_PREFIX) -> int:
    return message_count(app, f"{prefix}.sessions")


def record_status(app: Any, status: dict[str, Any], prefix: str = DEFAULT_PREFIX) -> None:
    """Keep the last delivery's outcome on the broker, for ``celery bugsnag status``."""
    name = f"{prefix}.status"
    try:
        with connection(app) as conn:
            bound = bound_queue(conn, name)
            previous = None
            while True:
                message = bound.get(no_ack=True, accept=["json"])
                if message is None:
                    break
                previous = message.decode()
            if previous:
                for key in ("last_delivery", "last_error"):
                    status.setdefault(key, previous.get(key))
        publish(app, name, [status])
    except Exception as exc:
        logger.warning("bugsnag_celery: could not record the delivery status: %s", exc)


def read_status(app: Any, prefix: str = DEFAULT_PREFIX) -> dict[str, Any] | None:
    with connection(app, write=False) as conn:
        message = bound_queue(conn, f"{prefix}.status").get(no_ack=False, accept=["json"])
        if message is None:
            return None
        data: dict[str, Any] = message.decode()
        message.requeue()
        return data


def now_iso() -> str:
    from .delivery import sent_at

    return sent_at()
