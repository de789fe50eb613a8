"""A local BugSnag-compatible collector: ``server.py`` (HTTP), ``wire.py`` (BugSnag's rules),
``store.py`` (SQLite) and ``page.py`` (the HTML page)."""

from .server import Collector
from .wire import validate

__all__ = ["Collector", "validate"]
