"""What dead processes left in their ledgers, delivered by a living one.

A process that ends cleanly hands everything on (its last flush) and removes its ledger
(``sessions/ledger.py``). A ledger whose process is gone -- a pool child the kernel
killed, a worker's main process killed, a flush that could not reach the broker at exit --
still holds the counts nobody took and the events nobody finished. The worker's main
process looks for such ledgers once per flush interval, and at its start (a main process
killed is recovered by the next worker started on the host): it claims one by renaming
it (two workers never both deliver it), puts its counts with its own (the flusher moves
them to the broker) and hands its events to the sender of the app they belong to.

Only ledgers of the same *scopes* (an app's broker and queue prefix) are taken: two
unrelated apps on one host never deliver each other's counts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..clock import minute_iso
from ..sessions import counts, ledger
from ..sessions.counts import PendingCounts, Release

__all__ = ["scope_of", "Recovered", "recover", "dead_ledgers"]

logger = logging.getLogger("bugsnag_celery")

#: (identity, endpoint, event JSON) -> True if an app took it for sending.
SubmitEvent = Callable[[str, str, bytes], bool]

#: A ledger left half-made (its process died while making it) is removed after this long.
STALE_SECONDS = 60.0


def scope_of(broker_url: object, queue_prefix: str) -> str:
    """Which processes may recover each other's ledgers: those of one broker and prefix.
    A fingerprint: the URL may hold a password."""
    return hashlib.sha256(f"{broker_url}\n{queue_prefix}".encode()).hexdigest()[:16]


class Recovered(NamedTuple):
    processes: int
    sessions: int
    events: int
    lost_events: int  # no configured app of this process could send them


def _alive(pid: int, start: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    now = ledger.process_start(pid)
    return not (start and now and now != start)  # a new process with a reused pid: the old one is gone


def dead_ledgers(folder: str) -> list[str]:
    """The ledgers in *folder* whose process is gone (and claims whose claimer is gone)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(folder, name)
        if name.endswith(".claimed"):  # "<pid>.ledger.<claimer>.claimed"
            try:
                claimer = int(name.split(".")[2])
            except (IndexError, ValueError):
                continue
            if not _alive(claimer, 0):
                found.append(path)
            continue
        if not name.endswith(".ledger"):
            continue
        who = ledger.owner(path)
        if who is None:
            _remove_if_stale(path)
        elif not _alive(*who):
            found.append(path)
    return found


def _remove_if_stale(path: str) -> None:
    try:
        if time.time() - os.stat(path).st_mtime > STALE_SECONDS:
            os.unlink(path)
    except OSError:
        pass


#: The scopes of each dead ledger seen, by path, with the file's (inode, size, mtime): a dead
#: process's ledger no longer changes, so one that no app here may deliver (another app's on the
#: host, left until a worker of its own starts) is read once, not at every look -- each look
#: read every such ledger whole (half a megabyte and more each), in the worker's main process:
#: 70 of them cost an error storm 184 us of that process per task, a sixth of its throughput.
_seen: dict[str, tuple[tuple[int, int, int], frozenset[str]]] = {}


def _scopes_of(path: str) -> frozenset[str] | None:
    """The scopes of the dead ledger at *path*, read once per version of the file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    version = (st.st_ino, st.st_size, st.st_mtime_ns)
    seen = _seen.get(path)
    if seen is not None and seen[0] == version:
        return seen[1]
    found = ledger.scopes(path)
    if found is None:
        return None  # not (yet) whole: looked at again next time
    _seen[path] = (version, frozenset(found))
    return _seen[path][1]


def recover(folder: str, scopes: Iterable[str], submit_event: SubmitEvent) -> Recovered:
    """Deliver what the dead processes' ledgers in *folder* (of *scopes*) hold. Never raises."""
    mine = set(scopes)
    processes = sessions = events = lost = 0
    dead = dead_ledgers(folder)
    listed = set(dead)
    for path in [p for p in _seen if p not in listed]:
        del _seen[path]  # gone (claimed, removed): forgotten
    for path in dead:
        try:
            theirs = _scopes_of(path)
            if theirs is None or not mine & theirs:
                continue
            contents = ledger.read(path)
            if contents is None:
                continue
            claimed = f"{path.split('.ledger')[0]}.ledger.{os.getpid()}.claimed"
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another worker took it
            contents = ledger.read(claimed) or contents
            pending: PendingCounts = {
                Release(*row): {minute_iso(m): n for m, n in sorted(b.items())}  # type: ignore[arg-type]
                for row, b in contents.counts.items()
            }
            counts.restore_pending_counts(pending)  # now in this process's ledger
            n = sum(sum(b.values()) for b in contents.counts.values())
            taken = sum(1 for event in contents.events if submit_event(*event))
            os.unlink(claimed)
        except Exception:
            logger.exception("bugsnag_celery: could not recover the ledger %s", path)
            continue
        processes += 1
        sessions += n
        events += taken
        lost += len(contents.events) - taken
        if n or contents.events:
            logger.warning(
                "bugsnag_celery: process %d ended without handing on %d session count(s) and %d event(s); "
                "delivering them from process %d%s",
                contents.pid, n, len(contents.events), os.getpid(),
                f" ({len(contents.events) - taken} event(s) of no app configured here: lost)"
                if taken < len(contents.events) else "",
            )  # fmt: skip
    return Recovered(processes, sessions, events, lost)
