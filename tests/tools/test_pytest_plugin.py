"""The ``bugsnag_collector`` fixture: as installed (pytest11 entry point), in a user's test file.

The pytester tests run pytest in a subprocess from a temporary folder, outside this project:
the fixture there comes from the installed entry point, as it does for a user.

Covers: bugsnag_celery/testing.py, bugsnag_celery/tools/pytest_plugin.py
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
import requests
from brokers import Broker, need_service
from celery import Celery
from workers import Worker

import bugsnag_celery
from bugsnag_celery.hooks.beat import DELIVER_TASK
from bugsnag_celery.testing import CollectorFixture

pytest_plugins = ["pytester"]

# The example test in the README, word for word (a test asserts that the README has it).
README_EXAMPLE = """\
from celery import Celery

from bugsnag_celery.testing import CollectorFixture

app = Celery("shop", broker="memory://")  # in your project: import your app instead


@app.task(name="shop.charge")
def charge(order_id: int) -> str:
    if order_id < 0:
        raise ValueError(f"no such order: {order_id}")
    return "charged"


def test_a_crash_costs_stability(bugsnag_collector: CollectorFixture) -> None:
    bugsnag_collector.configure(app, app_version="1.4.2", release_stage="test")

    for order_id in (1, 2, 3):
        charge.apply(args=(order_id,))
    charge.apply(args=(-1,))  # raises: an unhandled event, and its session crashed

    assert bugsnag_collector.wait_for_sessions(4) == 4
    assert bugsnag_collector.stability() == 75.0
    (event,) = bugsnag_collector.events(task="shop.charge")
    assert event["exceptions"][0]["errorClass"] == "ValueError"
    assert event["unhandled"] is True
"""


@pytest.fixture(autouse=True)
def _no_bugsnag_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own BugSnag settings must not reach the tests (nor the user's test files)."""
    for name in ("BUGSNAG_API_KEY", "BUGSNAG_RELEASE_STAGE", "BUGSNAG_APP_VERSION"):
        monkeypatch.delenv(name, raising=False)


def _run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error::pytest.PytestWarning", *args)


def test_the_readme_example_passes_as_installed(pytester: pytest.Pytester) -> None:
    started = time.monotonic()
    result = _run(pytester, README_EXAMPLE)
    result.assert_outcomes(passed=1)
    assert time.monotonic() - started < 30


def test_a_missed_expectation_says_what_was_expected_and_what_arrived(pytester: pytest.Pytester) -> None:
    source = README_EXAMPLE.replace("wait_for_sessions(4) == 4", "wait_for_sessions(5, timeout=1) == 5")
    source = source.replace("def test_a_crash", "def test_missed").replace("shop.charge", "shop.pay")
    source += """

def test_missed_event(bugsnag_collector: CollectorFixture) -> None:
    bugsnag_collector.configure(app)
    charge.apply(args=(1,))
    bugsnag_collector.wait_for_events(1, timeout=0.5, task="shop.pay")
"""
    result = _run(pytester, source)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "E*AssertionError: bugsnag_collector: expected at least 5 session(s) within 1 s, received 4.",
            "E*received per release: [[]{'appVersion': '1.4.2', 'releaseStage': 'test', 'sessions': 4,"
            " 'crashedSessions': 1, 'stability': 75.0, 'appTypes': [[]{'appType': 'celery', 'sessions': 4,"
            " 'crashedSessions': 1, 'stability': 75.0}]}]",
            "E*events received: [[]('shop.pay', 'ValueError')]",
            "E*delivered from this process while waiting: 4 session(s); 0 dropped, 0 waiting for a retry",
            "E*collector database: *bugsnag-collector.sqlite",
        ]
    )
    result.stdout.fnmatch_lines(
        ["E*AssertionError: bugsnag_collector: expected at least 1 event(s) (task='shop.pay') within 0.5 s,"
         " received 0."]
    )  # fmt: skip


