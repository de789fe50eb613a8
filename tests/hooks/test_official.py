"""hooks/official.py: adopting BugSnag's official client, and ``unconfigure()`` giving it back.

``configure()`` in a process where ``bugsnag`` is imported puts a middleware in the official
client's internal stack (ahead of its ``DefaultMiddleware`` and every callback), guards
``start_session`` and disconnects ``bugsnag.celery``'s failure handler.
The README calls ``unconfigure()`` an exact undo: these tests hold it to that with the real
``bugsnag`` package, for the official client as it was before (handler connected or not).

Covers: bugsnag_celery/hooks/official.py, bugsnag_celery/reporting/official_event.py
Covers: bugsnag_celery/payload/official_crumbs.py
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator

import bugsnag
import bugsnag.celery
import pytest
from bugsnag.configuration import RequestConfiguration
from bugsnag.middleware import DefaultMiddleware
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
    """How many times our middleware is in the official internal stack (always right before
    ``DefaultMiddleware``: events of task runs get their task context before it and every callback)."""
    stack = bugsnag.configuration.internal_middleware.stack
    ours = [i for i, m in enumerate(stack) if getattr(m, "before", None) is before_notify]
    assert all(stack[i + 1] is DefaultMiddleware for i in ours), stack
    callbacks = bugsnag.configuration.middleware.stack
    assert not any(getattr(m, "before", None) is before_notify for m in callbacks)
    return len(ours)


def _restore(config: object, saved: dict[str, object]) -> None:
    for name, value in saved.items():
        if value is not None:
            setattr(config, name, value)
        else:
            config.__dict__["_" + name] = None


def test_unconfigure_gives_the_official_client_back_as_it_was(app: Celery) -> None:
    callbacks_before = list(bugsnag.configuration.middleware.stack)
    internal_before = list(bugsnag.configuration.internal_middleware.stack)
    delivery_before = bugsnag.configuration.delivery
    excluded_before = list(bugsnag.configuration.traceback_exclude_modules)
    task_failure.connect(bugsnag.celery.failure_handler, weak=False)  # connect_failure_handler()
    get_instance_before = RequestConfiguration.__dict__["get_instance"]

    bugsnag_celery.configure(app, api_key=KEY)
    assert _ours_in_the_callbacks() == 1
    assert RequestConfiguration.__dict__["get_instance"] is not get_instance_before  # seen by the run scope
    assert "append" in vars(bugsnag.configuration._breadcrumbs)  # so are the breadcrumbs' changes
    assert "start_session" in vars(_tracker())  # guarded
    assert bugsnag.configuration.delivery is not delivery_before  # wrapped: task runs' events taken over
    assert len(bugsnag.configuration.traceback_exclude_modules) == len(excluded_before) + 1  # the wrapper
    assert not task_failure.disconnect(bugsnag.celery.failure_handler)  # dropped: nothing to disconnect

    bugsnag_celery.configure(app, api_key=KEY)  # again: nothing added twice
    assert _ours_in_the_callbacks() == 1

    bugsnag_celery.unconfigure(app)
    assert bugsnag.configuration.internal_middleware.stack == internal_before  # ours removed
    assert bugsnag.configuration.middleware.stack == callbacks_before
    assert "start_session" not in vars(_tracker())  # the class's own method again
    assert _tracker().start_session.__func__ is SessionTracker.start_session  # type: ignore[attr-defined]
    assert task_failure.disconnect(bugsnag.celery.failure_handler)  # re-connected, as it was
    assert bugsnag.configuration.delivery is delivery_before
    assert bugsnag.configuration.traceback_exclude_modules == excluded_before
    assert RequestConfiguration.__dict__["get_instance"] is get_instance_before
    assert "append" not in vars(bugsnag.configuration._breadcrumbs)  # the class's own method again


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
        _restore(config, saved)


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
        _restore(config, saved)


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
        _restore(config, saved)


def test_stored_breadcrumbs_are_sent_as_they_are_at_each_crash(app: Celery, endpoint: Endpoint) -> None:
    """Under the official policy the stored breadcrumbs' JSON is made once and reused: still,
    each crash carries them as they are then (the official client keeps a breadcrumb's
    metadata by reference, and deep-copies it per event), and what a callback changes in
    ``event.breadcrumbs`` stays in that event."""
    config = bugsnag.configuration
    names = ("api_key", "endpoint", "session_endpoint")
    saved = {name: getattr(config, name) for name in names}
    step: dict[str, object] = {"step": 1}
    changed: list[bool] = []

    def callback(event: bugsnag.Event) -> None:
        if changed:
            event.breadcrumbs[0].metadata["step"] = "changed by a callback"

    try:
        bugsnag.configure(
            api_key=KEY, endpoint=f"{endpoint.url}/notify", session_endpoint=f"{endpoint.url}/sessions"
        )
        bugsnag.leave_breadcrumb("checkout", step)
        bugsnag.before_notify(callback)
        app.conf.task_always_eager = True

        @app.task(name=f"crumbs_{uuid.uuid4().hex[:6]}")
        def crumbs() -> None:
            raise ValueError("crumbs")

        bugsnag_celery.configure(app)
        sent = []
        for _ in range(2):  # the same stored breadcrumb twice: the second time from the cache
            with pytest.raises(ValueError):
                crumbs.apply(throw=True)
        step["step"] = 2  # changed where it is stored
        with pytest.raises(ValueError):
            crumbs.apply(throw=True)
        changed.append(True)
        with pytest.raises(ValueError):
            crumbs.apply(throw=True)
        changed.clear()
        with pytest.raises(ValueError):
            crumbs.apply(throw=True)
        bugsnag_celery.flush_events(10)
        events = endpoint.wait_for_events(5, timeout=10)
        sent = [next(c["metaData"] for c in e["breadcrumbs"] if c["name"] == "checkout") for e in events]
        assert sent == [{"step": 1}, {"step": 1}, {"step": 2}, {"step": "changed by a callback"}, {"step": 2}]
        assert step == {"step": 2}  # the callback changed the event's copy, not what is stored
    finally:
        config.middleware.stack = [
            m for m in config.middleware.stack if getattr(m, "before", None) is not callback
        ]
        bugsnag.legacy.default_client.configuration._breadcrumbs.clear()
        _restore(config, saved)


def test_a_crash_event_is_freed_at_once_not_left_to_the_garbage_collector(
    app: Celery, endpoint: Endpoint
) -> None:
    """The official event of a crash (its exception, traceback and frames with it) is freed as
    soon as it is encoded: the official middleware makes a reference cycle of its own, which must
    not hold the event (else every failing run leaves the event for the cyclic collector)."""
    config = bugsnag.configuration
    names = ("api_key", "endpoint", "session_endpoint")
    saved = {name: getattr(config, name) for name in names}
    try:
        bugsnag.configure(
            api_key=KEY, endpoint=f"{endpoint.url}/notify", session_endpoint=f"{endpoint.url}/sessions"
        )
        app.conf.task_always_eager = True

        @app.task(name=f"freed_{uuid.uuid4().hex[:6]}")
        def freed() -> None:
            raise ValueError("freed")

        bugsnag_celery.configure(app)
        gc.collect()
        gc.disable()
        try:
            with pytest.raises(ValueError):
                freed.apply(throw=True)
            left = [o for o in gc.get_objects() if isinstance(o, bugsnag.Event)]
        finally:
            gc.enable()
        bugsnag_celery.flush_events(10)
        (event,) = endpoint.wait_for_events(1, timeout=10)
        assert event["exceptions"][0]["message"] == "freed"  # it was built, and sent
        assert left == []
    finally:
        _restore(config, saved)


class LedgerClosed(Exception):
    """An exception class of the project's (it has a module, unlike the built-in ones)."""


