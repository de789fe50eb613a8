"""Testing helpers for users' own test suites (and this project's tests and benchmarks).

- ``bugsnag_collector``, the pytest fixture, is registered by the ``pytest11`` entry point;
  import :class:`CollectorFixture` from here for type hints. It is the *validating* stand-in:
  it answers like BugSnag and keeps only what passes BugSnag's wire rules::

      from bugsnag_celery.testing import CollectorFixture

- :class:`Endpoint` is the *scriptable* stand-in: a local HTTP server that records every
  request as it arrived and answers as it is told (statuses in turn, a delay, a 429 with
  ``Retry-After``, or no answer at all while it hangs), for tests of what happens when
  BugSnag is slow, hung, refuses or throttles,
  and for the benchmarks, which count what arrived at the endpoint rather than trust the
  sender's word. It needs neither pytest nor Celery, so a benchmark or a script can use it::

      from bugsnag_celery.testing import Endpoint

      endpoint = Endpoint()
      endpoint.statuses = [500]              # the first request fails, the rest get `default`
      bugsnag_celery.configure(app, notify_endpoint=f"{endpoint.url}/notify", ...)
      ...
      assert len(endpoint.wait_for_events(1)) == 1
      endpoint.close()

Both live here, apart from the package's runtime, because nothing in a worker needs them;
this module imports only the standard library and (for :class:`CollectorFixture`, on
first use) the pytest plugin.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tools.pytest_plugin import CollectorFixture

__all__ = ["CollectorFixture", "Endpoint"]

#: One received request: ``path``, ``headers``, ``raw`` (the body's bytes), ``body`` (the
#: body parsed as JSON, or ``None``), ``status`` (the answer), ``at`` (``time.monotonic()``
#: once the body was read) and ``answered`` (the same, after the delay, as the answer left).
Record = dict[str, Any]


class Endpoint:
    """A local BugSnag stand-in on a free port: records every request; answers as scripted.

    The answer to a request is the first of :attr:`statuses` (each used once), else what
    *answer* returns for the record (when given and not ``None``), else :attr:`default`;
    it leaves after :attr:`delay` seconds; a 429 carries ``Retry-After:`` :attr:`retry_after`
    when that is set. Until :attr:`hang_until` (a ``time.monotonic()`` time; :meth:`hang`
    sets it) the endpoint is *hung*: it accepts connections and reads each request whole,
    then never answers. Those requests are recorded in :attr:`unanswered`, not in
    :attr:`requests` (nothing was processed); when the hang ends their connections are
    closed, still unanswered, and later requests are answered as scripted.

    *keep*, when given, turns each record into what is stored (the benchmarks keep a
    digest: tens of thousands of parsed events would crowd the machine they measure).
    *keep_alive* answers in HTTP/1.1, holding connections open as BugSnag does; *reply* is
    the body of every answer.
    """

    def __init__(
        self,
        *,
        default: int = 200,
        delay: float = 0.0,
        retry_after: str | None = None,
        answer: Callable[[Record], int | None] | None = None,
        keep: Callable[[Record], Record] | None = None,
        keep_alive: bool = False,
        reply: bytes = b"",
    ) -> None:
        self.requests: list[Record] = []
        self.statuses: list[int] = []  # consumed one per request; then `answer`, then `default`
        self.default = default
        self.delay = delay
        self.retry_after = retry_after  # sent with every 429
        self.hang_until = 0.0  # time.monotonic() before which requests get no answer at all
        self.unanswered: list[Record] = []  # requests read while hung (not answered, not processed)
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                record: Record = {"path": self.path, "headers": dict(self.headers.items()), "raw": raw,
                                  "at": time.monotonic()}  # fmt: skip
                try:
                    record["body"] = json.loads(raw)
                except ValueError:  # not JSON (the benchmarks' peers: Sentry's envelopes, OTLP)
                    record["body"] = None
                with endpoint.lock:
                    hang_until = endpoint.hang_until
                    if record["at"] < hang_until:
                        endpoint.unanswered.append(record)
                if record["at"] < hang_until:
                    # Hung: the body was read, no answer ever leaves. The connection stays
                    # open until the hang ends, then is dropped.
                    while time.monotonic() < endpoint.hang_until and not endpoint.closed.is_set():
                        endpoint.closed.wait(0.05)
                    self.close_connection = True
                    return
                with endpoint.lock:
                    status = endpoint.statuses.pop(0) if endpoint.statuses else None
                    delay, retry_after = endpoint.delay, endpoint.retry_after
                if status is None and answer is not None:
                    status = answer(record)
                record["status"] = status = endpoint.default if status is None else status
                if delay:
                    time.sleep(delay)
                record["answered"] = time.monotonic()
                kept = record if keep is None else keep(record)
                with endpoint.lock:
                    endpoint.requests.append(kept)
                self.send_response(status)
                if status == 429 and retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                if reply:
                    self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.closed = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def hang(self, seconds: float) -> None:
        """Be hung for *seconds* from now: accept and read every request, answer none."""
        with self.lock:
            self.hang_until = time.monotonic() + seconds

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> list[Record]:
        """A copy of the records so far (the server may be appending meanwhile)."""
        with self.lock:
            return list(self.requests)

    def reset(self) -> None:
        """Forget what was received (the script -- statuses, delay -- stays)."""
        with self.lock:
            self.requests.clear()

    def events(self, delivered_only: bool = True) -> list[dict[str, Any]]:
        """The events of every ``/notify`` request (of those answered below 300, by default)."""
        rows = [
            r for r in self.received() if r["path"] == "/notify" and (not delivered_only or r["status"] < 300)
        ]
        return [event for r in rows for event in r["body"]["events"]]

    def wait_for_events(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        """At least *n* delivered events, or an AssertionError naming what came after *timeout*."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.events()
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError(
            f"{len(self.events())} of {n} events arrived: {[e['context'] for e in self.events()]}"
        )

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


def __getattr__(name: str) -> Any:
    """:class:`CollectorFixture` on first use: it imports pytest, which an :class:`Endpoint`
    user (a benchmark, a script) may not have."""
    if name == "CollectorFixture":
        from .tools.pytest_plugin import CollectorFixture

        return CollectorFixture
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
