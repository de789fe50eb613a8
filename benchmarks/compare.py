"""bugsnag-celery side by side with plain Celery and with the peers, in one run.

    .venv/bin/pip install -q -e '.[bench]'                 # the peers (optional)
    .venv/bin/python benchmarks/compare.py                 # full run, writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/compare.py --quick         # smoke mode (part of the tests)

1. success path: ``task.apply()`` of a no-op task, 20,000 runs per batch (``overhead.py``);
2. failure path: a raising task, the endpoint answering after 50 ms (``overhead.py``);
3. worker throughput: N (default 20,000) queued no-op tasks drained by
   ``celery worker -P prefork -c 2`` on Redis, tasks per second;
4. memory: worker RSS (main process + children) after a 10,000-task warm-up and after
   200,000 more tasks;
5. network: requests and bytes sent to the local endpoint per 1,000,000 ``task.apply()``
   runs (bugsnag-celery: through its broker queue and one delivery run; the peers: what
   they send on their own, then flushed). bugsnag-celery runs the full million; peers run
   ``--network-peer-runs`` and are scaled to a million (said in the output);
6. success path in one process (``inprocess.py``): plain, bugsnag-celery and the official
   notifier's per-task session alternating in short batches inside one interpreter, where
   machine drift cancels (the separate-process figure of 1. swings by several us a day);
7. success path in CPU instructions (``instructions.py``, needs valgrind): plain,
   bugsnag-celery and the official notifier's per-task session, each run counted in the
   instructions its main thread executes -- the success figure that machine noise cannot move;
8. error storm (``storm.py``): ``--storm-tasks`` queued tasks that all raise, drained by
   ``celery worker -P prefork -c 2`` on Redis against an endpoint answering after 200 ms
   (and 429 to each process's first request): throughput, memory, what arrived.

The failure path (2.) and the error storm (8.) also measure ``bugsnag_celery_official``:
bugsnag-celery with the official client configured as a project has it (one
``before_notify`` callback, 20 breadcrumbs, 2 feature flags, params_filters;
``variants.py``), whose policy every event then honours -- when the ``bugsnag`` package is
installed (with ``--variants``: when listed). Smoke mode measures it on the failure path only.

Every variant runs in its own process (a fresh interpreter or a fresh worker), variants
alternate with the order reversed every round, and the median and spread are printed, as
ratios to the uninstrumented run. Redis database 12 on 127.0.0.1:6379 is used with queue
names of the run's own, deleted afterwards. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
import overhead  # noqa: E402
import report as results_file  # noqa: E402
import storm  # noqa: E402
from harness import REDIS, rss_tree  # noqa: E402
from variants import ALL, OURS, OURS_OFFICIAL, PEERS, PLAIN, available, instrument, shutdown  # noqa: E402
from verdict import EXACT, TARGET, Check, conclude  # noqa: E402

PARTS = ["success", "failure", "inprocess", "instructions", "throughput", "storm", "memory", "network"]
#: The parts that measure bugsnag-celery with the official client configured too (``OURS_OFFICIAL``).
OFFICIAL_PARTS = ("failure", "storm")


# -- 3 and 4: real workers ------------------------------------------------------------------


def throughput_once(variant: str, n: int, endpoint: str) -> float:
    """Tasks per second for *n* queued no-op tasks, from the first taken to the last acked."""
    queue = f"bench-tp-{uuid.uuid4().hex[:8]}"
    conn, client = harness.redis_client()
    harness.fill(queue, n, "bench.noop")
    proc = harness.start_worker(queue, endpoint, "-c", "2", BENCH_VARIANT=variant)
    try:
        harness.wait_started(proc, client, queue, n, variant)  # its first fetch starts the clock
        start = time.monotonic()
        while not harness.drained(client, queue):
            harness.alive(proc, variant, start, n, client, queue)
            time.sleep(0.002)
        return n / (time.monotonic() - start)
    finally:
        harness.finish(proc, queue, conn)


def throughput(variants: list[str], n: int, rounds: int, endpoint: str) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {v: [] for v in variants}
    print(
        f"\nthroughput: {n:,} queued no-op tasks, celery worker -P prefork -c 2 on Redis, x {rounds} rounds"
    )
    for i in range(rounds):
        order = variants if i % 2 == 0 else list(reversed(variants))
        got = {v: throughput_once(v, n, endpoint) for v in order}
        for v in variants:
            results[v].append(got[v])
        print(
            f"  round {i + 1}: " + ", ".join(f"{v} {got[v]:,.0f}" for v in variants) + " (tasks/s)",
            flush=True,
        )
    return results


def run_tasks(client: Any, queue: str, n: int, proc: subprocess.Popen[bytes], quiet: float) -> None:
    harness.fill(queue, n, "bench.noop")
    start = time.monotonic()
    while not harness.drained(client, queue):
        harness.alive(proc, "memory", start, n, client, queue)
        time.sleep(0.05)
    time.sleep(quiet)  # background threads (flushers, span processors, session timers) go quiet


def memory(variant: str, tasks: int, warmup: int, endpoint: str, quiet: float = 2) -> tuple[float, float]:
    """(RSS MB after the warm-up, RSS MB after *tasks* more); *quiet*: seconds of rest before
    each reading (the smoke mode, which judges no memory figure, rests less)."""
    queue = f"bench-mem-{uuid.uuid4().hex[:8]}"
    conn, client = harness.redis_client()
    proc = harness.start_worker(queue, endpoint, "-c", "2", BENCH_VARIANT=variant)
    try:
        run_tasks(client, queue, warmup, proc, quiet)
        before = rss_tree(proc.pid)
        left = tasks
        while left > 0:  # in slices: the queue never holds 200,000 messages
            run_tasks(client, queue, min(left, 20_000), proc, quiet)
            left -= 20_000
        after = rss_tree(proc.pid)
    finally:
        harness.finish(proc, queue, conn)
    return before / 1e6, after / 1e6


# -- 5: network -----------------------------------------------------------------------------


def network_child(variant: str, runs: int, endpoint: str) -> dict[str, Any]:
    """In a fresh process: *runs* ``task.apply()`` calls, then everything sent or flushed."""
    import logging

    from celery import Celery

    logging.disable(logging.WARNING)
    prefix = f"bench-net-{uuid.uuid4().hex[:8]}"
    os.environ["BENCH_QUEUE_PREFIX"] = prefix
    app = Celery("net", broker=REDIS if variant == OURS else "memory://", backend=None, set_as_current=True)
    app.conf.task_store_eager_result = False
    if variant == OURS:  # its delivery run's bookkeeping under the run's own keys
        app.conf.broker_transport_options = harness.transport_options(prefix)
    instrument(variant, app, endpoint)

    @app.task
    def noop() -> None:
        return None

    start = time.monotonic()
    for _ in range(runs):
        noop.apply()
    elapsed = time.monotonic() - start
    messages = 0
    try:
        if variant == OURS:
            import bugsnag_celery
            from bugsnag_celery import registry
            from bugsnag_celery.transport.queues import message_count

            registry.flusher.flush_once()
            messages = message_count(app, f"{prefix}.sessions")
            status = bugsnag_celery.deliver(app)
            assert status["sessions"]["delivered"] == runs, status
        else:
            shutdown(variant)
    finally:
        if variant == OURS:
            harness.cleanup(REDIS, prefix)
    return {"elapsed": elapsed, "broker_messages": messages}


def network(variant: str, runs: int, endpoint: Any) -> dict[str, Any]:
    """*runs* in a fresh process; what *endpoint* (a :func:`harness.endpoint`) received of them."""
    endpoint.reset()
    out = subprocess.run(
        [sys.executable, __file__, "--network-child", variant, "--runs", str(runs),
         "--endpoint", endpoint.url], capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"network {variant}: {out.stderr[-2000:]}")
    child = json.loads(out.stdout.strip().splitlines()[-1])
    time.sleep(0.5)  # the last request's handler thread finishes counting
    records = endpoint.received()
    requests: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    buckets: set[tuple[str, str]] = set()
    for r in records:
        path = r["path"].rstrip("/") or "/"
        requests[path] += 1
        sent[path] += r["size"] + r["header_bytes"]
        if path.endswith("sessions"):
            buckets |= r["buckets"]
    sessions = harness.sessions([r for r in records if r["path"].rstrip("/").endswith("sessions")])
    return {**child, "runs": runs, "requests": dict(requests), "bytes": dict(sent),
            "buckets": len(buckets), "sessions": sessions}  # fmt: skip


# -- the run --------------------------------------------------------------------------------


def json_child(script: str, *args: str) -> dict[str, Any]:
    """Run ``benchmarks/<script> --json *args`` in a fresh interpreter; its last line, parsed."""
    out = subprocess.run(
        [sys.executable, str(HERE / script), "--json", *args],
        capture_output=True, text=True, timeout=3600, check=True, cwd=str(HERE),
    )  # fmt: skip
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return got


def inprocess(rounds: int, runs: int, checks: list[Check]) -> dict[str, Any]:
    """6: the success path in one process (``inprocess.py``, in a fresh interpreter)."""
    print(f"\nsuccess path in one process: {rounds} alternating rounds x {runs:,} eager no-ops per variant")
    got = json_child("inprocess.py", "--rounds", str(rounds), "--runs", str(runs))
    print(f"  plain           {got['plain']:9.2f} us/task")
    for variant, added in got["added"].items():
        print(f"  {variant:15s} added {added:+.2f} us/task")
    official = got["added"].get("bugsnag_python")
    if official:
        ratio = got["added"][OURS] / official
        got["ratio"] = ratio
        text = (f"success (in one process): at most 1/3 of the official notifier's per-task session "
                f"({got['added'][OURS]:+.2f} us against {official:+.2f}: {ratio:.2f})")  # fmt: skip
        checks.append(Check(text, ratio <= 1 / 3, TARGET))
    return got


def instructions(runs: int, wanted: list[str], checks: list[Check]) -> dict[str, Any] | None:
    """7: the success path in CPU instructions (``instructions.py``, under valgrind)."""
    print(f"\nsuccess path in CPU instructions (valgrind): {runs:,} eager no-ops per variant")
    if shutil.which("valgrind") is None:
        print("  valgrind missing: not counted (apt-get install valgrind)")
        return None
    variants, _ = available(wanted)
    got = json_child("instructions.py", "--runs", str(runs), "--variants", *variants)
    print(f"  plain           {got['per_run'][PLAIN]:12,.0f} instructions/task")
    for variant, added in got["added"].items():
        print(f"  {variant:15s} added {added:+,.0f} instructions/task")
    if "ratio" in got:
        text = (f"success (CPU instructions): at most 1/3 of the official notifier's per-task session "
                f"({got['added'][OURS]:+,.0f} against {got['added']['bugsnag_python']:+,.0f}: "
                f"{got['ratio']:.2f})")  # fmt: skip
        checks.append(Check(text, got["ratio"] <= 1 / 3, TARGET))
    return got


def stats(vals: list[float]) -> dict[str, float]:
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: tiny numbers, exactness only, no file"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        help=f"a subset of: plain bugsnag_celery {' '.join(PEERS)} {OURS_OFFICIAL} (failure, storm)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds (success/failure/throughput)"
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="queued tasks per throughput run")
    parser.add_argument("--throughput-rounds", type=int, default=3, help="alternating worker rounds")
    parser.add_argument("--memory-tasks", type=int, default=200_000)
    parser.add_argument("--network-runs", type=int, default=1_000_000, help="task runs for bugsnag-celery")
    parser.add_argument("--network-peer-runs", type=int, default=200_000, help="task runs for each peer")
    parser.add_argument("--only", nargs="+", choices=PARTS)
    parser.add_argument(
        "--inprocess-rounds", type=int, default=40, help="rounds of the in-process success path"
    )
    parser.add_argument("--storm-tasks", type=int, default=20_000, help="queued failing tasks per storm")
    parser.add_argument("--storm-rounds", type=int, default=2, help="alternating storm rounds")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--network-child", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.network_child:
        print(json.dumps(network_child(args.network_child, args.runs, args.endpoint)))
        return 0

    harness.exit_on_sigterm()
    if args.quick:
        args.rounds, args.throughput_rounds, args.tasks, args.memory_tasks = 1, 1, 200, 1_000
        args.network_runs = args.network_peer_runs = 1_000
        args.inprocess_rounds, args.storm_tasks, args.storm_rounds = 2, 200, 1
    parts = args.only or PARTS
    # OURS_OFFICIAL: in the failure and storm parts only, by default when ``bugsnag`` is installed
    wanted = args.variants or [*ALL, OURS_OFFICIAL]
    measured, missing = available(wanted)
    variants = [v for v in measured if v != OURS_OFFICIAL]
    official = [OURS_OFFICIAL] if OURS_OFFICIAL in measured else []
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"bugsnag-celery benchmarks, {started:%Y-%m-%d %H:%M} UTC; variants: {', '.join(variants)}"
          + (f"; in the failure and storm parts also {OURS_OFFICIAL}" if official else ""))  # fmt: skip
    if missing:
        print(f"(not installed, left out: {', '.join(missing)}; pip install -e '.[bench]')")
    results: dict[str, Any] = {"variants": variants, "missing": missing}
    checks: list[Check] = []

    slow = harness.endpoint(harness.SLOW)
    for scenario in ("success", "failure"):
        if scenario not in parts:
            continue
        runs, batches, _ = overhead.SCENARIOS[scenario]
        if args.quick:
            runs, batches = (50, 1) if scenario == "success" else (3, 1)
        summary = overhead.summarize(
            overhead.run_scenario(
                scenario,
                variants + (official if scenario in OFFICIAL_PARTS else []),
                runs,
                batches,
                args.rounds,
                slow,
                0.2 if args.quick else 2.5,
                checks,
            )
        )
        overhead.print_summary(scenario, summary)
        results[scenario] = summary
        checks += overhead.verdicts(scenario, summary)
    slow.close()
    if "inprocess" in parts:
        results["inprocess"] = inprocess(args.inprocess_rounds, 200 if args.quick else 2000, checks)
    if "instructions" in parts:
        # smoke mode: plain and ours only (each count is two valgrind runs of ~10 s)
        counted_variants = [PLAIN, OURS] if args.quick else [PLAIN, OURS, "bugsnag_python"]
        counted = instructions(300 if args.quick else 2000, counted_variants, checks)
        if counted is not None:
            results["instructions"] = counted
        else:
            results["instructions_missing"] = True

    fast = harness.endpoint(reply=b"{}")
    if "throughput" in parts:
        tp = throughput(variants, args.tasks, args.throughput_rounds, fast.url)
        base = statistics.median(tp[PLAIN])
        results["throughput"] = {
            v: {**stats(vals), "ratio": statistics.median(vals) / base} for v, vals in tp.items()
        }
        for v, s in results["throughput"].items():
            print(f"  {v:15s} median {s['median']:8,.0f} tasks/s (min {s['min']:,.0f}, max {s['max']:,.0f})"
                  f"  x{s['ratio']:.3f} of plain")  # fmt: skip
        ratio = results["throughput"][OURS]["ratio"]
        checks.append(Check(f"throughput: at least 0.98 of plain (x{ratio:.3f})", ratio >= 0.98, TARGET))
    if "storm" in parts:
        # smoke mode: storm.storm leaves OURS_OFFICIAL out (and says so), as it does the peers
        results["storm"], storm_checks = storm.storm(
            variants + official, args.storm_tasks, args.storm_rounds, args.quick
        )
        checks += storm_checks
    if "memory" in parts:
        print(
            f"\nmemory: worker RSS (main + 2 children) after a warm-up and after {args.memory_tasks:,} more"
        )
        results["memory"] = {}
        for v in variants:
            warmup, quiet = (200, 0.5) if args.quick else (10_000, 2)
            before, after = memory(v, args.memory_tasks, warmup, fast.url, quiet)
            results["memory"][v] = {"before": before, "after": after, "growth": after - before}
            print(f"  {v:15s} {before:7.1f} MB -> {after:7.1f} MB: {after - before:+.2f} MB", flush=True)
        growth = results["memory"][OURS]["growth"]
        checks.append(
            Check(f"memory: at most 2 MB growth per 200,000 tasks ({growth:+.2f} MB)", growth <= 2.0, TARGET)
        )
    if "network" in parts:
        print("\nnetwork: requests and bytes to the local endpoint, per 1,000,000 task runs")
        results["network"] = {}
        for v in variants:
            runs = args.network_runs if v in (OURS, PLAIN) else args.network_peer_runs
            got = network(v, runs, fast)
            scale = 1_000_000 / runs
            got["per_million"] = {
                "requests": sum(got["requests"].values()) * scale,
                "bytes": sum(got["bytes"].values()) * scale,
                "session_requests": got["requests"].get("/sessions", 0) * scale,
            }
            results["network"][v] = got
            note = "" if scale == 1 else f" (ran {runs:,}, scaled x{scale:g})"
            pm = got["per_million"]
            print(
                f"  {v:15s} {pm['requests']:>12,.0f} requests {pm['bytes']:>15,.0f} bytes, "
                f"{pm['session_requests']:,.0f} session requests{note}; paths {got['requests']}",
                flush=True,
            )
        ours = results["network"][OURS]
        session_requests = ours["requests"].get("/sessions", 0)
        text = f"network: the endpoint received {ours['sessions']:,} sessions for {ours['runs']:,} runs"
        checks.append(Check(text, ours["sessions"] == ours["runs"], EXACT))
        text = (
            f"network: {session_requests} session request(s) for {ours['buckets']} minute bucket(s)"
            f" of 1 release group ({ours['broker_messages']} broker messages)"
        )
        checks.append(Check(text, 1 <= session_requests <= ours["buckets"], TARGET))

    print()
    status = conclude(checks, args.quick)
    if args.quick:
        print("(smoke mode: exactness judged, no timing verdict, no results file)")
        return status
    results_file.write(Path(args.output), started, results, checks, sys.argv[1:], storm.LEFT_OUT)
    print(f"\nwritten: {args.output}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
