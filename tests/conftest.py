from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from endpoint import endpoint  # noqa: F401  (fixture re-export)
from workers import Broker, broker_fixture, out_dir  # noqa: F401  (fixture re-export)


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
