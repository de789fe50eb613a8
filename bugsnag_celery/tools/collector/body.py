"""Reading a request within the collector's limits: nothing a client sends can hold it.

Why each limit:

- The size is decided from ``Content-Length`` before a byte of the body is read: a body over
  the limit is refused at once (400, as BugSnag answers), instead of being read whole into
  memory first (a 100 MB body used to cost 88 MB).
- A whole request -- request line, headers and body -- must arrive within one deadline
  (``timeout``, 10 s by default; BugSnag's own is 10 s): a client that announces more bytes
  than it sends, trickles them, or connects and says nothing is cut off then. A per-read
  socket time-out alone would not do: one byte every 9 s resets it for ever.
- ``Content-Length`` is only ASCII digits (``int()`` would take ``+5``, `` 5``, ``5_0`` or
  an Arabic-Indic five); two different lengths, or a length with ``Transfer-Encoding``, are refused (a
  request read two ways is how requests are smuggled). ``chunked`` bodies are read, within
  the same size limit. A request with neither header has no body (RFC 9112, 6.3).
"""

from __future__ import annotations

import io
import socket
import time
from email.message import Message
from typing import TYPE_CHECKING

from .wire import shown

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["DeadlineReader", "Refused", "read_body"]

_CHUNK = 65536


class Refused(Exception):
    """A request refused while reading it: *reason* for the answer and the log line.

    The connection is closed after the answer, so whatever the client still sends is never
    read. (A client that sends on regardless, as ``requests`` does, still reads the 400:
    urllib3 ignores the broken pipe and reads the answer that arrived before it.)
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeadlineReader(io.RawIOBase):
    """A socket's bytes, where every wait ends at one deadline fixed when the connection opened."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        super().__init__()
        self._sock = sock
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        left = self.deadline - time.monotonic()
        late = socket.timeout(f"the request did not arrive within {self.seconds:g} s")
        if left <= 0:
            raise late
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        except socket.timeout:
            raise late from None


def _length(headers: Message, limit: int) -> int | None:
    """The body's length in bytes; None for a chunked body. Raises :class:`Refused`."""
    encoding = headers.get_all("Transfer-Encoding") or []
    lengths = [v.strip() for v in headers.get_all("Content-Length") or []]
    if encoding:
        if lengths:
            raise Refused("Content-Length and Transfer-Encoding together")
        if [e.strip().lower() for e in encoding] != ["chunked"]:
            raise Refused(f"Transfer-Encoding {shown(', '.join(encoding))} is not supported")
        return None
    if not lengths:
        return 0
    if len(set(lengths)) > 1:
        raise Refused(f"two different Content-Length headers {shown(lengths)}")
    text = lengths[0]
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise Refused(f"Content-Length {shown(text)} is not a number of bytes")
    length = int(text)
    if length > limit:
        raise Refused(f"payload of {length} bytes is over the 1 MB limit (not read)")
    return length


def _late(rfile: io.BufferedIOBase) -> str:
    seconds = getattr(getattr(rfile, "raw", None), "seconds", None)
    return f"the request did not arrive within {seconds:g} s" if seconds else "the request timed out"


def _exactly(rfile: io.BufferedIOBase, n: int, what: str) -> bytes:
    got = bytearray()
    try:
        while len(got) < n:
            part = rfile.read1(min(_CHUNK, n - len(got)))
            if not part:
                raise Refused(f"the client closed the connection after {len(got)} of the {what}")
            got += part
    except socket.timeout:
        raise Refused(f"{_late(rfile)}: got {len(got)} of the {what}") from None
    return bytes(got)


def _line(rfile: io.BufferedIOBase, limit: int = 1024) -> bytes:
    try:
        line = rfile.readline(limit)
    except socket.timeout:
        raise Refused(f"{_late(rfile)} (in a chunked body)") from None
    if not line.endswith(b"\n"):
        raise Refused("a chunked body ends early or has a line that is too long")
    return line


def _chunked(rfile: io.BufferedIOBase, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size = _line(rfile).split(b";", 1)[0].strip()
        if not size or len(size) > 8 or size.strip(b"0123456789abcdefABCDEF"):
            raise Refused(f"chunk size {shown(size)} is not hexadecimal")
        n = int(size, 16)
        if n == 0:
            break
        total += n
        if total > limit:
            raise Refused(f"chunked payload of more than {limit} bytes is over the 1 MB limit")
        parts.append(_exactly(rfile, n, f"{n} bytes of a chunk"))
        if _exactly(rfile, 2, "chunk's CRLF") != b"\r\n":
            raise Refused("a chunk is longer than its size says")
    for _ in range(100):  # trailer fields, up to the empty line: read and ignored
        if _line(rfile, 8192).strip() == b"":
            return b"".join(parts)
    raise Refused("a chunked body has too many trailer lines")


def read_body(rfile: io.BufferedIOBase, headers: Message, limit: int) -> bytes:
    """The request's body, read within *limit* bytes and the connection's deadline.

    Raises :class:`Refused` with the reason: before reading anything when the headers
    already say no, otherwise when the body does not arrive (in time, or at all).
    """
    length = _length(headers, limit)
    if length is None:
        return _chunked(rfile, limit)
    return _exactly(rfile, length, f"{length} bytes announced by Content-Length")
