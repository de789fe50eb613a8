"""Session counts, from the broker to BugSnag: the second half of their way (see ``flusher.py``).

One delivery run merges every message on the sessions queue per release group and
minute, and posts one v1.0 session payload per release group: the network cost is one
request per group and run, whatever the number of task runs or processes.

Counts go to the project that counted them (``Release.identity``): the delivering app's
own, and those of the other apps configured in this process, each with its own key and
endpoint. Counts of a project no app here delivers to (another worker's app on the same
queue) are handed back to the queue for the delivery run that knows it. Every session
that leaves the queue otherwise than to BugSnag is counted in ``dropped`` (its sessions)
or ``unreadable`` (entries and messages whose sessions cannot be known), and logged; the
events that worker processes lost, which their flushes report, in ``events_lost``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from celery import Celery

from ..clock import minute_from_iso
from ..payload.sessions import counts_from_message, counts_messages, session_bodies
from ..payload.wire import MAX_BODY_BYTES, SESSIONS_VERSION
from ..sessions import counts
from ..sessions.counts import PendingCounts, Release, identity_of
from ..transport.http import Request, post
from ..transport.outcome import (
    HUNG,
    Next,
    Outcome,
    decide,
    log_decision,
    read_timeout,
    send_order,
    unknown_after,
)
from ..transport.queues import DEFAULT_PREFIX, body_limit, message_count, queue_names
from .drain import Sent, drain

__all__ = ["Destination", "deliver_session_counts", "pending_session_messages", "UNCLAIMED_MINUTES"]

logger = logging.getLogger("bugsnag_celery")


class Destination(NamedTuple):
    """Where the counts of one BugSnag project go from this process: an app configured here."""

    api_key: str | None  # None: this app sends nothing (no key, or outside its release stages)
    endpoint: str | None  # None: sessions must not be sent (notify_endpoint set, sessions_endpoint not)
    enabled_release_stages: Iterable[str] | None


#: Counts of a project that no app of the delivering process sends to are handed back to
#: the queue, for the run of a process that does. Once the newest of their minutes is this
#: old, no such process drained the queue for a day (its app is gone, or its key replaced):
#: they are dropped and counted, so that they do not circle the queue for ever.
UNCLAIMED_MINUTES = 24 * 60


def deliver_session_counts(
    app: Celery,
    *,
    api_key: str | None,
    endpoint: str | None,
    enabled_release_stages: Iterable[str] | None,
    timeout: float = 10.0,
    limit: int = 10_000,
    prefix: str = DEFAULT_PREFIX,
    max_body: int = MAX_BODY_BYTES,
    identity: str | None = None,
    others: Mapping[str, Destination] | None = None,
) -> dict[str, int]:
    """Drain the sessions queue, post the payloads of each release group, ack after a 2xx.

    *api_key*, *endpoint* and *enabled_release_stages* are the delivering app's, whose
    project is *identity* (by default, :func:`identity_of` the key and endpoint); counts
    of no project's (``""``) go there too. *others* maps the identity of each other app
    configured here to its :class:`Destination`.

    Counts are merged per release group and mark (how many sends had no answer) and sent
    in the policy's order (``transport/outcome.py``: a patient second send first, counts
    kept from a hung BugSnag last). At the first payload without a 2xx or a 4xx the run
    stops: it and everything not yet sent go back to the queue, marked as the outcome says
    (no answer: sent once more, waiting longer; no answer again: kept, never dropped), so a
    hung BugSnag holds a run for one request's wait and a slow one sees a count at most
    twice. Permanent 4xx: dropped with one log line. ``unanswered``: of the counts handed
    back, those BugSnag left without an answer (in this run or an earlier one).
    """
    stats = {"messages": 0, "sessions": 0, "delivered": 0, "dropped": 0, "retry": 0, "requests": 0,
             "unanswered": 0, "unreadable": 0, "other_apps": 0, "refiled": 0, "events_lost": 0,
             "copies": 0}  # fmt: skip
    stages = None if enabled_release_stages is None else frozenset(enabled_release_stages)
    own = Destination(api_key, endpoint, stages)
    mine = identity_of(api_key, endpoint) if identity is None else identity
    elsewhere = dict(others or {})
    seen: set[str] = set()  # the ids of the messages this run read: a second copy is dropped

    def send(bodies: list[Any]) -> Sent:
        now = int(time.time()) // 60
        merged: dict[tuple[Release, int], dict[str, int]] = {}
        malformed = too_far = ahead = copies = 0
        for body in bodies:
            try:
                read = counts_from_message(body, now)
            except Exception:
                malformed += 1
                continue
            if read.message_id:
                if read.message_id in seen:  # published again after a publish that got no answer
                    copies += 1
                    continue
                seen.add(read.message_id)
            stats["unreadable"] += read.unreadable
            stats["refiled"] += read.refiled
            stats["events_lost"] += read.lost_events
            too_far += read.too_far_ahead
            ahead = max(ahead, read.ahead_minutes)
            for release, buckets in read.counts.items():
                into = merged.setdefault((release, min(max(read.unknown, 0), HUNG)), {})
                for minute, n in buckets.items():
                    into[minute] = into.get(minute, 0) + n
        _log_read(malformed, stats["unreadable"], too_far, stats["refiled"], ahead)
        stats["copies"] += copies
        if copies:
            logger.info("bugsnag_celery: %d copy(ies) of session-count messages dropped (a flush "
                        "published again after the broker did not answer)", copies)  # fmt: skip
        if stats["events_lost"]:
            logger.error("bugsnag_celery: %d event(s) were lost in the processes that reported them (each "
                         "logged why); counted in the status", stats["events_lost"])  # fmt: skip
        stats["unreadable"] += malformed
        stats["dropped"] += too_far
        stats["sessions"] += too_far
        drops: dict[str, int] = {}  # why -> sessions, one log line each
        retry: dict[int, PendingCounts] = {}
        stopped = False

        def hand_back(release: Release, chunk: dict[str, int], mark: int) -> None:
            into = retry.setdefault(mark, {}).setdefault(release, {})
            for minute, n in chunk.items():
                into[minute] = into.get(minute, 0) + n
            stats["retry"] += sum(chunk.values())
            if mark:
                stats["unanswered"] += sum(chunk.values())

        for (release, unknown), buckets in sorted(merged.items(), key=lambda item: send_order(item[0][1])):
            total = sum(buckets.values())
            stats["sessions"] += total
            target = own if release.identity in ("", mine) else elsewhere.get(release.identity)
            if target is None and not _unclaimed_too_long(buckets, now):
                into = retry.setdefault(unknown, {}).setdefault(release, {})  # another app's: for its run
                for minute, n in buckets.items():
                    into[minute] = into.get(minute, 0) + n
                stats["other_apps"] += total
                continue
            key, url, allowed = target or (None, None, None)
            why = UNCLAIMED if target is None else _refusal(release, key, url, allowed)
            if why or not key or url is None:  # (the last two: _refusal gave a reason)
                drops[why] = drops.get(why, 0) + total
                stats["dropped"] += total
                continue
            for chunk, body in session_bodies(release, buckets, max_body):
                if stopped:  # BugSnag did not take the last one: the rest waits for the next run
                    hand_back(release, chunk, unknown)
                    continue
                sent = sum(chunk.values())
                request = Request(url, key, SESSIONS_VERSION, body, kind="session")
                outcome, reason = post(request, read_timeout(timeout, unknown))
                stats["requests"] += 1
                step = decide(outcome, unknown)
                log_decision(step, request.kind, sent, reason, timeout)  # a drop's line is written here
                if step is Next.DONE:
                    stats["delivered"] += sent
                elif step is Next.DROP:
                    stats["dropped"] += sent
                else:  # retry; no answer (sent again, patiently, or kept): in the next run
                    if outcome is not Outcome.UNKNOWN:
                        logger.warning("bugsnag_celery: session delivery failed (%s); kept for the next run",
                                       reason)  # fmt: skip
                    hand_back(release, chunk, unknown_after(outcome, unknown))
                    stopped = True
        for why, n in drops.items():
            logger.error("bugsnag_celery: dropping %d session(s): %s", n, why)
        # what was counted must not be counted again: a batch handed back whole would be
        left = bool(stats["delivered"] or stats["dropped"] or stats["unreadable"] or stats["events_lost"])
        limit = body_limit(app)  # a whole batch handed back may be more than one message holds
        again = [body for mark, pending in sorted(retry.items()) if pending
                 for _part, body in counts_messages(pending, limit, unknown=mark)]  # fmt: skip
        return Sent(again, left)

    def keep_in_memory(bodies: list[Any]) -> bool:
        # Part went out: handing the whole batch back would send that part twice. This
        # process's flusher publishes the rest when the broker is back.
        for body in bodies:
            counts.restore_pending_counts(counts_from_message(json.loads(body)).counts)
        return True

    drained = drain(app, queue_names(prefix).sessions, send, limit=limit, keep=keep_in_memory)
    stats["messages"] = drained.messages
    stats["unreadable"] += drained.undecodable
    return stats


#: Why the counts of a project nobody claimed for :data:`UNCLAIMED_MINUTES` are dropped.
UNCLAIMED = (
    f"of a BugSnag project that no delivering app has sent to for {UNCLAIMED_MINUTES // 60} hours "
    "(an app removed, or its API key replaced)"
)


def _refusal(release: Release, key: str | None, url: str | None, stages: Iterable[str] | None) -> str:
    """Why counts of *release* may not be sent with *key* to *url* (``""``: they may)."""
    if stages is not None and release.release_stage not in set(stages):
        return f"of release stage {release.release_stage!r}, outside enabled_release_stages"
    if not key:
        return "no API key (or outside enabled_release_stages)"
    if url is None:
        return "notify_endpoint is set but sessions_endpoint is not"
    return ""


def _unclaimed_too_long(buckets: dict[str, int], now: int) -> bool:
    """Whether the newest minute of *buckets* is over :data:`UNCLAIMED_MINUTES` old."""
    return now - max(minute_from_iso(m) for m in buckets) > UNCLAIMED_MINUTES


def _log_read(malformed: int, unreadable: int, too_far: int, refiled: int, ahead: int) -> None:
    """The log lines owed for what reading a batch found (a fast clock is a warning, not a loss)."""
    if malformed:
        logger.error("bugsnag_celery: dropping %d malformed session-count message(s)", malformed)
    if unreadable:
        logger.error(
            "bugsnag_celery: dropping %d session-count entr(ies) with impossible values (not a positive "
            "count, or a minute that does not exist); their sessions cannot be known", unreadable,
        )  # fmt: skip
    if too_far:
        logger.error(
            "bugsnag_celery: dropping %d session(s) counted in minutes over a day ahead of this host's "
            "clock (a clock set wrong by days, or garbage on the queue)", too_far,
        )  # fmt: skip
    if refiled:
        logger.warning(
            "bugsnag_celery: %d session(s) were counted in minutes up to %d ahead of this host's clock; "
            "filed under the current minute. Is a worker's clock fast?", refiled, ahead,
        )  # fmt: skip


def pending_session_messages(app: Celery, prefix: str = DEFAULT_PREFIX) -> int:
    """Messages of session counts waiting on the broker for a delivery run."""
    return message_count(app, queue_names(prefix).sessions)
