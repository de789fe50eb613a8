"""The Celery app the worker benchmarks run (``celery -A bench_app worker``, with
``benchmarks/`` on ``PYTHONPATH``), instrumented as ``BENCH_VARIANT`` says.

``BENCH_BROKER``, ``BENCH_QUEUE``, ``BENCH_ENDPOINT`` (the local endpoint every variant
reports to) and ``BENCH_VARIANT`` (see ``variants.py``) come from the benchmark script.
"""

from __future__ import annotations

import os

from celery import Celery
from harness import transport_options
from variants import instrument

app = Celery("bench_app", broker=os.environ["BENCH_BROKER"])
app.conf.update(
    task_default_queue=os.environ["BENCH_QUEUE"],
    worker_enable_remote_control=False,
    task_ignore_result=True,
    broker_transport_options=transport_options(os.environ["BENCH_QUEUE"]),
)
os.environ.setdefault("BENCH_QUEUE_PREFIX", os.environ["BENCH_QUEUE"])
instrument(os.environ.get("BENCH_VARIANT", "plain"), app, os.environ["BENCH_ENDPOINT"], worker=True)


@app.task(name="bench.noop")
def noop() -> None:
    return None


def _inner() -> None:
    raise ValueError("storm")


@app.task(name="bench.fails")
def fails() -> None:
    """The error storm's task (``storm.py``): every run raises, two frames deep."""
    _inner()
