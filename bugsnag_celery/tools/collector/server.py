"""A local BugSnag-compatible collector: accepts event and session payloads as BugSnag does.

It checks every request against BugSnag's wire rules (``wire.py``), and what it accepts
goes to SQLite (``store.py``), so nothing is lost across restarts.

Routes, on the main port: ``POST /notify`` and ``POST /`` take events (as
notify.bugsnag.com does), ``POST /sessions`` takes sessions. On the optional second port
(``sessions_port``, like an on-premise install's 49003) ``POST /`` takes sessions, as
sessions.bugsnag.com does. ``GET /`` is the page (``page.py``);
``GET /api/releases``, ``GET /api/events`` (``?task=``, ``?errorClass=``) and
``GET /api/events/<id>`` (the event exactly as received) give the same as JSON.

Faults can be injected for testing: ``fail_status`` (answer every POST with that status)
and ``delay`` (seconds before answering).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .store import Store
from .wire import validate

__all__ = ["Collector"]


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


class Collector(Store):
    """The server: ``start()`` in threads (tests, the demo) or ``serve_forever()`` (CLI)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9339,
        db: str = ":memory:",
        sessions_port: int | None = None,
    ) -> None:
        super().__init__(db)
        self.fail_status: int | None = None
        self.delay = 0.0
        self.server = ThreadingHTTPServer((host, port), self._handler(sessions_port=False))
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.sessions_server: ThreadingHTTPServer | None = None
        self.sessions_url: str | None = None
        if sessions_port is not None:
            handler = self._handler(sessions_port=True)
            self.sessions_server = ThreadingHTTPServer((host, sessions_port), handler)
            self.sessions_server.daemon_threads = True
            self.sessions_url = f"http://{host}:{self.sessions_server.server_address[1]}"

    def _handler(self, sessions_port: bool) -> type[BaseHTTPRequestHandler]:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if collector.delay:
                    time.sleep(collector.delay)
                kind = _kind(self.path, sessions_port)
                if collector.fail_status is not None:
                    status, reason = collector.fail_status, "injected fault"
                elif kind is None:
                    status, reason = 404, "no such endpoint"
                else:
                    status, reason, body = validate(kind, self.headers, raw)
                    if body is not None:
                        collector.store(kind, body)
                self._answer(status, json.dumps({"status": reason}).encode(), "application/json")

            def do_GET(self) -> None:
                try:
                    answer = collector.get(self.path)
                except Exception as exc:  # a page must never take the server down
                    answer = (500, f"error: {exc}".encode(), "text/plain; charset=utf-8")
                self._answer(*answer)

            def _answer(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def get(self, target: str) -> tuple[int, bytes, str]:
        """(status, body, content type) of a GET: the page or the JSON API."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/")
        data: Any
        if path == "":
            from .page import render

            return 200, render(self).encode(), "text/html; charset=utf-8"
        if path == "/api/releases":
            data = self.releases()
        elif path == "/api/events":
            data = self.events(task=query.get("task"), error_class=query.get("errorClass"))
        elif path.startswith("/api/events/") and path[len("/api/events/") :].isdigit():
            data = self.payload(int(path[len("/api/events/") :]))
            if data is None:
                return 404, b'{"status": "no such event"}', "application/json"
        else:
            return 404, b'{"status": "not found"}', "application/json"
        return 200, json.dumps(data, indent=1).encode(), "application/json"

    def start(self) -> Collector:
        for server in (self.server, self.sessions_server):
            if server is not None:
                threading.Thread(target=server.serve_forever, daemon=True).start()
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
