"""The error storm: every queued task raises, while BugSnag answers slowly.

An outage downstream makes thousands of tasks fail a minute, and that is when a worker is
under the most strain. Here ``--tasks`` (default 20,000) queued tasks that all raise are
drained by ``celery worker -P prefork -c 2`` on Redis, with every variant reporting to a
local endpoint that answers each request after 200 ms -- and answers the first request
that carries each worker process's events with ``429 Too Many Requests`` and
``Retry-After: 1``, as BugSnag does when a project exceeds its rate. Measured per variant,
alternating rounds, next to the same storm without instrumentation:

- throughput: tasks per second from the first task taken to the last acknowledged;
- memory: the worker's RSS (main process and children), its peak during the storm above
  its size when the storm began;
- what the endpoint received (bugsnag-celery): every failing run's event exactly once
  (delivered by the sender thread, or spilled to the broker spool and delivered by the
  delivery run that follows the storm), one session per run, the most requests any one
  process sent within a second, and whether each process waited out its ``Retry-After``.

``bugsnag_celery_official`` (bugsnag-celery with the official client configured too: one
``before_notify`` callback, 20 breadcrumbs, 2 feature flags, params_filters; see
``variants.py``), when among the variants, gets the same checks as bugsnag-celery, named
apart: the official policy applied to every event must not cost the throughput target, a
count, or the Retry-After. ``compare.py`` adds it when the ``bugsnag`` package is installed
(not in its smoke mode).

The official notifier (``bugsnag_python``) is left out: its Celery handler reports
synchronously, so each failure would wait 200 ms for the endpoint (20,000 failures: more
than half an hour per storm).

    .venv/bin/python benchmarks/compare.py --only storm     # this part of the comparison
    .venv/bin/python benchmarks/storm.py --tasks 2000 --rounds 1 --variants plain bugsnag_celery_official
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from harness import REDIS, rss_tree  # noqa: E402
from variants import ALL, OFFICIAL_SETUP, OURS, OURS_OFFICIAL, OURS_VARIANTS, PLAIN, available  # noqa: E402
from verdict import EXACT, TARGET, Check, conclude  # noqa: E402

#: Left out of the storm, and why (printed).
LEFT_OUT = {"bugsnag_python": "reports synchronously: 200 ms per failure inside the task"}
#: How the checks name each of bugsnag-celery's variants.
NAMES = {OURS: "storm", OURS_OFFICIAL: f"storm, {OFFICIAL_SETUP}"}
DELAY = 0.2
RETRY_AFTER = 1.0


class FirstRequestThrottled:
    """The endpoint's answer: 429 to the first event request that carries each worker
    process's events (the rest: the endpoint's default, 200)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.throttled: set[Any] = set()

    def __call__(self, record: dict[str, Any]) -> int | None:
        pids = {pid for _, pid in harness.tasks(record["body"])}
        with self.lock:
            fresh = pids - self.throttled
            if fresh and record["path"].endswith("/notify"):
                self.throttled.update(fresh)
                return 429
        return None


def endpoint() -> Any:
    """A fresh storm endpoint: after 200 ms, keep-alive (as BugSnag), 429 + Retry-After: 1 to
    each process's first event request."""
    return harness.endpoint(
        DELAY, answer=FirstRequestThrottled(), retry_after=f"{RETRY_AFTER:g}", keep_alive=True
    )


