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
``identity\\nendpoint\\nevent JSON``), a ring: a new record goes after the newest, or back at
the start once every record there is finished. In an error storm against a slow BugSnag
some event is always waiting, so an area reset only when all were finished grew by ~1.3 kB
an event to its 32 MB (every process of a pool: that much of /dev/shm each), and the events
queued while it was full were not kept. Where the ring stands (its newest end, its oldest record
that may wait, where the last lap ended) is one header cell, so one store moves it and a
kill leaves it whole.

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
from collections.abc import Callable, Sequence
from typing import Union

from .ledger_file import (
    CHUNK,
    DONE,
    EVENTS_AT,
    EVENTS_BYTES,
    EVENTS_LAP,
    H_EVENTS,
    H_KEPT,
    H_MAGIC,
    H_META,
    H_PID,
    H_START,
    KEPT_AT,
    KEPT_BYTES,
    MAGIC,
    META_AT,
    META_BYTES,
    PENDING,
    RECORD,
    SIZE,
    SLOT_CELLS,
    SLOTS,
    SLOTS_AT,
    Contents,
    ReleaseRow,
    aligned,
    owner,
    process_start,
    read,
    ring_cell,
    scopes,
)

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
    "scopes",
    "owner",
    "process_start",
]

logger = logging.getLogger("bugsnag_celery")

#: Where a counted session's count goes: the ledger's cells, or a stand-in without one.
Cells = Union[memoryview, list[int]]
NO_CELLS: list[int] = [0]  # written to, never read: the process has no ledger


class Ledger:
    """This process's ledger (see the module's docstring). Made by :func:`current`."""

    def __init__(self, path: str, scopes: Sequence[str]) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            if hasattr(os, "posix_fallocate"):  # a full /dev/shm fails here, not as SIGBUS later
                os.posix_fallocate(fd, 0, EVENTS_AT)
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
        # the ring: records in [tail, end), or, once it started over, [tail, wrap) then [0, end)
        self._end = self._tail = self._wrap = 0
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
            at = (SLOTS_AT // 8) + index * SLOT_CELLS
            cells = self.cells
            cells[at + 1], cells[at + 2], cells[at + 3] = minute, 0, 0
            cells[at] = self._releases.index(release) + 1  # last: the slot is live from here
            return at + 2

    def free(self, counted_cell: int) -> None:
        """The slot's minute is over and all of it taken: the slot may hold another."""
        with self._lock:
            self.cells[counted_cell - 2] = 0
            self._free.append((counted_cell - 2 - SLOTS_AT // 8) // SLOT_CELLS)

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
                start = KEPT_AT + area * KEPT_BYTES
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
        need = aligned(RECORD.size + size)
        with self._lock:
            at = self._place(need)
            if at is None or not self._allocate(at + need):
                return None
            start = EVENTS_AT + at
            middle = start + RECORD.size + len(head)
            self._map[start + RECORD.size : middle] = head
            self._map[middle : start + RECORD.size + size] = body
            RECORD.pack_into(self._map, start, size, PENDING)
            if at == 0 and self._end:  # started over: the last lap ended where the newest did
                self._wrap = self._end
            self._end = at + need
            self._storering()  # last: the record is whole
            self._pending_events += 1
            return start

    def event_done(self, offset: int) -> None:
        """The event at *offset* was delivered, spooled or dropped by the policy."""
        with self._lock:
            struct.pack_into("<I", self._map, offset + 4, DONE)
            self._pending_events -= 1
            if self._pending_events <= 0:  # all finished: the ring starts over
                self._pending_events = 0
                self._end = self._tail = self._wrap = 0
            elif offset - EVENTS_AT == self._tail:
                self._pass_finished()
            self._storering()

    def _place(self, need: int) -> int | None:
        """Where a record of *need* bytes goes: after the newest, or back at the start once the
        records there are finished; None where neither has room."""
        end, tail = self._end, self._tail
        if self._wrap:  # a lap started: room up to the oldest record that may wait
            return end if end + need <= tail else None
        if end + need > EVENTS_LAP and need <= tail:
            return 0
        if end + need <= EVENTS_BYTES:
            return end
        return 0 if need <= tail else None

    def _pass_finished(self) -> None:
        """Move the tail past the finished records at it (events mostly finish in order)."""
        tail, wrap, end = self._tail, self._wrap, self._end
        while True:
            if wrap and tail >= wrap:  # the last lap is all finished
                tail = wrap = 0
            if tail >= (wrap or end):
                break
            length, state = RECORD.unpack_from(self._map, EVENTS_AT + tail)
            if state != DONE:
                break
            tail += aligned(RECORD.size + length)
        self._tail, self._wrap = tail, wrap

    def _storering(self) -> None:
        self.cells[H_EVENTS] = ring_cell(self._end, self._tail, self._wrap)

    def _allocate(self, end: int) -> bool:
        if end <= self._allocated:
            return True
        target = min(EVENTS_BYTES, (end + CHUNK - 1) // CHUNK * CHUNK)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self._fd, EVENTS_AT + self._allocated, target - self._allocated)
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
        base = SLOTS_AT // 8
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
        self._map[META_AT : META_AT + len(blob)] = blob
        self.cells[H_META] = len(blob)


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
