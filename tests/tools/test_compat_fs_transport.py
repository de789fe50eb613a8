"""The embedded broker on whatever kombu is installed (the matrix runs every supported one).

``bugsnag_celery.tools.fs_transport`` does its own message-file handling, so what these tests
check does not depend on how a kombu release lists and reads the folder (up to 5.6 kombu's
``_get`` took any file whose name *contained* ``.<queue>.msg``, temporary files included;
5.7 compares exactly): messages appear whole, each is taken exactly once however many
producers and consumers share the folder, and a plain ``filesystem://`` peer (kombu's own
channel) interoperates both ways without ever taking a half-written file.

Covers: bugsnag_celery/tools/fs_transport.py, bugsnag_celery/transport/folders.py
"""

# mypy: disallow-untyped-calls=False
# (kombu's Connection has no annotations on its constructor, as for the other broker tests.)

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu.connection import Connection

from bugsnag_celery.tools.fs_transport import TRANSPORT, Transport
from bugsnag_celery.transport.folders import is_message_of, message_name


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[dict[str, str]]:
    data, control = tmp_path / "data", tmp_path / "control"
    data.mkdir()
    control.mkdir()
    yield {"data_folder_in": str(data), "data_folder_out": str(data), "control_folder": str(control)}


def connect(options: dict[str, Any], ours: bool = True) -> Connection:
    conn = Connection("filesystem://", transport=TRANSPORT if ours else None, transport_options=options)
    assert isinstance(conn.transport, Transport) is ours, type(conn.transport)
    return conn


def test_names_are_kombus_and_match_exactly() -> None:
    name = message_name("bsc-q.sessions")
    assert is_message_of(name, "bsc-q.sessions")
    assert not is_message_of(name, "bsc-q") and not is_message_of(name, "sessions")
    assert not is_message_of(f".{name}.part", "bsc-q.sessions")  # the old temporary name
    assert not is_message_of(f".{uuid.uuid4().hex}.part", "bsc-q.sessions")
    stamp = name.split("_", 1)[0]
    assert len(stamp) == 16 and stamp.isdigit()  # padded: names sort by age


