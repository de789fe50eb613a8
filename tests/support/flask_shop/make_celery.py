"""``celery -A make_celery worker``: the guide's entry point for workers."""

from storefront import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