def deliver_after(queue: str, endpoint: str, variant: str = OURS) -> dict[str, Any]:
    """bugsnag-celery: one delivery run after the worker stopped (what beat would do next), in
    an app instrumented as the worker's was (*variant*: one of ``OURS_VARIANTS``)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "BENCH_BROKER": REDIS,
        "BENCH_QUEUE": queue,
        "BENCH_ENDPOINT": endpoint,
        "BENCH_VARIANT": variant,
    }
    code = "import json, bench_app, bugsnag_celery; print(json.dumps(bugsnag_celery.deliver(bench_app.app)))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=str(HERE), capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"the delivery run failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def per_second_peak(times: list[float]) -> int:
    """The most of *times* (sorted) within any one second."""
    peak, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] > 1.0:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def received(records: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """What the endpoint saw of bugsnag-celery's storm (*records*: its digests)."""
    delivered = Counter(
        i for r in records if r["path"].endswith("/notify") and r["status"] == 200 for i, _ in r["tasks"]
    )
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        if r["path"].endswith("/notify"):
            for pid in {pid for _, pid in r["tasks"]}:
                by_pid.setdefault(pid, []).append(r)
    peak = max((per_second_peak(sorted(r["at"] for r in rs)) for rs in by_pid.values()), default=0)
    honoured = waited = 0
    for rs in by_pid.values():
        rs.sort(key=lambda r: r["at"])
        for first, nxt in zip(rs, rs[1:]):
            if first["status"] == 429:
                waited += 1
                # the 429 went out when it was answered; the next request may not come sooner
                honoured += nxt["at"] >= first["answered"] + RETRY_AFTER - 0.05
    return {
        "events": sum(delivered.values()),
        "unique": len(delivered),
        "duplicates": sum(c - 1 for c in delivered.values()),
        "sessions": harness.sessions([r for r in records if r["status"] == 200]),
        "requests": sum(r["path"].endswith("/notify") for r in records),
        "processes": len(by_pid),
        "peak_requests_per_second": peak,
        "throttled": waited,
        "honoured": honoured,
        "runs": n,
    }


def storm_once(variant: str, n: int) -> dict[str, Any]:
    """One storm: tasks/s, peak RSS growth, and (bugsnag-celery, each of ``OURS_VARIANTS``) what
    the endpoint received."""
    queue = f"bench-storm-{uuid.uuid4().hex[:8]}"
    conn, client = harness.redis_client()
    stand_in = endpoint()
    harness.fill(queue, n, "bench.fails")
    proc = harness.start_worker(queue, stand_in.url, "-c", "2", BENCH_VARIANT=variant)
    peak = base = 0
    try:
        try:
            harness.wait_started(proc, client, queue, n, variant)
            start = time.monotonic()
            base = peak = rss_tree(proc.pid)
            sampled = start
            while not harness.drained(client, queue):
                harness.alive(proc, variant, start, n, client, queue)
                if time.monotonic() - sampled >= 0.25:
                    peak, sampled = max(peak, rss_tree(proc.pid)), time.monotonic()
                time.sleep(0.002)
            took = time.monotonic() - start
            peak = max(peak, rss_tree(proc.pid))
        finally:
            harness.stop_worker(proc)  # a warm shutdown: children flush or spool what they hold
        result: dict[str, Any] = {"tasks_per_s": n / took, "rss_growth_mb": (peak - base) / 1e6}
        if variant in OURS_VARIANTS:
            result["delivery"] = deliver_after(queue, stand_in.url, variant)
            time.sleep(0.5)
            result["received"] = received(stand_in.received(), n)
    finally:
        with harness.shielded():
            stand_in.close()
            conn.release()
            harness.cleanup(REDIS, queue)
    return result


def storm(
    variants: list[str], n: int, rounds: int, quick: bool = False
) -> tuple[dict[str, Any], list[Check]]:
    """Alternating rounds of every variant's storm: the summary and bugsnag-celery's checks
    (for each of ``OURS_VARIANTS`` among *variants*).

    *quick* (the smoke mode): plain Celery and bugsnag-celery only, whose exact counts are
    what a smoke run judges.
    """
    runs = [v for v in variants if v not in LEFT_OUT and (not quick or v in (PLAIN, OURS))]
    print(
        f"\nstorm: {n:,} queued tasks that all raise, celery worker -P prefork -c 2 on Redis, endpoint "
        f"answering after {DELAY * 1000:.0f} ms (429 + Retry-After: {RETRY_AFTER:g} to each process's first "
        f"event request), x {rounds} rounds"
    )
    for v in variants:
        if v in LEFT_OUT:
            print(f"  ({v} left out: {LEFT_OUT[v]})")
        elif v not in runs:
            print(f"  ({v} left out in smoke mode)")
    got: dict[str, list[dict[str, Any]]] = {v: [] for v in runs}
    for i in range(rounds):
        order = runs if i % 2 == 0 else list(reversed(runs))
        line = []
        for v in order:
            got[v].append(storm_once(v, n))
        for v in runs:
            r = got[v][-1]
            line.append(f"{v} {r['tasks_per_s']:,.0f} tasks/s (RSS +{r['rss_growth_mb']:.1f} MB)")
        print(f"  round {i + 1}: " + ", ".join(line), flush=True)
    base = statistics.median(r["tasks_per_s"] for r in got[PLAIN])
    width = max(15, *map(len, runs))
    summary: dict[str, Any] = {}
    for v in runs:
        tps = [r["tasks_per_s"] for r in got[v]]
        rss = [r["rss_growth_mb"] for r in got[v]]
        summary[v] = {
            "median": statistics.median(tps),
            "min": min(tps),
            "max": max(tps),
            "ratio": statistics.median(tps) / base,
            "rss_growth_mb": max(rss),
        }
        print(
            f"  {v:{width}s} median {summary[v]['median']:8,.0f} tasks/s (min {min(tps):,.0f}, "
            f"max {max(tps):,.0f})  x{summary[v]['ratio']:.3f} of plain; peak RSS growth {max(rss):+.1f} MB"
        )
    checks: list[Check] = []
    for v in OURS_VARIANTS:
        if v in got:
            checks += ours_checks(v, summary, got[v])
    return summary, checks


