"""SQS as a supported broker, and the limits of every broker: message sizes, the spool's bound.

On SQS (moto's server, ``brokers.py``): what the package writes stays under the broker's
limit after kombu's encodings, its reads never long-poll, the status queue holds one
message, and a process keeps one boto3 client. On every broker with a server: the spool is
kept under ``spool_max_bytes``, its oldest events dropped and counted in ``status``.

Covers: bugsnag_celery/transport/limits.py, bugsnag_celery/transport/batches.py
Covers: bugsnag_celery/transport/queues.py, bugsnag_celery/delivery/spool.py
Covers: bugsnag_celery/transport/folders.py
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from brokers import REDIS_DB, Broker, sqs_client, unacked_keys
from endpoint import Endpoint
from results import deliver_sessions, received_sessions, total
from workers import Worker, wait_until

from bugsnag_celery import Release
from bugsnag_celery.delivery.flusher import publish_counts
from bugsnag_celery.delivery.spool import drain_spooled_events, spool_messages, spool_payloads
from bugsnag_celery.delivery.status import (
    delivery_problem,
    read_sent,
    read_status,
    record_sent,
    record_status,
)
from bugsnag_celery.transport.http import Request
from bugsnag_celery.transport.limits import broker_limit, stored_size
from bugsnag_celery.transport.queues import bound_queue, durable_queue, message_count, queue_names

KEY = "c0ffee00c0ffee00c0ffee00c0ffee00"
SQS_LIMIT = 262_144  # what the test queues take (``brokers.sqs_broker``)


@pytest.fixture
def sqs_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every call this process makes to SQS, as botocore sends it: (operation, parameters)."""
    import botocore.client

    calls: list[tuple[str, dict[str, Any]]] = []
    original = botocore.client.BaseClient._make_api_call

    def recorded(self: Any, operation: str, params: dict[str, Any]) -> Any:
        calls.append((operation, dict(params)))
        return original(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recorded)
    yield calls


