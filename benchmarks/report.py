"""``benchmarks/RESULTS.md``: what a full ``compare.py`` run writes (its table, spread and notes).

Apart from ``compare.py`` so that the run reads as the measures and this as their page.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any, Callable

from variants import OURS, OURS_OFFICIAL, OURS_VARIANTS, PLAIN, versions
from verdict import Check

LABELS = {PLAIN: "plain Celery", OURS: "bugsnag-celery", "bugsnag_python": "bugsnag-python",
          "sentry": "sentry-sdk", "otel": "OpenTelemetry",
          OURS_OFFICIAL: "bugsnag-celery (official client configured)"}  # fmt: skip
#: The parts that may measure a variant beyond ``results["variants"]`` (``OURS_OFFICIAL``).
EXTRA_PARTS = ("failure", "storm")


def machine() -> dict[str, str]:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            mem = f"{int(fh.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return {"os": f"{platform.system()} {platform.release()} {platform.machine()}", "cpu": model,
            "cores": str(os.cpu_count()), "memory": mem, "python": platform.python_version()}  # fmt: skip


NOTES = """\
## Reading the table

- "bugsnag-celery (official client configured)": bugsnag-celery with the official client
  configured as a project has it (`bugsnag.configure` with params_filters, one
  `before_notify` callback, 20 breadcrumbs, 2 feature flags: `variants.py`), whose policy
  every event then honours. Measured on the failure path and in the error storm only
  ("not measured" elsewhere).
- What each variant does per task run: bugsnag-celery opens a session and counts it
  (delivered by the beat task); bugsnag-python runs `bugsnag.start_session()` from
  `task_prerun` and reports failures synchronously (`asynchronous=False` in its Celery
  handler: the 50 ms endpoint is paid inside the task); Sentry reports errors only (no
  sessions for tasks, so no session requests); OpenTelemetry records a span per run.
  OpenTelemetry's batch processor keeps at most 2,048 spans and drops the rest when the
  exporter falls behind, so its network figure is a floor, not what it would need to send.
- Three success-path figures, because a ~50 us eager run swings by microseconds between
  processes on a shared machine: separate processes (the first row), one process with the
  variants alternating in short batches (machine drift cancels, the spread does not), and
  CPU instructions counted under valgrind (the main thread only; repeated counts agree
  within ~1,000 per run). The 1/3 target is judged on the last two.
- Where bugsnag-celery's success-path instructions go (valgrind, eager no-op, 2026-12-02):
  about 11,000 added to Celery's ~428,000. Removed that day: a dict update under a lock
  for the per-minute count (now `next()` on an `itertools.count`, ~3,500 fewer) and the
  `build_tracer` hook's `*args, **kwargs` forwarding, which eager runs pass through on
  every call (now Celery's own parameters, forwarded positionally, ~3,800 fewer). What is
  left: the wrapper's frame and `ContextVar` set/reset (~6,500, the same with sessions
  switched off), the request lookup, the clock, the count and the session object.
- The "1/5 of the cheapest peer" line is a report, not a target: it asks for ~1.6 us on a
  ~50 us run, below the floor of an exact, current session per run in pure Python.
- Where the failure path goes (2026-12-03; `benchmarks/ab.py --failure`: one process, CPU of
  every thread, delivery included, the garbage collector on). Plain Celery's own failing
  eager run is 550-850 us: about a third is the garbage collector (a failure leaves
  reference cycles), ~190 us is billiard's `ExceptionInfo` copying the `co_positions()` of
  Celery's `trace_task` frame. bugsnag-celery adds ~5 us for the wrapper and session, ~40
  us to build the event (frames with code, causes, task metadata, redaction), ~13 us to
  encode it, and the rest to hand it over and deliver it (a POST costs the sender 1-2 ms
  of CPU in `requests`, shared by the events it merges). Removed that day: the wrapper's
  frame in every failure's traceback (dropped before the re-raise, Python 3.11+) and event
  dicts waiting in the sender's queue, which every collection walked (full collections
  22 -> 35-39 per 12,000 failures; now encoded bytes): +402 -> +262 us in the same rounds.
- Storm: plain Celery's own worker RSS grows in a failing storm (result and traceback
  objects), so memory is judged against plain's growth, not against zero. Where a pool
  child's time goes (py-spy, 2026-12-03): Celery's failure handling is most of it
  (`ExceptionInfo` alone ~24% of samples, then pickled to the main process); bugsnag-celery
  ~2.4% building and handing over events, ~1.9% the per-second flush of session counts (a
  new broker connection for each), ~1% the sender thread.
