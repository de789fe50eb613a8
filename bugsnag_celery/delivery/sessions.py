"""Session counts, from the broker to BugSnag: the second half of their way (see ``flusher.py``).

One delivery run merges every message on the sessions queue per release group and
minute, and posts one v1.0 session payload per release group: the network cost is one
request per group and run, whatever the number of task runs or processes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery

from ..payload.sessions import counts_from_message, counts_message, session_bodies
from ..payload.wire import MAX_BODY_BYTES, SESSIONS_VERSION
from ..sessions import counts
from ..sessions.counts import PendingCounts, Release
from ..transport.http import Request, post
from ..transport.outcome import Next, decide, log_decision
from ..transport.queues import DEFAULT_PREFIX, message_count, queue_names
from .drain import Sent, drain

__all__ = ["deliver_session_counts", "pending_session_messages"]

logger = logging.getLogger("bugsnag_celery")


def deliver_session_counts(
    app: Celery,
    *,
    api_key: str | None,
    endpoint: str | None,
    enabled_release_stages: Iterable[str] | None,
    timeout: float = 10.0,
    limit: int = 100_000,
    prefix: str = DEFAULT_PREFIX,
    max_body: int = MAX_BODY_BYTES,
) -> dict[str, int]:
    """Drain the sessions queue, post the payloads of each release group, ack after a 2xx.

    Groups that fail with a retryable error go back to the queue as one new message. An
    unknown outcome (no answer in time: it may have arrived) goes back once, marked; a
    second unknown outcome drops it with a log line, so a slow BugSnag sees a count at
    most twice. Permanent 4xx: dropped with one log line. (The policy is ``transport/outcome.py``'s.)
    """
    stats = {"messages": 0, "sessions": 0, "delivered": 0, "dropped": 0, "retry": 0, "requests": 0}
    stages = None if enabled_release_stages is None else set(enabled_release_stages)

    def send(bodies: list[Any]) -> Sent:
        merged: dict[tuple[Release, int], dict[str, int]] = {}
        malformed = invalid = 0
        for body in bodies:
            try:
                pending, dropped, unknown = counts_from_message(body)
            except Exception:
                malformed += 1
                continue
            invalid += dropped
            for release, buckets in pending.items():
                into = merged.setdefault((release, min(unknown, 1)), {})
                for minute, n in buckets.items():
                    into[minute] = into.get(minute, 0) + n
        if malformed:
            logger.error("bugsnag_celery: dropping %d malformed session-count message(s)", malformed)
        if invalid:
            logger.error(
                "bugsnag_celery: dropping %d session count(s) with impossible values (not a positive "
                "count, or a minute that does not exist or lies ahead)", invalid,
            )  # fmt: skip
        retry: dict[int, PendingCounts] = {0: {}, 1: {}}
        warned = False
        for (release, unknown), buckets in merged.items():
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
            for chunk, body in session_bodies(release, buckets, max_body):
                sent = sum(chunk.values())
                request = Request(endpoint, api_key, SESSIONS_VERSION, body, kind="session")
                outcome, reason = post(request, timeout)
                stats["requests"] += 1
                step = decide(outcome, unknown)
                log_decision(step, request.kind, sent, reason)
                if step is Next.DONE:
                    stats["delivered"] += sent
                elif step is Next.DROP or step is Next.GIVE_UP:
                    stats["dropped"] += sent
                else:  # retry, or send again once (marked): in the next run
                    if step is Next.RETRY:
                        logger.warning("bugsnag_celery: session delivery failed (%s); kept for the next run",
                                       reason)  # fmt: skip
                    mark = unknown + 1 if step is Next.SEND_AGAIN else unknown
                    retry[mark].setdefault(release, {}).update(chunk)
                    stats["retry"] += sent
        left = bool(stats["delivered"] or stats["dropped"])
        again = [counts_message(pending, unknown=mark) for mark, pending in retry.items() if pending]
        return Sent(again, left)

    def keep_in_memory(bodies: list[Any]) -> bool:
        # Part went out: handing the whole batch back would send that part twice. This
        # process's flusher publishes the rest when the broker is back.
        for body in bodies:
            counts.restore_pending_counts(counts_from_message(body)[0])
        return True

    drained = drain(app, queue_names(prefix).sessions, send, limit=limit, keep=keep_in_memory)
    stats["messages"] = drained.messages
    return stats


def pending_session_messages(app: Celery, prefix: str = DEFAULT_PREFIX) -> int:
    """Messages of session counts waiting on the broker for a delivery run."""
    return message_count(app, queue_names(prefix).sessions)
