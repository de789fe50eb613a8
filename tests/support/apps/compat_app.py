"""The compat workload in a real worker (``celery -A compat_app worker``), with or without us.

Configured from the environment like ``session_app`` (``BSC_BROKER_URL``, ``BSC_QUEUE``,
``BSC_TRANSPORT_OPTIONS``, ``BSC_OUT``, ``BSC_CONFIGURE``), except that with
``BSC_COMPAT_PLAIN=1`` bugsnag_celery is never imported: that worker is plain Celery, the
reference the configured one is compared with. Every task run writes what it saw (and, when
configured, its current session) to
``BSC_OUT/records-<pid>.jsonl``; every outcome (Celery's ``task_postrun``: state and return
value or exception) to ``BSC_OUT/outcomes-<pid>.jsonl``.
"""

# mypy: disallow-untyped-decorators=False, disallow-untyped-calls=False

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from celery import Celery, signals
from compat_tasks import define

if TYPE_CHECKING:
    from bugsnag_celery.sessions.current import SessionSnapshot

OUT = os.environ["BSC_OUT"]
PLAIN = os.environ.get("BSC_COMPAT_PLAIN") == "1"


def _write(kind: str, fields: dict[str, Any]) -> None:
    line = (json.dumps({"pid": os.getpid(), **fields}, default=repr) + "\n").encode()
    fd = os.open(os.path.join(OUT, f"{kind}-{os.getpid()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


def outcome_of(value: Any) -> Any:
    """A return value or an exception, as data comparable across processes."""
    if isinstance(value, BaseException):
        return {"raised": type(value).__name__, "message": str(value)}
    return value


queue = os.environ.get("BSC_QUEUE", "celery")
app = Celery("compat_app", broker=os.environ["BSC_BROKER_URL"])
app.conf.update(
    broker_transport_options=json.loads(os.environ.get("BSC_TRANSPORT_OPTIONS", "{}")),
    task_default_queue=queue,
    task_default_exchange=queue,
    task_default_routing_key=queue,
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)
if os.environ["BSC_BROKER_URL"].startswith("filesystem"):
    # The plain worker uses our embedded broker too (a transport, not the instrumentation).
    app.conf.broker_transport = "bugsnag_celery.tools.fs_transport:Transport"
if not PLAIN:
    import bugsnag_celery

    bugsnag_celery.configure(app, **json.loads(os.environ.get("BSC_CONFIGURE", "{}")))


def _session() -> SessionSnapshot | None:
    if PLAIN:
        return None
    import bugsnag_celery

    return bugsnag_celery.get_current_session()


define(app, lambda fields: _write("records", {**fields, "session": _session()}))


@signals.task_postrun.connect
def _outcome(task_id: str, task: Any, retval: Any = None, state: str = "", **_: Any) -> None:
    _write("outcomes", {"id": task_id, "task": task.name, "state": state, "retval": outcome_of(retval)})
