"""The success path measured in one process: short alternating batches, so machine drift cancels.

Separate-process medians (``overhead.py``) swing by several microseconds from run to run on
a shared machine (+3.43 us one day, +8.23 another, same code). Here plain Celery,
bugsnag-celery and the official notifier's per-task session (``bugsnag.start_session()``
from ``task_prerun``, as its docs add sessions to Celery) run in the same process, on the
same app and task: each batch sets its variant up (``configure`` / ``connect``) and tears
it down after, the order reverses every round, the cyclic GC is held off inside a batch,
and the figure is the median over the rounds of each variant's cost minus plain's.

    .venv/bin/python benchmarks/inprocess.py            # 40 rounds x 2,000 eager no-ops
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from typing import Any

from harness import batch, eager_app
from variants import KEY, OURS, PLAIN, available

OFFICIAL = "bugsnag_python"


def measure(rounds: int, runs: int, endpoint: str = "http://127.0.0.1:9") -> dict[str, list[float]]:
    """us per eager no-op ``task.apply()`` of every available variant, per round."""
    from celery.signals import task_prerun

    import bugsnag_celery

    app, noop = eager_app("inprocess")

    variants, _missing = available([PLAIN, OURS, OFFICIAL])
    official_session: Callable[..., None] | None = None
    if OFFICIAL in variants:
        import bugsnag

        bugsnag.configure(api_key=KEY, app_version="bench", endpoint=f"{endpoint}/notify",
                          session_endpoint=f"{endpoint}/sessions")  # fmt: skip

        def official_session(**_: Any) -> None:
            bugsnag.start_session()

    def setup(variant: str) -> None:
        if variant == OURS:
            bugsnag_celery.configure(app, api_key=KEY, notify_endpoint=f"{endpoint}/notify",
                                     sessions_endpoint=f"{endpoint}/sessions")  # fmt: skip
        elif variant == OFFICIAL:
            task_prerun.connect(official_session, weak=False)

    def teardown(variant: str) -> None:
        if variant == OURS:
            bugsnag_celery.unconfigure(app)
            bugsnag_celery.take_pending_counts()  # not delivered: this measures the task's path
        elif variant == OFFICIAL:
            task_prerun.disconnect(official_session)

    results: dict[str, list[float]] = {v: [] for v in variants}
    for variant in variants:  # warm every path once: imports, threads
        setup(variant)
        batch(noop.apply, 500)
        teardown(variant)
    for index in range(rounds):
        for variant in variants if index % 2 == 0 else list(reversed(variants)):
            setup(variant)
            results[variant].append(batch(noop.apply, runs))
            teardown(variant)
    return results


def summary(results: dict[str, list[float]]) -> dict[str, float]:
    """Median added us per task of each variant over plain (median of per-round differences)."""
    plain = results[PLAIN]
    return {
        v: statistics.median(x - p for x, p in zip(vals, plain)) for v, vals in results.items() if v != PLAIN
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="one JSON line (for compare.py)")
    args = parser.parse_args()
    results = measure(args.rounds, args.runs)
    added = summary(results)
    plain = statistics.median(results[PLAIN])
    if args.json:
        print(json.dumps({"plain": plain, "added": added, "rounds": args.rounds, "runs": args.runs}))
        return 0
    print(f"success path in one process: {args.rounds} rounds x {args.runs:,} eager no-ops per variant")
    print(f"  plain Celery        {plain:7.2f} us per task")
    for variant, cost in added.items():
        print(f"  {variant:<19} {cost:+.2f} us")
    if OFFICIAL in added and added[OFFICIAL] > 0:
        print(f"  bugsnag-celery / official session: {added[OURS] / added[OFFICIAL]:.2f} (target <= 0.33)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