def test_error_classes_and_messages_are_the_official_clients_for_every_kind_of_chain(
    app: Celery, endpoint: Endpoint
) -> None:
    """Built-in exceptions (no ``__module__``), the project's and a library's, chained by
    ``raise from``, by context, and grouped: each event's errors are named as the official
    client names them for the same exception (its ``Event``, built in this test)."""
    from bugsnag.configuration import RequestConfiguration
    from bugsnag.event import Event as OfficialEvent

    config = bugsnag.configuration
    saved = {name: getattr(config, name) for name in ("api_key", "endpoint", "session_endpoint")}
    raised: list[BaseException] = []
    try:
        bugsnag.configure(api_key=KEY, endpoint=f"{endpoint.url}/notify",
                          session_endpoint=f"{endpoint.url}/sessions")  # fmt: skip
        app.conf.task_always_eager = True

        def chained() -> None:
            try:
                try:
                    stock: dict[str, int] = {}
                    stock["missing"]
                except KeyError as exc:
                    raise LedgerClosed("closed") from exc
            except LedgerClosed:
                import json

                json.loads("{")  # a library's exception, with the others as its context

        def grouped() -> None:
            import builtins

            group = getattr(builtins, "ExceptionGroup", None)
            if group is None:  # Python < 3.11: a built-in with a cause instead
                raise OSError(2, "gone") from ValueError("why")
            raise group("several", [ValueError("one"), LedgerClosed("two")])

        tasks = []
        for body in (chained, grouped):

            @app.task(name=f"{body.__name__}_{uuid.uuid4().hex[:6]}")
            def run(body: object = body) -> None:
                try:
                    body()  # type: ignore[operator]
                except BaseException as exc:
                    raised.append(exc)
                    raise

            tasks.append(run)
        bugsnag_celery.configure(app)
        for task in tasks:
            assert task.apply().failed()
        bugsnag_celery.flush_events(10)
        events = endpoint.wait_for_events(2, timeout=10)
        sent = [[(e["errorClass"], e["message"]) for e in ev["exceptions"]] for ev in events]
        official = []
        for exc in raised:
            request = RequestConfiguration.get_instance()
            event = OfficialEvent(exc, config, request, traceback=exc.__traceback__)
            official.append([(e.error_class, e.error_message) for e in event.errors])
        assert sorted(sent) == sorted(official)
        # what is compared: a built-in, the project's class and a library's, each once at least
        names = {name for errors in sent for name, _ in errors}
        assert {"KeyError", f"{__name__}.LedgerClosed", "json.decoder.JSONDecodeError"} <= names, names
    finally:
        _restore(config, saved)


def test_an_app_type_given_to_configure_is_the_one_of_the_workers_events_and_sessions(
    app: Celery, endpoint: Endpoint
) -> None:
    """The official client says ``flask`` (a web project's setting); ``configure(app_type=...)``
    names the worker's: its crash events carry the same type as its sessions (the release)."""
    config = bugsnag.configuration
    saved = {name: getattr(config, name) for name in ("api_key", "endpoint", "session_endpoint", "app_type")}
    try:
        bugsnag.configure(api_key=KEY, endpoint=f"{endpoint.url}/notify",
                          session_endpoint=f"{endpoint.url}/sessions", app_type="flask")  # fmt: skip
        app.conf.task_always_eager = True

        @app.task(name=f"typed_{uuid.uuid4().hex[:6]}")
        def typed() -> None:
            raise ValueError("typed")

        bugsnag_celery.configure(app, app_type="billing-worker")
        assert typed.apply().failed()
        bugsnag_celery.flush_events(10)
        (event,) = endpoint.wait_for_events(1, timeout=10)
        state = registry.state_for(app)
        assert state is not None and state.release.app_type == "billing-worker"
        assert event["app"]["type"] == "billing-worker"
    finally:
        _restore(config, saved)
