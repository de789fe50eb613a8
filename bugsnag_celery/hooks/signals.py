"""Worker signals: what only the worker's processes can tell us.

``worker_init`` (main process, before the consumer builds its tracers) patches the
consumer's copy of ``build_tracer``; ``task_failure`` in the main process reports the
crashes no child lived to report; ``worker_process_shutdown`` (a prefork child, which
then leaves through ``os._exit``: atexit never runs) and ``worker_shutdown`` move what
the process still holds (``exit_flush.py``). Each handler's docstring says which process
runs it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals

from .. import registry
from ..reporting.task_tab import set_worker_pool
from ..sessions import counts
from .exit_flush import flush_events, register_exit_flush
from .failures import report_crash_seen_by_main
from .tracer_hook import patch_consumer

__all__ = ["connect", "disconnect"]

logger = logging.getLogger("bugsnag_celery")


def _on_worker_init(sender: object = None, **_: object) -> None:
    """Main process of ``celery worker``, before the consumer builds its tracers."""
    try:
        import celery.worker.consumer.consumer  # noqa: F401  (so that it can be patched)

        if registry.states():
            patch_consumer()
            _patch_hard_timeout()
        pool = getattr(sender, "pool_cls", None)
        if pool is not None:
            name = pool if isinstance(pool, str) else getattr(pool, "__module__", str(pool))
            set_worker_pool(name.rsplit(".", 1)[-1])
        app = getattr(sender, "app", None)
        state = registry.state_for(app) if app is not None else None
        if state is not None and not state.options.api_key:
            logger.warning(
                "bugsnag_celery: no API key configured (api_key=, app.conf.bugsnag_api_key or "
                "BUGSNAG_API_KEY); sessions are counted but nothing will be sent to BugSnag"
            )
    except Exception:
        logger.exception("bugsnag_celery: worker_init handler failed")


def _patch_hard_timeout() -> None:
    """Let ``task_failure`` handlers see the request on a hard time limit.

    Celery's ``Request.on_failure`` pushes the run's context onto the task's request
    stack before sending ``task_failure`` (so handlers can read ``retries``), but
    ``Request.on_timeout`` does not. Without the attempt number, the main process could
    not name the session the child opened.
    """
    from celery.worker.request import Request

    original = Request.on_timeout
    if getattr(original, "_bugsnag_celery", False):
        return

    def on_timeout(self: Request, soft: bool, timeout: float) -> object:
        if soft:
            return original(self, soft, timeout)
        self.task.request_stack.push(self._context)
        try:
            return original(self, soft, timeout)
        finally:
            self.task.request_stack.pop()

    on_timeout._bugsnag_celery = True  # type: ignore[attr-defined]
    Request.on_timeout = on_timeout


def _on_task_failure(sender: Any = None, **kwargs: Any) -> None:
    report_crash_seen_by_main(sender, **kwargs)


def _on_process_shutdown(**_: object) -> None:
    # Prefork children leave through os._exit right after this: atexit never runs.
    flush_events()
    try:
        for attempt in range(3):  # a broker hiccup at the last moment: try again, briefly
            registry.flusher.flush_once(wait=5.0)
            if not counts.pending_total():
                return
            time.sleep(0.2 * (attempt + 1))
        logger.error(
            "bugsnag_celery: %d session count(s) could not reach the broker before this process "
            "exited; they are lost", counts.pending_total(),
        )  # fmt: skip
    except Exception:
        logger.exception("bugsnag_celery: moving session counts at shutdown failed")


_SIGNALS = (
    ("worker_init", _on_worker_init),
    ("task_failure", _on_task_failure),
    ("worker_process_shutdown", _on_process_shutdown),
    ("worker_shutdown", _on_process_shutdown),
)


def connect() -> None:
    """Connect the receivers (once per process, for all apps: they look the app up)."""
    register_exit_flush()
    for name, receiver in _SIGNALS:
        # weak=False so a closure is not collected, dispatch_uid so configuring twice
        # connects once.
        getattr(signals, name).connect(receiver, weak=False, dispatch_uid=f"bugsnag_celery.{name}")


def disconnect() -> None:
    for name, _receiver in _SIGNALS:
        getattr(signals, name).disconnect(dispatch_uid=f"bugsnag_celery.{name}")
