"""The last delivery run's outcome, kept on the broker for ``celery bugsnag status``.

One message on ``<prefix>.status``: each run replaces it, carrying forward the time of
the last successful delivery and the last error, so that any host can answer "when did
counts last reach BugSnag?" without a database.

It also carries the running totals of what was dropped (``dropped``: sessions, unreadable
count entries, spooled events, and the events that worker processes lost and reported with
their counts), each delivery run adding its own: ``dropped`` all zero means nothing was
dropped since the status queue was made. (Two runs that record at the same instant may
each add to the same previous total, losing one run's figures: the beat task keeps runs
half an interval apart; ``flush`` by hand can meet a beat run.)

Whatever sends the delivery task (a beat; or a hand) leaves a mark of its own on
``<prefix>.beat_mark``: when, from which host, to which routing key. Counts that wait with no
delivery run then say which half is missing: nothing sends the task (no beat), or it is sent
and no worker runs it (no worker consumes its queue, or it expires behind other tasks there).
The mark is a queue of its own, not a field of the status: the sender only ever replaces its
own mark, and can never lose a delivery run's running totals by racing its status write.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

from ..clock import now_iso
from ..transport.batches import decoded, peek, peek_oldest
from ..transport.queues import (
    DEFAULT_PREFIX,
    bound_queue,
    kept_connection,
    message_count,
    publish,
    queue_names,
)

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "DeliveryStatus",
    "DropTotals",
    "SentMark",
    "record_status",
    "read_status",
    "record_sent",
    "read_sent",
    "describe_age",
    "age_seconds",
    "delivery_problem",
    "DeliveryProblem",
    "diagnose_delivery",
    "run_drops",
    "describe_drops",
]


class DropTotals(TypedDict):
    """What was dropped, in total over every delivery run (``DeliveryStatus["dropped"]``)."""

    sessions: int  # sessions known to be lost: refused, outside the release stages, no key...
    unreadable: int  # session-count entries and messages that could not be read (sessions unknown)
    events: int  # spooled event messages dropped by delivery runs (refused, malformed, oversized)
    events_lost: int  # events the worker processes lost (refused, unanswered twice, not spooled)
    spool_full: int  # spooled events dropped, oldest first, to keep the spool under spool_max_bytes


class DeliveryStatus(TypedDict, total=False):
    """The outcome of a delivery run (``deliver``/``flush``), as kept on ``<prefix>.status``.

    A run claims itself with ``last_run_at`` alone first (see ``hooks/beat.py``); the last
    delivery and error are carried forward from the previous status when a run has none.
    """

    last_run: str  # when the run started (ISO-8601)
    last_run_at: float  # the same, in seconds since the epoch
    hostname: str
    sessions: dict[str, int]  # delivery/sessions.py's counts (messages, delivered, retry...)
    events: dict[str, int]  # delivery/spool.py's counts (delivered, requeued, dropped...)
    last_delivery: str | None  # the last run that got everything through
    last_error: str | None
    dropped: DropTotals  # running totals over every run (carried forward, each run adding its own)
    last_drop: str | None  # when the last run that dropped anything ran, and what it dropped
    busy_until: float  # set by a run's claim: later runs skip until then (a hung BugSnag)


def run_drops(status: DeliveryStatus) -> DropTotals:
    """What the run of *status* dropped (zeros for a run that has not delivered yet)."""
    sessions, events = status.get("sessions") or {}, status.get("events") or {}
    return {
        "sessions": int(sessions.get("dropped", 0)),
        "unreadable": int(sessions.get("unreadable", 0)),
        "events": int(events.get("dropped", 0)),
        "events_lost": int(sessions.get("events_lost", 0)),
        "spool_full": int(events.get("overflow", 0)),
    }


def describe_drops(totals: DropTotals | dict[str, int]) -> str:
    """*totals* in words: ``"0"`` only when nothing was dropped."""
    if not any(totals.values()):
        return "0"
    return (
        f"{totals.get('sessions', 0)} session(s), {totals.get('unreadable', 0)} unreadable session-count "
        f"entr(ies), {totals.get('events', 0)} spooled event message(s), {totals.get('events_lost', 0)} "
        f"event(s) lost in worker processes, {totals.get('spool_full', 0)} spooled event(s) dropped "
        "oldest first, the spool being full (spool_max_bytes)"
    )


def _add_drops(status: DeliveryStatus, previous: DeliveryStatus | None) -> None:
    """The running totals of *previous* plus *status*'s own run's, and when it last dropped."""
    run = run_drops(status)
    before: DropTotals | dict[str, int] = (previous or {}).get("dropped") or {}
    total: DropTotals = {
        "sessions": run["sessions"] + int(before.get("sessions", 0)),
        "unreadable": run["unreadable"] + int(before.get("unreadable", 0)),
        "events": run["events"] + int(before.get("events", 0)),
        "events_lost": run["events_lost"] + int(before.get("events_lost", 0)),
        "spool_full": run["spool_full"] + int(before.get("spool_full", 0)),
    }
    status["dropped"] = total
    if any(run.values()):
        status["last_drop"] = f"{now_iso()}: {describe_drops(run)} (the workers' logs say why)"
    else:
        status.setdefault("last_drop", (previous or {}).get("last_drop"))


logger = logging.getLogger("bugsnag_celery")


class SentMark(TypedDict):
    """The mark left on ``<prefix>.beat_mark`` each time a process sends the delivery task."""

    at: float  # when it was sent (seconds since the epoch)
    hostname: str  # the sender's host (the beat's)
    routing_key: str | None  # where it was sent: the queue a worker must consume


#: How many messages a status or mark read looks at: each queue is kept holding one (its
#: writer replaces it), a few more only while writers race.
_KEPT = 10


def _seconds(value: object) -> float | None:
    """*value* as a time in seconds, or None (a record's field may be absent or of another type)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _newest(bodies: list[object], key: str = "last_run_at") -> Any:
    """The newest record of those *bodies* (by *key*): a queue that is not first-in
    first-out (SQS) hands them out in any order."""
    records = [body for body in bodies if isinstance(body, dict)]

    def at(record: dict[str, Any]) -> float:
        seconds = _seconds(record.get(key))
        return float("-inf") if seconds is None else seconds

    return max(records, key=at) if records else None


def _take_all(bound: Any) -> list[Any]:
    """Every message of *bound*, unacknowledged (a read that finds the queue empty ends it)."""
    messages: list[Any] = []
    while True:
        message = bound.get(no_ack=False, accept=["json"])
        if message is None:
            return messages
        messages.append(message)


def record_status(app: Celery, status: DeliveryStatus, prefix: str = DEFAULT_PREFIX) -> None:
    """Replace the kept status with *status* (filling in what it does not say from the newest
    kept one): the queue is left holding this one alone.

    Each message read is acknowledged, never taken with ``no_ack``: kombu's SQS transport
    deletes a message read that way only for a consumer, so statuses piled up there.
    """
    name = queue_names(prefix).status
    try:
        with kept_connection(app) as conn:
            messages = _take_all(bound_queue(conn, name))
            previous = _newest(decoded(messages))
            if previous:
                status.setdefault("last_delivery", previous.get("last_delivery"))
                status.setdefault("last_error", previous.get("last_error"))
            _add_drops(status, previous)
            publish(app, name, [status])
            for message in messages:
                message.ack()
    except Exception as exc:
        logger.warning("bugsnag_celery: could not record the delivery status: %s", exc)


def read_status(app: Celery, prefix: str = DEFAULT_PREFIX) -> DeliveryStatus | None:
    """The newest kept status, left in place (``peek``: other readers see it meanwhile);
    None before the first delivery run."""
    newest: DeliveryStatus | None = _peek_newest(app, queue_names(prefix).status, "last_run_at")
    return newest


def record_sent(app: Celery, mark: SentMark, prefix: str = DEFAULT_PREFIX) -> None:
    """Replace the kept mark of the delivery task's sender with *mark*: ``<prefix>.beat_mark`` is
    left holding it alone (one message, however long no worker runs the task). Raises what
    the broker raises (the caller, a publish signal, logs it)."""
    name = queue_names(prefix).beat_mark
    with kept_connection(app) as conn:
        messages = _take_all(bound_queue(conn, name))
        publish(app, name, [mark])
        for message in messages:
            message.ack()


def read_sent(app: Celery, prefix: str = DEFAULT_PREFIX) -> SentMark | None:
    """When the delivery task was last sent, and by whom, left in place; None if never (or by
    a process whose bugsnag-celery leaves no mark).

    The mark is left in place (``peek``); see :func:`_peek_newest` for an empty queue.
    """
    mark = _peek_newest(app, queue_names(prefix).beat_mark, "at")
    return mark if mark is not None and _seconds(mark.get("at")) is not None else None


def _peek_newest(app: Celery, name: str, key: str) -> Any:
    """The newest record queue *name* keeps (by *key*), left in place; None if it keeps none.

    Its writer replaces it (take, publish, acknowledge): for that moment the queue is empty,
    so an empty queue is looked at again, three times within half a second, before it means
    "none" (once, a worker said "no beat" while a beat ran; once, a status read found none
    while delivery runs recorded theirs every second).
    """
    for pause in (0.05, 0.15, 0.3, None):
        with kept_connection(app) as conn:
            bodies = peek(conn, name, _KEPT)
        if bodies or pause is None:
            break
        time.sleep(pause)
    return _newest(bodies, key)


def age_seconds(now: float, at: float | None) -> float | None:
    """How long before *now* the stamp *at* was written, to 0.1 s (``status --json``); never
    ``-0.0``, which a stamp rounded a moment after it was written would otherwise give."""
    return None if at is None else round(now - at, 1) + 0.0


def describe_age(seconds: float) -> str:
    """*seconds* ago, in the unit a person reads: ``"25 s ago"``, ``"13 min ago"``, ``"5 h ago"``."""
    if seconds < -1:  # the writer's clock is ahead of this host's
        return f"{-seconds:.0f} s in the future (this host's clock is behind the one that wrote it)"
    if seconds < 0.5:  # also -0.0, which an age rounded a moment after its stamp can be: "-0 s ago"
        return "0 s ago"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _oldest_publish_time(app: Celery, name: str) -> float | None:
    """When the message at the head of *name* was published (``"at"``), left in place."""
    with kept_connection(app) as conn:
        oldest = peek_oldest(conn, name)
    return _seconds(oldest.get("at")) if isinstance(oldest, dict) else None


class DeliveryProblem(NamedTuple):
    """Why counts wait: ``kind`` is ``"no-beat"`` (nothing sends the delivery task) or
    ``"no-worker"`` (it is sent, no worker runs it); ``text`` says it to an operator."""

    kind: str
    text: str


def delivery_problem(app: Celery, prefix: str, interval: float, now: float | None = None) -> str | None:
    """Why counts wait on the broker, in words (:func:`diagnose_delivery`); None if all is well."""
    problem = diagnose_delivery(app, prefix, interval, now)
    return problem.text if problem else None


def diagnose_delivery(
    app: Celery, prefix: str, interval: float, now: float | None = None
) -> DeliveryProblem | None:
    """Why counts wait on the broker, if no delivery ran for 3 intervals; None if all is well.

    Nothing else schedules the delivery task than a beat: the sender's mark (:func:`read_sent`)
    tells a beat that does not run (no recent mark) from a task sent that no worker runs.
    """
    now = time.time() if now is None else now
    name = queue_names(prefix).sessions
    waiting = message_count(app, name)
    if not waiting:
        return None
    oldest = _oldest_publish_time(app, name)
    if oldest is not None and now - oldest <= 3 * interval:
        return None  # they have not waited long: a delivery run may well be on its way
    status = read_status(app, prefix)
    last = _seconds(status.get("last_run_at")) if status else None
    if last is not None and now - last <= 3 * interval:
        return None
    ran = (
        "no delivery run is recorded"
        if last is None
        else f"the last delivery run was {describe_age(now - last)}"
    )
    counts = f"{waiting} message(s) of session counts wait on the broker"
    expected = f"(expected every {interval:g} s)"
    flush = "celery -A <app> bugsnag flush delivers now"
    mark = read_sent(app, prefix)
    sent = _seconds(mark.get("at")) if mark else None
    if mark is not None and sent is not None and now - sent <= 3 * interval:
        queue = mark.get("routing_key") or "its queue"
        return DeliveryProblem(
            "no-worker",
            f"{counts} and no worker runs the delivery task: bugsnag_celery.deliver_sessions was sent "
            f"{describe_age(now - sent)} (by {mark.get('hostname')}, to {queue!r}), but {ran} {expected}. "
            f"Is a worker consuming {queue!r}? (celery -A <app> worker -Q {queue}); or does the task wait "
            f"there behind other tasks until it expires (give it a queue of its own: task_routes)? {flush}",
        )
    last_sent = f"last sent {describe_age(now - sent)}" if sent is not None else "never sent"
    return DeliveryProblem(
        "no-beat",
        f"{counts} and nothing sends the delivery task: bugsnag_celery.deliver_sessions was {last_sent}, "
        f"and {ran} {expected}: is a beat running? Nothing else schedules bugsnag_celery.deliver_sessions: "
        f"start one (celery -A <app> beat, or worker -B); {flush}",
    )
