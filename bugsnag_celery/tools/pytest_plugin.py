"""pytest plugin: the ``bugsnag_collector`` fixture, a local BugSnag for your own tests.

Installed with the package (a ``pytest11`` entry point), so any test can ask for it::

    def test_charge(bugsnag_collector):
        bugsnag_collector.configure(app, app_version="1.4.2")
        charge.apply(args=(1,))
        assert bugsnag_collector.wait_for_sessions(1) == 1

The fixture starts a :class:`~bugsnag_celery.tools.collector.Collector` (the same validating
stand-in for BugSnag as ``bugsnag-celery collector``) on a free port, points apps at it and
undoes all of that at teardown. Assertions then read what BugSnag would have received --
the payloads that passed its wire rules -- not the package's internal state.

This module is imported into every pytest session of everyone who installs the package: it
adds nothing to the import of the package itself but the standard library and pytest, and
starts nothing (no server, no thread) until a test asks for the fixture.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from celery import Celery

    from ..options.declared import Options
    from ..sessions.counts import PendingCounts, Release
    from .collector import Collector, ReleaseFigures

__all__ = ["TEST_API_KEY", "CollectorFixture", "bugsnag_collector"]

#: The API key the fixture configures: any 32 hex characters pass the collector's checks.
TEST_API_KEY = "feedfacecafebeeffeedfacecafebeef"

logger = logging.getLogger("bugsnag_celery")

T = TypeVar("T")

_POLL = 0.1  # seconds between two looks at the collector while waiting


class CollectorFixture:
    """A local BugSnag for one test: what apps configured through it send, and helpers to assert on it.

    Why a wrapper rather than the bare :class:`Collector`: a test needs more than a server.
    Counts only reach BugSnag when something delivers them (a worker's beat, or
    :func:`bugsnag_celery.flush`); the waits here do that delivery for apps configured
    through :meth:`configure`, so an eager ``task.apply()`` test needs no worker and no
    beat. And the configuration a test makes must not outlive it: teardown restores every
    app as it was and drops what the test counted but never delivered.

    Filters (``app_version``, ``release_stage``, ``task``, ``error_class``) left as None match
    everything.
    """

    def __init__(self, collector: Collector, db_path: Path, queue_prefix: str) -> None:
        self.collector = collector
        #: The collector's SQLite file (kept with the test's ``tmp_path`` for a look after a
        #: failure: ``bugsnag-celery collector --db <path>`` serves its page).
        self.db_path = db_path
        #: Where the fixture's apps queue their counts on the broker: unique to this test, so
        #: a broker shared with other tests (``memory://`` is shared by a whole process)
        #: never hands this test another's counts.
        self.queue_prefix = queue_prefix
        self.api_key = TEST_API_KEY
        # (app, its configuration before the fixture touched it) in configuration order
        self._apps: list[tuple[Celery, Options | None]] = []
        self._delivered = self._dropped = self._retrying = 0  # sessions, as this process's flushes saw them
        self._last_error: str | None = None
        self._releases: set[Release] = set()  # the releases of the fixture's apps
        self._aside: PendingCounts = {}  # counts held before the test, put back at teardown

    @classmethod
    def start(cls, db_path: Path, queue_prefix: str | None = None) -> CollectorFixture:
        """Start a collector on a free port, storing into *db_path*: what the fixture does.

        For use outside the fixture (a wider scope); :meth:`close` it when done.
        """
        from .collector import Collector

        collector = Collector(port=0, db=str(db_path))
        # Collector.start() serves with socketserver's default poll interval: its close()
        # would then take half a second, on every test's teardown.
        threading.Thread(
            target=collector.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return cls(collector, db_path, queue_prefix or f"bugsnag_celery_test_{uuid.uuid4().hex[:12]}")

    # ------------------------------------------------------------------ where it listens

    @property
    def url(self) -> str:
        """The collector's base URL (its page is at ``/``, its JSON API under ``/api/``)."""
        return self.collector.url

    @property
    def notify_endpoint(self) -> str:
        return f"{self.collector.url}/notify"

    @property
    def sessions_endpoint(self) -> str:
        return f"{self.collector.url}/sessions"

    @property
    def options(self) -> dict[str, str]:
        """The ``bugsnag_celery.configure()`` keyword arguments that report here.

        :meth:`configure` uses them; pass them to a worker you start yourself (a
        subprocess configures its own app) so that it reports here too and queues its
        counts where :meth:`wait_for_sessions` delivers from.
        """
        return {
            "api_key": self.api_key,
            "notify_endpoint": self.notify_endpoint,
            "sessions_endpoint": self.sessions_endpoint,
            "queue_prefix": self.queue_prefix,
        }

    # ------------------------------------------------------------------ configuring apps

    def configure(self, app: Celery, **options: object) -> None:
        """``bugsnag_celery.configure(app, ...)`` reporting to this collector, undone at teardown.

        *options* are any of ``configure()``'s and win over the fixture's (an app that was
        configured before, e.g. at import, is reconfigured, and restored at teardown).
        Counts this process held before (earlier tests') are set aside until teardown:
        the collector receives this test's sessions only.
        """
        import bugsnag_celery
        from bugsnag_celery.sessions import counts

        if not any(known is app for known, _ in self._apps):
            self._apps.append((app, bugsnag_celery.options_for(app)))
        # Orphans (no configured app owns their release) go out with the last app configured:
        # that would be this one.
        owned = _configured_releases()
        self._set_aside(
            r for r in counts.releases_with_counts() if r not in owned and r not in self._releases
        )
        bugsnag_celery.configure(app, **{**self.options, **options})
        release = _release_of(bugsnag_celery.options_for(app))
        if release is not None and release not in self._releases:
            self._releases.add(release)
            self._set_aside([release])  # counted under the same release before this test

    def _set_aside(self, releases: Iterable[Release]) -> None:
        from bugsnag_celery.sessions import counts

        for release, buckets in counts.take_pending_counts(list(releases)).items():
            kept = self._aside.setdefault(release, {})
            for minute, n in buckets.items():
                kept[minute] = kept.get(minute, 0) + n

    # ------------------------------------------------------------------ fault injection

    def fail_with(self, status: int | None) -> None:
        """Answer every POST with *status* (e.g. 503, 429) from now on; None to accept again."""
        self.collector.fail_status = status

    @property
    def delay(self) -> float:
        """Seconds the collector waits before answering each request (a slow BugSnag)."""
        return self.collector.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self.collector.delay = seconds

    # ------------------------------------------------------------------ what BugSnag received

    def releases(self) -> list[ReleaseFigures]:
        """Per release: version, stage, sessions, crashed sessions, stability; the same per app type."""
        return self.collector.releases()

    def _matching(self, app_version: str | None, release_stage: str | None) -> list[ReleaseFigures]:
        return [
            r
            for r in self.collector.releases()
            if (app_version is None or r["appVersion"] == app_version)
            and (release_stage is None or r["releaseStage"] == release_stage)
        ]

    def sessions(self, app_version: str | None = None, release_stage: str | None = None) -> int:
        """Sessions received (the sum of every ``sessionsStarted``)."""
        return sum(int(r["sessions"]) for r in self._matching(app_version, release_stage))

    def crashed_sessions(self, app_version: str | None = None, release_stage: str | None = None) -> int:
        """Sessions with at least one unhandled event received, as BugSnag counts them."""
        return sum(int(r["crashedSessions"]) for r in self._matching(app_version, release_stage))

    def stability(self, app_version: str | None = None, release_stage: str | None = None) -> float | None:
        """Stability score in percent (``75.0``), rounded as the collector's page shows it.

        None while no session was received. Crashes come from events: after a wait on
        sessions alone from a real worker, its events may still be on their way (see
        :meth:`wait_for_events`).
        """
        total = self.sessions(app_version, release_stage)
        if not total:
            return None
        return round(100.0 * (1 - self.crashed_sessions(app_version, release_stage) / total), 2)

    def events(self, task: str | None = None, error_class: str | None = None) -> list[dict[str, Any]]:
        """Every event received, oldest first, exactly as BugSnag would have stored it.

        *task* matches the event's ``context`` (the task name), *error_class* the first
        exception's ``errorClass``. Plain dicts, typed loosely: tests index them at will.
        """
        found = []
        for summary in self.collector.events(task=task, error_class=error_class):
            payload = self.collector.payload(int(summary["id"]))
            if payload is not None:
                found.append(payload)
        return found

    # ------------------------------------------------------------------ waiting

    def wait_for_sessions(
        self,
        n: int,
        timeout: float = 10.0,
        *,
        app_version: str | None = None,
        release_stage: str | None = None,
    ) -> int:
        """Wait until at least *n* sessions were received; return how many were (all of them).

        Apps configured through :meth:`configure` are flushed while waiting (this process's
        counts and events moved to the broker and delivered), so eager runs need no beat;
        otherwise this only waits for someone else's delivery (a worker's beat). The
        return value is the real total, never capped at *n*: ``== n`` catches extras.
        Raises ``AssertionError`` saying what was expected and what arrived.
        """
        which = _describe(app_version=app_version, release_stage=release_stage)
        return self._wait(
            lambda: self.sessions(app_version, release_stage), int, n, timeout, f"session(s){which}"
        )

    def wait_for_events(
        self, n: int, timeout: float = 10.0, *, task: str | None = None, error_class: str | None = None
    ) -> list[dict[str, Any]]:
        """Wait until at least *n* events (of *task* / *error_class*) were received; return them all.

        Events are sent by a background thread; this flushes it (and delivers events
        spooled on the broker) for apps configured through :meth:`configure`.
        """
        which = _describe(task=task, error_class=error_class)
        return self._wait(lambda: self.events(task=task, error_class=error_class), len, n, timeout,
                          f"event(s){which}")  # fmt: skip

    def _wait(self, read: Callable[[], T], size: Callable[[T], int], n: int, timeout: float, what: str) -> T:
        """Deliver and read until ``size(read()) >= n``; the last reading, or AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            self._deliver(deadline)
            got = read()
            if size(got) >= n:
                return got
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"bugsnag_collector: expected at least {n} {what} within {timeout:g} s,"
                    f" received {size(got)}.\n{self._diagnosis()}"
                )
            time.sleep(_POLL)

    def _deliver(self, deadline: float) -> None:
        """Push out what this process holds for the fixture's apps (or at least its events)."""
        import bugsnag_celery

        budget = max(0.1, min(5.0, deadline - time.monotonic()))
        apps = [app for app, _ in self._apps if bugsnag_celery.is_configured(app)]
        if not apps:
            bugsnag_celery.flush_events(budget)
            return
        for app in apps:
            status = bugsnag_celery.flush(app, timeout=budget)
            sessions = status.get("sessions") or {}
            self._delivered += int(sessions.get("delivered", 0))
            self._dropped += int(sessions.get("dropped", 0))
            self._retrying = int(sessions.get("retry", 0))  # the same counts again on every run
            # a failed run records its own error; a run that went through clears the old one
            failed = status.get("last_delivery") != status.get("last_run")
            self._last_error = status.get("last_error") if failed else None

    def _diagnosis(self) -> str:
        events = [(e["context"], e["errorClass"]) for e in self.collector.events()]
        lines = [f"  received per release: {self.releases() or 'nothing'}", f"  events received: {events}"]
        if self._apps:
            lines.append(
                f"  delivered from this process while waiting: {self._delivered} session(s);"
                f" {self._dropped} dropped, {self._retrying} waiting for a retry"
            )
            if self._last_error:
                lines.append(f"  last delivery error: {self._last_error}")
        else:
            lines.append(
                "  no app was configured through bugsnag_collector.configure(): sessions arrive only"
                " when a worker's beat delivers them to this collector"
            )
        status = self.collector.fail_status
        if status is not None:
            lines.append(f"  the collector answers every request with {status} (fail_with)")
        lines.append(f"  collector database: {self.db_path}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Restore every app as it was, drop undelivered counts of this test, stop the collector."""
        try:
            self._restore_apps()
        finally:
            self.collector.close()

    def _restore_apps(self) -> None:
        import bugsnag_celery
        from bugsnag_celery import registry
        from bugsnag_celery.sessions import counts

        owned = [(app, bugsnag_celery.options_for(app)) for app, _ in self._apps]
        brokers = [app for app, o in owned if o is not None and o.queue_prefix == self.queue_prefix]
        # What this test counted and never delivered must not go out with an app configured
        # after it (the next test's, or an app restored to its real BugSnag): dropped while
        # the fixture's apps still own it, so the flusher never sees it as orphaned.
        counts.take_pending_counts(list(self._releases))
        for app, previous in reversed(self._apps):
            bugsnag_celery.unconfigure(app)
            if previous is not None:
                bugsnag_celery.configure(app, **{f.name: getattr(previous, f.name) for f in fields(previous)})
        self._apps.clear()
        if brokers:  # a flush under way (the test's last counts) must not re-create a queue
            registry.flusher.flush_once(wait=5.0)  # deleted below: wait for it to end
        counts.restore_pending_counts(self._aside)  # what was set aside goes back where it was
        self._releases.clear()
        self._aside = {}
        for app in brokers:
            self._delete_queues(app)

    def _delete_queues(self, app: Celery) -> None:
        """Remove this test's own queues from the broker (durable on Redis and RabbitMQ).

        Best effort: a broker that is gone must not fail the test at teardown, and a queue
        that was never declared is nothing to delete.
        """
        from ..transport.queues import bound_queue, connection, queue_names

        try:
            with connection(app) as conn:
                conn.ensure_connection(max_retries=1)
                for name in queue_names(self.queue_prefix):
                    try:
                        # declared first: virtual transports (Redis) only delete the bindings
                        # this connection knows of
                        bound_queue(conn, name).delete()
                        conn.default_channel.exchange_delete(name)
                    except Exception as exc:
                        logger.debug("bugsnag_collector: deleting queue %r: %r", name, exc)
        except Exception as exc:
            logger.warning(
                "bugsnag_collector: could not remove queues %s.* from the broker: %s", self.queue_prefix, exc
            )


def _configured_releases() -> set[Release]:
    from bugsnag_celery import registry

    return {state.release for state in registry.states()}


def _release_of(options: Options | None) -> Release | None:
    if options is None:
        return None
    from bugsnag_celery.sessions.counts import Release

    return Release.of(options)


def _describe(**filters: str | None) -> str:
    given = [f"{name}={value!r}" for name, value in filters.items() if value is not None]
    return f" ({', '.join(given)})" if given else ""


@pytest.fixture
def bugsnag_collector(tmp_path: Path) -> Iterator[CollectorFixture]:
    """A local BugSnag on a free port for this test: see :class:`CollectorFixture`."""
    fixture = CollectorFixture.start(tmp_path / "bugsnag-collector.sqlite")
    try:
        yield fixture
    finally:
        fixture.close()
