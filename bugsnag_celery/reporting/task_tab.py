"""The ``task`` metadata tab: what a person debugging a failure wants to know about the run.

Task arguments are sent redacted; a custom ``argsrepr``/``kwargsrepr`` the caller set to
hide them is sent instead -- unless it looks like it holds a secret.
"""

from __future__ import annotations

import ast
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TypeGuard

    from celery import Task
    from celery.app.task import Context

from ..options.declared import Options
from ..payload.redaction import Redacted, is_secret, redact
from ..payload.shapes import JSON
from ..payload.text import safe_repr
from ..sessions.current import DELIVERY_KEY

__all__ = ["task_metadata", "set_worker_pool"]

# Set by the worker_init handler (main process), inherited by prefork children.
_worker_pool: str | None = None


def set_worker_pool(pool: str | None) -> None:
    """The worker's pool (``prefork``, ``threads``, ``gevent`` ...), for the ``pool`` field."""
    global _worker_pool
    _worker_pool = pool


def task_metadata(task: Task, request: Context, options: Options) -> Redacted:
    """The ``task`` tab: what a person debugging the failure wants to know about the run."""
    info = getattr(request, "delivery_info", None) or {}
    meta: dict[str, JSON] = {
        "id": getattr(request, "id", None),
        "name": getattr(task, "name", None),
        "retries": getattr(request, "retries", 0) or 0,
        "queue": info.get("queue") or info.get("routing_key"),
        "routing_key": info.get("routing_key"),
        "exchange": info.get("exchange"),
        "redelivered": info.get("redelivered"),
        # this delivery's own id, from the worker's main process (part of the session id)
        "delivery": getattr(request, "__dict__", {}).get(DELIVERY_KEY),
        "hostname": getattr(request, "hostname", None),
        "origin": getattr(request, "origin", None),
        "root_id": getattr(request, "root_id", None),
        "parent_id": getattr(request, "parent_id", None),
        "eta": _text(getattr(request, "eta", None)),
        "expires": _text(getattr(request, "expires", None)),
        "time_limit": list(getattr(request, "timelimit", None) or ()) or None,
        "pool": _worker_pool,
        "worker_pid": os.getpid(),
        "eager": bool(getattr(request, "is_eager", False)),
    }
    if options.send_task_args:
        keys = options.redacted_keys
        args, kwargs = getattr(request, "args", None), getattr(request, "kwargs", None)
        argsrepr, kwargsrepr = getattr(request, "argsrepr", None), getattr(request, "kwargsrepr", None)
        meta["args"] = argsrepr[:1024] if _set_by_caller(argsrepr, args, keys) else redact(args, keys)
        meta["kwargs"] = (
            kwargsrepr[:1024] if _set_by_caller(kwargsrepr, kwargs, keys) else redact(kwargs, keys)
        )
    return Redacted((k, v) for k, v in meta.items() if v is not None)


def _set_by_caller(text: object, value: object, keys: tuple[str, ...]) -> TypeGuard[str]:
    """Did the caller pass ``argsrepr``/``kwargsrepr`` to hide the arguments?

    Celery fills both in by default with ``saferepr(args)`` of the *sender's* values: that
    default is no wish to hide anything, and it is not redacted, so then the real values
    are sent, redacted. The worker sees the arguments after JSON (tuples became lists), so
    the comparison ignores the kind of brackets. And whatever looks like it holds a key we
    redact is never sent as text: a leak is worse than a missing custom repr.
    """
    if not isinstance(text, str):
        return False
    # The same key matching as redaction: case, "-", "_", "." and spaces ignored.
    if is_secret(text, keys):
        return False
    # Celery's default, checked cheapest first: this runs for every failure of a worker's
    # task, and in an error storm the literal parse below was a third of a report's cost.
    seen = text.translate(_SHAPE).replace(",]", "]")
    if seen == _plain_repr(value):
        return False
    from celery.utils.saferepr import saferepr

    if any(seen == saferepr(value, maxsize).translate(_SHAPE).replace(",]", "]") for maxsize in (1024, 4096)):
        return False
    return not _same_data(text, value)


_SHAPE = str.maketrans("()", "[]")


def _plain_repr(value: object) -> str | None:
    """``repr`` of arguments after JSON, with tuples' brackets as lists'; None if it raises."""
    try:
        return repr(value).translate(_SHAPE).replace(",]", "]")
    except Exception:
        return None


def _same_data(text: str, value: object) -> bool:
    """Is *text* a Python literal of the same data as *value*, seen through JSON?

    The sender's default repr was of the values before JSON (``{1: 2}``), the worker sees
    them after (``{"1": 2}``): the same data, so no custom repr.
    """
    if len(text) > 8192:
        return False
    try:
        literal = ast.literal_eval(text)

        def through_json(data: object) -> object:
            return json.loads(json.dumps(data, default=repr))

        return bool(through_json(literal) == through_json(value))
    except Exception:
        return False


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else safe_repr(value, 64)
