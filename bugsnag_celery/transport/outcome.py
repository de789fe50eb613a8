"""What an answer from BugSnag means, and what to do next: the delivery policy, written once.

Outcomes follow BugSnag's own notifiers: 2xx is delivered; 4xx other than 408/429 is
permanent (dropped with one log line naming the status; 401 means the API key); 408,
429, 5xx, connect time-outs and connection errors are worth retrying (by the sender
thread, or by a later delivery run).

One outcome is neither: no answer within the read time-out after the body was sent is
*unknown* -- the payload may well have arrived, or BugSnag may be hung and have nothing.
The two cases are told apart by waiting longer, once:

- the first send waits ``delivery_timeout`` (``T``) for the answer;
- after an unknown outcome the payload is sent once more and that send waits
  :data:`PATIENCE` times longer (``L = 3 T``). A *slow* BugSnag, one that answers within
  ``L``, answers it: the outcome is known, and the payload reached it at most twice;
- no answer to that patient send either: BugSnag is *hung* (a slow one would have
  answered). The payload is **kept** -- never dropped -- and sent again, waiting ``L``
  each time, once BugSnag answers again: the delivery runs send kept payloads only after
  everything else of the run was answered, or alone when nothing else waits
  (:func:`send_order`), and stop at the first request that is not.

Blindly resending on every run once turned 100 sessions into 300; dropping after two
unknown outcomes lost everything sent during a 90 s hang. The callers keep the count of
unknown outcomes so far, capped at :data:`HUNG` (``Request.unknown``, or the broker
message's ``"unknown"``); :func:`decide`, :func:`read_timeout`, :func:`unknown_after` and
:func:`send_order` are the only places that read it. The sender thread, the session
delivery and the spool's drain all act on their answers.
"""

from __future__ import annotations

import logging
from enum import Enum

__all__ = [
    "Outcome",
    "Next",
    "Fate",
    "PATIENCE",
    "HUNG",
    "decide",
    "read_timeout",
    "unknown_after",
    "send_order",
    "log_decision",
    "log_permanent",
    "log_unknown",
]

logger = logging.getLogger("bugsnag_celery")

#: A send after an unknown outcome waits this many times ``delivery_timeout`` for its answer.
PATIENCE = 3
#: The mark of a payload whose patient send had no answer either: BugSnag was hung.
HUNG = 2


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
    SEND_AGAIN = "send again"  # a first unknown outcome: sent once more, waiting PATIENCE times longer
    KEEP = "keep"  # no answer to a patient send: BugSnag is hung; kept, sent again once it answers
    RETRY = "retry"  # not delivered: sent again later (backoff, spool, next run)


class Fate(str, Enum):
    """How a request handed to the sender ended (what its ``on_done`` receives)."""

    DELIVERED = "delivered"
    PERMANENT = "permanent"  # refused by BugSnag, or too large to send
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
        return Next.KEEP if unknown_so_far else Next.SEND_AGAIN
    return Next.RETRY


def read_timeout(delivery_timeout: float, unknown_so_far: int) -> float:
    """How long a send waits for its answer: *delivery_timeout* at first, PATIENCE times that
    once an earlier send of the same payload had no answer (the send that tells slow from hung)."""
    return delivery_timeout * PATIENCE if unknown_so_far else delivery_timeout


def unknown_after(outcome: Outcome, unknown_so_far: int) -> int:
    """The payload's mark after *outcome*: one more unknown outcome, at most :data:`HUNG`."""
    return min(unknown_so_far + 1, HUNG) if outcome is Outcome.UNKNOWN else unknown_so_far


def send_order(unknown_so_far: int) -> int:
    """Where a payload goes in a delivery run (lowest first; the run stops at the first without answer).

    Patient second sends first: they decide whether BugSnag is slow or hung. Then first
    sends. Kept payloads last: they are sent again only when everything before them in the
    run was answered (BugSnag answers again), or alone when nothing else waits.
    """
    return {1: 0, 0: 1}.get(unknown_so_far, 2)


def log_decision(step: Next, kind: str, count: int, reason: str, delivery_timeout: float) -> None:
    """The log line a decision owes: for a drop, and for each unknown outcome (*count*: what it held).

    Done and retry log nothing here: each caller says in its own words how it retries.
    """
    if step is Next.DROP:
        log_permanent(kind, reason)
    elif step is Next.SEND_AGAIN or step is Next.KEEP:
        log_unknown(kind, count, read_timeout(delivery_timeout, 1), hung=step is Next.KEEP)


def log_unknown(kind: str, count: int, patient: float, hung: bool) -> None:
    """One line per unknown outcome: what happens to the payload now."""
    if hung:
        logger.error(
            "bugsnag_celery: a %s payload (%d) had no answer even within %g s: BugSnag looks hung. "
            "Kept (not dropped): sent again once BugSnag answers", kind, count, patient,
        )  # fmt: skip
    else:
        logger.warning(
            "bugsnag_celery: a %s payload (%d) had no answer within delivery_timeout; it may have "
            "arrived: sent once more, waiting up to %g s for the answer", kind, count, patient,
        )  # fmt: skip


def log_permanent(kind: str, reason: str) -> None:
    hint = " (the API key was refused: check api_key)" if reason == "HTTP 401" else ""
    logger.error(
        "bugsnag_celery: BugSnag rejected a %s payload with %s%s; it is dropped, not retried",
        kind,
        reason,
        hint,
    )