def sent_bodies(calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [p["MessageBody"] for op, p in calls if op == "SendMessage"]


def event(i: int, size: int) -> dict[str, Any]:
    return {"exceptions": [{"errorClass": "E", "message": f"event-{i}", "stacktrace": []}],
            "metaData": {"pad": {"text": "x" * size}}, "unhandled": True, "severity": "error"}  # fmt: skip


def received_events(endpoint: Endpoint) -> list[str]:
    return [e["exceptions"][0]["message"] for r in endpoint.requests
            if r["path"] == "/notify" and r["status"] < 300 for e in r["body"]["events"]]  # fmt: skip


def test_every_message_stays_under_sqs_limit_after_kombus_encodings(
    sqs_broker: Broker, endpoint: Endpoint, sqs_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    """A spooled request of merged events fills BugSnag's 1 MB; kombu stores its base64 inside
    an envelope, base64-encoded again: 1.8 MB, and SQS takes 256 KiB (a storm during an
    outage lost 831 of 901 crashes this way). It goes as several messages, each under the
    limit as SQS stores it, and every event arrives once; so do an event bigger alone than a
    message (trimmed to fit) and a backlog of counts bigger than one message."""
    app = sqs_broker.producer()
    events = [event(i, 20_000) for i in range(45)]  # ~0.9 MB of JSON
    assert spool_payloads(app, [Request("http://unused", KEY, "4.0", events=events)], sqs_broker.queue)
    assert spool_payloads(app, [Request("http://unused", KEY, "4.0", events=[event(45, 600_000)])],
                          sqs_broker.queue)  # fmt: skip
    spooled = sent_bodies(sqs_calls)
    assert len(spooled) >= 8 and max(len(b) for b in spooled) <= SQS_LIMIT, [len(b) for b in spooled]
    stats = drain_spooled_events(app, api_key=KEY, endpoint=f"{endpoint.url}/notify", prefix=sqs_broker.queue)
    assert stats["delivered"] == len(spooled) and stats["dropped"] == 0
    assert sorted(received_events(endpoint)) == sorted(f"event-{i}" for i in range(46))

    # a day of minute buckets of 8 release groups: ~300 kB of counts in one flush
    sqs_calls.clear()
    start = int(time.time()) // 60 - 24 * 60
    minutes = [time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(60 * (start + m))) for m in range(24 * 60)]
    pending = {Release("4.0.0", "test", "celery", f"host-{h}"): dict.fromkeys(minutes, 1) for h in range(8)}
    assert publish_counts(app, pending, sqs_broker.queue)
    published = sent_bodies(sqs_calls)
    assert len(published) >= 2 and max(len(b) for b in published) <= SQS_LIMIT
    assert deliver_sessions(sqs_broker, endpoint.url)["delivered"] == 8 * 24 * 60
    assert total(received_sessions(endpoint.requests)) == 8 * 24 * 60


def test_a_delivery_run_on_sqs_never_long_polls(
    sqs_broker: Broker, endpoint: Endpoint, sqs_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    """kombu's SQS transport waits ``wait_time_seconds`` (10 s by default) on a read that finds
    a queue empty: a delivery run made several (41-68 s, longer than its interval). The
    recorder first shows it sees such a wait (1 s asked for here), then that the package's
    reads -- a delivery, the status, the check for a missing beat -- ask for none."""
    app = sqs_broker.producer()
    app.conf.broker_transport_options = {**sqs_broker.transport_options, "wait_time_seconds": 1}
    with app.connection_for_write() as conn:
        bound = durable_queue(f"{sqs_broker.queue}.probe").bind(conn.default_channel)
        bound.declare()
        assert bound.get() is None
    assert [p["WaitTimeSeconds"] for op, p in sqs_calls if op == "ReceiveMessage"] == [1]

    sqs_calls.clear()
    app = sqs_broker.producer()  # the user's options: kombu's default long polls
    release = Release("4.0.0", "test", "celery", "h")
    for i in range(5):
        assert publish_counts(app, {release: {"2026-01-01T00:00:00Z": i + 1}}, sqs_broker.queue)
    assert spool_payloads(
        app, [Request("http://unused", KEY, "4.0", events=[event(0, 10)])], sqs_broker.queue
    )
    stats = deliver_sessions(sqs_broker, endpoint.url)
    assert stats["delivered"] == 15
    drained = drain_spooled_events(
        app, api_key=KEY, endpoint=f"{endpoint.url}/notify", prefix=sqs_broker.queue
    )
    assert drained["delivered"] == 1
    record_status(app, {"last_run_at": time.time()}, sqs_broker.queue)
    assert read_status(app, sqs_broker.queue) is not None
    assert delivery_problem(app, sqs_broker.queue, 30.0) is None
    waits = [p["WaitTimeSeconds"] for op, p in sqs_calls if op == "ReceiveMessage"]
    assert len(waits) >= 10 and set(waits) == {0}, waits


def _status_messages(broker: Broker) -> int:
    """Messages in the status queue, those taken and not yet acknowledged included."""
    name = queue_names(broker.queue).status
    if broker.name == "sqs":
        client = sqs_client()
        url = client.get_queue_url(QueueName=name.replace(".", "-"))["QueueUrl"]
        attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
    return message_count(broker.producer(), name)


def test_the_status_queue_holds_the_newest_status_alone(server_broker: Broker) -> None:
    """Five runs record their status: one message is left, the newest, with every run's drops
    added up (on SQS, a status read with kombu's ``no_ack`` was never deleted: all five stayed,
    to reappear after the visibility timeout)."""
    app = server_broker.producer()
    start = time.time()
    for i in range(5):
        record_status(app, {"last_run_at": start + i, "hostname": f"run-{i}", "events": {"dropped": 1}},
                      server_broker.queue)  # fmt: skip
    assert _status_messages(server_broker) == 1
    status = read_status(app, server_broker.queue)
    assert status is not None and status["hostname"] == "run-4" and status["dropped"]["events"] == 5
    assert _status_messages(server_broker) == 1  # reading leaves it in place


def test_one_sqs_client_per_process_whatever_the_flushes_and_checks(
    sqs_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new kombu connection to SQS makes a new boto3 client (~100 ms of CPU). 20 flushes of
    counts, each followed by the checks a worker's flusher and ``status`` make (counts
    waiting, the spool, the status): one client, made once."""
    from kombu.transport import SQS

    made: list[str] = []
    original = SQS.Channel.new_sqs_client

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        made.append("client")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SQS.Channel, "new_sqs_client", counted)
    app = sqs_broker.producer()
    release = Release("4.0.0", "test", "celery", "h")
    for n in range(20):
        assert publish_counts(app, {release: {"2026-01-01T00:00:00Z": n + 1}}, sqs_broker.queue)
        delivery_problem(app, sqs_broker.queue, 30.0)
        message_count(app, queue_names(sqs_broker.queue).events)
    assert len(made) == 1


@pytest.mark.parametrize("kind", ["redis", "sqs"])
def test_the_spool_is_bounded_and_what_it_drops_is_counted_in_status(
    kind: str, request: pytest.FixtureRequest, out_dir: Any, endpoint: Endpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """24 spooled messages of one 60 kB event while BugSnag is down, ``spool_max_bytes`` 1 MiB:
    the delivery run drops the oldest until the broker stores no more than that for the
    spool (on Redis its stored items, measured; on SQS reckoned from each body as kombu
    encodes it), logs it, and ``status`` shows how many. Delivered + dropped = spooled."""
    broker: Broker = request.getfixturevalue(f"{kind}_broker")
    bound, n = 1 << 20, 24
    app = broker.producer()
    for i in range(n):
        assert spool_payloads(
            app, [Request("http://unused", KEY, "4.0", events=[event(i, 60_000)])], broker.queue
        )
    name = queue_names(broker.queue).events
    if kind == "redis":
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        items: Any = client.lrange(name, 0, -1)  # typed as maybe-awaitable by some redis-py releases
        sizes = {len(item) for item in items}
        client.close()
    else:  # every message of the same size: what the package reckons SQS stores for each
        with app.connection_for_write() as conn:
            limit = broker_limit("sqs", conn.transport_options)
        one = Request("http://unused", KEY, "4.0", events=[event(0, 60_000)])
        sizes = {stored_size(limit, len(spool_messages(one, 1 << 20)[0][0]))}  # the message, as written
    assert len(sizes) == 1
    kept = bound // sizes.pop()
    assert 0 < kept < n

    cfg = {"api_key": KEY, "notify_endpoint": f"{endpoint.url}/notify", "spool_max_bytes": bound,
           "sessions_endpoint": f"{endpoint.url}/sessions", "session_delivery_interval": 120}  # fmt: skip
    w = Worker(broker, out_dir, configure=cfg)  # never started: its configuration, for the CLI
    endpoint.default = 503
    with caplog.at_level(logging.ERROR, logger="bugsnag_celery"):
        flushed = cli(w, "flush")
    assert f"dropped its {n - kept} oldest message(s), {n - kept} event(s)" in flushed.stderr, flushed.stderr
    report = json.loads(cli(w, "status", "--json").stdout)
    assert report["dropped"]["spool_full"] == n - kept and report["spooled_events"] == kept
    assert "spooled event(s) dropped oldest first" in cli(w, "status").stdout
    endpoint.default = 200
    assert cli(w, "flush").returncode == 0
    got = received_events(endpoint)
    assert len(got) == kept and sorted(got) == sorted(f"event-{i}" for i in range(n - kept, n))


def cli(worker: Worker, *args: str) -> Any:
    """``celery -A session_app bugsnag ...`` with *worker*'s configuration."""
    import os
    import subprocess
    import sys

    from workers import APPS

    celery = os.path.join(os.path.dirname(sys.executable), "celery")
    env = {**worker.env, "PYTHONPATH": str(APPS)}
    return subprocess.run([celery, "-A", "session_app", "bugsnag", *args], env=env, cwd=worker.out,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_an_event_no_message_can_hold_is_counted_as_lost(
    redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event that fits no message of the broker even trimmed is dropped: logged, and handed
    to the process's tally of lost events (which ``status`` shows), never dropped silently."""
    import bugsnag_celery.delivery.spool as spool

    app = redis_broker.producer()
    lost: list[int] = []
    fits = Request("http://127.0.0.1:9/notify", KEY, "4.0", events=[event(1, 10)])
    assert spool_payloads(app, [fits], redis_broker.queue, lost.append) and lost == []  # fits: kept
    monkeypatch.setattr(spool, "body_limit", lambda _app: 150)  # smaller than any event
    too_big = Request("http://127.0.0.1:9/notify", KEY, "4.0", events=[event(2, 10), event(3, 10)])
    assert spool_payloads(app, [too_big], redis_broker.queue, lost.append)
    assert lost == [2]


def test_asking_why_counts_wait_leaves_them_where_they_are(any_broker: Broker) -> None:
    """The check every pool child makes ("nothing sends the delivery task", ``status``) reads
    the oldest count message's age, the delivery status and the beat's mark, and leaves them
    where they are. Taking each and handing it back did not: on Redis kombu put it at the newest
    end, and a Redis restarted in between left it in kombu's unacked hash for the visibility
    time-out (76 sessions missing at the end of a test that restarts Redis); on SQS kombu hands
    a message back as a copy, and the message taken comes back too once its visibility timeout
    is over; on the embedded broker it came back as a new file, the newest. Here SQS's
    visibility timeout is 2 s, waited out before the queues are read whole."""
    broker = replace(any_broker, transport_options={**any_broker.transport_options, "visibility_timeout": 2})
    app = broker.producer()
    release = Release("4.0.0", "test", "celery", "h")
    for minute in range(4):  # not 3: three reads that each move the oldest to the end put 3 back in order
        counts = {release: {f"2026-01-01T00:0{minute}:00Z": 1 + minute}}
        assert publish_counts(app, counts, broker.queue)
    now = time.time()
    record_status(app, {"last_run_at": now - 7200, "hostname": "old-run"}, broker.queue)
    record_sent(app, {"at": now - 7200, "hostname": "old-beat", "routing_key": "celery"}, broker.queue)
    names = queue_names(broker.queue)
    before = {name: _bodies(broker, name) for name in (names.sessions, names.status, names.beat_mark)}
    assert [len(b) for b in before.values()] == [4, 1, 1]
    # an hour on, they have waited long: the check reads the oldest's age, then looks further
    for _ in range(3):
        assert delivery_problem(app, broker.queue, 30.0, now=now + 3600) is not None
        status, mark = read_status(app, broker.queue), read_sent(app, broker.queue)
        assert status is not None and status["hostname"] == "old-run"
        assert mark is not None and mark["hostname"] == "old-beat"
    if broker.name == "sqs":
        time.sleep(3)  # what was taken and not deleted is back by now
    after = {name: _bodies(broker, name) for name in before}
    assert after == before  # the same messages (in the same order where the broker keeps one)


_KILLED_READER = """
import json, sys, time, types
import kombu.message
from celery import Celery
from bugsnag_celery.delivery.status import read_status
from bugsnag_celery.transport import batches

url, options, prefix, marker = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
app = Celery("reader", broker=url, set_as_current=False)
app.conf.broker_transport_options = options
if url.startswith("filesystem"):
    app.conf.broker_transport = "bugsnag_celery.tools.fs_transport:Transport"

def stuck(*args, **kwargs):  # decoding what it read: the reader is killed there
    open(marker, "w").close()
    time.sleep(600)

kombu.message.Message.decode = stuck
batches.json = types.SimpleNamespace(loads=stuck, dumps=json.dumps)
read_status(app, prefix)
"""


def test_a_reader_killed_while_it_reads_the_status_hides_nothing(any_broker: Broker, tmp_path: Path) -> None:
    """A pool child stopped (a warm shutdown, a kill) in the middle of its check ("why do
    counts wait": the oldest count, the status, the beat's mark) hides nothing from the others:
    a message it had taken and not handed back stayed out of sight for the visibility timeout
    (on SQS: 10 of 60 sessions missing in CI), on Redis in kombu's unacked hash. The reader
    here is killed while it decodes the status it read. On the embedded broker a taken message
    is a file removed: the reader's death lost it for good (a count, had it read the oldest)."""
    broker = replace(any_broker, transport_options={**any_broker.transport_options, "visibility_timeout": 30})
    app = broker.producer()
    record_status(app, {"last_run_at": time.time(), "hostname": "a-run"}, broker.queue)
    name = queue_names(broker.queue).status
    before = _bodies(broker, name)
    assert len(before) == 1
    marker = tmp_path / "reading"
    args = [broker.url, json.dumps(broker.transport_options), broker.queue, str(marker)]
    reader = subprocess.Popen(
        [sys.executable, "-c", _KILLED_READER, *args], env={**os.environ, **broker.extra_env}
    )
    try:
        wait_until(marker.exists, 30, "the reader in the middle of its read")
    finally:
        reader.kill()
        reader.wait(10)
    assert _bodies(broker, name) == before  # and held by none (SQS, Redis: asserted inside)
    status = read_status(app, broker.queue)
    assert status is not None and status["hostname"] == "a-run"


def _bodies(broker: Broker, name: str) -> list[object]:
    """The bodies queue *name* holds, read whole without taking any for good (the embedded
    broker: its files, in order; Redis: in order,
    and none in kombu's unacked hash; RabbitMQ: taken and handed back, as it keeps them; SQS:
    sorted, received and made visible again at once, and none held by another reader)."""
    if broker.name == "redis":
        import redis

        client: Any = redis.Redis(
            host="127.0.0.1", port=6379, db=REDIS_DB
        )  # redis-py 4's stubs: maybe awaitable
        try:
            items = client.lrange(name, 0, -1)
            # the test's own unacked hash (unacked_keys), and kombu's default one, which every
            # app without those options shares: only this queue's count
            hashes = (unacked_keys(broker.queue)["unacked_key"], "unacked")
            held = [v for h in hashes for v in client.hvals(h) if json.loads(v)[2] == name]
        finally:
            client.close()
        assert not held, f"{len(held)} messages of {name} held back"
        return [json.loads(item)["body"] for item in items]
    if broker.name == "sqs":
        sqs = sqs_client()
        url = sqs.get_queue_url(QueueName=name.replace(".", "-"))["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0", f"messages of {name} held by a reader"
        taken: list[dict[str, Any]] = []
        while received := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30,
                                              WaitTimeSeconds=0).get("Messages", []):  # fmt: skip
            taken += received
        for message in taken:
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        return sorted(json.loads(base64.b64decode(m["Body"]))["body"] for m in taken)
    if broker.name == "filesystem":  # kombu's envelopes, one file each, oldest first by name
        folder = Path(broker.transport_options["data_folder_in"])
        files = sorted(p for p in folder.iterdir() if p.name.endswith(f".{name}.msg") and p.name[0] != ".")
        envelopes = [json.loads(p.read_bytes()) for p in files]
        return [json.loads(base64.b64decode(e["body"])) for e in envelopes]
    with broker.producer().connection_for_write() as conn:
        bound = bound_queue(conn, name)
        messages = []
        while (message := bound.get(no_ack=False, accept=["json"])) is not None:
            messages.append(message)
        for message in messages:
            message.requeue()
    return [m.body for m in messages]
