"""Testing helpers for users' own test suites: the local collector as a pytest fixture.

The ``bugsnag_collector`` fixture is registered by the ``pytest11`` entry point; import
:class:`CollectorFixture` from here for type hints::

    from bugsnag_celery.testing import CollectorFixture
"""

from .tools.pytest_plugin import CollectorFixture

__all__ = ["CollectorFixture"]
