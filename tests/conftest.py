from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker, broker_fixture
from endpoint import endpoint  # noqa: F401  (fixture re-export)
from workers import out_dir  # noqa: F401  (fixture re-export)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI's flag, no test may skip (a broker missing, a Python too old, anything).

    CI must run everything it claims to: a skip there is a requirement not checked.
    """
    outcome: Any = yield
    report = outcome.get_result()
    if (
        os.environ.get("BUGSNAG_CELERY_REQUIRE_BROKERS") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under BUGSNAG_CELERY_REQUIRE_BROKERS=1 (CI), which is a failure: {report.longrepr}"
        )


@pytest.fixture(autouse=True)
def _tasks_stay_in_their_test() -> Iterator[None]:
    """``@app.task`` is shared by default: Celery registers it on every app finalized later.

    Without this, a task a test defines lands in every later test's app, and where two
    tests use the same function name the later test's app runs the *earlier* test's task
    (Celery warns; pyproject.toml makes that warning an error).
    """
    from celery import _state

    before = set(_state._on_app_finalizers)
    yield
    _state._on_app_finalizers.intersection_update(before)


@pytest.fixture(params=["filesystem", "redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """Every broker the product supports: embedded, Redis, RabbitMQ."""
    yield from broker_fixture(request.param, tmp_path)


@pytest.fixture
def fs_broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_fixture("filesystem", tmp_path)


@pytest.fixture
def redis_broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_fixture("redis", tmp_path)
