"""Per-task cost on the success path and on the failure path, for every variant.

success: ``task.apply()`` of a no-op task (bugsnag-celery: opening and closing a session),
         20,000 runs per batch. Target: at most 5 us over plain Celery, and at most 1/5 of
         the cheapest peer's added cost.
failure: ``task.apply()`` of a task that raises, against a local endpoint that answers after
         50 ms -- a synchronous send costs 50 ms. Targets: at most 250 us added, and less
         than OpenTelemetry's instrumentation adds in the same run.

Variants (``benchmarks/variants.py``): plain Celery, bugsnag-celery, and the peers that are
installed (``pip install -e '.[bench]'``): the official bugsnag-python, sentry-sdk,
OpenTelemetry. ``--variants ... bugsnag_celery_official`` adds bugsnag-celery with the official
client configured too (1 before_notify callback, 20 breadcrumbs, 2 feature flags,
params_filters): its counts are checked as bugsnag-celery's, and on the failure path it has the
same two targets. Each variant runs in its own fresh process, variants alternate (the order
reverses every round), the whole is repeated, and the median and spread are printed.
Timings on a shared machine are noisy: read the median, not a single run.

    .venv/bin/python benchmarks/overhead.py              # both scenarios, full size
    .venv/bin/python benchmarks/overhead.py --quick      # smoke mode (part of the tests)
    .venv/bin/python benchmarks/overhead.py --scenario failure \
        --variants plain bugsnag_celery bugsnag_celery_official otel
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness
from variants import OFFICIAL_SETUP, OURS, OURS_OFFICIAL, OURS_VARIANTS, PEERS, PLAIN, available, instrument
from verdict import EXACT, REPORT, TARGET, Check, conclude

SCENARIOS = {
    # name: (runs per batch, batches per process, target for bugsnag-celery in microseconds)
    "success": (20_000, 3, 5.0),
    # A synchronous notifier (the official one) pays the endpoint's 50 ms per failure: 300
    # runs keep its batch at 15 s.
    "failure": (300, 1, 250.0),
}


def measure(
    variant: str, scenario: str, runs: int, batches: int, endpoint: str, warmup_seconds: float = 2.5
) -> dict[str, Any]:
    """In a child process: microseconds per ``task.apply()`` (best of *batches*)."""
    import logging

    from celery import Celery

    logging.disable(logging.CRITICAL)  # Celery logs every eager failure; not what we measure
    app = Celery("bench", broker="memory://", backend=None, set_as_current=True)
    app.conf.task_store_eager_result = False
    instrument(variant, app, endpoint)

    @app.task
    def noop() -> None:
        return None

    def inner() -> None:
        raise ValueError("benchmark failure")

    @app.task
    def fails() -> None:
        inner()

    task = noop if scenario == "success" else fails
    # Warm up for a fixed time, every variant alike, so that one-time work is not in the
    # figure: each instrumentation starts a background thread on first use (our flusher,
    # bugsnag-python's session timer, Sentry's transport, OpenTelemetry's span processor),
    # and the first flush imports the broker transport. In a short process that one-time
    # import, slowed by competing for the GIL with the loop, cost ~1 us per task of a
    # 60,000-task measurement; a worker pays it once in hours.
    warmup, until = 0, time.perf_counter() + warmup_seconds
    while time.perf_counter() < until:
        task.apply()
        warmup += 1
    best = float("inf")
    for _ in range(batches):  # best batch within the process: the least disturbed
        start = time.perf_counter()
        for _ in range(runs):
            task.apply()
        best = min(best, (time.perf_counter() - start) / runs * 1e6)
    result: dict[str, Any] = {"us_per_task": best, "runs": warmup + batches * runs}
    if variant in OURS_VARIANTS:
        import bugsnag_celery

        # Deliver everything to the endpoint, where the parent counts it: every run a
        # session (what the flusher moved to the in-memory broker while we measured -- its
        # cost is part of the figure -- plus what is left), every failing run one event:
        # sent by the sender thread, or spilled to the broker's spool when its queue was full
        # and sent by this delivery run, as the beat's next run would.
        result["delivery"] = bugsnag_celery.flush(app, 60)
    return result


def run_variant(
    variant: str, scenario: str, runs: int, batches: int, endpoint: Any, warmup: float = 2.5
) -> dict[str, Any]:
    """One variant in a fresh process: its us/task, its runs, and what *endpoint* (a
    :func:`harness.endpoint`) received of them."""
    before = len(endpoint.received())
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--scenario",
            scenario,
            "--runs",
            str(runs),
            "--batches",
            str(batches),
            "--endpoint",
            endpoint.url,
            "--warmup",
            str(warmup),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,  # a full-size batch takes seconds; a stuck child fails the run, not hangs it
    )
    child: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    # the child delivered everything before it exited: what came in meanwhile is its own
    records = endpoint.received()[before:]
    child["sessions_received"] = harness.sessions([r for r in records if r["path"].endswith("/sessions")])
    child["events_received"] = harness.events(records)
    return child


def label(scenario: str, variant: str) -> str:
    """*scenario*, and for bugsnag-celery with the official client configured, which that is."""
    return f"{scenario}, {OFFICIAL_SETUP}" if variant == OURS_OFFICIAL else scenario


def run_scenario(
    scenario: str,
    variants: list[str],
    runs: int,
    batches: int,
    rounds: int,
    endpoint: Any,
    warmup: float = 2.5,
    checks: list[Check] | None = None,
) -> dict[str, list[float]]:
    """us/task of every variant in every round; prints each round as it goes.

    Appends to *checks* the exactness of bugsnag-celery's runs (each of its variants:
    ``variants.OURS_VARIANTS``), counted by the endpoint: one session per run, and on the
    failure path one event per run.
    """
    results: dict[str, list[float]] = {v: [] for v in variants}
    ours = [v for v in OURS_VARIANTS if v in variants]
    ran, sessions, events = dict.fromkeys(ours, 0), dict.fromkeys(ours, 0), dict.fromkeys(ours, 0)
    print(f"\n{scenario}: {runs:,} task.apply() runs per batch x {rounds} rounds", flush=True)
    for i in range(rounds):
        order = variants if i % 2 == 0 else list(reversed(variants))
        got = {v: run_variant(v, scenario, runs, batches, endpoint, warmup) for v in order}
        for v in variants:
            results[v].append(got[v]["us_per_task"])
        for v in ours:
            ran[v] += got[v]["runs"]
            sessions[v] += got[v]["sessions_received"]
            events[v] += got[v]["events_received"]
        line = ", ".join(f"{v} {got[v]['us_per_task']:.2f}" for v in variants)
        print(f"  round {i + 1}: {line} (us/task)", flush=True)
    for v in ours:
        what = label(scenario, v)
        text = f"{what}: the endpoint received {sessions[v]:,} sessions for {ran[v]:,} runs"
        exact = [Check(text, sessions[v] == ran[v], EXACT)]
        if scenario == "failure":
            text = f"{what}: the endpoint received {events[v]:,} events for {ran[v]:,} failing runs"
            exact.append(Check(text, events[v] == ran[v], EXACT))
        if checks is not None:
            checks += exact
    return results


def summarize(results: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per variant: median us/task, min, max, and the median added cost over plain Celery
    (the median of the per-round differences: rounds share the machine's state)."""
    plain = results[PLAIN]
    out = {}
    for v, vals in results.items():
        deltas = [x - p for x, p in zip(vals, plain)]
        out[v] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                  "added": statistics.median(deltas), "added_min": min(deltas), "added_max": max(deltas),
                  "ratio": statistics.median(vals) / statistics.median(plain)}  # fmt: skip
    return out


