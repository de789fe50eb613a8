"""This checkout against another version of the package, on the success path, in one process.

Separate-process medians swing by several microseconds on a shared machine, more than a
change usually moves the figure. Here both versions live in the same process: the other
checkout's ``bugsnag_celery`` is loaded under another name (its core imports itself
relatively), and the variants alternate in short batches -- configure, measure, unconfigure
-- with the order reversed every round, so drift of the machine falls on both alike. The
figure is each variant's median over the rounds, minus plain Celery's median.

    git worktree add /tmp/before main            # the version to compare with
    .venv/bin/python benchmarks/ab.py --other /tmp/before
    .venv/bin/python benchmarks/ab.py --other /tmp/before --failure   # a raising task instead

``--failure``: the task raises, and events go to an endpoint in another process that answers
after 50 ms (the harness's stand-in, as ``overhead.py``'s). A batch is then timed in CPU
seconds of the whole process (every thread), its runs and the delivery of its events
included, with the cyclic garbage collector on: a failing run leaves reference cycles
(exception, traceback, frames), and what the collector then walks -- events waiting in
the sender's queue among it -- is part of the cost, as is the sender thread's encoding and
HTTP. Waiting for the endpoint is not (it costs no CPU), so every batch ends with an idle
sender and the next starts clean.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from harness import batch, eager_app
from variants import KEY, configure_official_client

OTHER_NAME = "bugsnag_celery_other"


def load_other(checkout: Path) -> ModuleType:
    """The other checkout's package, imported as ``bugsnag_celery_other``."""
    where = Path(tempfile.mkdtemp(prefix="bsc-ab-"))
    shutil.copytree(checkout / "bugsnag_celery", where / OTHER_NAME)
    sys.path.insert(0, str(where))
    return importlib.import_module(OTHER_NAME)


def cpu_batch(apply: Callable[[], Any], runs: int, package: ModuleType | None) -> float:
    """CPU microseconds of the whole process per call, the delivery of the batch's events included."""
    gc.collect()
    start = time.process_time()
    for _ in range(runs):
        apply()
    if package is not None:
        package.flush_events(30)
    return (time.process_time() - start) / runs * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--other", type=Path, required=True, help="a checkout of another version")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--runs", type=int, help="task.apply() calls per batch (1,000; 100 with --failure)")
    parser.add_argument("--failure", action="store_true", help="a raising task against a 50 ms endpoint")
    parser.add_argument(
        "--official",
        action="store_true",
        help="the official bugsnag client configured too: 1 before_notify callback, 20 breadcrumbs, 2 flags",
    )
    args = parser.parse_args()
    if args.runs is None:
        args.runs = 100 if args.failure else 1000
    if args.failure and args.rounds == 100:
        args.rounds = 40

    import bugsnag_celery

    other = load_other(args.other)
    app, noop = eager_app("ab")

    def inner() -> None:
        raise ValueError("benchmark failure")

    @app.task
    def fails() -> None:
        inner()

    endpoint, server = "http://127.0.0.1:9", None
    if args.failure:
        server = subprocess.Popen(
            [sys.executable, "-c", "import time, harness; "
             "print(harness.endpoint(harness.SLOW).url, flush=True); time.sleep(86400)"],
            cwd=str(Path(__file__).resolve().parent), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.stdout is not None
        endpoint = server.stdout.readline().strip()
    task = fails if args.failure else noop

    def apply() -> None:
        try:
            task.apply()
        except ValueError:  # pragma: no cover - eager runs store the failure, not raise it
            pass

    if args.official:
        configure_official_client(endpoint, app_version="ab")
    options = {"api_key": KEY, "app_version": "ab", "notify_endpoint": f"{endpoint}/notify",
               "sessions_endpoint": f"{endpoint}/sessions"}  # fmt: skip
    packages: dict[str, ModuleType | None] = {"plain": None, "this checkout": bugsnag_celery, "other": other}
    results: dict[str, list[float]] = {name: [] for name in packages}
    names = list(packages)
    for package in packages.values():  # warm every path once: imports, threads
        if package is not None:
            package.configure(app, **options)
        batch(apply, 2 * args.runs)
        if package is not None:
            package.flush_events(30)
            package.unconfigure(app)
    for rnd in range(args.rounds):
        for name in names if rnd % 2 == 0 else reversed(names):
            package = packages[name]
            if package is not None:
                package.configure(app, **options)
            if args.failure:
                results[name].append(cpu_batch(apply, args.runs, package))
            else:
                results[name].append(batch(apply, args.runs))
            if package is not None:
                package.flush_events(30)
                package.unconfigure(app)
    if server is not None:
        server.kill()
        server.wait()
    plain = statistics.median(results["plain"])
    path = "failure path (50 ms endpoint), CPU of every thread" if args.failure else "success path"
    if args.official:
        path += ", official client configured (1 callback, 20 breadcrumbs, 2 flags)"
    print(f"{path}, {args.rounds} rounds x {args.runs:,} task.apply() per variant, medians:")
    print(f"  plain Celery      {plain:7.2f} us per task")
    for name in names[1:]:
        median = statistics.median(results[name])
        # each round's variants ran back to back: the difference within a round cancels what
        # the machine did to that round (another process, a busy host), the medians do not
        paired = statistics.median(x - p for x, p in zip(results[name], results["plain"]))
        print(f"  {name:<17} {median:7.2f} us per task  (+{median - plain:.2f} us; "
              f"median of the rounds' differences +{paired:.2f} us)")  # fmt: skip
    ours, theirs = results["this checkout"], results["other"]
    print(f"  this checkout - other, median of the rounds' differences: "
          f"{statistics.median(x - y for x, y in zip(ours, theirs)):+.2f} us")  # fmt: skip
    print(f"  other checkout: {args.other} (bugsnag_celery {getattr(other, '__version__', '?')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
