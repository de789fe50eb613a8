"""The last delivery run's outcome, kept on the broker for ``celery bugsnag status``.

One message on ``<prefix>.status``: each run replaces it, carrying forward the time of
the last successful delivery and the last error, so that any host can answer "when did
counts last reach BugSnag?" without a database.
"""

from __future__ import annotations

import logging
from typing import Any

from ..transport.queues import DEFAULT_PREFIX, bound_queue, connection, publish, queue_names

__all__ = ["record_status", "read_status"]

logger = logging.getLogger("bugsnag_celery")


def record_status(app: Any, status: dict[str, Any], prefix: str = DEFAULT_PREFIX) -> None:
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
                for key in ("last_delivery", "last_error"):
                    status.setdefault(key, previous.get(key))
        publish(app, name, [status])
    except Exception as exc:
        logger.warning("bugsnag_celery: could not record the delivery status: %s", exc)


def read_status(app: Any, prefix: str = DEFAULT_PREFIX) -> dict[str, Any] | None:
    """The kept status, left in place; None before the first delivery run."""
    with connection(app, write=False) as conn:
        message = bound_queue(conn, queue_names(prefix).status).get(no_ack=False, accept=["json"])
        if message is None:
            return None
        data: dict[str, Any] = message.decode()
        message.requeue()
        return data
