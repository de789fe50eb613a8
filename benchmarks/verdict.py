"""What a benchmark run concludes, and the exit status that says it.

Three kinds of check, so that an exit status means something:

- ``exact``: correctness, counted on the endpoint's side (sessions received == task runs,
  every event once). Judged in every run, ``--quick`` included: a smoke run that loses a
  count fails.
- ``target``: a speed, memory or request figure that the README reports as met. Judged in
  full runs only (smoke numbers are too small to mean anything): missing one fails the run.
- ``report``: a figure the README reports as missed (an aspiration, with the reason in the
  README). Printed with its verdict, never fails the run, so that the exit status of a full
  run shows a regression instead of always being 1.
"""

from __future__ import annotations

from typing import NamedTuple

EXACT, TARGET, REPORT = "exact", "target", "report"


class Check(NamedTuple):
    text: str
    met: bool
    kind: str  # EXACT, TARGET or REPORT


def conclude(checks: list[Check], quick: bool) -> int:
    """Print every verdict; 1 if an exact check failed, or (full runs) a target was missed."""
    failing = []
    for check in checks:
        judged = check.kind == EXACT or (check.kind == TARGET and not quick)
        verdict = "MET" if check.met else "MISSED"
        if quick and check.kind != EXACT:
            verdict = "not judged (smoke mode)"
        elif check.kind == REPORT and not check.met:
            verdict += " (known, reported in the README; not a failure)"
        print(f"{check.kind}: {check.text} -> {verdict}")
        if judged and not check.met:
            failing.append(check)
    if failing:
        print(f"FAILED: {len(failing)} check(s): " + "; ".join(c.text for c in failing))
        return 1
    return 0