LEAK_CHECK = """\
import re
import time

from celery import Celery

import bugsnag_celery
from bugsnag_celery.delivery.sessions import pending_session_messages

USER_KEY = "0123456789abcdef0123456789abcdef"
ORPHAN = bugsnag_celery.Release("orphan", "production", "celery", "h")
app = Celery("shop", broker="memory://")
# Configured at import, as a project's app module does. The long flush interval keeps the
# background flusher out of the way once the first test's 0.2 s is over: only flush() moves counts.
bugsnag_celery.configure(app, api_key=USER_KEY, release_stage="staging", app_version="1.0",
                         session_flush_interval=3600)
bare = Celery("bare", broker="memory://")


@app.task(name="shop.ok")
def ok() -> None:
    pass


@bare.task(name="bare.ok")
def bare_ok() -> None:
    pass


def test_counts_without_delivering(bugsnag_collector):
    bugsnag_collector.configure(app, app_version="2.0", release_stage="test", session_flush_interval=0.2)
    bugsnag_collector.configure(bare)
    for _ in range(3):
        ok.apply()
    # the flusher thread moves those to the broker (every 0.2 s here; 30 s is the margin)
    deadline = time.monotonic() + 30
    while pending_session_messages(app, bugsnag_collector.queue_prefix) < 1:
        assert time.monotonic() < deadline, "counts never reached the broker"
        time.sleep(0.05)
    ok.apply()  # and this one is still in the process at teardown
    bare_ok.apply()
    assert bugsnag_celery.options_for(app).notify_endpoint == bugsnag_collector.notify_endpoint


def test_the_apps_are_as_they_were():
    options = bugsnag_celery.options_for(app)
    assert options.api_key == USER_KEY and options.release_stage == "staging" and options.app_version == "1.0"
    assert options.notify_endpoint is None and options.queue_prefix == "bugsnag_celery"
    assert not bugsnag_celery.is_configured(bare)
    # the test's undelivered counts went with it: none here, none on the app's own queue
    assert bugsnag_celery.take_pending_counts() == {}
    assert pending_session_messages(app) == 0


def test_leaves_orphans():
    time.sleep(0.5)  # the flusher is asleep for good now
    # counts of a release no configured app owns: they would go with the next app configured
    bugsnag_celery.restore_pending_counts({ORPHAN: {"2026-01-01T00:00:00Z": 2}})


def test_the_next_collector_gets_its_own_sessions_only(bugsnag_collector):
    bugsnag_collector.configure(app, app_version="2.0", release_stage="test")
    ok.apply()
    ok.apply()
    assert bugsnag_collector.wait_for_sessions(2) == 2
    time.sleep(0.5)
    assert bugsnag_collector.wait_for_sessions(2) == 2
    assert [r["appVersion"] for r in bugsnag_collector.releases()] == ["2.0"]


def test_what_was_set_aside_is_back():
    assert bugsnag_celery.take_pending_counts() == {ORPHAN: {"2026-01-01T00:00:00Z": 2}}
    assert pending_session_messages(app) == 0
"""


def test_nothing_leaks_from_one_test_to_the_next(pytester: pytest.Pytester) -> None:
    result = _run(pytester, LEAK_CHECK)
    result.assert_outcomes(passed=5)


