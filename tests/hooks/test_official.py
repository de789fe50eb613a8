"""hooks/official.py: adopting BugSnag's official client, and ``unconfigure()`` giving it back.

``configure()`` in a process where ``bugsnag`` is imported adds a ``before_notify``
callback, guards ``start_session`` and disconnects ``bugsnag.celery``'s failure handler.
The README calls ``unconfigure()`` an exact undo: these tests hold it to that with the real
``bugsnag`` package, for the official client as it was before (handler connected or not).

Covers: bugsnag_celery/hooks/official.py
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import bugsnag
import bugsnag.celery
import pytest
from bugsnag.sessiontracker import SessionTracker
from celery import Celery
from celery.signals import task_failure

import bugsnag_celery
from bugsnag_celery import registry
from bugsnag_celery.hooks.official import before_notify
from bugsnag_celery.testing import Endpoint

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    for var in ("BUGSNAG_API_KEY", "BUGSNAG_RELEASE_STAGE", "BUGSNAG_APP_VERSION"):
        monkeypatch.delenv(var, raising=False)
    assert registry.states() == [], "another test left an app configured: nothing would be undone"
    app = Celery(f"o{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    yield app
    bugsnag_celery.unconfigure(app)
    task_failure.disconnect(bugsnag.celery.failure_handler)  # whatever a test left connected


def _tracker() -> SessionTracker:
    return bugsnag.legacy.default_client.session_tracker


def _ours_in_the_callbacks() -> int:
    return sum(getattr(m, "before", None) is before_notify for m in bugsnag.configuration.middleware.stack)


def test_unconfigure_gives_the_official_client_back_as_it_was(app: Celery) -> None:
    callbacks_before = list(bugsnag.configuration.middleware.stack)
    delivery_before = bugsnag.configuration.delivery
    excluded_before = list(bugsnag.configuration.traceback_exclude_modules)
    task_failure.connect(bugsnag.celery.failure_handler, weak=False)  # connect_failure_handler()

    bugsnag_celery.configure(app, api_key=KEY)
    assert _ours_in_the_callbacks() == 1
    assert "start_session" in vars(_tracker())  # guarded
    assert bugsnag.configuration.delivery is not delivery_before  # wrapped: task runs' events taken over
    assert len(bugsnag.configuration.traceback_exclude_modules) == len(excluded_before) + 1  # the wrapper
    assert not task_failure.disconnect(bugsnag.celery.failure_handler)  # dropped: nothing to disconnect

    bugsnag_celery.configure(app, api_key=KEY)  # again: nothing added twice
    assert _ours_in_the_callbacks() == 1

    bugsnag_celery.unconfigure(app)
    assert bugsnag.configuration.middleware.stack == callbacks_before  # the callback removed
    assert "start_session" not in vars(_tracker())  # the class's own method again
    assert _tracker().start_session.__func__ is SessionTracker.start_session  # type: ignore[attr-defined]
    assert task_failure.disconnect(bugsnag.celery.failure_handler)  # re-connected, as it was
    assert bugsnag.configuration.delivery is delivery_before
    assert bugsnag.configuration.traceback_exclude_modules == excluded_before


def test_a_failure_handler_never_connected_is_not_connected_by_the_undo(app: Celery) -> None:
    bugsnag_celery.configure(app, api_key=KEY)
    bugsnag_celery.unconfigure(app)
    assert not task_failure.disconnect(bugsnag.celery.failure_handler)
    assert _ours_in_the_callbacks() == 0


def test_the_adoption_lasts_while_any_app_is_configured_and_comes_back_with_the_next(app: Celery) -> None:
    other = Celery(f"o{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    bugsnag_celery.configure(app, api_key=KEY)
    bugsnag_celery.configure(other, api_key=KEY)
    bugsnag_celery.unconfigure(other)
    assert _ours_in_the_callbacks() == 1 and "start_session" in vars(_tracker())  # app still configured
    bugsnag_celery.unconfigure(app)
    assert _ours_in_the_callbacks() == 0 and "start_session" not in vars(_tracker())
    bugsnag_celery.configure(app, api_key=KEY)  # adopted again
    assert _ours_in_the_callbacks() == 1 and "start_session" in vars(_tracker())


def test_a_start_session_replaced_after_the_adoption_is_left_alone_by_the_undo(app: Celery) -> None:
    def theirs() -> None:
        """Someone else's wrapper, installed after ours."""

    tracker = _tracker()
    bugsnag_celery.configure(app, api_key=KEY)
    tracker.start_session = theirs  # type: ignore[method-assign]
    try:
        bugsnag_celery.unconfigure(app)  # the guard is no longer there to take off
        assert vars(tracker)["start_session"] is theirs
    finally:
        del vars(tracker)["start_session"]


