"""One delivery run: every session count on the broker, then every spooled event, then the status.

What the periodic task ``bugsnag_celery.deliver_sessions`` does (and ``celery bugsnag
flush``); safe to run in several processes at once, because the broker hands each
message to one of them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..clock import now_iso
from ..options.declared import Options
from .sessions import deliver_session_counts
from .spool import drain_spooled_events
from .status import DeliveryStatus, record_status

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["deliver_all"]

logger = logging.getLogger("bugsnag_celery")


def deliver_all(app: Celery, opts: Options) -> DeliveryStatus:
    """Run the delivery for *app* with its options; never raises (the outcome is in the status)."""
    status: DeliveryStatus = {"last_run": now_iso(), "last_run_at": time.time(), "hostname": opts.hostname}
    try:
        status["sessions"] = deliver_session_counts(
            app, api_key=opts.api_key if opts.sends else None, endpoint=opts.endpoints.sessions,
            enabled_release_stages=opts.enabled_release_stages, timeout=opts.delivery_timeout,
            prefix=opts.queue_prefix,
        )  # fmt: skip
        status["events"] = drain_spooled_events(
            app, api_key=opts.api_key if opts.sends else None, endpoint=opts.endpoints.notify,
            timeout=opts.delivery_timeout, prefix=opts.queue_prefix,
        )  # fmt: skip
        if status["sessions"]["retry"] or status["events"]["requeued"]:
            status["last_error"] = f"{now_iso()}: BugSnag unreachable or failing; kept for the next run"
        else:
            status["last_delivery"] = status["last_run"]
    except Exception as exc:
        status["last_error"] = f"{now_iso()}: {type(exc).__name__}: {exc}"
        logger.error("bugsnag_celery: delivery failed: %s", exc)
    record_status(app, status, opts.queue_prefix)
    return status
