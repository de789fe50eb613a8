"""``notify()``: a handled exception reported from any code, attributed to the current session.

Inside a task run it goes with that task's app and carries the ``task`` tab; elsewhere
it goes with the most recently configured app.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .. import registry
from ..payload.shapes import SeverityReason
from ..reporting.task_tab import task_metadata
from ..sessions.current import current_session

__all__ = ["notify"]

logger = logging.getLogger("bugsnag_celery")

_VALID_SEVERITIES = ("error", "warning", "info")


def severity_of(severity: str | None) -> tuple[str, SeverityReason]:
    if severity is None:
        return "warning", {"type": "handledException"}
    if severity not in _VALID_SEVERITIES:
        raise ValueError(
            f"bugsnag_celery.notify: severity must be one of {_VALID_SEVERITIES}, not {severity!r}"
        )
    return severity, {"type": "userSpecifiedSeverity"}


def notify(
    exception: BaseException,
    severity: str | None = None,
    metadata: Mapping[str, object] | None = None,
    context: str | None = None,
    grouping_hash: str | None = None,
    user: Mapping[str, object] | None = None,
) -> None:
    """Report a handled exception from any code, attributed to the current session unless paused."""
    if not isinstance(exception, BaseException):  # notify(None): the caller's bug, say so
        raise TypeError(f"bugsnag_celery.notify needs an exception, not {type(exception).__name__}")
    level, reason = severity_of(severity)  # a wrong severity is the caller's bug: say so
    try:
        reporter, task, request = registry.current_reporter()
        if reporter is None:
            logger.warning("bugsnag_celery.notify: no configured app; event not sent")
            return
        meta: dict[str, object] = dict(metadata or {})
        given = meta.get("task")
        if task is not None and request is not None and (given is None or isinstance(given, Mapping)):
            # the task tab, with the keys given here on top (as for bugsnag.notify in a task run)
            tab = task_metadata(task, request, reporter.options)
            meta["task"] = {**tab, **given} if given else tab
        if context is None and task is not None:
            context = task.name
        reporter.report(
            exception, unhandled=False, severity=level, severity_reason=reason, context=context,
            session=current_session(), metadata=meta, grouping_hash=grouping_hash, user=user,
        )  # fmt: skip
    except Exception:
        logger.exception("bugsnag_celery.notify failed")
