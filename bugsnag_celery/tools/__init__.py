"""Tools built on the core: they import it, it never imports them.

collector/          a local BugSnag-compatible collector: server, SQLite store, page
demo/               the demo: a real worker on the embedded broker, and its Celery app
pytest_plugin.py    the ``bugsnag_collector`` fixture (``pytest11`` entry point)
cli.py              the ``bugsnag-celery`` command (demo, collector)
celery_command.py   ``celery -A proj bugsnag flush|status`` (``celery.commands`` entry point)
fs_transport.py     kombu's filesystem transport with messages that appear whole
"""
