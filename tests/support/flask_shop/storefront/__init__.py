"""A Flask app factory as Flask's "Background Tasks with Celery" guide writes it, with BugSnag.

``create_app()`` configures the official notifier (``bugsnag.configure`` and
``bugsnag.flask.handle_exceptions``, as BugSnag's Flask guide shows) and Celery through
``celery_init_app``, which adds the one line this package needs: ``configure(celery_app)``,
after the Celery config is read. Nothing else of BugSnag's is repeated: the key, release,
endpoints and filters come from the official client.
"""

import json
import os

import bugsnag
from bugsnag.flask import handle_exceptions
from celery import Celery, Task
from flask import Flask

import bugsnag_celery


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):  # type: ignore[misc]  # (Celery ships no type hints)
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    bugsnag_celery.configure(celery_app)  # the one line: after the config is read
    app.extensions["celery"] = celery_app
    return celery_app


def create_app() -> Flask:
    app = Flask(__name__)
    endpoint = os.environ["SHOP_ENDPOINT"]
    bugsnag.configure(
        api_key="c0ffee00c0ffee00c0ffee00c0ffee00",
        app_version="7.2.0",
        release_stage="production",
        endpoint=f"{endpoint}/notify",
        session_endpoint=f"{endpoint}/sessions",
        params_filters=["password", "iban"],  # the project's policy: the worker's events obey it
    )
    handle_exceptions(app)
    queue = os.environ["BSC_QUEUE"]
    app.config.from_mapping(
        CELERY={
            "broker_url": os.environ["BSC_BROKER_URL"],
            "broker_transport_options": json.loads(os.environ.get("BSC_TRANSPORT_OPTIONS", "{}")),
            "task_default_queue": queue,
            "task_ignore_result": True,
            "worker_enable_remote_control": False,
            "broker_connection_retry_on_startup": True,
            "bugsnag_queue_prefix": queue,  # this package's own option, in the same config
            "bugsnag_hostname": "flask-worker",
        },
    )
    celery_init_app(app)

    from . import tasks  # noqa: F401  (registers them with the app's Celery)

    return app
