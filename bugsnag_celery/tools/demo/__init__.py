"""The demo: ``run.py`` drives a real worker and beat; ``app.py`` is the Celery app they run."""
