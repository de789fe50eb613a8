"""A Flask project as Flask's guide sets up Celery (``tests/support/flask_shop``), with BugSnag.

The app factory configures the official notifier (``bugsnag.configure`` plus
``bugsnag.flask.handle_exceptions``) and Celery through ``celery_init_app``, whose task class
runs every task inside the Flask app context; ``bugsnag_celery.configure(celery_app)`` is the
one line added there. Nothing of BugSnag's is repeated for the worker: this test holds the
README's Flask section to that, on a real prefork worker, asserting on what the endpoint got.

Covers: bugsnag_celery/hooks/official_delivery.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from brokers import Broker
from endpoint import Endpoint
from results import deliver_sessions, received_sessions, total, wait_for_records
from workers import APPS, Worker

from bugsnag_celery import task_session_id

SHOP = Path(__file__).resolve().parents[1] / "support" / "flask_shop"
N = 12  # orders 1..12: every 3rd notifies (handled), every 4th crashes


def test_a_flask_app_factory_project_reports_through_its_official_client(
    redis_broker: Broker, out_dir: Path, endpoint: Endpoint
) -> None:
    env = {
        "SHOP_ENDPOINT": endpoint.url,
        "PYTHONPATH": os.pathsep.join([str(SHOP), str(APPS), os.environ.get("PYTHONPATH", "")]),
    }
    with Worker(redis_broker, out_dir, module="make_celery", env=env) as worker:
        app = redis_broker.producer()
        for order in range(1, N + 1):
            app.send_task("shop.pay", (order,), {"iban": f"DE{order:020d}"}, queue=redis_broker.queue)
        rows = wait_for_records(out_dir, N, worker=worker)
        notified = sorted(r["order_id"] for r in rows if r["notified"])
        crashed = sorted(r["order_id"] for r in rows if r["crashes"])
        endpoint.wait_for_events(len(notified) + len(crashed), timeout=60)
        assert worker.stop() == 0
        log = worker.log()
    assert {r["app"] for r in rows} == {"storefront"}  # the tasks ran in Flask's app context
    by_order = {r["order_id"]: r for r in rows}
    events = endpoint.events()
    assert len(events) == len(notified) + len(crashed)

    def order_of(event: dict[str, object]) -> int:
        return int(event["exceptions"][0]["message"].split()[1])  # type: ignore[index]

    handled = [e for e in events if e["exceptions"][0]["errorClass"] == "storefront.tasks.PaymentRefused"]
    crashes = [e for e in events if e["exceptions"][0]["errorClass"] == "RuntimeError"]
    assert sorted(map(order_of, handled)) == notified and sorted(map(order_of, crashes)) == crashed
    for event in events:
        row = by_order[order_of(event)]
        task = event["metaData"]["task"]
        # the run's session, counted in it; the task as context, its tab; the worker's app type
        assert event["session"]["id"] == task_session_id(row["id"], 0, task["delivery"])
        assert event["context"] == "shop.pay" and task["name"] == "shop.pay"
        assert event["app"]["type"] == "celery"
        # the release the official client was given in create_app
        assert (event["app"]["version"], event["app"]["releaseStage"]) == ("7.2.0", "production")
        # its params_filters: the task's iban keyword never leaves (shown present first, below)
        assert task["kwargs"] == {"iban": "[FILTERED]"}, task
    # what the filter hides reached the task, and is nowhere in what BugSnag received
    assert all(r["iban"] == f"DE{r['order_id']:020d}" for r in rows)
    assert not any(r["iban"] in json.dumps(events) for r in rows)
    assert all(e["unhandled"] is False for e in handled) and all(e["unhandled"] is True for e in crashes)
    for event in crashes:  # order 12 notified, then crashed: both counted in its one session
        assert event["session"]["events"] == {"handled": int(order_of(event) in notified), "unhandled": 1}

    # Sessions: one per run, in the official client's release, to its session endpoint.
    deliver_sessions(redis_broker, endpoint.url)
    received = received_sessions(endpoint.requests)
    assert total(received) == N
    assert set(received) == {("7.2.0", "production", "celery", "flask-worker")}
    status = re.findall(r"bugsnag_celery [\d.]+: active; .*", log)
    assert len(status) == 1 and "release stage 'production', app version '7.2.0'" in status[0], log[-3000:]
