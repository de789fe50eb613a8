"""What a test reads back: the records the worker apps wrote, and what BugSnag's session API got."""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path
from typing import Any

from brokers import Broker
from workers import Worker


def flushes(out: Path) -> list[dict[str, Any]]:
    """The flushes of session_app's processes (``BSC_RECORD_FLUSHES=1``), oldest first."""
    return sorted(records(out, "flushes"), key=lambda f: f["began"])


def records(out: Path, kind: str = "records") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(glob.glob(str(out / f"{kind}-*.jsonl"))):
        with open(path) as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break  # a line still being written (readers can see half a write): next poll
                try:
                    rows.append(json.loads(line))
                except ValueError:  # read while the same line was being written
                    break
    return rows


def wait_for_records(
    out: Path, n: int, timeout: float = 120, worker: Worker | None = None
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        got = records(out)
        if len(got) >= n:
            return got
        time.sleep(0.1)
    log = worker.log() if worker else ""
    raise AssertionError(f"only {len(got)} of {n} task records after {timeout}s\n{log[-5000:]}")


def deliver_sessions(
    broker: Broker, endpoint_url: str, api_key: str = "c0ffee00c0ffee00c0ffee00c0ffee00"
) -> Any:
    """Run the delivery (what the beat task does) from the test process."""
    from bugsnag_celery.delivery.sessions import deliver_session_counts

    return deliver_session_counts(
        broker.producer(), api_key=api_key, endpoint=f"{endpoint_url}/sessions", enabled_release_stages=None,
        prefix=broker.queue,
    )  # fmt: skip


def received_sessions(requests: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, int]]:
    """What BugSnag's session API accepted, merged: {(version, stage, type, hostname): {minute: n}}."""
    merged: dict[tuple[Any, ...], dict[str, int]] = {}
    for request in requests:
        if request["path"] != "/sessions" or request["status"] >= 300:
            continue
        body = request["body"]
        app, device = body["app"], body["device"]
        key = (app["version"], app["releaseStage"], app["type"], device["hostname"])
        buckets = merged.setdefault(key, {})
        for row in body["sessionCounts"]:
            buckets[row["startedAt"]] = buckets.get(row["startedAt"], 0) + row["sessionsStarted"]
    return merged


def total(merged: dict[tuple[Any, ...], dict[str, int]]) -> int:
    return sum(n for buckets in merged.values() for n in buckets.values())