def _memory_app() -> Celery:
    return Celery(f"plugin-{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)


def test_a_failing_bugsnag_keeps_the_counts_for_later(bugsnag_collector: CollectorFixture) -> None:
    app = _memory_app()

    @app.task(name="plugin.ok", shared=False)
    def task() -> None:
        pass

    bugsnag_collector.configure(app, delivery_timeout=1)
    task.apply()
    bugsnag_collector.fail_with(503)
    with pytest.raises(AssertionError) as failed:
        bugsnag_collector.wait_for_sessions(1, timeout=0.5)
    message = str(failed.value)
    assert "expected at least 1 session(s) within 0.5 s, received 0" in message
    assert "0 session(s); 0 dropped, 1 waiting for a retry" in message, message
    assert "last delivery error: " in message
    assert "the collector answers every request with 503 (fail_with)" in message
    bugsnag_collector.fail_with(None)
    assert bugsnag_collector.wait_for_sessions(1) == 1
    assert bugsnag_collector.stability() == 100.0 and bugsnag_collector.crashed_sessions() == 0


def test_teardown_unconfigures_an_app_it_configured(tmp_path: Path) -> None:
    app = _memory_app()
    fixture = CollectorFixture.start(tmp_path / "c.sqlite")
    try:
        fixture.configure(app, release_stage="fixture")
        assert bugsnag_celery.is_configured(app) and DELIVER_TASK in app.conf.beat_schedule
    finally:
        fixture.close()
    assert not bugsnag_celery.is_configured(app) and DELIVER_TASK not in app.conf.beat_schedule
    with pytest.raises(requests.ConnectionError):  # and the collector is gone
        requests.get(fixture.url, timeout=5)


def test_filters_by_release(bugsnag_collector: CollectorFixture) -> None:
    app = _memory_app()

    @app.task(name="plugin.boom", shared=False)
    def task() -> float:
        return 1 / 0

    bugsnag_collector.configure(app, app_version="1", release_stage="a")
    task.apply()
    task.apply()
    assert bugsnag_collector.wait_for_sessions(2, app_version="1") == 2
    bugsnag_collector.configure(app, app_version="2", release_stage="a")
    task.apply()
    assert bugsnag_collector.wait_for_sessions(1, app_version="2") == 1
    assert bugsnag_collector.sessions() == 3 and bugsnag_collector.sessions(release_stage="a") == 3
    assert bugsnag_collector.sessions(release_stage="b") == 0 and bugsnag_collector.stability("3") is None
    assert bugsnag_collector.stability() == 0.0
    events = bugsnag_collector.wait_for_events(3, error_class="ZeroDivisionError")
    assert [e["app"]["version"] for e in events] == ["1", "1", "2"]
    assert bugsnag_collector.events(task="plugin.other") == []
    assert {(r["appVersion"], r["sessions"]) for r in bugsnag_collector.releases()} == {("1", 2), ("2", 1)}


def test_a_real_worker_and_its_beat_report_to_the_fixture(
    fs_broker: Broker, tmp_path: Path, bugsnag_collector: CollectorFixture
) -> None:
    """Nothing configured in this process: the worker's own beat delivers to the collector."""
    configure = {**bugsnag_collector.options, "app_version": "w", "session_delivery_interval": 1}
    worker = Worker(fs_broker, tmp_path / "out", module="events_app", configure=configure,
                    extra_args=("-B", "-s", str(tmp_path / "beat-schedule")))  # fmt: skip
    with worker:
        producer = fs_broker.producer()
        for _ in range(3):
            producer.send_task("events.ok")
        producer.send_task("events.chained")
        try:
            assert bugsnag_collector.wait_for_sessions(4, timeout=30) == 4
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nworker log:\n{worker.log()[-3000:]}") from None
        (event,) = bugsnag_collector.wait_for_events(1, task="events.chained")
        assert event["exceptions"][0]["errorClass"] == "RuntimeError" and event["unhandled"] is True
        assert bugsnag_collector.stability(app_version="w") == 75.0
        assert worker.stop() == 0


@pytest.mark.parametrize(
    ("service", "url"),
    [("Redis", "redis://127.0.0.1:6379/14"), ("RabbitMQ", "amqp://guest:guest@127.0.0.1:5672//")],
    ids=["redis", "rabbitmq"],
)
def test_teardown_removes_the_tests_own_queues_from_the_broker(
    service: str, url: str, tmp_path: Path
) -> None:
    need_service(service, 6379 if service == "Redis" else 5672)
    app = Celery(f"plugin-{uuid.uuid4().hex[:6]}", broker=url, set_as_current=False)

    @app.task(name="plugin.boom", shared=False)
    def boom() -> None:
        raise KeyError("x")

    fixture = CollectorFixture.start(tmp_path / "c.sqlite")
    try:
        fixture.configure(app, delivery_timeout=1)
        boom.apply()
        assert fixture.wait_for_sessions(1) == 1 and len(fixture.wait_for_events(1)) == 1
        fixture.fail_with(503)
        boom.apply()
        with pytest.raises(AssertionError, match="1 waiting for a retry"):
            fixture.wait_for_sessions(2, timeout=0.3)  # now a count waits on the broker
    finally:
        fixture.close()
    names = [f"{fixture.queue_prefix}.{suffix}" for suffix in ("sessions", "events", "status")]
    if service == "Redis":
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=14)
        try:
            assert client.keys(f"*{fixture.queue_prefix}*") == []
        finally:
            for key in client.scan_iter(match=f"*{fixture.queue_prefix}*"):  # only if the test failed
                client.delete(key)
            client.close()
    else:
        from amqp.exceptions import NotFound
        from kombu.connection import Connection

        with Connection(url) as conn:
            for name in names:
                with pytest.raises(NotFound):
                    conn.channel().queue_declare(name, passive=True)
                with pytest.raises(NotFound):
                    conn.channel().exchange_declare(name, "direct", passive=True)


def test_the_readme_shows_this_very_example() -> None:
    """The example a user copies from the README is the one the first test runs."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    match = re.search(r"<!-- pytest-example -->\n```python\n(.*?)```", readme, re.S)
    assert match, "README.md has no example after <!-- pytest-example -->"
    assert match.group(1) == README_EXAMPLE