def test_events_go_through_the_official_clients_proxy_host(app: Celery, endpoint: Endpoint) -> None:
    """``proxy_host``: every request to BugSnag goes through it (the stand-in plays the proxy:
    a proxied request names the whole URL, ``http://bugsnag.invalid/notify``)."""
    config = bugsnag.configuration
    saved = {
        name: getattr(config, name) for name in ("api_key", "endpoint", "session_endpoint", "proxy_host")
    }
    try:
        far = "http://bugsnag.invalid"
        bugsnag.configure(api_key=KEY, endpoint=f"{far}/notify", session_endpoint=f"{far}/sessions",
                          proxy_host=endpoint.url)  # fmt: skip
        app.conf.task_always_eager = True

        @app.task(name=f"proxied_{uuid.uuid4().hex[:6]}")
        def proxied() -> None:
            raise ValueError("through the proxy")

        bugsnag_celery.configure(app)  # key, endpoints and proxy: the official client's
        with pytest.raises(ValueError):
            proxied.apply(throw=True)
        bugsnag_celery.flush_events(10)  # returns once the request is answered
        assert [r["path"] for r in endpoint.requests] == [f"{far}/notify"]
        (event,) = endpoint.requests[0]["body"]["events"]
        assert event["exceptions"][0]["message"] == "through the proxy"
    finally:
        for name, value in saved.items():
            if value is not None:
                setattr(config, name, value)
            else:
                config.__dict__["_" + name] = None


def test_crash_events_carry_the_official_clients_hostname_app_type_and_runtime_versions(
    app: Celery, endpoint: Endpoint
) -> None:
    config = bugsnag.configuration
    names = ("api_key", "endpoint", "session_endpoint", "hostname", "app_type")
    saved = {name: getattr(config, name) for name in names}
    versions = dict(config.runtime_versions)
    try:
        here = endpoint.url
        bugsnag.configure(api_key=KEY, endpoint=f"{here}/notify", session_endpoint=f"{here}/sessions",
                          hostname="worker-7", app_type="billing")  # fmt: skip
        config.runtime_versions["ledger"] = "2.4.1"
        app.conf.task_always_eager = True

        @app.task(name=f"described_{uuid.uuid4().hex[:6]}")
        def described() -> None:
            raise ValueError("described")

        bugsnag_celery.configure(app)
        with pytest.raises(ValueError):
            described.apply(throw=True)
        bugsnag_celery.flush_events(10)
        (event,) = endpoint.wait_for_events(1, timeout=10)
        assert event["device"]["hostname"] == "worker-7"
        assert event["app"]["type"] == "billing"
        runtime = event["device"]["runtimeVersions"]
        assert runtime["ledger"] == "2.4.1" and runtime["python"] and runtime["celery"]
        state = registry.state_for(app)
        assert state is not None and (state.release.app_type, state.release.hostname) == (
            "billing",
            "worker-7",
        )
    finally:
        config.runtime_versions.clear()
        config.runtime_versions.update(versions)
        for name, value in saved.items():
            if value is not None:
                setattr(config, name, value)
            else:
                config.__dict__["_" + name] = None


def test_an_event_the_official_policy_drops_is_not_counted_in_the_runs_session(
    app: Celery, endpoint: Endpoint
) -> None:
    """``bugsnag_celery.notify`` of an ignored class: not sent, so not counted (the crash after it
    says ``handled: 1``, for the one handled event BugSnag got)."""
    config = bugsnag.configuration
    names = ("api_key", "endpoint", "session_endpoint", "ignore_classes")
    saved = {name: getattr(config, name) for name in names}
    try:
        here = endpoint.url
        bugsnag.configure(api_key=KEY, endpoint=f"{here}/notify", session_endpoint=f"{here}/sessions",
                          ignore_classes=["KeyError"])  # fmt: skip
        app.conf.task_always_eager = True

        @app.task(name=f"counted_{uuid.uuid4().hex[:6]}")
        def counted() -> None:
            bugsnag_celery.notify(KeyError("ignored: never sent"))
            bugsnag_celery.notify(ValueError("sent"))
            raise RuntimeError("crash")

        bugsnag_celery.configure(app)
        with pytest.raises(RuntimeError):
            counted.apply(throw=True)
        bugsnag_celery.flush_events(10)
        events = endpoint.wait_for_events(2, timeout=10)
        assert sorted(e["exceptions"][0]["errorClass"] for e in events) == ["RuntimeError", "ValueError"]
        crash = next(e for e in events if e["exceptions"][0]["errorClass"] == "RuntimeError")
        assert crash["session"]["events"] == {"handled": 1, "unhandled": 1}
    finally:
        for name, value in saved.items():
            if value is not None:
                setattr(config, name, value)
            else:
                config.__dict__["_" + name] = None
