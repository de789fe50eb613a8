from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from brokers import Broker, broker_fixture
from endpoint import endpoint  # noqa: F401  (fixture re-export)
from workers import out_dir  # noqa: F401  (fixture re-export)

_LEDGERS: list[str] = []

#: SQS is promised (README "Brokers") from kombu 5.6: before 5.5 kombu's SQS consumer cannot
#: read SQS's JSON protocol (what boto3 speaks today, and moto's server answers;
#: celery/kombu#2226) and a worker on SQS receives nothing; on 5.5.4 it loses acks (a worker
#: received 4 of 60 task messages again after 60 s and ran one twice; it could not restore
#: messages at shutdown), with or without this package. (Two delivery runs at once once received
#: the same count message, 603 sessions for 600, on 5.5.4 and 5.7.0: moto's receives were not
#: atomic, ``support/moto_sqs.py``.) With an older kombu (two pairs of the matrix) the SQS tests
#: are deselected, and the header says so -- never skipped in silence.
KOMBU = tuple(int(part) for part in kombu.__version__.split(".")[:2])
SQS_SUPPORTED = KOMBU >= (5, 6)


#: The install tests (``tests/tools/test_install.py``: the built wheel in a fresh virtualenv,
#: about a minute) run once in CI, with the README's test command, not once per pair of the
#: matrix: only where ``BUGSNAG_CELERY_INSTALL_TESTS=1``. Elsewhere they are deselected, and the
#: header says so.
INSTALL_TESTS = os.environ.get("BUGSNAG_CELERY_INSTALL_TESTS") == "1"


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    if not SQS_SUPPORTED:
        lines.append(
            f"SQS tests deselected: SQS is supported from kombu 5.6, this is {kombu.__version__} (README)"
        )
    if not INSTALL_TESTS:
        lines.append("install tests deselected: they build the wheel and install it into a fresh virtualenv "
                     "(about a minute); BUGSNAG_CELERY_INSTALL_TESTS=1 runs them (README)")  # fmt: skip
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    drop = []
    if not SQS_SUPPORTED:
        drop += [
            i for i in items if "sqs" in i.nodeid.lower() or "sqs_broker" in getattr(i, "fixturenames", ())
        ]
    if not INSTALL_TESTS:
        drop += [i for i in items if i.get_closest_marker("install") is not None and i not in drop]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if i not in drop]


def pytest_configure(config: pytest.Config) -> None:
    """The suite's ledgers (``ledger_dir``) in a folder of its own, removed at its end: a
    worker the tests kill leaves its ledger, of a queue prefix no later worker will have,
    and the machine's ``/dev/shm`` must not collect them run after run."""
    if "BUGSNAG_CELERY_LEDGER_DIR" not in os.environ:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        _LEDGERS.append(tempfile.mkdtemp(prefix="bugsnag-celery-tests-", dir=base))
        os.environ["BUGSNAG_CELERY_LEDGER_DIR"] = _LEDGERS[0]


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _LEDGERS:
        shutil.rmtree(folder, ignore_errors=True)


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


@pytest.fixture
def sqs_broker(tmp_path: Path) -> Iterator[Broker]:
    """kombu's SQS transport on moto's server (``brokers.py``)."""
    yield from broker_fixture("sqs", tmp_path)


@pytest.fixture(params=["filesystem", "redis", "rabbitmq", "sqs"])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """Every broker, SQS (moto's) too: for what must hold on each, such as the checks' reads."""
    yield from broker_fixture(request.param, tmp_path)


@pytest.fixture(params=["redis", "rabbitmq", "sqs"])
def server_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """Each broker with a server of its own: Redis, RabbitMQ, SQS (moto's)."""
    yield from broker_fixture(request.param, tmp_path)
