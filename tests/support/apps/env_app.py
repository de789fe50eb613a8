"""The Celery app of the test worker modules, configured from the environment the tests set.

``BSC_BROKER_URL``, ``BSC_TRANSPORT_OPTIONS`` (JSON), ``BSC_QUEUE``, ``BSC_CONFIGURE``
(JSON keyword arguments for ``bugsnag_celery.configure``) and ``BSC_APP_CONF`` (JSON: more
Celery config, such as ``bugsnag_*`` options read from it).
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

import bugsnag_celery
from bugsnag_celery.tools.fs_transport import TRANSPORT


def make_app(name: str, **conf: Any) -> Celery:
    queue = os.environ.get("BSC_QUEUE", "celery")
    app = Celery(name, broker=os.environ["BSC_BROKER_URL"])
    app.conf.update(
        # Messages that appear whole (kombu's own filesystem transport can be read half written).
        broker_transport=TRANSPORT if os.environ["BSC_BROKER_URL"].startswith("filesystem") else None,
        broker_transport_options=json.loads(os.environ.get("BSC_TRANSPORT_OPTIONS", "{}")),
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        worker_enable_remote_control=False,  # no pidbox keys/queues left on the shared broker
        broker_connection_retry_on_startup=True,
        # e.g. bugsnag_celery.deliver_sessions routed to a queue of its own (tests/delivery/test_routing.py)
        task_routes=json.loads(os.environ.get("BSC_ROUTES", "null")),
        **conf,
        **json.loads(os.environ.get("BSC_APP_CONF", "{}")),
    )
    bugsnag_celery.configure(app, **json.loads(os.environ.get("BSC_CONFIGURE", "{}")))
    return app
