"""One task run that reports an error every way a project's code does (``celery -A producers_app worker``).

Configured like ``session_app`` from the environment (broker, queue, ``BSC_CONFIGURE``), with
BugSnag's official client 4.9.2 imported, and its logging handler
(``bugsnag.handlers.BugsnagHandler``) on the ``producers_app.tasks`` logger at ERROR, as
its guide attaches it. The environment picks the rest:

- ``PRODUCERS_OFFICIAL``: ``project`` -- the project configured the official client itself
  (``bugsnag.configure`` with the JSON keyword arguments of ``PRODUCERS_OFFICIAL_CONFIGURE``);
  ``unset`` -- imported, never configured: only bugsnag_celery is (its key, its endpoints).
- ``PRODUCERS_CONTEXT``: who else sets ``context`` (to its value in ``CONTEXTS``):
  ``official-callback`` (an official ``before_notify`` callback, which also records in a
  ``seen`` tab what it was shown), ``ours-callback`` (bugsnag_celery's ``before_notify``
  option), ``request`` (``bugsnag.configure_request(context=...)`` in the run, with a
  ``task`` tab of the request's own: ``REQUEST_TAB``), ``argument`` (the ``context`` and
  ``metadata={"task": GIVEN_TAB}`` arguments of the two notify calls); unset: nobody.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import bugsnag
import bugsnag.handlers
from bugsnag.event import Event
from env_app import make_app

import bugsnag_celery

#: What each way of setting ``context`` sets it to.
CONTEXTS = {
    "official-callback": "set by an official callback",
    "ours-callback": "set by bugsnag_celery's before_notify",
    "request": "set by configure_request",
    "argument": "passed by the caller",
}
#: The request configuration's ``task`` tab (``request``): a key of ours, and one of its own.
REQUEST_TAB = {"name": "the request's", "tenant": "t-1"}
#: The ``task`` tab given to the notify calls (``argument``): a key of ours, and one of its own.
GIVEN_TAB = {"retries": 99, "step": "charge"}

_context_by = os.environ.get("PRODUCERS_CONTEXT", "")
if os.environ.get("PRODUCERS_OFFICIAL") == "project":
    bugsnag.configure(**json.loads(os.environ["PRODUCERS_OFFICIAL_CONFIGURE"]))


def _official_callback(event: Event) -> None:
    task = event.metadata.get("task") or {}
    seen = {"context": event.context, "task": task.get("name")}
    event.add_tab("seen", {**seen, "version": event.app_version, "type": event.app_type})
    event.context = CONTEXTS["official-callback"]


def _our_callback(event: dict[str, Any]) -> None:
    event["context"] = CONTEXTS["ours-callback"]


if _context_by == "official-callback":
    bugsnag.before_notify(_official_callback)

logger = logging.getLogger("producers_app.tasks")
_handler = bugsnag.handlers.BugsnagHandler()
_handler.setLevel(logging.ERROR)
logger.addHandler(_handler)

app = make_app(
    "producers_app", **({"bugsnag_before_notify": [_our_callback]} if _context_by == "ours-callback" else {})
)


@app.task(bind=True, name="producers.every_way")
def every_way(self: Any, tag: str) -> None:
    """Each producer once, in this order, each with its own exception class and message:
    ``bugsnag_celery.notify``, ``bugsnag.notify``, ``logger.error`` (no exception: the
    handler makes a ``LogERROR``), ``logger.exception``; then the run crashes."""
    argument: dict[str, Any] = {}
    if _context_by == "argument":
        argument = {"context": CONTEXTS["argument"], "metadata": {"task": dict(GIVEN_TAB)}}
    if _context_by == "request":
        bugsnag.configure_request(context=CONTEXTS["request"])
        bugsnag.add_metadata_tab("task", dict(REQUEST_TAB))
    try:
        raise KeyError(f"ours {tag}")
    except KeyError as exc:
        bugsnag_celery.notify(exc, **argument)
    try:
        raise LookupError(f"official {tag}")
    except LookupError as exc:
        bugsnag.notify(exc, **argument)
    logger.error("logged error %s", tag)
    try:
        raise IndexError(f"logged exception {tag}")
    except IndexError:
        logger.exception("logged exception %s", tag)
    raise ValueError(f"crash {tag}")
