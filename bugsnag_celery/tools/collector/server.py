"""A local BugSnag-compatible collector: accepts event and session payloads as BugSnag does.

It checks every request against BugSnag's wire rules (``wire.py``) within its limits
(``body.py``), and what it accepts goes to SQLite (``store.py``), so nothing is lost across
restarts. The read side (the page and the JSON API) is ``api.py``.

Routes, on the main port: ``POST /notify`` and ``POST /`` take events (as
notify.bugsnag.com does), ``POST /sessions`` takes sessions. On the optional second port
(``sessions_port``, like an on-premise install's 49003) ``POST /`` takes sessions, as
sessions.bugsnag.com does. ``GET /`` is the page (``page.py``);
``GET /api/releases``, ``GET /api/events`` (``?task=``, ``?errorClass=``, ``?appVersion=``,
``?releaseStage=``) and ``GET /api/events/<id>`` (the event exactly as received) give the
same as JSON.

Why every refusal is logged (one line, on stderr unless *log* says otherwise, and kept in
:attr:`Collector.rejections`): a sender that is turned away only sees a status -- the
official notifier logs ``Delivery ... failed, status 400`` and nothing else -- so the
collector is where the reason has to be. Every handler catches its own errors: nothing a
client sends takes a thread, the page or the server down.

Faults can be injected for testing: ``fail_status`` (answer every POST with that status)
and ``delay`` (seconds before answering).
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .api import answer_get
from .body import DeadlineReader, Refused, read_body
from .store import Store
from .times import utc_text
from .wire import MAX_BYTES, validate

__all__ = ["Collector", "Rejection"]

_JSON = "application/json"


class Rejection(NamedTuple):
    """A request the collector turned away (status None: closed without an answer)."""

    at: float
    client: str
    request: str
    status: int | None
    reason: str


def _kind(path: str, sessions_port: bool) -> str | None:
    """Which endpoint a POST path means on the main port or on the sessions port."""
    path = urlsplit(path).path.rstrip("/")
    if path == "/sessions":
        return "sessions"
    if path == "/notify":
        return "notify"
    if path == "":
        return "sessions" if sessions_port else "notify"
    return None


def _printable(text: str, limit: int = 300) -> str:
    """One log line's worth of *text*: control characters escaped (a path is the client's)."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[: limit * 2])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_stderr(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # no stderr (closed, a daemon): the line is kept anyway
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's 5 drops the SYNs of a burst of connections: clients then wait 1 s to retry
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: Collector):
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: tuple[object, ...]) -> None:
        """An error no handler caught (a connection reset mid-request): one line, no traceback."""
        self.owner.refuse(str(client_address[0]), "", None, f"connection error: {sys.exc_info()[1]!r}")


