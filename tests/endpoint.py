"""The ``endpoint`` fixture: a scriptable BugSnag stand-in, reachable from worker subprocesses.

The stand-in itself is :class:`bugsnag_celery.testing.Endpoint`, shared with the benchmarks
(one stand-in, so a test and a benchmark count what arrived the same way); this module only
gives each test a fresh one and closes it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bugsnag_celery.testing import Endpoint

__all__ = ["Endpoint", "endpoint"]


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()
