"""Tasks that fail in every way the event tests need (``celery -A events_app worker``).

Configured like ``session_app`` from the environment (broker, queue, ``BSC_CONFIGURE``).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from celery.exceptions import Ignore, Reject
from env_app import make_app

import bugsnag_celery

app = make_app("events_app")


class PaymentDeclined(ValueError):
    """Does not survive pickling (two required arguments): Celery would hand signals a ValueError."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"declined {code}: {reason}")
        self.code, self.reason = code, reason


def _charge(amount: int) -> None:
    raise PaymentDeclined(51, f"insufficient funds for {amount}")


@app.task(name="events.unpicklable")
def unpicklable(amount: int) -> None:
    _charge(amount)


@app.task(name="events.chained")
def chained() -> None:
    empty: dict[str, int] = {}
    try:
        empty["missing"]
    except KeyError as exc:
        raise RuntimeError("lookup failed") from exc


@app.task(name="events.soft_limit", soft_time_limit=0.5)
def soft_limit() -> None:
    time.sleep(10)


@app.task(name="events.hard_limit", time_limit=1)
def hard_limit() -> None:
    time.sleep(30)


@app.task(name="events.killed")
def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="events.autoretry", autoretry_for=(KeyError,), max_retries=2, default_retry_delay=0)
def autoretry() -> None:
    raise KeyError("always")


@app.task(name="events.ignored")
def ignored() -> None:
    raise Ignore()


@app.task(name="events.rejected")
def rejected() -> None:
    raise Reject("no", requeue=False)


@app.task(name="events.thrown", throws=(LookupError,))
def thrown() -> None:
    raise KeyError("expected")


@app.task(name="events.handled")
def handled() -> str:
    try:
        int("x")
    except ValueError as exc:
        bugsnag_celery.notify(exc, metadata={"order": {"id": 7}})
    return "ok"


@app.task(name="events.paused")
def paused() -> None:
    with bugsnag_celery.session_paused():
        raise ValueError("while paused")


@app.task(name="events.secret_args")
def secret_args(items: list[Any], token: str = "") -> None:
    raise ValueError("bad input")


@app.task(name="events.big_arg")
def big_arg(blob: str) -> None:
    raise ValueError("too big to send as is")


@app.task(name="events.ok")
def ok() -> str:
    return "fine"


@app.task(name="events.crash")
def crash(n: int) -> None:
    raise RuntimeError(f"crash {n}")


class HostileStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class BytesStr(Exception):
    def __str__(self) -> Any:
        return b"\xff\xfe not text"


class Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError("repr raises")


@app.task(name="events.hostile")
def hostile(kind: str) -> None:
    if kind == "str_raises":
        raise HostileStr()
    if kind == "str_bytes":
        raise BytesStr()
    if kind == "cyclic":
        a, b = ValueError("a"), KeyError("b")
        a.__cause__, b.__cause__ = b, a
        raise a
    if kind == "surrogates":
        raise ValueError("bad \udcff bytes " + b"\xff\xfe".decode("utf-8", "surrogateescape"))
    if kind == "recursion":

        def down(n: int) -> int:
            return down(n + 1) + 1

        down(0)
    if kind == "bad_repr_arg":
        raise ValueError(Unrepresentable())


@app.task(name="events.lost_twice", acks_late=True, reject_on_worker_lost=True)
def lost_twice(markers: str) -> None:
    """Kills its own pool child on its first two deliveries (counted in files under
    *markers*); the third reports a handled event (its session named in it) and returns."""
    os.makedirs(markers, exist_ok=True)
    seen = len(os.listdir(markers))
    if seen < 2:
        open(os.path.join(markers, f"delivery-{seen}"), "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    bugsnag_celery.notify(RuntimeError("third delivery"))
