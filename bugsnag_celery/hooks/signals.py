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
import uuid
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import signals

from .. import registry
from ..reporting.task_tab import set_worker_pool
from ..sessions import counts, ledger
from ..sessions.current import DELIVERY_KEY
from ..transport.libraries import BrokerLibraryMissing
from ..transport.queues import check_broker_libraries
from . import leftovers
from .exit_flush import flush_events, register_exit_flush
from .failures import report_crash_seen_by_main
from .tracer_hook import patch_consumer

__all__ = ["connect", "disconnect"]

logger = logging.getLogger("bugsnag_celery")


def _on_celeryd_init(sender: object = None, instance: Any = None, **_: object) -> None:
    """``celery worker``, first thing: a broker library that is missing, said in one line
    (the worker then stops with kombu's traceback, when it connects)."""
    try:
        app = getattr(instance, "app", None)
        if app is not None and registry.state_for(app) is not None:
            check_broker_libraries(app)
    except BrokerLibraryMissing as exc:
        logger.error("bugsnag_celery: %s", exc)
    except Exception:  # a bad URL...: Celery says it
        pass


def _on_worker_init(sender: object = None, **_: object) -> None:
    """Main process of ``celery worker``, before the consumer builds its tracers."""
    try:
        import celery.worker.consumer.consumer  # noqa: F401  (so that it can be patched)

        if registry.states():
            patch_consumer()
            _patch_hard_timeout()
            _patch_deliveries()
        pool = getattr(sender, "pool_cls", None)
        if pool is not None:
            name = pool if isinstance(pool, str) else getattr(pool, "__module__", str(pool))
            set_worker_pool(name.rsplit(".", 1)[-1])
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


def _patch_deliveries() -> None:
    """Each delivery of a task message is its own run, and a lost child is always reported.

    The main process gives every request it builds (one per delivery of a message) an id of
    its own in the request it hands the pool (``DELIVERY_KEY``): the run's session id includes
    it, in the child and in the main process alike. And when a pool child dies under
    ``acks_late`` with ``reject_on_worker_lost`` (or ``retry_on_worker_lost``), Celery requeues
    the message and sends no ``task_failure``: the crash is reported here, after
    ``Request.on_failure``, unless ``task_failure`` already did (the same run: reported once).
    """
    from celery.worker.request import Request

    init, on_failure = Request.__init__, Request.on_failure
    if getattr(init, "_bugsnag_celery", False):
        return

    def __init__(self: Request, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        try:
            self._request_dict[DELIVERY_KEY] = uuid.uuid4().hex[:16]
        except Exception:  # another request class: its runs keep (task id, attempt) ids
            pass

    def on_failure_then_report(self: Request, exc_info: Any, *args: Any, **kwargs: Any) -> object:
        exception = getattr(exc_info, "exception", None)
        exception = getattr(exception, "exc", exception)  # billiard's ExceptionWithTraceback
        lost = isinstance(exception, WorkerLostError)
        # Celery 5.7 pushes the run's context before it sends ``task_failure``; older ones
        # do not, and the handler would name a run without its attempt or delivery (another
        # session, and the crash reported twice). Pushed here on every version -- where
        # Celery sends it from here: a lost child, or a failure the pool did not hand back
        # (``return_ok`` false). A task that raised in the child (``return_ok=True``) was
        # reported there; making its context (~10 us of the main process, every failing
        # task of an error storm) would buy nothing.
        return_ok = kwargs.get("return_ok", args[1] if len(args) > 1 else False)
        pushed = lost or not return_ok
        if pushed:
            self.task.request_stack.push(self._context)
        try:
            return on_failure(self, exc_info, *args, **kwargs)
        finally:
            if pushed:
                self.task.request_stack.pop()
            if lost:
                try:
                    report_crash_seen_by_main(self.task, task_id=self.id, exception=exception,
                                              einfo=exc_info, request=self._context)  # fmt: skip
                except Exception:
                    logger.exception("bugsnag_celery: could not report a lost pool child")

    __init__._bugsnag_celery = True  # type: ignore[attr-defined]
    Request.__init__ = __init__
    Request.on_failure = on_failure_then_report


def _on_task_failure(sender: Any = None, **kwargs: Any) -> None:
    report_crash_seen_by_main(sender, **kwargs)


def _on_process_shutdown(**_: object) -> None:
    # Prefork children leave through os._exit right after this: atexit never runs. The
    # main process first takes in what children that died meanwhile left.
    leftovers.at_shutdown()
    flush_events()
    try:
        for attempt in range(3):  # a broker hiccup at the last moment: try again, briefly
            registry.flusher.flush_once(wait=5.0)
            if not counts.pending_total():
                break
            time.sleep(0.2 * (attempt + 1))
        else:
            logger.error(
                "bugsnag_celery: %d session count(s) could not reach the broker before this process "
                "exited; they stay in its ledger (%s) for the next worker to deliver",
                counts.pending_total(), ledger.directory(),
            )  # fmt: skip
    except Exception:
        logger.exception("bugsnag_celery: moving session counts at shutdown failed")
    ledger.close()  # removed if it holds nothing; otherwise left for a recovery


_SIGNALS = (
    ("celeryd_init", _on_celeryd_init),
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