"""


def write(path: Path, started: datetime.datetime, results: dict[str, Any], checks: list[Check],
          argv: list[str], left_out: dict[str, str]) -> None:  # fmt: skip
    """``RESULTS.md`` of a full run: the table, the spread, the targets, the notes.

    *left_out*: the variants a part left out, and why (the storm's).
    """
    variants: list[str] = results["variants"]
    # a column for a variant only some parts measured (OURS_OFFICIAL: failure and storm)
    variants = variants + [
        v for v in OURS_VARIANTS if v not in variants and any(v in results.get(p, {}) for p in EXTRA_PARTS)
    ]
    m = machine()
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{' '.join(['benchmarks/compare.py', *argv])}`"
        f" on {started:%Y-%m-%d} ({started:%H:%M} UTC).",
        f"Machine: {m['os']}, {m['cpu']}, {m['cores']} cores, {m['memory']}; Python {m['python']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "Ratios are to plain Celery (median of alternating rounds, each variant in its own process).",
        "",
        "| measure | " + " | ".join(LABELS[v] for v in variants) + " |",
        "| --- |" + " --- |" * len(variants),
    ]

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    def measured(part: dict[str, Any], cell: Callable[[Any], str]) -> list[str]:
        """Each column's *cell* of *part*'s figures; "not measured" where the part has none."""
        return [cell(part[v]) if v in part else "not measured" for v in variants]

    for scenario, title in (("success", "success path, us/task"), ("failure", "failure path, us/task")):
        if scenario in results:
            row(
                title,
                measured(
                    results[scenario], lambda s: f"{s['median']:,.2f} (x{s['ratio']:.2f}, {s['added']:+,.2f})"
                ),
            )
    if "inprocess" in results:
        ip = results["inprocess"]
        cells = {PLAIN: f"{ip['plain']:,.2f}", **{v: f"{a:+.2f}" for v, a in ip["added"].items()}}
        row("success path in one process, us/task (added)", [cells.get(v, "not measured") for v in variants])
    if "instructions" in results:
        ins = results["instructions"]
        cells = {PLAIN: f"{ins['per_run'][PLAIN]:,.0f}", **{v: f"{a:+,.0f}" for v, a in ins["added"].items()}}
        row("success path, CPU instructions/task (added)", [cells.get(v, "not measured") for v in variants])
    if "throughput" in results:
        row(
            "worker throughput, tasks/s",
            measured(results["throughput"], lambda t: f"{t['median']:,.0f} (x{t['ratio']:.3f})"),
        )
    if "storm" in results:
        st = results["storm"]
        left = left_out
        row("error storm, tasks/s", [f"{st[v]['median']:,.0f} (x{st[v]['ratio']:.3f})" if v in st
                                     else f"left out ({left[v]})" if v in left else "not measured"
                                     for v in variants])  # fmt: skip
        row("error storm, peak worker RSS growth", [f"{st[v]['rss_growth_mb']:+.1f} MB" if v in st else "-"
                                                    for v in variants])  # fmt: skip
    if "memory" in results:
        row(
            "worker RSS growth per 200,000 tasks",
            measured(results["memory"], lambda m: f"{m['growth']:+.2f} MB"),
        )
    if "network" in results:
        n = results["network"]
        row("requests per 1,000,000 tasks", measured(n, lambda r: f"{r['per_million']['requests']:,.0f}"))
        row("bytes per 1,000,000 tasks", measured(n, lambda r: f"{r['per_million']['bytes']:,.0f}"))
    lines += ["", "Spread (min to max over the rounds):", ""]
    for scenario in ("success", "failure"):
        if scenario in results:
            s = results[scenario]
            lines.append(f"- {scenario}: " + "; ".join(
                f"{LABELS[v]} {s[v]['min']:,.2f}-{s[v]['max']:,.2f} us (added {s[v]['added_min']:+,.2f} to "
                f"{s[v]['added_max']:+,.2f})" for v in variants if v in s) + ".")  # fmt: skip
    if "throughput" in results:
        t = results["throughput"]
        spread = "; ".join(
            f"{LABELS[v]} {t[v]['min']:,.0f}-{t[v]['max']:,.0f} tasks/s" for v in variants if v in t
        )
        lines.append(f"- throughput: {spread}.")
    if "storm" in results:
        st = results["storm"]
        spread = "; ".join(
            f"{LABELS[v]} {st[v]['min']:,.0f}-{st[v]['max']:,.0f} tasks/s" for v in variants if v in st
        )
        lines.append(f"- storm: {spread}.")
        for v in OURS_VARIANTS:
            for r in st.get(v, {}).get("received", []):
                lines.append(
                    f"- storm, {LABELS[v]} at the endpoint: {r['unique']:,} of {r['runs']:,} failing runs' "
                    f"events, {r['duplicates']} twice; {r['sessions']:,} sessions; {r['requests']} event "
                    f"requests from {r['processes']} processes, at most {r['peak_requests_per_second']} "
                    "from one process within a second; Retry-After waited out "
                    f"{r['honoured']}/{r['throttled']}."
                )
    if "inprocess" in results:
        ip = results["inprocess"]
        lines.append(
            f"- success in one process: {ip['rounds']} rounds x {ip['runs']:,} runs, median of "
            "per-round differences to plain."
        )
    if "instructions" in results:
        lines.append(
            f"- success in CPU instructions: {results['instructions']['runs']:,} runs, main thread only, "
            "counted by valgrind (callgrind); repeated counts agree within ~1,000 per run."
        )
    elif results.get("instructions_missing"):  # asked for, but no valgrind here
        lines.append("- success in CPU instructions: not counted (valgrind missing).")
    if "network" in results:
        scaled = {LABELS[v]: results["network"][v]["runs"] for v in variants if v in results["network"]}
        scaled = {k: r for k, r in scaled.items() if r != 1_000_000}
        if scaled:
            lines.append("- network: " + ", ".join(f"{k} ran {r:,} tasks" for k, r in scaled.items())
                         + ", scaled to a million.")  # fmt: skip
    lines += ["", "Targets (bugsnag-celery, same run):", ""]
    lines += [f"- {'MET' if c.met else 'MISSED'} ({c.kind}): {c.text}" for c in checks]
    if results["missing"]:
        lines += ["", f"Not installed, left out: {', '.join(results['missing'])}."]
    lines += ["", NOTES]
    path.write_text("\n".join(lines))
