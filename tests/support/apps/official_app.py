"""A worker app with BugSnag's official client configured as its Python guide shows, then
``bugsnag_celery.configure(app)`` with nothing of its own (``celery -A official_app worker``).

The environment picks the set-up (broker and queue as ``env_app``: ``BSC_BROKER_URL``,
``BSC_TRANSPORT_OPTIONS``, ``BSC_QUEUE``; ``BSC_OUT`` for the records the tasks write):

- ``OFFICIAL_CONFIGURE``: JSON keyword arguments for ``bugsnag.configure`` (``api_key``,
  ``endpoint``, ``session_endpoint``, ``params_filters``, ...); ``traceback_exclude_modules``
  is given as module names, imported here (the client wants the modules themselves).
- ``OFFICIAL_CALLBACK``: the name of a module-level ``before_notify`` callback below, registered
  with ``bugsnag.before_notify``.
- ``OFFICIAL_PLAIN=1``: the official client alone, as projects used it before this package:
  ``bugsnag.celery.connect_failure_handler()`` and no ``bugsnag_celery.configure``.

At import, outside any task run, the process-wide breadcrumb, feature flag and metadata tab
that every run's events carry (``PROCESS_*``); with ``OFFICIAL_LATE=1`` also a breadcrumb and
a flag added once the worker has adopted the client, outside runs, in the context runs are
seeded from (``LATE_*``: a prefork child's ``worker_process_init``, else ``worker_ready``).
The log handler is attached the way the guide shows: ``client.log_handler()`` at ERROR on
the logger, its ``leave_breadcrumbs`` filter on the same logger (records below ERROR become
"log" breadcrumbs).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from typing import Any

import bugsnag
import bugsnag.celery
import bugsnag.context
from bugsnag.event import Event
from celery import Celery
from celery.signals import worker_process_init, worker_ready
from official_helpers import fail
from records import record

import bugsnag_celery
from bugsnag_celery.tools.fs_transport import TRANSPORT

#: What is set at import, outside any run: every run's events carry exactly these.
PROCESS_BREADCRUMB = "process-wide breadcrumb"
PROCESS_FLAG = ("process-flag", "on")
PROCESS_TAB: tuple[str, dict[str, Any]] = ("process", {"wide": "yes"})


class PaymentDeclined(Exception):
    """A project's own exception class (``official_app.PaymentDeclined`` to BugSnag)."""


KINDS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "KeyError": KeyError,
    "RuntimeError": RuntimeError,
    "PaymentDeclined": PaymentDeclined,
}


# ---- before_notify callbacks, chosen by OFFICIAL_CALLBACK ------------------------------------


def drop_declined(event: Event) -> Any:
    """Drop every event of a declined payment (handled or not); leave the others alone."""
    if isinstance(event.original_error, PaymentDeclined):
        return False
    return None


def decorate(event: Event) -> None:
    """What projects do in a callback: a tab, the user, context, grouping hash, severity."""
    event.add_tab("callback", {"added": "by decorate", "error": type(event.original_error).__name__})
    event.set_user(id="callback-user", email="cb@example.com")
    event.context = "callback-context"
    event.grouping_hash = "callback-group"
    event.severity = "info"


CALLBACKS = {"drop_declined": drop_declined, "decorate": decorate}


# ---- the official client, as BugSnag's Python guide configures it ---------------------------

_settings: dict[str, Any] = json.loads(os.environ.get("OFFICIAL_CONFIGURE", "{}"))
if "traceback_exclude_modules" in _settings:
    _settings["traceback_exclude_modules"] = [
        importlib.import_module(name) for name in _settings["traceback_exclude_modules"]
    ]
bugsnag.configure(**_settings)
if os.environ.get("OFFICIAL_CALLBACK"):
    bugsnag.before_notify(CALLBACKS[os.environ["OFFICIAL_CALLBACK"]])

logger = logging.getLogger("official_app.tasks")
logger.setLevel(logging.INFO)
_handler = bugsnag.legacy.default_client.log_handler()
_handler.setLevel(logging.ERROR)
logger.addHandler(_handler)
logger.addFilter(_handler.leave_breadcrumbs)

bugsnag.leave_breadcrumb(PROCESS_BREADCRUMB)
bugsnag.add_feature_flag(*PROCESS_FLAG)
bugsnag.add_metadata_tab(*PROCESS_TAB)

LATE_BREADCRUMB = "late process-wide breadcrumb"
LATE_FLAG = ("late-flag", "on")


