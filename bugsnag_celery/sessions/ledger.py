"""What this process counted and queued, in memory that outlives it: the process's *ledger*.

A pool child that the kernel kills (the OOM killer, ``SIGKILL``) runs no handler: the
counts it had not yet moved to the broker (up to a flush interval's) and the events its
sender thread still held (all of them, while BugSnag answers slowly) died with it. So
each process that counts a session keeps a ledger: a file in a memory-backed folder
(``/dev/shm`` where there is one), mapped with ``mmap(MAP_SHARED)``. Writing to it is a
plain memory store -- a counted session is one 8-byte store (~40 ns) of the count its
minute's counter returned -- and the kernel keeps the pages when the process dies. The
worker's main process looks for the ledgers of processes that are gone
(``delivery/recovery.py``) and delivers what nobody took. A main process killed leaves
its ledger too: the next worker started on the host with the same app delivers it.

Layout (little-endian): a header of 16 cells (8 bytes); a JSON area (the process's
*scopes*, i.e. which apps' workers may recover it, and its release groups); ``SLOTS``
minute slots of 4 cells (release group + 1, epoch minute, counted, taken); two areas for
the counts given back to this process (JSON, written in turn: a kill mid-write leaves the
other whole); then the events area, one record per queued event (length, state, then
``identity\\nendpoint\\nevent JSON``), reset once every record in it is finished.

What "taken" means is written only once the counts are out of this process's hands (on
the broker, or in the given-back area): a kill between the two leaves a batch counted
twice at worst, never lost. Nothing here raises into the task: a process that cannot
make its ledger (no writable folder, a full ``/dev/shm``) counts as before, and says so once.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Union

__all__ = [
    "Ledger",
    "Cells",
    "Contents",
    "NO_CELLS",
    "configure",
    "current",
    "close",
    "directory",
    "default_directory",
    "read",
    "owner",
    "process_start",
]

logger = logging.getLogger("bugsnag_celery")

MAGIC = 0x31474445_4C435342  # b"BSCLEDG1"
HEADER_CELLS = 16
META_BYTES = 16_384
SLOTS = 512
SLOT_CELLS = 4
KEPT_BYTES = 262_144
EVENTS_BYTES = 32 * 1024 * 1024  # virtual: pages are allocated as records reach them
CHUNK = 1024 * 1024
_RECORD = struct.Struct("<II")  # length of what follows, state
PENDING, DONE = 1, 2

# header cells; H_KEPT is ``length << 1 | area``: one store switches both
H_MAGIC, H_PID, H_START, H_META, H_EVENTS_END, H_KEPT = 0, 1, 2, 3, 4, 5

_META_AT = HEADER_CELLS * 8
_SLOTS_AT = _META_AT + META_BYTES
_KEPT_AT = _SLOTS_AT + SLOTS * SLOT_CELLS * 8
_EVENTS_AT = _KEPT_AT + 2 * KEPT_BYTES
SIZE = _EVENTS_AT + EVENTS_BYTES

#: Where a counted session's count goes: the ledger's cells, or a stand-in without one.
Cells = Union[memoryview, list[int]]
NO_CELLS: list[int] = [0]  # written to, never read: the process has no ledger

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


class Ledger:
    """This process's ledger (see the module's docstring). Made by :func:`current`."""

    def __init__(self, path: str, scopes: Sequence[str]) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            if hasattr(os, "posix_fallocate"):  # a full /dev/shm fails here, not as SIGBUS later
                os.posix_fallocate(fd, 0, _EVENTS_AT)
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        self._fd = fd
        self.path = path
        self.cells = memoryview(self._map).cast("q")
        self._lock = threading.Lock()
        self._scopes = list(scopes)
        self._releases: list[ReleaseRow] = []
        self._free = list(range(SLOTS - 1, -1, -1))
        self._events_end = 0
        self._allocated = 0  # bytes of the events area allocated so far
        self._pending_events = 0
        self._kept_active = 0
        self._write_meta()
        cells = self.cells
        cells[H_PID], cells[H_START] = os.getpid(), process_start(os.getpid())
        cells[H_MAGIC] = MAGIC  # last: a reader trusts nothing before it

    # ------------------------------------------------------------------ counts

    def slot(self, release: ReleaseRow, minute: int) -> int | None:
        """A slot for *release*'s *minute*; the index of its "counted" cell (None: all in use)."""
        with self._lock:
            if not self._free:
                return None
            if release not in self._releases:
                self._releases.append(release)
                self._write_meta()
            index = self._free.pop()
            at = (_SLOTS_AT // 8) + index * SLOT_CELLS
            cells = self.cells
            cells[at + 1], cells[at + 2], cells[at + 3] = minute, 0, 0
            cells[at] = self._releases.index(release) + 1  # last: the slot is live from here
            return at + 2

    def free(self, counted_cell: int) -> None:
        """The slot's minute is over and all of it taken: the slot may hold another."""
        with self._lock:
            self.cells[counted_cell - 2] = 0
            self._free.append((counted_cell - 2 - _SLOTS_AT // 8) // SLOT_CELLS)

    def settle(self, taken: dict[int, int], kept: dict[ReleaseRow, dict[int, int]] | None) -> None:
        """Record what left this process's hands: *taken* (counted cell -> count taken) and,
        if it changed, what was given back to it (*kept*). The kept area first."""
        if kept is not None:
            rows = [(list(r), sorted(b.items())) for r, b in kept.items() if b]
            blob = json.dumps(rows, separators=(",", ":")).encode()
            if len(blob) > KEPT_BYTES:  # a week of buckets of many groups: merged, never dropped
                blob = json.dumps([(row, [(m[-1][0], sum(n for _, n in m))]) for row, m in rows]).encode()
            with self._lock:
                area = 1 - self._kept_active
                start = _KEPT_AT + area * KEPT_BYTES
                self._map[start : start + len(blob)] = blob
                self._kept_active = area
                self.cells[H_KEPT] = len(blob) << 1 | area
        cells = self.cells
        for cell, value in taken.items():
            cells[cell + 1] = value

    # ------------------------------------------------------------------ events

    def add_event(self, identity: str, endpoint: str, body: bytes) -> int | None:
        """Keep a queued event; its record's offset (None: no room, it is kept in memory only)."""
        head = f"{identity}\n{endpoint}\n".encode()
        size = len(head) + len(body)
        need = _RECORD.size + size
        with self._lock:
            at = self._events_end
            if at + need > EVENTS_BYTES or not self._allocate(at + need):
                return None
            start = _EVENTS_AT + at
            middle = start + _RECORD.size + len(head)
            self._map[start + _RECORD.size : middle] = head
            self._map[middle : start + need] = body
            _RECORD.pack_into(self._map, start, size, PENDING)
            self._events_end = at + need
            self.cells[H_EVENTS_END] = self._events_end  # last: the record is whole
            self._pending_events += 1
            return start

    def event_done(self, offset: int) -> None:
        """The event at *offset* was delivered, spooled or dropped by the policy."""
        with self._lock:
            struct.pack_into("<I", self._map, offset + 4, DONE)
            self._pending_events -= 1
            if self._pending_events <= 0:  # all finished: the area starts over
                self._pending_events = 0
                self._events_end = 0
                self.cells[H_EVENTS_END] = 0

    def _allocate(self, end: int) -> bool:
        if end <= self._allocated:
            return True
        target = min(EVENTS_BYTES, (end + CHUNK - 1) // CHUNK * CHUNK)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self._fd, _EVENTS_AT + self._allocated, target - self._allocated)
        except OSError:
            where = os.path.dirname(self.path)
            logger.warning("bugsnag_celery: no room for the ledger's events (%s full?)", where)
            return False
        self._allocated = target
        return True

    # ------------------------------------------------------------------ the rest

    def holds_anything(self) -> bool:
        """Counts not taken, counts given back, or events not finished."""
        cells = self.cells
        if self._pending_events or cells[H_KEPT] >> 1 > 2:
            return True
        base = _SLOTS_AT // 8
        slots = (base + i * SLOT_CELLS for i in range(SLOTS))
        return any(cells[at] and cells[at + 2] > cells[at + 3] for at in slots)

    def close(self, keep: bool = True) -> None:
        """At a clean exit: gone if it holds nothing (or not *keep*); otherwise left for a recovery."""
        try:
            if not (keep and self.holds_anything()):
                os.unlink(self.path)
        except OSError:
            pass

    def _write_meta(self) -> None:
        blob = json.dumps({"scopes": self._scopes, "releases": self._releases}, default=str).encode()
        if len(blob) > META_BYTES:
            raise ValueError("bugsnag_celery: too many release groups for the ledger")
        self._map[_META_AT : _META_AT + len(blob)] = blob
        self.cells[H_META] = len(blob)


class Contents(NamedTuple):
    """What a ledger held: its scopes, counts not taken, events not finished."""

    pid: int
    scopes: list[str]
    counts: dict[ReleaseRow, dict[int, int]]  # release row -> {epoch minute: sessions}
    events: list[tuple[str, str, bytes]]  # (identity, endpoint, event JSON)


def read(path: str) -> Contents | None:
    """What the ledger at *path* holds (None: not a whole ledger)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(_EVENTS_AT)
            if len(data) < _EVENTS_AT:
                return None
            cells = memoryview(data).cast("q")
            if cells[H_MAGIC] != MAGIC:
                return None
            data += fh.read(max(0, min(cells[H_EVENTS_END], EVENTS_BYTES)))
    except OSError:
        return None
    cells = memoryview(data)[:_EVENTS_AT].cast("q")
    meta = json.loads(data[_META_AT : _META_AT + cells[H_META]])
    releases = [tuple(r) for r in meta.get("releases", [])]
    counts: dict[ReleaseRow, dict[int, int]] = {}

    def add(release: ReleaseRow, minute: int, n: int) -> None:
        if n > 0:
            bucket = counts.setdefault(release, {})
            bucket[minute] = bucket.get(minute, 0) + n

    base = _SLOTS_AT // 8
    for i in range(SLOTS):
        at = base + i * SLOT_CELLS
        which = cells[at]
        if 0 < which <= len(releases):
            add(releases[which - 1], cells[at + 1], cells[at + 2] - cells[at + 3])
    kept_len, area = cells[H_KEPT] >> 1, cells[H_KEPT] & 1
    if kept_len:
        start = _KEPT_AT + area * KEPT_BYTES
        for row, buckets in json.loads(data[start : start + kept_len]):
            for minute, n in buckets:
                add(tuple(row), int(minute), int(n))
    events = list(_events(data, cells[H_EVENTS_END]))
    return Contents(int(cells[H_PID]), list(meta.get("scopes", [])), counts, events)


def _events(data: bytes, end: int) -> Iterator[tuple[str, str, bytes]]:
    at = 0
    while at + _RECORD.size <= end:
        length, state = _RECORD.unpack_from(data, _EVENTS_AT + at)
        body = data[_EVENTS_AT + at + _RECORD.size : _EVENTS_AT + at + _RECORD.size + length]
        at += _RECORD.size + length
        if state == PENDING:
            identity, endpoint, event = body.split(b"\n", 2)
            yield identity.decode(), endpoint.decode(), event


# ---------------------------------------------------------------------- this process's

_directory: str | None = None
_scopes: Callable[[], Sequence[str]] = list
_ledger: Ledger | None = None
_pid = 0
_lock = threading.Lock()


def default_directory() -> str:
    """``/dev/shm/bugsnag-celery-<uid>`` where there is a ``/dev/shm``; the temp folder otherwise."""
    shm = os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
    base = "/dev/shm" if shm else tempfile.gettempdir()
    return os.path.join(base, f"bugsnag-celery-{os.getuid() if hasattr(os, 'getuid') else 0}")


def configure(folder: str | None, scopes: Callable[[], Sequence[str]]) -> None:
    """Where this process (and its forks) keep ledgers (``""``: none), and which apps' workers
    may recover them (*scopes*, asked when a ledger is made: one per configured app, read
    when the app's configuration is final)."""
    global _directory, _scopes
    _directory = default_directory() if folder is None else folder or None
    _scopes = scopes


def directory() -> str | None:
    return _directory


def current() -> Ledger | None:
    """This process's ledger, made on its first use (None: off, or it could not be made)."""
    global _ledger, _pid
    if _pid == os.getpid():
        return _ledger
    with _lock:
        if _pid == os.getpid():
            return _ledger
        _ledger = None
        if _directory is not None:
            try:
                os.makedirs(_directory, mode=0o700, exist_ok=True)
                if hasattr(os, "getuid") and os.stat(_directory).st_uid != os.getuid():
                    raise PermissionError(f"{_directory} belongs to another user")
                _ledger = Ledger(os.path.join(_directory, f"{os.getpid()}.ledger"), sorted(set(_scopes())))
            except Exception as exc:
                logger.warning(
                    "bugsnag_celery: no ledger in %s (%s): a killed process loses what it had not moved",
                    _directory, exc,
                )  # fmt: skip
        _pid = os.getpid()
        return _ledger


def close(keep: bool = True) -> None:
    """At this process's clean exit, after its last flush (see :meth:`Ledger.close`);
    *keep* False: removed whatever it holds."""
    ledger = _ledger if _pid == os.getpid() else None
    if ledger is not None:
        ledger.close(keep)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by another thread


os.register_at_fork(after_in_child=_after_fork_in_child)