def ours_checks(variant: str, summary: dict[str, Any], got: list[dict[str, Any]]) -> list[Check]:
    """*variant*'s (one of ``OURS_VARIANTS``) checks over its rounds *got*; adds what the
    endpoint received to its *summary* entry and prints it."""
    name = NAMES[variant]
    ratio = summary[variant]["ratio"]
    checks = [Check(f"{name}: throughput at least 0.9 of plain (x{ratio:.3f})", ratio >= 0.9, TARGET)]
    growth, plain_growth = summary[variant]["rss_growth_mb"], summary[PLAIN]["rss_growth_mb"]
    checks.append(
        Check(
            f"{name}: worker RSS grows at most 30 MB more than plain's during the storm "
            f"({growth:+.1f} MB against {plain_growth:+.1f} MB)",
            growth - plain_growth <= 30,
            TARGET,
        )
    )
    recv = [r["received"] for r in got]
    summary[variant]["received"] = recv
    summary[variant]["delivery"] = [r["delivery"] for r in got]
    for r in recv:
        print(
            f"  {variant}: endpoint received {r['events']:,} events ({r['unique']:,} runs, "
            f"{r['duplicates']} twice) and {r['sessions']:,} sessions for {r['runs']:,} failing runs; "
            f"{r['requests']} event requests from {r['processes']} processes, at most "
            f"{r['peak_requests_per_second']} from one process in a second; "
            f"{r['honoured']}/{r['throttled']} Retry-After waited out"
        )
    total = sum(r["runs"] for r in recv)
    unique, twice = sum(r["unique"] for r in recv), sum(r["duplicates"] for r in recv)
    checks.append(
        Check(
            f"{name}: every failing run's event received exactly once ({unique:,} "
            f"runs, {twice} duplicates, for {total:,} runs)",
            all(r["unique"] == r["runs"] and r["duplicates"] == 0 for r in recv),
            EXACT,
        )
    )
    checks.append(
        Check(
            f"{name}: the endpoint received {sum(r['sessions'] for r in recv):,} sessions for {total:,} runs",
            all(r["sessions"] == r["runs"] for r in recv),
            EXACT,
        )
    )
    checks.append(
        Check(
            f"{name}: every 429's Retry-After waited out "
            f"({sum(r['honoured'] for r in recv)}/{sum(r['throttled'] for r in recv)})",
            all(r["honoured"] == r["throttled"] for r in recv),
            EXACT,
        )
    )
    peak = max(r["peak_requests_per_second"] for r in recv)
    checks.append(
        Check(f"{name}: at most 5 event requests a second from one process ({peak})", peak <= 5, TARGET)
    )
    return checks


def main() -> int:
    """The storm alone (``compare.py --only storm`` runs it as part of the comparison)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="queued failing tasks per storm")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of every variant")
    parser.add_argument(
        "--variants",
        nargs="+",
        help=f"a subset of: {' '.join(ALL)} {OURS_OFFICIAL} (default: all installed; plain always runs)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke mode: exactness only (plain and ours)")
    args = parser.parse_args()
    harness.exit_on_sigterm()
    wanted = args.variants or [*ALL, OURS_OFFICIAL]
    variants, missing = available([PLAIN, *[v for v in wanted if v != PLAIN]])
    if missing:
        print(f"(not installed, left out: {', '.join(missing)}; pip install -e '.[bench]')")
    _summary, checks = storm(variants, args.tasks, args.rounds, args.quick)
    print()
    return conclude(checks, args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
