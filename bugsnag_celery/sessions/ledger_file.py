"""The ledger's file (``sessions/ledger.py``): where each part lies, and what one holds.

The writer is the process the ledger belongs to; the reader is whoever recovers a dead
one (``delivery/recovery.py``), with nothing but the file: so the layout, the ring's header
cell and the reading live here, apart from the writing, and the reader trusts only what a
single store made whole.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import NamedTuple, Union

__all__ = [
    "Contents",
    "ReleaseRow",
    "read",
    "scopes",
    "owner",
    "process_start",
    "aligned",
    "ring_cell",
]

MAGIC = 0x32474445_4C435342  # b"BSCLEDG2" (1: the events area was not a ring)
HEADER_CELLS = 16
META_BYTES = 16_384
SLOTS = 512
SLOT_CELLS = 4
KEPT_BYTES = 262_144
EVENTS_BYTES = 16 * 1024 * 1024  # virtual: pages are allocated as records reach them
#: The ring starts over at the beginning once its newest record ends past this and the
#: records there are finished: a storm's waiting events (~350 of them, ~0.4 MB, measured
#: against an endpoint answering in 200 ms) keep about this much of /dev/shm in use.
EVENTS_LAP = 1024 * 1024
CHUNK = 1024 * 1024
ALIGN = 16  # records start at multiples of this: a position is 21 bits (16 MB / 16 < 2**21)
FIELD = (1 << 21) - 1
RECORD = struct.Struct("<II")  # length of what follows, state
PENDING, DONE = 1, 2

# header cells; H_KEPT is ``length << 1 | area``, H_EVENTS the ring's ``end | tail << 21 | wrap
# << 42`` (in units of ALIGN bytes): one store switches each
H_MAGIC, H_PID, H_START, H_META, H_EVENTS, H_KEPT = 0, 1, 2, 3, 4, 5

META_AT = HEADER_CELLS * 8
SLOTS_AT = META_AT + META_BYTES
KEPT_AT = SLOTS_AT + SLOTS * SLOT_CELLS * 8
EVENTS_AT = KEPT_AT + 2 * KEPT_BYTES
SIZE = EVENTS_AT + EVENTS_BYTES


ReleaseRow = tuple[Union[str, None], ...]


def owner(path: str) -> tuple[int, int] | None:
    """The pid and start time written in the ledger at *path* (None: not a whole ledger)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER_CELLS * 8)
    except OSError:
        return None
    if len(head) < HEADER_CELLS * 8:
        return None
    cells = memoryview(head).cast("q")
    return (int(cells[H_PID]), int(cells[H_START])) if cells[H_MAGIC] == MAGIC else None


def process_start(pid: int) -> int:
    """When process *pid* started (clock ticks since boot; 0 where ``/proc`` has no answer):
    a pid the kernel reuses is another process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


class Contents(NamedTuple):
    """What a ledger held: its scopes, counts not taken, events not finished."""

    pid: int
    scopes: list[str]
    counts: dict[ReleaseRow, dict[int, int]]  # release row -> {epoch minute: sessions}
    events: list[tuple[str, str, bytes]]  # (identity, endpoint, event JSON)


def scopes(path: str) -> list[str] | None:
    """The scopes of the ledger at *path* (None: not a whole ledger): its header and metadata
    only, a few kilobytes, where :func:`read` reads the kept counts and every event too."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER_CELLS * 8)
            if len(head) < HEADER_CELLS * 8:
                return None
            cells = memoryview(head).cast("q")
            if cells[H_MAGIC] != MAGIC or not 0 <= cells[H_META] <= META_BYTES:
                return None
            fh.seek(META_AT)
            meta = json.loads(fh.read(cells[H_META]))
    except (OSError, ValueError):
        return None
    return [str(scope) for scope in meta.get("scopes", [])] if isinstance(meta, dict) else None


def read(path: str) -> Contents | None:
    """What the ledger at *path* holds (None: not a whole ledger)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(EVENTS_AT)
            if len(data) < EVENTS_AT:
                return None
            cells = memoryview(data).cast("q")
            if cells[H_MAGIC] != MAGIC:
                return None
            end, _tail, wrap = ring(cells[H_EVENTS])
            data += fh.read(max(end, wrap))
    except OSError:
        return None
    cells = memoryview(data)[:EVENTS_AT].cast("q")
    meta = json.loads(data[META_AT : META_AT + cells[H_META]])
    releases = [tuple(r) for r in meta.get("releases", [])]
    counts: dict[ReleaseRow, dict[int, int]] = {}

    def add(release: ReleaseRow, minute: int, n: int) -> None:
        if n > 0:
            bucket = counts.setdefault(release, {})
            bucket[minute] = bucket.get(minute, 0) + n

    base = SLOTS_AT // 8
    for i in range(SLOTS):
        at = base + i * SLOT_CELLS
        which = cells[at]
        if 0 < which <= len(releases):
            add(releases[which - 1], cells[at + 1], cells[at + 2] - cells[at + 3])
    kept_len, area = cells[H_KEPT] >> 1, cells[H_KEPT] & 1
    if kept_len:
        start = KEPT_AT + area * KEPT_BYTES
        for row, buckets in json.loads(data[start : start + kept_len]):
            for minute, n in buckets:
                add(tuple(row), int(minute), int(n))
    events = list(records(data, ring(cells[H_EVENTS])))
    return Contents(int(cells[H_PID]), list(meta.get("scopes", [])), counts, events)


def aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def ring(cell: int) -> tuple[int, int, int]:
    """The ring's (end, tail, wrap) in bytes, from its header cell (never past the area)."""
    end, tail, wrap = (min((cell >> shift & FIELD) * ALIGN, EVENTS_BYTES) for shift in (0, 21, 42))
    return end, tail, wrap


def records(data: bytes, ring: tuple[int, int, int]) -> Iterator[tuple[str, str, bytes]]:
    end, tail, wrap = ring
    for at, stop in [(tail, wrap), (0, end)] if wrap else [(tail, end)]:
        while at + RECORD.size <= stop:
            length, state = RECORD.unpack_from(data, EVENTS_AT + at)
            body = data[EVENTS_AT + at + RECORD.size : EVENTS_AT + at + RECORD.size + length]
            at += aligned(RECORD.size + length)
            if state == PENDING:
                identity, endpoint, event = body.split(b"\n", 2)
                yield identity.decode(), endpoint.decode(), event


def ring_cell(end: int, tail: int, wrap: int) -> int:
    """The ring's header cell: *end*, *tail* and *wrap* (bytes, multiples of ``ALIGN``) in one."""
    return end // ALIGN | (tail // ALIGN) << 21 | (wrap // ALIGN) << 42