class Collector(Store):
    """The server: ``start()`` in threads (tests, the demo) or ``serve_forever()`` (CLI).

    *timeout* (seconds) is the longest a request may take to arrive, from the connection to
    its last byte (``body.py``); *log* receives one line per refused request (default:
    stderr).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9339,
        db: str = ":memory:",
        sessions_port: int | None = None,
        *,
        timeout: float = 10.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(db)
        self.fail_status: int | None = None
        self.delay = 0.0
        self.timeout = timeout
        #: The latest refused requests, newest last (the page lists them too).
        self.rejections: deque[Rejection] = deque(maxlen=100)
        self._log = log or _to_stderr
        self.server = _Server((host, port), self._handler(sessions_port=False), self)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.sessions_server: _Server | None = None
        self.sessions_url: str | None = None
        if sessions_port is not None:
            try:
                self.sessions_server = _Server((host, sessions_port), self._handler(sessions_port=True), self)
            except OSError:
                self.server.server_close()
                raise
            self.sessions_url = f"http://{host}:{self.sessions_server.server_address[1]}"

    def refuse(self, client: str, request: str, status: int | None, reason: str) -> None:
        """Record a refused request and write its one log line."""
        self.rejections.append(Rejection(time.time(), client, request, status, reason))
        answer = "no answer" if status is None else str(status)
        what = f" {_printable(request, 120)}" if request else ""
        stamp = utc_text(datetime.now(timezone.utc).replace(microsecond=0))
        line = f"{stamp} bugsnag-celery collector: refused{what} from {client} ({answer}): "
        try:
            self._log(line + _printable(reason))
        except Exception:  # a broken log must not break the answer
            pass

    def _handler(self, sessions_port: bool) -> type[BaseHTTPRequestHandler]:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "bugsnag-celery-collector"
            timeout = collector.timeout  # for writing; reading has its own deadline

            def setup(self) -> None:
                super().setup()
                self.rfile.close()
                self.rfile = io.BufferedReader(DeadlineReader(self.connection, collector.timeout))

            def do_POST(self) -> None:
                try:
                    status, reason = self._post()
                except Exception as exc:
                    status, reason = 500, f"the collector failed: {exc!r}"
                self._answer(status, json.dumps({"status": reason}).encode(), _JSON, reason)

            def _post(self) -> tuple[int, str]:
                try:
                    raw = read_body(self.rfile, self.headers, MAX_BYTES)
                except Refused as refused:
                    self.close_connection = True
                    return 400, refused.reason
                self.connection.settimeout(collector.timeout)
                if collector.delay:
                    time.sleep(collector.delay)
                kind = _kind(self.path, sessions_port)
                if collector.fail_status is not None:
                    return collector.fail_status, "injected fault"
                if kind is None:
                    return 404, "no such endpoint"
                status, reason, body = validate(kind, self.headers, raw)
                if body is not None:
                    collector.store(kind, body)
                return status, reason

            def do_GET(self) -> None:
                try:
                    self.connection.settimeout(collector.timeout)
                    status, payload, content_type = answer_get(collector, self.path)
                    reason = "" if status < 400 else str(json.loads(payload).get("status"))
                except Exception as exc:  # a page must never take the server down
                    status, reason = 500, f"the collector failed: {exc!r}"
                    payload, content_type = json.dumps({"status": reason}).encode(), _JSON
                self._answer(status, payload, content_type, reason)

            def _answer(self, status: int, payload: bytes, content_type: str, reason: str) -> None:
                if status >= 400:
                    collector.refuse(self.client_address[0], self.requestline, status, reason)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client left before its answer: nothing more to do
                    self.close_connection = True

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:  # the client is gone: nothing left to flush to it
                    pass

            def log_message(self, *args: object) -> None:
                pass  # accepted requests are not logged; refusals are, by refuse()

            def log_error(self, format: str, *args: Any) -> None:
                # http.server's own refusals: a malformed request line or headers, an unknown
                # method, a request (or an idle connection) that timed out.
                request = getattr(self, "requestline", "")
                # send_error's code: an HTTPStatus, shown as "HTTPStatus.BAD_REQUEST" before 3.11
                status = int(args[0]) if format.startswith("code %d") and args else None
                collector.refuse(self.client_address[0], request, status, format % args)

        return Handler

    def get(self, target: str) -> tuple[int, bytes, str]:
        """(status, body, content type) of a GET: the page or the JSON API."""
        return answer_get(self, target)

    def start(self) -> Collector:
        """Serve in daemon threads (tests, the demo); a short poll makes :meth:`close` quick."""
        for server in (self.server, self.sessions_server):
            if server is not None:
                threading.Thread(
                    target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
                ).start()
        return self

    def serve_forever(self) -> None:
        if self.sessions_server is not None:
            threading.Thread(target=self.sessions_server.serve_forever, daemon=True).start()
        self.server.serve_forever()

    def close(self) -> None:
        for server in (self.server, self.sessions_server):
            if server is not None:
                server.shutdown()
                server.server_close()
        self.close_db()
