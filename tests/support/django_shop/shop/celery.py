"""``proj/celery.py`` of Celery's "First steps with Django", plus one line: ``configure(app)``.

``SHOP_BUGSNAG`` picks how the official notifier is set up in the worker, the three ways
projects do it: ``settings`` (only Django's ``BUGSNAG`` dict, read by its middleware in web
processes), ``configure`` (``bugsnag.configure(...)`` in the worker too), ``handler`` (that,
plus BugSnag's documented ``bugsnag.celery.connect_failure_handler()`` and
``bugsnag.start_session()`` in ``task_prerun``).
``SHOP_CONFIGURE_FIRST=1`` calls ``bugsnag_celery.configure(app)`` before Celery has read
Django's settings (a project that configures where the app is created).
"""

import os

from celery import Celery

import bugsnag_celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
if os.environ.get("SHOP_CONFIGURE_FIRST"):
    bugsnag_celery.configure(app)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

mode = os.environ.get("SHOP_BUGSNAG", "settings")
if mode in ("configure", "handler"):
    import bugsnag
    from django.conf import settings

    bugsnag.configure(**settings.BUGSNAG)
    if mode == "handler":
        from bugsnag.celery import connect_failure_handler
        from celery.signals import task_prerun

        connect_failure_handler()

        # ... and sessions the way the official notifier's docs add them for Celery
        @task_prerun.connect(weak=False)
        def start_bugsnag_session(**_: object) -> None:
            bugsnag.start_session()


if not os.environ.get("SHOP_CONFIGURE_FIRST"):
    bugsnag_celery.configure(app)
