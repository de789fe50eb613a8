"""The shop's Django settings: BugSnag for the web processes, Celery under ``CELERY_``."""

import json
import os

SECRET_KEY = "tests-only"
DEBUG = True  # the official Django integration then reports release stage "development"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["orders"]
MIDDLEWARE = ["bugsnag.django.middleware.BugsnagMiddleware"]
ROOT_URLCONF = "shop.urls"
DATABASES: dict[str, object] = {}

_ENDPOINT = os.environ["SHOP_ENDPOINT"]
BUGSNAG = {
    # How projects keep the key out of development: an empty key there (tests set SHOP_API_KEY="").
    "api_key": os.environ.get("SHOP_API_KEY", "c0ffee00c0ffee00c0ffee00c0ffee00"),
    "app_version": "3.1.0",
    "endpoint": f"{_ENDPOINT}/notify",
    "session_endpoint": f"{_ENDPOINT}/sessions",
    # The project's policy: the worker's events obey it too (the task tab's "retries" filtered)
    "params_filters": ["password", "retries"],
}
# A setting of the project's own that merely looks like ours: never read as an option.
BUGSNAG_ENABLED = False

# Celery, read with namespace="CELERY" (the tests' broker and a queue of their own).
CELERY_BROKER_URL = os.environ["BSC_BROKER_URL"]
CELERY_BROKER_TRANSPORT_OPTIONS = json.loads(os.environ.get("BSC_TRANSPORT_OPTIONS", "{}"))
CELERY_TASK_DEFAULT_QUEUE = os.environ["BSC_QUEUE"]
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# This package's options, under the same namespace.
CELERY_BUGSNAG_QUEUE_PREFIX = os.environ["BSC_QUEUE"]
CELERY_BUGSNAG_HOSTNAME = "shop-worker"
