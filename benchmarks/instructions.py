"""The success path in CPU instructions: a count that machine noise cannot move.

Timings of a ~50 us eager run swing by several microseconds from run to run on a shared
machine (``inprocess.py`` alternates variants in one process to cancel the drift, and still
its ratios spread). Counting the instructions a task run executes hardly moves (repeated
counts of one variant agree within ~1,000 instructions per run of ~430,000: random task ids
and the allocator's addresses differ from run to run; 300 runs smooth that to ~3,000): each
variant runs a no-op ``task.apply()`` N times under valgrind (callgrind, one count per
thread), once with N = 0 and once with N = ``--runs``; the difference of the *main thread's*
counts divided by N is what one run costs, start-up and warm-up excluded, and background
threads (flushers, session trackers, span exporters: their cost is a time share, measured by
the worker throughput) left out. Instructions are not time -- a cache miss costs more than an
add -- but the two move together on this path, and this one does not drift.

    .venv/bin/python benchmarks/instructions.py                  # plain, ours, the peers
    .venv/bin/python benchmarks/instructions.py --variants plain bugsnag_celery bugsnag_python
    .venv/bin/python benchmarks/instructions.py --failure --runs 300 \
        --variants plain bugsnag_celery bugsnag_celery_official

``--failure``: runs of a task that raises instead, each variant's events going to a closed
port. The event is built and encoded on the task's thread (counted); the sender thread's
work and the garbage collector (disabled while counting: when it runs depends on the
allocator, not on the code) are not -- ``overhead.py`` and ``ab.py --failure`` time those.
This is the failure path's figure that noise cannot move: what honouring the official
client's policy costs (``bugsnag_celery_official``) against this package's own rules.

Needs valgrind (``apt-get install valgrind``); without it, says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import eager_app  # noqa: E402
from variants import ALL, OURS, OURS_OFFICIAL, PLAIN, available  # noqa: E402

OFFICIAL = "bugsnag_python"
WARMUP = 300


def child(variant: str, runs: int, failure: bool = False) -> None:
    """Set *variant* up as a user would, warm up, then *runs* eager no-ops (*failure*: runs
    of a task that raises); leave at once."""
    import gc
    import logging

    from variants import instrument

    app, noop = eager_app("instructions")

    def inner() -> None:
        raise ValueError("benchmark failure")

    @app.task
    def fails() -> None:
        inner()

    task = fails if failure else noop
    logging.disable(logging.CRITICAL)  # Celery logs every eager failure; not what is counted
    # a closed port: the success path sends nothing; a failure's event is built and encoded
    # on the task's thread (counted), sent by a background thread (not counted)
    instrument(variant, app, "http://127.0.0.1:9")
    for _ in range(WARMUP):
        task.apply()
    gc.collect()
    gc.disable()
    for _ in range(runs):
        task.apply()
    sys.stdout.flush()
    os._exit(0)  # no exit handlers: they would run in the main thread and be counted


def main_thread_instructions(variant: str, runs: int, failure: bool = False) -> int:
    """Instructions the main thread of a child running *variant* executed (callgrind)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
             sys.executable, str(Path(__file__).resolve()), "--child", variant, str(runs),
             *(["--failure"] if failure else [])],
            check=True, capture_output=True, timeout=1800, cwd=str(HERE),
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts in both runs
        )  # fmt: skip
        main = Path(f"{out}-01")  # callgrind numbers threads from 1, the main thread first
        for line in main.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in callgrind's output for {variant}")


def measure(variants: list[str], runs: int, failure: bool = False) -> dict[str, Any]:
    per_run = {}
    for variant in variants:
        base = main_thread_instructions(variant, 0, failure)
        total = main_thread_instructions(variant, runs, failure)
        per_run[variant] = (total - base) / runs
        print(f"  {variant:15s} {per_run[variant]:>12,.0f} instructions per task", flush=True)
    plain = per_run[PLAIN]
    added = {v: n - plain for v, n in per_run.items() if v != PLAIN}
    result: dict[str, Any] = {"runs": runs, "per_run": per_run, "added": added}
    if OURS in added and added.get(OFFICIAL):
        result["ratio"] = added[OURS] / added[OFFICIAL]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", choices=[*ALL, OURS_OFFICIAL], default=list(ALL))
    parser.add_argument(
        "--failure",
        action="store_true",
        help="runs of a raising task (the event built and encoded on the task's thread; sending not counted)",
    )
    parser.add_argument("--runs", type=int, default=2000, help="task runs counted per variant")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "RUNS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.failure)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind missing: instructions not counted (apt-get install valgrind)")
        return 2
    variants, missing = available([PLAIN, *[v for v in args.variants if v != PLAIN]])
    if missing:
        print(f"not installed, left out: {', '.join(missing)}")
    what = "failure path" if args.failure else "success path"
    runs = "eager runs of a raising task" if args.failure else "eager no-ops"
    print(f"{what} in CPU instructions (valgrind): {args.runs:,} {runs} per variant")
    result = measure(variants, args.runs, args.failure)
    for variant, n in result["added"].items():
        print(f"  {variant:15s} added {n:+,.0f} instructions per task")
    if "ratio" in result and not args.failure:
        print(f"  bugsnag-celery / official session: {result['ratio']:.2f} (target <= 0.33)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
