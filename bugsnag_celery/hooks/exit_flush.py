"""What a process still holds, sent before it goes: ``flush_events()`` and the exit flush.

A worker's processes leave through its signals (``signals.py``: prefork children through
``os._exit``, where atexit never runs); a script or a web process running eager tasks
just exits. :func:`register_exit_flush` (called when the signals are first connected)
gives the latter a bounded flush at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import threading

from .. import registry
from ..sessions import counts, ledger

__all__ = ["flush_events", "register_exit_flush", "EXIT_FLUSH_SECONDS"]

logger = logging.getLogger("bugsnag_celery")

#: The exit flush of a script or web process: counts to the broker, events sent or spooled.
EXIT_FLUSH_SECONDS = 2.0
_exit_flush_registered = False


def flush_events(timeout: float = 5.0) -> None:
    """Send (or spool) every event this process still holds, waiting at most *timeout*."""
    for state in registry.states():
        try:
            state.reporter.sender.flush(timeout)
        except Exception:
            logger.exception("bugsnag_celery: flushing events failed")


def _at_exit() -> None:
    """At interpreter exit, outside a worker (a script, a web process running eager tasks).

    Without it a process that exits within a flush interval delivers none of its sessions.
    Bounded: the work runs in a daemon thread given :data:`EXIT_FLUSH_SECONDS` (a dead
    broker must not hold the exit), and what could not leave is said in one line.
    (Prefork children leave through ``os._exit``: theirs is ``worker_process_shutdown``.)
    """
    if not registry.states():
        ledger.close(keep=False)  # no app here could deliver what it holds
        return
    done = threading.Event()

    def work() -> None:
        try:
            flush_events(EXIT_FLUSH_SECONDS / 2)
            registry.flusher.flush_once(wait=EXIT_FLUSH_SECONDS / 4)
        except Exception:
            logger.exception("bugsnag_celery: the exit flush failed")
        finally:
            done.set()

    try:
        threading.Thread(target=work, name="bugsnag-celery-exit", daemon=True).start()
    except RuntimeError:
        # Python 3.12+: atexit callbacks run after threading's shutdown, when no thread may
        # start. The work is bounded by the waits it is given: run it here.
        work()
    finished = done.wait(EXIT_FLUSH_SECONDS)
    left = counts.pending_total()
    if left or not finished:
        logger.error(
            "bugsnag_celery: at exit, %d session count(s) could not reach the broker%s; %s",
            left, "" if finished else f" within {EXIT_FLUSH_SECONDS:g} s (events may not have either)",
            "they stay in this process's ledger for a worker of this app to deliver"
            if ledger.directory() is not None else "they are lost",
        )  # fmt: skip
    ledger.close()


def register_exit_flush() -> None:
    """Flush at interpreter exit (once per process, however often it is called)."""
    global _exit_flush_registered
    if not _exit_flush_registered:
        _exit_flush_registered = True
        atexit.register(_at_exit)
