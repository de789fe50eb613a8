"""A real local HTTP endpoint standing in for BugSnag, reachable from worker subprocesses."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class Endpoint:
    """Records every request; answers with scripted statuses and delays."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # consumed one per request; then `default`
        self.default = 200
        self.delay = 0.0
        self.retry_after: str | None = None  # sent with every 429
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                arrived = time.monotonic()
                with endpoint.lock:
                    status = endpoint.statuses.pop(0) if endpoint.statuses else endpoint.default
                    delay = endpoint.delay
                if delay:
                    time.sleep(delay)
                record = {
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "raw": raw,
                    "status": status,
                    "at": arrived,
                }
                try:
                    record["body"] = json.loads(raw)
                except ValueError:
                    record["body"] = None
                with endpoint.lock:
                    endpoint.requests.append(record)
                self.send_response(status)
                if status == 429 and endpoint.retry_after is not None:
                    self.send_header("Retry-After", endpoint.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self, delivered_only: bool = True) -> list[dict[str, Any]]:
        with self.lock:
            rows = [
                r
                for r in self.requests
                if r["path"] == "/notify" and (not delivered_only or r["status"] < 300)
            ]
        return [event for r in rows for event in r["body"]["events"]]

    def wait_for_events(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
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
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()
