"""A local BugSnag-compatible collector: ``server.py`` (HTTP), ``body.py`` (reading a request
within limits), ``wire.py`` (BugSnag's rules), ``times.py`` (reading timestamps), ``store.py``
(SQLite), ``api.py`` (the JSON API) and ``page.py`` (the HTML page)."""

from .server import Collector, Rejection
from .store import ReleaseFigures
from .wire import validate

__all__ = ["Collector", "Rejection", "ReleaseFigures", "validate"]