def test_each_message_is_taken_once_by_many_producers_and_consumers(folders: dict[str, str]) -> None:
    """4 producers x 150 messages, 4 consumers on their own connections: 600 taken, each once.

    The consumers poll while the producers write, so any window in which a file is visible
    before it is whole (or a claimed file is visible to a second consumer) shows as a decode
    error, a missing message or a duplicate.
    """
    queue, producers, per_producer = f"q{uuid.uuid4().hex[:8]}", 4, 150
    total = producers * per_producer
    got: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    done = threading.Event()

    def produce(p: int) -> None:
        try:
            with connect(folders) as conn:
                q = conn.SimpleQueue(queue)
                for i in range(per_producer):
                    q.put({"n": f"{p}-{i}", "pad": "x" * (i * 37 % 4000)})
                q.close()
        except BaseException as exc:
            errors.append(exc)

    def consume() -> None:
        try:
            with connect(folders) as conn:
                q = conn.SimpleQueue(queue)
                while not done.is_set():
                    try:
                        message = q.get(block=False)
                    except Empty:
                        done.wait(0.001)
                        continue
                    message.ack()
                    with lock:
                        got.append(message.payload["n"])
                        if len(got) >= total:
                            done.set()
                q.close()
        except BaseException as exc:
            errors.append(exc)
            done.set()

    threads = [threading.Thread(target=consume) for _ in range(4)]
    threads += [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    done.wait(120)
    done.set()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(got) == sorted(f"{p}-{i}" for p in range(producers) for i in range(per_producer))
    assert [n for n in os.listdir(folders["data_folder_in"]) if not n.startswith(".")] == []
    assert [n for n in os.listdir(folders["data_folder_in"]) if n.endswith((".part", ".claimed"))] == []


def test_a_file_being_written_is_never_taken(folders: dict[str, str]) -> None:
    """Half-written files (ours, and the name the transport used before) are left alone,
    by our consumer and by kombu's own, on this kombu."""
    queue = f"q{uuid.uuid4().hex[:8]}"
    data = Path(folders["data_folder_in"])
    with connect(folders) as conn:
        conn.SimpleQueue(queue).close()  # declares the queue and binds it
    final = message_name(queue)
    partials = [data / f".{uuid.uuid4().hex}.part", data / f".{final}.part"]
    for path in partials:
        path.write_bytes(b'{"body": "half')
    with connect(folders) as conn:
        q = conn.SimpleQueue(queue)
        with pytest.raises(Empty):
            q.get(block=False)
        assert q.qsize() == 0
        q.close()
    os.remove(partials[1])  # kombu < 5.7 would take the old name: ours must be safe from it too
    with connect(folders, ours=False) as conn:
        q = conn.SimpleQueue(queue)
        with pytest.raises(Empty):
            q.get(block=False)
        q.close()
    assert partials[0].exists()


@pytest.mark.parametrize("producer_is_ours", [True, False])
def test_a_plain_filesystem_peer_reads_ours_and_we_read_its(
    folders: dict[str, str], producer_is_ours: bool
) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    with connect(folders, ours=producer_is_ours) as conn:
        q = conn.SimpleQueue(queue)
        for i in range(5):
            q.put({"i": i})
        q.close()
    with connect(folders, ours=not producer_is_ours) as conn:
        q = conn.SimpleQueue(queue)
        assert q.qsize() == 5
        received = []
        for _ in range(5):
            message = q.get(timeout=5)
            message.ack()
            received.append(message.payload["i"])
        assert sorted(received) == list(range(5))
        q.close()


def test_purge_size_and_store_processed(folders: dict[str, str], tmp_path: Path) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    processed = tmp_path / "processed"
    processed.mkdir()
    options = {**folders, "store_processed": True, "processed_folder": str(processed)}
    with connect(options) as conn:
        q = conn.SimpleQueue(queue)
        for i in range(3):
            q.put({"i": i})
        assert q.qsize() == 3
        q.get(timeout=5).ack()
        assert [is_message_of(n, queue) for n in os.listdir(processed)] == [True]  # kept, by name
        assert q.clear() == 2 and q.qsize() == 0
        with pytest.raises(Empty):
            q.get(block=False)
        q.close()


def run_all(target: Any, args: Any, timeout: float) -> None:
    """One thread per argument, started together, each joined within *timeout*."""
    threads = [threading.Thread(target=target, args=(arg,)) for arg in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


def bind_everywhere(
    options: dict[str, Any], ours: bool, queue: str, exchanges: list[str], start: Any
) -> None:
    with connect(options, ours) as conn:
        channel = conn.default_channel
        start.wait()
        for exchange in exchanges:
            channel._queue_bind(exchange, "", "", queue)


def test_exchange_tables_survive_concurrent_declarers(folders: dict[str, str]) -> None:
    """4 declarers bind their queue to the same 150 new fanout tables at once: every table has all 4.

    kombu creates a table with ``open("wb")`` before locking it, so a declarer that finds the
    new file first reads it empty (the "JSONDecodeError" once seen in the suite). The same
    run on kombu 5.7's own channel (``connect(..., ours=False)``) failed 10 trials of 10 with
    that error; this transport must never show a half-made table.
    """
    exchanges = [f"bsc-fan-{i}" for i in range(150)]
    queues = [f"bsc-fan-q{i}" for i in range(4)]
    start = threading.Barrier(len(queues))
    errors: list[BaseException] = []

    def run(queue: str) -> None:
        try:
            bind_everywhere(folders, True, queue, exchanges, start)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    run_all(run, queues, 60)
    assert not errors, errors
    with connect(folders) as conn:
        for exchange in exchanges:
            bound = sorted(row.queue for row in conn.default_channel.get_table(exchange))
            assert bound == queues, (exchange, bound)


def test_an_empty_table_is_empty_and_unbinding_truncates(folders: dict[str, str]) -> None:
    table = Path(folders["control_folder"]) / "bsc-fan.exchange"
    table.write_bytes(b"")  # created, not yet written: what a concurrent reader can meet
    with connect(folders) as conn:
        channel = conn.default_channel
        assert channel.get_table("bsc-fan") == []
        for queue in ("bsc-fan-long-queue-name-a", "bsc-fan-b", "bsc-fan-c"):
            channel._queue_bind("bsc-fan", "", "", queue)
        channel._delete("bsc-fan-long-queue-name-a", "bsc-fan", "", "")
        assert sorted(row.queue for row in channel.get_table("bsc-fan")) == ["bsc-fan-b", "bsc-fan-c"]
        # the rewrite is exactly the table: a shorter table leaves no old tail behind
        assert sorted(row[2] for row in json.loads(table.read_text())) == ["bsc-fan-b", "bsc-fan-c"]
        channel._delete("bsc-fan-unbound", "bsc-fan", "", "")  # not bound: nothing changes
        assert len(channel.get_table("bsc-fan")) == 2


def test_a_message_published_while_its_table_is_created_is_never_dropped(folders: dict[str, str]) -> None:
    """4 connections of one process declare a new queue and publish at once, 40 times.

    kombu's virtual transports remember bindings per process: only the first declarer
    writes the exchange table, the others publish at once, routing through the file. A
    table seen before it is written routes the message nowhere, silently (seen once on
    kombu 5.3: 6 of 600 messages gone). Every message must be in its queue.
    """
    rounds, senders = 40, 4
    errors: list[BaseException] = []
    for r in range(rounds):
        queue = f"bsc-new-{r}-{uuid.uuid4().hex[:6]}"
        start = threading.Barrier(senders)

        def send(n: int, queue: str = queue, start: threading.Barrier = start) -> None:
            try:
                with connect(folders) as conn:
                    start.wait()
                    q = conn.SimpleQueue(queue)
                    q.put({"n": n})
                    q.close()
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        run_all(send, range(senders), 30)
        assert not errors, errors
        with connect(folders) as conn:
            assert conn.default_channel._size(queue) == senders, (r, queue)
