"""Clients that lie, stall or attack: none of them holds the collector or its memory.

Raw sockets, because ``requests`` cannot lie: a ``Content-Length`` over the limit answered
before a byte of the body is sent; lengths that are not lengths; a length larger than what
arrives; a connection that says nothing; one that trickles a byte at a time. Every wait is
bounded by a deadline and every time is measured (the collector here has a 1 s time-out;
the CLI's default is 10 s). A 100 MB body is sent to the real CLI and its peak memory
read from ``/proc``.

Covers: bugsnag_celery/tools/collector/server.py, bugsnag_celery/tools/collector/body.py
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from bugsnag_celery.tools.collector import Collector

KEY = "a35a2a72bd230ac0aa0f52715bbdc6aa"
TIMEOUT = 1.0  # the collector's time-out in these tests
NOTIFIER = {"name": "n", "version": "1", "url": "u"}
EVENT = {"exceptions": [{"errorClass": "KeyError", "message": "'b'"}], "severity": "error", "context": "t"}
BODY = json.dumps({"apiKey": KEY, "payloadVersion": "4.0", "notifier": NOTIFIER, "events": [EVENT]}).encode()
HEADERS = (
    f"Content-Type: application/json\r\nBugsnag-Api-Key: {KEY}\r\nBugsnag-Payload-Version: 4.0\r\n"
    "Bugsnag-Sent-At: 2026-01-01T00:00:00Z\r\n"
).encode()


class Logged:
    def __init__(self, collector: Collector, lines: list[str]) -> None:
        self.collector, self.lines = collector, lines
        url = urlsplit(collector.url)
        self.address = (str(url.hostname), int(url.port or 80))


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Logged]:
    lines: list[str] = []
    db = str(tmp_path / "limits.sqlite")
    collector = Collector(port=0, db=db, timeout=TIMEOUT, log=lines.append).start()
    try:
        yield Logged(collector, lines)
    finally:
        collector.close()


def connect(logged: Logged, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(logged.address, timeout=10)
    if data:
        sock.sendall(data)
    return sock


def until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """What the collector sends until it closes the connection, and how long that took;
    fails at *within* seconds."""
    start = time.monotonic()
    got = b""
    while True:
        left = start + within - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the connection is still open after {within} s; got {got[:300]!r}")
        sock.settimeout(left)
        try:
            part = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            part = b""
        if not part:
            sock.close()
            return got, time.monotonic() - start
        got += part


def post_head(length: str | bytes, path: str = "/notify", extra: bytes = b"") -> bytes:
    value = length if isinstance(length, bytes) else length.encode()
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + HEADERS
    return request + b"Content-Length: " + value + b"\r\n" + extra


def test_a_body_over_1_mb_is_refused_before_a_byte_of_it_is_sent(logged: Logged) -> None:
    sock = connect(logged, post_head("100000000") + b"\r\n")  # the headers only
    answer, took = until_closed(sock, within=5)
    assert answer.startswith(b"HTTP/1.0 400 "), answer
    assert b"payload of 100000000 bytes is over the 1 MB limit (not read)" in answer
    assert took < 0.5, f"answered after {took:.3f} s"
    (line,) = logged.lines
    assert "(400): payload of 100000000 bytes is over the 1 MB limit" in line


BAD_LENGTHS = [
    (b"-95", "Content-Length '-95' is not a number of bytes"),
    (b"+5", "Content-Length '+5' is not a number of bytes"),
    (b"5_0", "Content-Length '5_0' is not a number of bytes"),
    ("\u0665".encode(), "is not a number of bytes"),  # an Arabic-Indic five: int() would take it
    (b"1" * 30, "is not a number of bytes"),
    (b"", "Content-Length '' is not a number of bytes"),
    (b"5\r\nContent-Length: 6", "two different Content-Length headers"),
    (b"5\r\nTransfer-Encoding: chunked", "Content-Length and Transfer-Encoding together"),
]


@pytest.mark.parametrize(("length", "reason"), BAD_LENGTHS, ids=[repr(b[0])[:20] for b in BAD_LENGTHS])
def test_a_length_that_is_not_a_length_is_refused_at_once(logged: Logged, length: bytes, reason: str) -> None:
    sock = connect(logged, post_head(length) + b"\r\n" + BODY[:5])
    answer, took = until_closed(sock, within=5)
    assert answer.startswith(b"HTTP/1.0 400 ") and reason.encode() in answer, answer
    assert took < 0.5 and len(logged.lines) == 1 and reason in logged.lines[0]


def test_a_length_larger_than_the_body_is_cut_off_at_the_time_out(logged: Logged) -> None:
    sock = connect(logged, post_head("500") + b"\r\n" + b"x" * 100)  # 100 bytes sent, 500 announced
    answer, took = until_closed(sock, within=TIMEOUT + 3)
    assert answer.startswith(b"HTTP/1.0 400 "), answer
    assert b"the request did not arrive within 1 s: got 100 of the 500 bytes announced" in answer
    assert TIMEOUT - 0.2 <= took < TIMEOUT + 1, f"closed after {took:.2f} s"
    assert len(logged.lines) == 1


def test_an_idle_connection_is_closed(logged: Logged) -> None:
    answer, took = until_closed(connect(logged), within=TIMEOUT + 3)
    assert answer == b"" and TIMEOUT - 0.2 <= took < TIMEOUT + 1, f"closed after {took:.2f} s"
    (line,) = logged.lines
    assert "(no answer): Request timed out" in line and f"within {TIMEOUT:g} s" in line


def test_a_trickling_client_is_cut_off_at_the_deadline(logged: Logged) -> None:
    """One header byte every 50 ms never lets a per-read time-out expire; the deadline does."""
    sock = connect(logged, b"POST /notify HTTP/1.1\r\nX-Slow: ")
    start = time.monotonic()
    closed = False
    while time.monotonic() - start < TIMEOUT + 3 and not closed:
        try:
            sock.sendall(b"a")
            sock.settimeout(0.05)
            closed = sock.recv(1024) == b""
        except socket.timeout:
            pass
        except OSError:  # reset or broken pipe: closed
            closed = True
    took = time.monotonic() - start
    sock.close()
    assert closed and took < TIMEOUT + 1, f"still open after {took:.2f} s of trickling"


def test_a_chunked_body_is_read_within_the_limit(logged: Logged) -> None:
    head = b"POST /notify HTTP/1.1\r\nHost: x\r\n" + HEADERS + b"Transfer-Encoding: chunked\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:40], BODY[40:])) + b"0\r\n\r\n"
    answer, _ = until_closed(connect(logged, head + chunks), within=5)
    assert answer.startswith(b"HTTP/1.0 200 "), answer
    assert [e["errorClass"] for e in logged.collector.events()] == ["KeyError"]
    big = head + b"%x\r\n" % 2_000_000
    answer, took = until_closed(connect(logged, big), within=5)
    assert answer.startswith(b"HTTP/1.0 400 ") and b"over the 1 MB limit" in answer and took < 0.5


def test_held_connections_neither_block_others_nor_keep_their_threads(logged: Logged) -> None:
    baseline = threading.active_count()
    start = time.monotonic()
    held = [connect(logged) for _ in range(10)]  # idle
    held += [connect(logged, post_head("500") + b"\r\n") for _ in range(10)]  # announce a body, send none
    page = requests.get(f"{logged.collector.url}/", timeout=5)
    assert page.status_code == 200 and time.monotonic() - start < 0.5  # 20 connections and a page
    deadline = time.monotonic() + TIMEOUT + 3
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= baseline, "a held connection kept its thread past the time-out"
    for sock in held:
        sock.close()
    assert len(logged.lines) == 20


@pytest.mark.parametrize(
    "ident", [b"\xb2", b"%C2%B2", b"1" * 23, b"-1", b"1e3", b"0x1", b"%201", b"%EF%BC%91", b"1%00"]
)
def test_an_id_that_is_not_an_id_is_a_404(logged: Logged, ident: bytes) -> None:
    sock = connect(logged, b"GET /api/events/" + ident + b" HTTP/1.0\r\n\r\n")
    answer, _ = until_closed(sock, within=5)
    assert answer.startswith(b"HTTP/1.0 404 "), answer
    assert b"no such event" in answer and len(logged.lines) == 1


def test_garbage_is_refused_with_one_line_and_the_collector_carries_on(logged: Logged) -> None:
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"  # TLS spoken to plain HTTP
    answer, _ = until_closed(connect(logged, hello), within=5)
    # http.server's page: "400 - Bad request syntax" ("HTTPStatus.BAD_REQUEST - ..." before 3.11)
    # (an unparsable request line gets an HTTP/0.9-style answer: the error page, no status line)
    assert b"400" in answer and b" - Bad request syntax" in answer, answer
    (line,) = logged.lines
    assert "(400): code 400, message Bad request" in line and "\\x16" in line  # escaped, one line
    sock = connect(logged, post_head(str(len(BODY))) + b"\r\n" + BODY)
    assert until_closed(sock, within=5)[0].startswith(b"HTTP/1.0 200 ")


def _peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from /proc")
def test_a_100_mb_body_is_refused_at_once_and_costs_no_memory(tmp_path: Path) -> None:
    """The real CLI: its peak memory (VmHWM) before and after a 100 MB body, and its stderr."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = str(Path(sys.executable).parent / "bugsnag-celery")
    proc = subprocess.Popen([exe, "collector", "--port", str(port), "--db", str(tmp_path / "c.sqlite")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and "collector on" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/notify"
        headers = {"Content-Type": "application/json", "Bugsnag-Api-Key": KEY,
                   "Bugsnag-Payload-Version": "4.0", "Bugsnag-Sent-At": "2026-01-01T00:00:00Z"}  # fmt: skip
        assert requests.post(url, data=BODY, headers=headers, timeout=10).status_code == 200  # warmed up
        before = _peak_kb(proc.pid)
        start = time.monotonic()
        response = requests.post(url, data=b"x" * 100_000_000, headers=headers, timeout=10)
        took = time.monotonic() - start
        grew = _peak_kb(proc.pid) - before
        print(f"100 MB body: {response.status_code} after {took:.3f} s; collector peak memory +{grew} kB")
        assert response.status_code == 400 and "over the 1 MB limit" in response.json()["status"]
        assert took < 1.0 and grew < 8_000, (took, grew)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    refusals = [line for line in err.splitlines() if "refused" in line]
    assert len(refusals) == 1 and "(400): payload of 100000000 bytes is over the 1 MB limit" in refusals[0]
