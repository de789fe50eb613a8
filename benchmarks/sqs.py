"""SQS and the spool: how long a delivery run takes on SQS, and what a spooled event costs a broker.

    .venv/bin/python benchmarks/sqs.py            # full size (about a minute; moto's server, Redis)
    .venv/bin/python benchmarks/sqs.py --quick    # smoke mode

1. run: 30 messages of session counts and 5 spooled events on SQS (moto's server, started
   here on loopback, kombu's default options: long polls of 10 s), then ``bugsnag_celery.flush``
   three times (the first delivers, the others find the queues empty). Wall time of each.
   Target: no run over 10 s (a run once took 41-68 s, longer than its 30 s interval).
2. spool: 200 ordinary crash events (a ``KeyError`` of an eager task, as the endpoint got
   it) spooled one request each, and as one merged request, on Redis (database 12) and on
   SQS: bytes the broker stores per event (Redis: the list items; SQS: the message bodies).

Runs with whichever ``bugsnag_celery`` is importable: ``PYTHONPATH=<an older tree>`` measures
that one (the README's "before").
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from harness import REDIS  # noqa: E402
from variants import KEY  # noqa: E402
from verdict import EXACT, TARGET, Check, conclude  # noqa: E402

os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})


def moto() -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("moto's server did not start")


def sqs_app(port: int, name: str) -> Any:
    from celery import Celery

    app = Celery(name, broker=f"sqs://testing:testing@127.0.0.1:{port}", set_as_current=False)
    app.conf.broker_transport_options = {"region": "us-east-1", "is_secure": False}
    return app


def crash_event() -> dict[str, Any]:
    """An ordinary crash event, as bugsnag_celery sends it (an eager task's ``KeyError``)."""
    import bugsnag_celery
    from bugsnag_celery.testing import Endpoint

    endpoint = Endpoint()  # keeps each body whole
    app, _noop = harness.eager_app("spool-cost")

    @app.task(name="bench.fails")
    def fails(key: str) -> Any:
        empty: dict[str, Any] = {}
        return empty[key]

    urls = {"notify_endpoint": f"{endpoint.url}/notify", "sessions_endpoint": f"{endpoint.url}/sessions"}
    bugsnag_celery.configure(app, api_key=KEY, auto_track_sessions=False, **urls)
    fails.apply(("b",))
    bugsnag_celery.flush_events(10)
    bugsnag_celery.unconfigure(app)
    endpoint.close()
    (request,) = [r for r in endpoint.requests if r["path"] == "/notify"]
    event: dict[str, Any] = request["body"]["events"][0]
    return event


def run_times(port: int, runs: int) -> tuple[list[Check], list[float]]:
    import bugsnag_celery
    from bugsnag_celery import Release
    from bugsnag_celery.delivery.flusher import publish_counts
    from bugsnag_celery.delivery.spool import spool_payloads
    from bugsnag_celery.transport.http import Request

    endpoint = harness.endpoint()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    app = sqs_app(port, "bench-run")
    bugsnag_celery.configure(app, api_key=KEY, notify_endpoint=f"{endpoint.url}/notify",
                             sessions_endpoint=f"{endpoint.url}/sessions", queue_prefix=prefix)  # fmt: skip
    release = Release("1.0", "production", "celery", "bench")
    for i in range(30):
        publish_counts(app, {release: {"2026-01-01T00:00:00Z": i + 1}}, prefix)
    event = {"exceptions": [{"errorClass": "E", "message": "m", "stacktrace": []}]}
    for _ in range(5):
        spool_payloads(app, [Request("http://unused", KEY, "4.0", events=[event])], prefix)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        bugsnag_celery.flush(app)
        times.append(time.perf_counter() - began)
    bugsnag_celery.unconfigure(app)
    endpoint.close()
    sessions = sum(r["sessions"] for r in endpoint.requests if r["path"] == "/sessions")
    events = sum(len(r["tasks"]) for r in endpoint.requests if r["path"] == "/notify")
    shown = ", ".join(f"{t:.2f} s" for t in times)
    print(f"delivery runs on SQS: {shown}; {sessions} sessions, {events} events")
    return [
        Check(f"every session delivered once ({sessions})", sessions == sum(range(1, 31)), EXACT),
        Check(f"no delivery run on SQS over 10 s (longest {max(times):.2f} s)", max(times) <= 10, TARGET),
    ], times


def spool_cost(port: int, n: int) -> list[Check]:
    import json

    import boto3

    from bugsnag_celery.delivery.spool import spool_payloads
    from bugsnag_celery.transport.http import Request

    event = crash_event()
    print(f"an ordinary crash event: {len(json.dumps(event, separators=(',', ':')))} bytes of JSON")
    checks = []
    for broker in ("redis", "sqs"):
        for merged in (False, True):
            prefix = f"bench-{uuid.uuid4().hex[:8]}"
            name = f"{prefix}.events"
            if broker == "redis":
                from celery import Celery

                app = Celery("bench-spool", broker=REDIS, set_as_current=False)
            else:
                app = sqs_app(port, "bench-spool")
            requests = (
                [Request("http://unused", KEY, "4.0", events=[event] * n)]
                if merged
                else [Request("http://unused", KEY, "4.0", events=[event]) for _ in range(n)]
            )
            ok = spool_payloads(app, requests, prefix)
            if broker == "redis":
                conn, client = harness.redis_client()
                sizes = [len(item) for item in client.lrange(name, 0, -1)]
                client.delete(name)
                conn.release()
            else:
                sqs = boto3.client("sqs", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
                url = sqs.get_queue_url(QueueName=name.replace(".", "-"))["QueueUrl"]
                sizes = []
                while True:
                    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
                    if not got.get("Messages"):
                        break
                    sizes += [len(m["Body"]) for m in got["Messages"]]
                    for m in got["Messages"]:
                        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                sqs.delete_queue(QueueUrl=url)
            how = "merged in one request" if merged else "one request each"
            per = sum(sizes) / n if sizes else 0.0
            largest = max(sizes, default=0)
            print(f"spool on {broker}, {n} events {how}: {len(sizes)} message(s), {sum(sizes):,} bytes "
                  f"stored, {per:,.0f} bytes per event, largest message {largest:,}")  # fmt: skip
            checks.append(
                Check(f"spooled on {broker} ({how}): {len(sizes)} messages", ok and bool(sizes), EXACT)
            )
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke mode: small numbers")
    args = parser.parse_args()
    proc, port = moto()
    try:
        checks, _times = run_times(port, 2 if args.quick else 3)
        checks += spool_cost(port, 20 if args.quick else 200)
    finally:
        proc.kill()
        proc.wait(10)
    return conclude(checks, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
