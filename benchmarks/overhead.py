"""Per-task cost of bugsnag-celery on the success path and on the failure path.

success: ``task.apply()`` of a no-op task (opening and closing a session), target <= 5 us.
failure: ``task.apply()`` of a task that raises (building the event and handing it to the
         sender), against a local endpoint that answers after 50 ms -- a synchronous send
         would cost 50 ms -- target <= 1 ms.

Each variant runs in its own fresh process, variants alternate, the whole thing is
repeated, and the median and spread of (instrumented - plain) are printed. Timings on a
shared machine are noisy: read the median, not a single run.

    .venv/bin/python benchmarks/overhead.py              # both scenarios, full size
    .venv/bin/python benchmarks/overhead.py --quick      # smoke mode (part of the tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VARIANTS = ("plain", "bugsnag_celery")
SCENARIOS = {
    # name: (runs per batch, target in microseconds)
    "success": (20_000, 5.0),
    "failure": (2_000, 1000.0),
}
KEY = "0" * 31 + "1"


def measure(variant: str, scenario: str, runs: int, endpoint: str) -> dict[str, Any]:
    """In a child process: microseconds per ``task.apply()``."""
    import logging

    from celery import Celery

    logging.disable(logging.CRITICAL)  # Celery logs every eager failure; not what we measure
    app = Celery("bench", broker="memory://", backend=None, set_as_current=True)
    app.conf.task_store_eager_result = False
    if variant == "bugsnag_celery":
        import bugsnag_celery

        bugsnag_celery.configure(
            app, api_key=KEY, app_version="bench", notify_endpoint=f"{endpoint}/notify",
            sessions_endpoint=f"{endpoint}/sessions",
        )  # fmt: skip

    @app.task
    def noop() -> None:
        return None

    def inner() -> None:
        raise ValueError("benchmark failure")

    @app.task
    def fails() -> None:
        inner()

    task = noop if scenario == "success" else fails
    warmup = min(500, runs)
    for _ in range(warmup):
        task.apply()
    best = float("inf")
    for _ in range(3):  # best of three batches within the process: least disturbed
        start = time.perf_counter()
        for _ in range(runs):
            task.apply()
        best = min(best, (time.perf_counter() - start) / runs * 1e6)
    result: dict[str, Any] = {"us_per_task": best}
    if variant == "bugsnag_celery":
        import bugsnag_celery
        from bugsnag_celery import integration
        from bugsnag_celery.queues import take_batch

        # Every run was counted, nothing skipped: what the flusher moved to the (in-memory)
        # broker while we measured -- its cost is part of the figure -- plus what is left.
        integration._flusher.flush_once()
        with app.connection_for_read() as conn:
            moved = take_batch(conn, "bugsnag_celery.sessions", 1_000_000).bodies
        counted = sum(n for body in moved for group in body["groups"] for n in group["counts"].values())
        assert counted == warmup + 3 * runs, counted
    return result


class _SlowEndpoint(BaseHTTPRequestHandler):
    events = 0
    requests = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(0.05)  # a slow BugSnag: a synchronous notifier pays this per failure
        try:
            events = len(json.loads(body).get("events", []))
        except ValueError:  # a benchmark child exited mid-request: not counted
            events = 0
        type(self).requests += 1
        type(self).events += events
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def run_variant(variant: str, scenario: str, runs: int, endpoint: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--scenario", scenario, "--runs", str(runs),
         "--endpoint", endpoint],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(json.loads(out.stdout)["us_per_task"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--runs", type=int, help="task.apply() calls per batch (default per scenario)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds of every variant")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny numbers, no verdict")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.scenario, args.runs, args.endpoint)))
        return 0

    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowEndpoint)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    verdicts = []
    print(f"python {sys.version.split()[0]}; each variant in its own process, alternating")
    for scenario in scenarios:
        default_runs, target = SCENARIOS[scenario]
        runs = 200 if args.quick else (args.runs or default_runs)
        rounds = 1 if args.quick else args.rounds
        results: dict[str, list[float]] = {v: [] for v in VARIANTS}
        deltas: list[float] = []
        print(f"\n{scenario}: {runs:,} task.apply() runs per batch x {rounds} rounds", flush=True)
        for i in range(rounds):
            order = VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS))
            got = {v: run_variant(v, scenario, runs, endpoint) for v in order}
            for v in VARIANTS:
                results[v].append(got[v])
            deltas.append(got["bugsnag_celery"] - got["plain"])
            line = f"plain {got['plain']:.2f} us, bugsnag_celery {got['bugsnag_celery']:.2f} us"
            print(f"  round {i + 1}: {line}, added {deltas[-1]:+.2f} us", flush=True)
        for v in VARIANTS:
            vals = results[v]
            spread = f"(min {min(vals):.2f}, max {max(vals):.2f})"
            print(f"  {v:15s} median {statistics.median(vals):8.2f} us/task  {spread}")
        median = statistics.median(deltas)
        print(f"  added per task: median {median:+.2f} us  (min {min(deltas):+.2f}, max {max(deltas):+.2f})")
        if not args.quick:
            met = median <= target
            verdicts.append(met)
            print(f"  target: at most {target:g} us -> {'MET' if met else 'MISSED'}")
    if "failure" in scenarios:
        print(f"\nlocal endpoint (50 ms per request) received {_SlowEndpoint.events:,} events"
              f" in {_SlowEndpoint.requests:,} requests")  # fmt: skip
    server.shutdown()
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