def _late(**_: Any) -> None:
    bugsnag.leave_breadcrumb(LATE_BREADCRUMB)
    bugsnag.add_feature_flag(*LATE_FLAG)


if os.environ.get("OFFICIAL_LATE") == "1":
    worker_process_init.connect(_late, weak=False)  # a prefork child, after the fork
    # the main process: where a threads or gevent pool's runs are seeded from (a prefork
    # pool's children were forked before: they have theirs from worker_process_init)
    worker_ready.connect(
        lambda sender, **_: None if type(sender.pool).__module__.endswith("prefork") else _late(), weak=False
    )


# ---- the Celery app --------------------------------------------------------------------------

_queue = os.environ.get("BSC_QUEUE", "celery")
app = Celery("official_app", broker=os.environ["BSC_BROKER_URL"])
app.conf.update(
    broker_transport=TRANSPORT if os.environ["BSC_BROKER_URL"].startswith("filesystem") else None,
    broker_transport_options=json.loads(os.environ.get("BSC_TRANSPORT_OPTIONS", "{}")),
    task_default_queue=_queue,
    task_default_exchange=_queue,
    task_default_routing_key=_queue,
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
    # this package's own queues get the test's prefix (nothing shared); no key, no endpoint
    bugsnag_queue_prefix=_queue,
)
if os.environ.get("OFFICIAL_PLAIN") == "1":
    bugsnag.celery.connect_failure_handler()
else:
    bugsnag_celery.configure(app)


def leave_items(tag: str, secrets: dict[str, str]) -> None:
    """A manual and a log breadcrumb, a flag, two metadata tabs and the user, named after *tag*."""
    bugsnag.leave_breadcrumb(f"manual {tag}", {"tag": tag, **secrets})
    logger.info("log %s", tag)
    bugsnag.add_feature_flag(f"flag-{tag}", "v1")
    bugsnag.add_metadata_tab("run", {"tag": tag, **secrets})
    bugsnag.add_metadata_tab(f"run {tag}", {"only": tag})  # a tab no other run writes to
    bugsnag.configure_request(user={"id": f"user-{tag}", "name": f"name-{tag}"})


@app.task(bind=True, name="official.nest")
def nest(self: Any, tag: str, inner: str) -> None:
    """A run with another inside it: leaves its items, calls ``work`` as a function (a run of
    its own, with a ``bugsnag.notify``), then crashes (RuntimeError ``crash <tag>``)."""
    record(id=self.request.id, tag=tag)
    leave_items(tag, {})
    work(tag=inner, notify=["KeyError"])
    fail(RuntimeError(f"crash {tag}"))


@app.task(bind=True, name="official.work")
def work(
    self: Any,
    tag: str,
    notify: list[str] | None = None,
    crash: str | None = None,
    ssn: str | None = None,
    iban: str | None = None,
    replace: bool = False,
    only: str | None = None,
) -> str:
    """One run that leaves everything a project's task leaves, all named after *tag*.

    A manual breadcrumb, a log breadcrumb, a feature flag, a metadata tab and the user of
    the request; then a ``bugsnag.notify`` for each kind in *notify* (handled); then, with
    *crash*, that kind raised from ``official_helpers.fail``. *ssn*/*iban* are kwargs of the
    run (its task tab) and are put in a metadata tab and a breadcrumb's metadata (the user takes
    only id, name and email: the official client's ``set_user``). With *replace*, the run then
    does what a web framework's middleware does for each request (Django's, WSGI's): clears the
    request configuration and starts a new context, and leaves its items again, in the new
    objects. With *only*, the run leaves that one item and nothing else: ``"flag"``, ``"tab"``,
    or ``"new-context-flag"`` (a new context, as a web middleware starts, then a flag in it).
    """
    record(id=self.request.id, tag=tag)
    if only is not None:
        if only == "new-context-flag":
            bugsnag.context.create_new_context()
        if only in ("flag", "new-context-flag"):
            bugsnag.add_feature_flag(f"flag-{tag}", "v1")
        elif only == "tab":
            bugsnag.add_metadata_tab(f"run {tag}", {"only": tag})
        return tag
    secrets = {k: v for k, v in (("ssn", ssn), ("iban", iban)) if v is not None}
    leave_items(tag, secrets)
    if replace:
        bugsnag.clear_request_config()
        bugsnag.context.create_new_context()
        leave_items(tag, secrets)
    for kind in notify or ():
        try:
            fail(KINDS[kind](f"handled {tag}"))
        except Exception as exc:
            bugsnag.notify(exc)
    if crash is not None:
        fail(KINDS[crash](f"crash {tag}"))
    return tag
