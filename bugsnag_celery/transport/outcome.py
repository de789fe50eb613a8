"""What an answer from BugSnag means, and what to do next: the delivery policy, written once.

Outcomes follow BugSnag's own notifiers: 2xx is delivered; 4xx other than 408/429 is
permanent (dropped with one log line naming the status; 401 means the API key); 408,
429, 5xx, connect time-outs and connection errors are worth retrying (by the sender
thread, or by a later delivery run).

One outcome is neither: a read time-out after the body was sent (a slow BugSnag) is
*unknown* -- the payload may well have arrived. Retrying it blindly on every run turned
100 sessions into 300; so an unknown outcome is sent again at most once, and logged.
The callers keep the count of unknown outcomes so far (``Request.unknown``, or the broker
message's ``"unknown"``); :func:`decide` is the one place that reads it. The sender thread,
the session delivery and the spool's drain all act on its answer.
"""

from __future__ import annotations

import logging
from enum import Enum

__all__ = ["Outcome", "Next", "Fate", "decide", "log_decision", "log_permanent", "log_unknown"]

logger = logging.getLogger("bugsnag_celery")


class Outcome(str, Enum):
    """What one POST's answer (or its absence) means."""

    DELIVERED = "delivered"  # 2xx
    PERMANENT = "permanent"  # 4xx other than 408/429: sending it again cannot help
    RETRY = "retry"  # 408, 429, 5xx, no connection: worth sending later
    UNKNOWN = "unknown"  # no answer after the body was sent: it may have arrived

    def __str__(self) -> str:
        return self.value


class Next(Enum):
    """What to do with a request after an outcome (:func:`decide`)."""

    DONE = "done"  # delivered
    DROP = "drop"  # refused for good: dropped, with one log line
    SEND_AGAIN = "send again"  # a first unknown outcome: sent once more, marked as such
    GIVE_UP = "give up"  # a second unknown outcome: it may have arrived twice; never a third time
    RETRY = "retry"  # not delivered: sent again later (backoff, spool, next run)


class Fate(str, Enum):
    """How a request handed to the sender ended (what its ``on_done`` receives)."""

    DELIVERED = "delivered"
    PERMANENT = "permanent"  # refused by BugSnag, or too large to send
    UNKNOWN = "unknown"  # no answer twice: not sent a third time
    SPOOLED = "spooled"  # handed to the broker's spool, for a later delivery run
    LOST = "lost"  # could not be spooled either

    def __str__(self) -> str:
        return self.value


def decide(outcome: Outcome, unknown_so_far: int) -> Next:
    """The delivery policy: what to do after *outcome*, given the unknown outcomes before it."""
    if outcome is Outcome.DELIVERED:
        return Next.DONE
    if outcome is Outcome.PERMANENT:
        return Next.DROP
    if outcome is Outcome.UNKNOWN:
        return Next.GIVE_UP if unknown_so_far else Next.SEND_AGAIN
    return Next.RETRY


def log_decision(step: Next, kind: str, count: int, reason: str) -> None:
    """The log line a decision owes: for a drop, and for each unknown outcome (*count*: what it held).

    Done and retry log nothing here: each caller says in its own words how it retries.
    """
    if step is Next.DROP:
        log_permanent(kind, reason)
    elif step is Next.SEND_AGAIN or step is Next.GIVE_UP:
        log_unknown(kind, count, again=step is Next.GIVE_UP)


def log_unknown(kind: str, count: int, again: bool) -> None:
    """One line per unknown outcome: what happens to the payload now."""
    if again:
        logger.error(
            "bugsnag_celery: a %s payload (%d) had no answer twice; not sent again (it may have "
            "arrived twice already). Is BugSnag slow? Raise delivery_timeout.", kind, count,
        )  # fmt: skip
    else:
        logger.warning(
            "bugsnag_celery: a %s payload (%d) had no answer within delivery_timeout; it may have "
            "arrived: sent once more, at most", kind, count,
        )  # fmt: skip


def log_permanent(kind: str, reason: str) -> None:
    hint = " (the API key was refused: check api_key)" if reason == "HTTP 401" else ""
    logger.error(
        "bugsnag_celery: BugSnag rejected a %s payload with %s%s; it is dropped, not retried",
        kind,
        reason,
        hint,
    )
