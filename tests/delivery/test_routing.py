"""The delivery task on a queue of its own: counts delivered while the task queue has a backlog.

``bugsnag_celery.deliver_sessions`` is an ordinary task: sent to the app's default queue, it
waits behind whatever backlog is there (four runs expired in a 30 s backlog, and the worker
blamed the beat). Routed to its own queue, consumed by a worker process of its own (the
README shows the two lines), it runs on time. Real workers on Redis.

Covers: bugsnag_celery/hooks/beat.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from brokers import Broker
from endpoint import Endpoint
from results import received_sessions, records
from workers import Worker, wait_until

from bugsnag_celery import Release
from bugsnag_celery.delivery.flusher import publish_counts

KEY = "c0ffee00c0ffee00c0ffee00c0ffee00"


def test_a_routed_delivery_task_runs_while_the_task_queue_has_a_backlog(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    delivery_queue = f"{redis_broker.queue}.bugsnag"
    routes = json.dumps({"bugsnag_celery.deliver_sessions": {"queue": delivery_queue}})
    configure = {"api_key": KEY, "sessions_endpoint": f"{endpoint.url}/sessions"}
    app = redis_broker.producer()
    release = Release("1.0.0", "production", "celery", "h")
    assert publish_counts(app, {release: {"2026-01-01T00:00:00Z": 100}}, redis_broker.queue)
    busy = Worker(redis_broker, out_dir / "busy", concurrency=1, configure=configure, name="busy",
                  env={"BSC_ROUTES": routes})  # fmt: skip
    delivering = Worker(redis_broker, out_dir / "delivering", concurrency=1, configure=configure,
                        name="delivering", extra_args=("-Q", delivery_queue),  # its queue alone
                        env={"BSC_ROUTES": routes})  # fmt: skip
    (out_dir / "busy").mkdir(parents=True)
    (out_dir / "delivering").mkdir(parents=True)
    with busy, delivering:
        for i in range(30):  # 30 s of backlog on the one busy process
            app.send_task("session_app.observe", (f"slow{i}", 1.0))
        wait_until(lambda: records(out_dir / "busy", "started") or records(out_dir / "busy"), 30,
                   "the backlog started")  # fmt: skip
        started = time.monotonic()
        # what the beat sends (its schedule entry goes through the same routes)
        producer = redis_broker.producer()
        producer.conf.task_routes = {"bugsnag_celery.deliver_sessions": {"queue": delivery_queue}}
        producer.send_task("bugsnag_celery.deliver_sessions")
        bucket = ("1.0.0", "production", "celery", "h")

        def delivered() -> int:
            return received_sessions(endpoint.requests).get(bucket, {}).get("2026-01-01T00:00:00Z", 0)

        wait_until(lambda: delivered() == 100, 20, "the 100 waiting sessions delivered")
        took = time.monotonic() - started
        done = len(records(out_dir / "busy"))
        assert done < 30, f"the backlog was already drained ({done} runs): nothing was shown"
    assert took < 20
