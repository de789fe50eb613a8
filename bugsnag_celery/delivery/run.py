"""One delivery run: every session count on the broker, then every spooled event, then the status.

What the periodic task ``bugsnag_celery.deliver_sessions`` does (and ``celery bugsnag
flush``); safe to run in several processes at once, because the broker hands each
message to one of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..clock import now_iso
from ..options.declared import Options
from ..sessions.counts import Release
from ..transport.http import CONNECT_TIMEOUT
from ..transport.outcome import read_timeout
from .sessions import Destination, deliver_session_counts
from .spool import drain_spooled_events
from .status import DeliveryStatus, record_status

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["deliver_all", "longest_run"]

logger = logging.getLogger("bugsnag_celery")


#: What a run spends on the broker at most, beyond its requests (each broker step is bounded).
BROKER_SECONDS = 30.0


def longest_run(opts: Options) -> float:
    """How long one delivery run may take while BugSnag hangs: each drain stops at its first
    request without an answer, so two requests' connect and (patient) read time-outs, and the broker."""
    return 2 * (CONNECT_TIMEOUT + read_timeout(opts.delivery_timeout, 1)) + BROKER_SECONDS


def _destination(opts: Options) -> Destination:
    key = opts.api_key if opts.sends else None
    return Destination(key, opts.endpoints.sessions, opts.enabled_release_stages)


def deliver_all(app: Celery, opts: Options, others: Iterable[Options] = ()) -> DeliveryStatus:
    """Run the delivery for *app* with its options; never raises (the outcome is in the status).

    *others*: the options of the other apps configured in this process; counts of their
    projects found on *app*'s queue go to them, each with its own key.
    """
    status: DeliveryStatus = {"last_run": now_iso(), "last_run_at": time.time(), "hostname": opts.hostname}
    try:
        key, endpoint, stages = _destination(opts)
        status["sessions"] = deliver_session_counts(
            app, api_key=key, endpoint=endpoint, enabled_release_stages=stages, timeout=opts.delivery_timeout,
            prefix=opts.queue_prefix, identity=Release.of(opts).identity,
            others={Release.of(o).identity: _destination(o) for o in others if o.api_key},
        )  # fmt: skip
        status["events"] = drain_spooled_events(
            app, api_key=opts.api_key if opts.sends else None, endpoint=opts.endpoints.notify,
            timeout=opts.delivery_timeout, prefix=opts.queue_prefix, max_bytes=opts.spool_max_bytes,
        )  # fmt: skip
        unanswered = (status["sessions"]["unanswered"], status["events"]["unanswered"])
        if any(unanswered):
            status["last_error"] = (
                f"{now_iso()}: BugSnag did not answer (hung, or slower than "
                f"{read_timeout(opts.delivery_timeout, 1):g} s): {unanswered[0]} session count(s) and "
                f"{unanswered[1]} spooled event message(s) kept for the next run"
            )
            logger.warning("bugsnag_celery: delivery: %s", status["last_error"])
        elif status["sessions"]["retry"] or status["events"]["requeued"]:
            status["last_error"] = f"{now_iso()}: BugSnag unreachable or failing; kept for the next run"
        else:
            status["last_delivery"] = status["last_run"]
    except Exception as exc:
        status["last_error"] = f"{now_iso()}: {type(exc).__name__}: {exc}"
        logger.error("bugsnag_celery: delivery failed: %s", exc)
    record_status(app, status, opts.queue_prefix)
    return status