def verdicts(scenario: str, summary: dict[str, dict[str, float]]) -> list[Check]:
    """bugsnag-celery's targets in *scenario*; on the failure path the same two again for
    bugsnag-celery with the official client configured (``OURS_OFFICIAL``), when it ran."""
    if OURS not in summary:  # only bugsnag-celery with the official client measured
        return official_verdicts(scenario, summary)
    target = SCENARIOS[scenario][2]
    ours = summary[OURS]["added"]
    text = f"{scenario}: bugsnag-celery adds at most {target:g} us (adds {ours:+.2f})"
    checks = [Check(text, ours <= target, TARGET)]
    peers = {v: s["added"] for v, s in summary.items() if v in PEERS}
    if scenario == "success" and peers:
        cheapest = min(peers, key=lambda v: peers[v])
        bound = peers[cheapest] / 5
        text = (
            f"success: at most 1/5 of the cheapest peer's added cost ({cheapest} "
            f"{peers[cheapest]:+.2f} us, 1/5 = {bound:.2f}; ours {ours:+.2f})"
        )
        # REPORT: the README says this one is missed, and why (the floor of an exact session)
        checks.append(Check(text, ours <= bound, REPORT))
    if scenario == "failure" and "otel" in summary:
        otel = summary["otel"]["added"]
        text = f"failure: bugsnag-celery adds less than OpenTelemetry ({ours:+.2f} us against {otel:+.2f})"
        checks.append(Check(text, ours < otel, TARGET))
    return checks + official_verdicts(scenario, summary)


