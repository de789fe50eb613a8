"""kombu's filesystem transport, with messages that appear whole and are taken once, on every kombu.

The embedded broker (the demo and the test suite) is a folder. kombu's own filesystem
channel has two races, and how it lists the folder changed between releases:

- its ``_put`` creates ``<stamp>_<uuid>.<queue>.msg`` and only then writes into it, so a
  consumer polling the folder can take the file in between and read an empty payload
  ("Unrecoverable error: JSONDecodeError" in the worker, seen with 8 threads republishing
  retries);
- up to kombu 5.6 its ``_get`` takes any file whose name *contains* ``.<queue>.msg``
  (5.7 compares the name exactly), so a temporary file named after the message, however
  hidden, is taken while it is still being written -- the writer's rename then fails,
  the message is published again: one lost, one duplicated.

So this channel does its own file handling, on kombu's documented virtual-transport
methods (``_put``, ``_get``, ``_purge``, ``_size``) and nothing private of the filesystem
module: a message is written under ``.<uuid>.part`` (no ``.msg`` in it, so no kombu release
ever takes it) and renamed into place, atomic within the folder; a consumer claims a message
by renaming it to ``.<uuid>.claimed`` in the same folder (atomic: of two consumers exactly
one wins; kombu moves it to the system temporary folder instead, a copy when that is
another file system) and only then reads it. File names stay kombu's, so a plain
``filesystem://`` peer on the same folder still reads our messages, and we read its.

Exchange tables (``control_folder``, what fanout exchanges such as Celery's broadcast and
``celery bugsnag status`` read) keep kombu's file and JSON format, but are updated here too:
kombu creates a new table with ``open("wb")`` and only then locks it, so a concurrent
declarer that finds the file in between, locks it first and reads it gets an empty file
("JSONDecodeError" while declaring queues, seen once in the suite) -- or, worse, a publisher
reads it empty and routes the message nowhere, silently; and before 5.7 an unbind rewrote a
shorter table without truncating it, leaving the old tail behind. Here a new table is
written aside and hard-linked into place (whole, and only one creator wins), and an existing
one is read and rewritten only under its exclusive lock, on the same file (a rename into
place would let a writer lock a file already replaced). A reader that still meets an empty
table (a plain kombu peer creating it) waits for it to be written. Publishing also routes to
the bindings this process declared (kombu writes them to the file only after recording them
in memory, and a thread publishing in between lost its message), and no fork happens while a
table is open (a child would keep its lock for life: see ``_TABLES``).

    app.conf.broker_transport = "bugsnag_celery.tools.fs_transport:Transport"  # with filesystem://
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from time import sleep
from typing import TYPE_CHECKING

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

from ..transport.folders import message_name, message_names

__all__ = ["TRANSPORT", "Channel", "Transport"]

if TYPE_CHECKING:
    #: A row of an exchange table: kombu's ``exchange_queue_t`` (routing key, pattern, queue).
    Row = tuple[str, str, str]

#: The value for ``broker_transport`` (Celery) or ``transport`` (kombu).
TRANSPORT = "bugsnag_celery.tools.fs_transport:Transport"


# kombu ships type hints from 5.7 on only: before, its classes are Any (hence ``unused-ignore``).
class Channel(filesystem.Channel):  # type: ignore[misc, unused-ignore]
    """The message files: written whole, claimed by one consumer, listed once per batch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        # queue -> names seen in the last listing, oldest first. A poll lists the folder
        # only when this runs out (kombu lists and sorts it for every message).
        self._listed: dict[str, deque[str]] = {}
        super().__init__(*args, **kwargs)

    # kombu's own two base classes disagree on this signature; this is the filesystem one.
    def _put(self, queue: str, payload: object, **kwargs: object) -> None:  # type: ignore[override, unused-ignore]
        folder = self.data_folder_out
        final = os.path.join(folder, message_name(queue))
        partial = os.path.join(folder, f".{uuid.uuid4().hex}.part")
        try:
            with open(partial, "wb") as fh:
                fh.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.remove(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: str, timeout: float | None = None) -> object:
        folder = self.data_folder_in
        names = self._listed.get(queue)
        if not names:
            names = self._listed[queue] = deque(self._names(queue))
        while names:
            name = names.popleft()
            claimed = os.path.join(folder, f".{uuid.uuid4().hex}.claimed")
            try:
                os.rename(os.path.join(folder, name), claimed)
            except OSError:
                continue  # another consumer took it first
            try:
                with open(claimed, "rb") as fh:
                    payload = fh.read()
                if self.store_processed:
                    os.replace(claimed, os.path.join(self.processed_folder, name))
                else:
                    os.remove(claimed)
            except OSError as exc:
                raise ChannelError(f"Cannot read file {name!r} from queue.") from exc
            return loads(payload.decode())
        raise Empty()

    def _purge(self, queue: str) -> int:
        self._listed.pop(queue, None)
        count = 0
        for name in self._names(queue):
            try:
                os.remove(os.path.join(self.data_folder_in, name))
            except OSError:
                continue  # taken by a consumer meanwhile
            count += 1
        return count

    def _size(self, queue: str) -> int:
        return len(self._names(queue))

    def get_table(self, exchange: str) -> list[Row]:
        """The exchange's bindings: the table file, and this process's own declarations.

        kombu's filesystem transport keeps one broker state per process: only the first
        connection to declare a binding writes it to the file, and it records the binding
        in memory *before* writing. Another thread that publishes in between finds no file
        (or an empty one) and kombu routes its message nowhere, without a word (seen: 6 of
        600 messages lost with four producers and four consumers in one process). So the
        bindings this process declared, and has not deleted, are routed to as well.
        """
        rows = self._file_table(exchange)
        state = self.state
        declared = (state.exchanges.get(exchange) or {}).get("table") or ()
        for meta in list(declared):
            row = filesystem.exchange_queue_t(*(value or "" for value in meta))
            if row not in rows and state.has_binding(row.queue, exchange, row.routing_key):
                rows.append(row)
        return rows

    def _file_table(self, exchange: str) -> list[Row]:
        path = self._table_file(exchange)
        for attempt in range(_EMPTY_READS):
            with _TABLES:  # from open to close: see _TABLES
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    return []
                except OSError as exc:
                    raise ChannelError(f"Cannot open the table of exchange {exchange!r}") from exc
                with os.fdopen(fd, "rb") as fh:
                    filesystem.lock(fh, filesystem.LOCK_SH)
                    data = fh.read()
            if data.strip() or attempt == _EMPTY_READS - 1:
                return [filesystem.exchange_queue_t(*row) for row in _table(data)]
            # Empty: being created by a peer that writes after creating (kombu's own channel).
            # Routing with an empty table drops the message without a word, so wait for it.
            sleep(0.01)
        return []  # pragma: no cover - the loop returns

    def _queue_bind(
        self, exchange: str, routing_key: str | None, pattern: str | None, queue: str | None
    ) -> None:
        row = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        Path(self.control_folder).mkdir(parents=True, exist_ok=True)
        self._update_table(exchange, lambda rows: rows if row in rows else [row, *rows], create=True)

    def _delete(
        self,
        queue: str,
        exchange: str,
        routing_key: str | None,
        pattern: str | None,
        *args: object,
        **kwargs: object,
    ) -> None:
        # The virtual channel's own deletion (it purges the queue); kombu's filesystem
        # override only adds the table update done here.
        super(filesystem.Channel, self)._delete(queue, exchange, routing_key, pattern, *args, **kwargs)
        row = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda rows: [r for r in rows if r != row], create=False)

    def _table_file(self, exchange: str) -> str:
        """kombu's path for the table, checked by kombu's own name rules where it has them (5.7)."""
        checked = getattr(super(), "_exchange_file", None)
        if checked is not None:
            return str(checked(exchange))
        return str(Path(self.control_folder) / f"{exchange}.exchange")

    def _update_table(self, exchange: str, change: Callable[[list[Row]], list[Row]], create: bool) -> None:
        path = self._table_file(exchange)
        if create and not os.path.exists(path) and self._create_table(path, change([])):
            return
        with _TABLES:  # from open to close: see _TABLES
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                return  # nothing bound: nothing to remove
            except OSError as exc:
                raise ChannelError(f"Cannot open the table of exchange {exchange!r}") from exc
            with os.fdopen(fd, "r+b") as fh:
                filesystem.lock(fh, filesystem.LOCK_EX)
                rows: list[Row] = [filesystem.exchange_queue_t(*row) for row in _table(fh.read())]
                changed = change(rows)
                if changed != rows:
                    fh.seek(0)
                    fh.write(dumps(changed).encode())
                    fh.truncate()
                    fh.flush()

    @staticmethod
    def _create_table(path: str, rows: list[Row]) -> bool:
        """Put a new table in place whole (False if another declarer created it first).

        Written aside and hard-linked into place: ``link`` fails if the name exists, so of
        two creators exactly one wins, and no reader ever opens a table not yet written.
        """
        partial = f"{path}.{uuid.uuid4().hex}.new"
        try:
            with open(partial, "wb") as fh:
                fh.write(dumps(rows).encode())
            os.link(partial, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise ChannelError(f"Cannot create the exchange table {path!r}") from exc
        finally:
            try:
                os.remove(partial)
            except OSError:
                pass

    def _names(self, queue: str) -> list[str]:
        """The queue's messages now in the folder, oldest first."""
        return message_names(self.data_folder_in, queue)


# A table's flock belongs to its open file: a fork() while one thread holds it open would
# leave the child holding the lock for its whole life, and every later lock of that table
# in any process would wait for the child to exit (seen: a prefork worker replacing a
# killed child while its flusher thread declared a queue, then stuck in its warm shutdown).
# So no fork happens while this process has a table open: forks wait for this lock.
_TABLES = threading.Lock()
os.register_at_fork(before=_TABLES.acquire, after_in_parent=_TABLES.release, after_in_child=_TABLES.release)

#: Reads of an empty exchange table before taking it as empty (10 ms apart).
_EMPTY_READS = 20


def _table(data: bytes) -> list[list[str]]:
    """An exchange table's rows; a file just created and not yet written holds none."""
    if not data.strip():
        return []
    rows = loads(data.decode())
    if not isinstance(rows, list):
        raise ChannelError(f"An exchange table holds {type(rows).__name__}, not a list")
    return rows


class Transport(filesystem.Transport):  # type: ignore[misc, unused-ignore]
    Channel = Channel
