"""Log lines that repeat at most once per period: an outage must not flood the worker's log.

A broker down for an hour would otherwise write "counts kept in memory" every flush
interval (1 s). One line per key and period, saying how many were held back, is enough.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["log_every"]

logger = logging.getLogger("bugsnag_celery")

_last: dict[str, tuple[float, int]] = {}  # key -> (when last written, lines held back since)
_lock = threading.Lock()


def log_every(key: str, period: float, level: int, message: str, *args: object) -> bool:
    """Log *message* unless a line of *key* was written less than *period* seconds ago.

    Returns whether it was written.
    """
    now = time.monotonic()
    with _lock:
        last, held = _last.get(key, (float("-inf"), 0))
        if now - last < period:
            _last[key] = (last, held + 1)
            return False
        _last[key] = (now, 0)
    if held:
        message += f" ({held} similar line(s) held back)"
    logger.log(level, message, *args)
    return True