def official_verdicts(scenario: str, summary: dict[str, dict[str, float]]) -> list[Check]:
    """The failure path's two targets for bugsnag-celery with the official client configured."""
    if scenario != "failure" or OURS_OFFICIAL not in summary:
        return []
    target, what = SCENARIOS[scenario][2], label(scenario, OURS_OFFICIAL)
    added = summary[OURS_OFFICIAL]["added"]
    checks = [Check(f"{what}: bugsnag-celery adds at most {target:g} us (adds {added:+.2f})",
                    added <= target, TARGET)]  # fmt: skip
    if "otel" in summary:
        otel = summary["otel"]["added"]
        text = f"{what}: bugsnag-celery adds less than OpenTelemetry ({added:+.2f} us against {otel:+.2f})"
        checks.append(Check(text, added < otel, TARGET))
    return checks


def print_summary(scenario: str, summary: dict[str, dict[str, float]]) -> None:
    width = max(15, *map(len, summary))
    for v, s in summary.items():
        print(
            f"  {v:{width}s} median {s['median']:9.2f} us/task (min {s['min']:.2f}, max {s['max']:.2f})"
            f"  x{s['ratio']:.3f} of plain, added {s['added']:+.2f} us"
            f" (min {s['added_min']:+.2f}, max {s['added_max']:+.2f})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--runs", type=int, help="task.apply() calls per batch (default per scenario)")
    parser.add_argument("--batches", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds of every variant")
    parser.add_argument(
        "--variants",
        nargs="+",
        help=f"a subset of: plain bugsnag_celery {' '.join(PEERS)} (and {OURS_OFFICIAL}, not by default)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny numbers, no verdict")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=2.5, help="seconds of warm-up in every process")
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                measure(args.child, args.scenario, args.runs, args.batches, args.endpoint, args.warmup)
            )
        )
        return 0

    endpoint = harness.endpoint(harness.SLOW)
    variants, missing = available(args.variants)
    print(f"python {sys.version.split()[0]}; each variant in its own process, alternating")
    if missing:
        print(f"(not installed, left out: {', '.join(missing)}; pip install -e '.[bench]')")
    checks: list[Check] = []
    for scenario in list(SCENARIOS) if args.scenario == "all" else [args.scenario]:
        runs, batches, _ = SCENARIOS[scenario]
        runs = 50 if args.quick else (args.runs or runs)
        rounds = 1 if args.quick else args.rounds
        summary = summarize(
            run_scenario(
                scenario,
                variants,
                runs,
                1 if args.quick else batches,
                rounds,
                endpoint,
                0.2 if args.quick else args.warmup,
                checks,
            )
        )
        print_summary(scenario, summary)
        if OURS in summary:
            print(f"  added per task: median {summary[OURS]['added']:+.2f} us")
        if OURS_OFFICIAL in summary:
            print(f"  added per task, {OFFICIAL_SETUP}: median {summary[OURS_OFFICIAL]['added']:+.2f} us")
        checks += verdicts(scenario, summary)
    received = endpoint.received()
    events = harness.events(received)
    print(f"\nlocal endpoint (50 ms per request): {events:,} events in {len(received):,} requests")
    endpoint.close()
    print()
    return conclude(checks, args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
