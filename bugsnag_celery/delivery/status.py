"""The last delivery run's outcome, kept on the broker for ``celery bugsnag status``.

One message on ``<prefix>.status``: each run replaces it, carrying forward the time of
the last successful delivery and the last error, so that any host can answer "when did
counts last reach BugSnag?" without a database.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, TypedDict

from ..transport.queues import DEFAULT_PREFIX, bound_queue, connection, message_count, publish, queue_names

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["DeliveryStatus", "record_status", "read_status", "delivery_problem"]


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


logger = logging.getLogger("bugsnag_celery")


def record_status(app: Celery, status: DeliveryStatus, prefix: str = DEFAULT_PREFIX) -> None:
    """Replace the kept status with *status* (filling in what it does not say from the last one)."""
    name = queue_names(prefix).status
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
                status.setdefault("last_delivery", previous.get("last_delivery"))
                status.setdefault("last_error", previous.get("last_error"))
        publish(app, name, [status])
    except Exception as exc:
        logger.warning("bugsnag_celery: could not record the delivery status: %s", exc)


def read_status(app: Celery, prefix: str = DEFAULT_PREFIX) -> DeliveryStatus | None:
    """The kept status, left in place; None before the first delivery run."""
    with connection(app, write=False) as conn:
        message = bound_queue(conn, queue_names(prefix).status).get(no_ack=False, accept=["json"])
        if message is None:
            return None
        data: DeliveryStatus = message.decode()
        message.requeue()
        return data


def _oldest_publish_time(app: Celery, name: str) -> float | None:
    """When the message at the head of *name* was published (``"at"``), left in place."""
    with connection(app, write=False) as conn:
        message = bound_queue(conn, name).get(no_ack=False, accept=["json"])
        if message is None:
            return None
        try:
            at = message.decode().get("at")
        finally:
            message.requeue()
    return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None


def delivery_problem(app: Celery, prefix: str, interval: float, now: float | None = None) -> str | None:
    """Why counts wait on the broker, if no delivery ran for 3 intervals; None if all is well.

    The likely cause is that no beat runs: nothing else schedules the delivery task.
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
    last = status.get("last_run_at") if status else None
    if isinstance(last, (int, float)) and now - last <= 3 * interval:
        return None
    since = f"{now - last:.0f} s ago" if isinstance(last, (int, float)) else "never"
    return (
        f"{waiting} message(s) of session counts wait on the broker and the last delivery run was "
        f"{since} (expected every {interval:g} s): is a beat running? Nothing else schedules "
        f"bugsnag_celery.deliver_sessions: start one (celery -A <app> beat, or worker -B); "
        f"celery -A <app> bugsnag flush delivers now"
    )
