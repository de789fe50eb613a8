#!/usr/bin/env python3
"""The support matrix: the whole test suite on every Python/Celery/kombu pair the package promises.

``pyproject.toml`` promises Python >= 3.9, Celery >= 5.3 and kombu >= 5.3.2, and users run everything
in between, while the README's test command tests one pair: whatever Python ``python3`` is,
with the newest Celery and kombu. This runs the same test command -- the whole suite, with
CI's ``BUGSNAG_CELERY_REQUIRE_BROKERS=1`` and ``BUGSNAG_CELERY_REQUIRE_BROWSER=1``, so a skip
is a failure -- once per pair in ``PAIRS``, each in its own copy of the working tree with its
own virtual environment (never the checkout's ``.venv``), and exits 0 only if every pair
passed. A pair whose interpreter is missing, whose install fails, or whose installed Celery or
kombu is not the one asked for is a failure too: a promise is either tested or broken.

    python3 .ci/matrix.py              # every pair, one at a time; a table at the end
    python3 .ci/matrix.py --jobs 2     # two pairs' test runs at once
    python3 .ci/matrix.py --only 3.9   # the pairs whose name contains "3.9"
    python3 .ci/matrix.py --list       # the pairs, and which interpreter each would use

Interpreters are looked up as ``python3.X`` on PATH and under pyenv's versions folder.
Logs (install and pytest output) stay in ``--workdir`` (default: ``$TMPDIR/bugsnag-celery-matrix``);
a failing pair's last lines are printed. Only the standard library is used, so any
``python3`` >= 3.9 runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The README's test command, per pair: the same extras, the same pytest, in a copy of the tree.
INSTALL_EXTRAS = ".[dev,bench]"


@dataclass(frozen=True)
class Pair:
    """One promise: a Python minor with a Celery and a kombu requirement (pip syntax).

    ``celery``/``kombu`` are pip specifiers: ``==`` pins the floor exactly, ``~=5.4.0`` takes
    the newest patch of a minor, ``""`` the newest release the rest accepts (that is how
    "with the newest kombu it accepts" stays true as kombu releases).
    """

    python: str
    celery: str
    kombu: str
    why: str

    @property
    def name(self) -> str:
        def short(spec: str) -> str:
            if spec.startswith("~="):  # ~=5.4.0: the newest 5.4.x
                return spec[2:].rsplit(".", 1)[0] + ".x"
            return spec.lstrip("=") if spec else "newest"

        return f"py{self.python}-celery{short(self.celery)}-kombu{short(self.kombu)}"

    def constraints(self) -> str:
        lines = [f"{pkg}{spec}" for pkg, spec in (("celery", self.celery), ("kombu", self.kombu)) if spec]
        return "".join(f"{line}\n" for line in lines)


PAIRS: tuple[Pair, ...] = (
    Pair("3.9", "==5.3.0", "==5.3.2", "the floor: oldest Python, Celery and kombu pyproject.toml allows"),
    Pair("3.9", "~=5.3.0", "", "oldest Python and Celery with the newest kombu they accept (5.6 on 3.9)"),
    Pair("3.10", "~=5.4.0", "", "Celery 5.4 with the newest kombu it accepts"),
    Pair("3.11", "~=5.6.0", "", "Celery 5.6 with the newest kombu it accepts"),
    Pair("3.12", "~=5.5.0", "", "Celery 5.5 with the newest kombu it accepts (< 5.6)"),
    Pair("3.13", "", "", "newest Python, newest Celery and kombu"),
)


@dataclass
class Outcome:
    pair: Pair
    result: str = "failed"  # passed, failed, missing
    detail: str = ""
    python: str = ""
    celery: str = ""
    kombu: str = ""
    install_s: float = 0.0
    test_s: float = 0.0
    log: Path | None = None
    tail: list[str] = field(default_factory=list)


def find_python(minor: str) -> str | None:
    """The newest installed ``python<minor>``: pyenv's versions first, then PATH.

    pyenv's shims are skipped: a shim for a version that is not selected answers with an
    error instead of running it.
    """
    candidates: list[str] = []
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    versions = Path(pyenv_root) / "versions"
    if versions.is_dir():
        found = [p for p in versions.glob(f"{minor}.*") if re.fullmatch(rf"{re.escape(minor)}\.\d+", p.name)]
        found.sort(key=lambda p: int(p.name.rsplit(".", 1)[1]), reverse=True)
        candidates += [str(p / "bin" / f"python{minor}") for p in found]
    on_path = shutil.which(f"python{minor}")
    if on_path and "/shims/" not in on_path:
        candidates.append(on_path)
    for exe in candidates:
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == minor:
            return exe
    return None


# What a copy of the tree leaves out: the checkout's own environment and caches.
IGNORED = (
    ".git", ".venv", "__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis",
    "*.egg-info", "dist", "build", "*.sqlite", "celerybeat-schedule*", ".nox", ".tox",
)  # fmt: skip


def child_env(require: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    if require:
        env["BUGSNAG_CELERY_REQUIRE_BROKERS"] = "1"
        env["BUGSNAG_CELERY_REQUIRE_BROWSER"] = "1"
    return env


_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def run_logged(cmd: list[str], cwd: Path, log: Path, env: dict[str, str], timeout: float) -> int:
    """Run *cmd* with its output appended to *log*; on timeout kill its whole process group."""
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            fh.write(f"\nmatrix: killed after {timeout:.0f} s\n".encode())
            return -1


def last_lines(log: Path, n: int) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


PYTEST_SUMMARY = re.compile(r"^=+ (.*\d+ (?:passed|failed|error|errors)[^=]*?) in [\d.]+s.*=+$")


def run_pair(
    pair: Pair, workdir: Path, require: bool, timeout: float, test_slots: threading.Semaphore
) -> Outcome:
    """Install *pair* at once, then run its tests when one of *test_slots* is free.

    Installs wait on the package index and on pip's resolver (the old Pythons' took 8-10
    minutes on CI's machine, one core idle), the tests on workers and brokers: every install
    starts at the beginning, and only the test runs are limited, so no pair's install waits
    for another pair's tests.
    """
    outcome = Outcome(pair)
    exe = find_python(pair.python)
    if exe is None:
        outcome.result, outcome.detail = "missing", f"no python{pair.python} on this machine"
        return outcome
    where = workdir / pair.name
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    src, log = where / "src", where / "log.txt"
    outcome.log = log
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*IGNORED))
    constraints = where / "constraints.txt"
    constraints.write_text(pair.constraints())
    env = child_env(require)
    venv_python = str(src / ".venv" / "bin" / "python")

    started = time.monotonic()
    steps = [
        [exe, "-m", "venv", ".venv"],
        [venv_python, "-m", "pip", "install", "-q", "-e", INSTALL_EXTRAS, "-c", str(constraints)],
    ]
    for step in steps:
        if run_logged(step, src, log, env, 900) != 0:
            outcome.detail = "install failed"
            outcome.install_s = time.monotonic() - started
            outcome.tail = last_lines(log, 40)
            return outcome
    outcome.install_s = time.monotonic() - started
    probe = subprocess.run(
        [venv_python, "-c", "import json, platform, celery, kombu; print(json.dumps("
         "[platform.python_version(), celery.__version__, kombu.__version__]))"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    try:
        outcome.python, outcome.celery, outcome.kombu = json.loads(probe.stdout)
    except ValueError:
        outcome.detail = f"cannot import celery/kombu: {probe.stderr.strip()[-500:]}"
        return outcome
    wanted = [(pkg, spec, got) for pkg, spec, got in (("celery", pair.celery, outcome.celery),
              ("kombu", pair.kombu, outcome.kombu)) if spec.startswith("==")]  # fmt: skip
    for pkg, spec, got in wanted:
        if got != spec[2:]:
            outcome.detail = f"{pkg} {got} installed, {spec} asked for"
            return outcome

    with test_slots:
        say(f"matrix: {pair.name}: installed in {minutes(outcome.install_s)}, testing")
        started = time.monotonic()
        status = run_logged([venv_python, "-m", "pytest"], src, log, env, timeout)
        outcome.test_s = time.monotonic() - started
    summary = ""
    for line in reversed(last_lines(log, 200)):
        match = PYTEST_SUMMARY.match(line.strip())
        if match:
            summary = match.group(1)
            break
    outcome.detail = summary or f"pytest exited {status} with no summary"
    if status == 0 and summary and "failed" not in summary and "error" not in summary:
        outcome.result = "passed"
    else:
        outcome.tail = last_lines(log, 80)
    return outcome


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| Python | Celery | kombu | result | install | tests |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        rows.append(
            f"| {o.python or o.pair.python} | {o.celery or o.pair.celery or '?'} | "
            f"{o.kombu or o.pair.kombu or '?'} | {o.result}: {o.detail} | {minutes(o.install_s)} | "
            f"{minutes(o.test_s)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="test runs at once (default 1; installs all start at once)"
    )
    parser.add_argument("--only", action="append", default=[], help="run the pairs whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the pairs and their interpreters")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bugsnag-celery-matrix")
    parser.add_argument("--timeout", type=float, default=2400, help="seconds for one pair's pytest run")
    parser.add_argument(
        "--allow-skips", action="store_true",
        help="do not set BUGSNAG_CELERY_REQUIRE_BROKERS/_BROWSER (a skip then passes; never in CI)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    pairs = [p for p in PAIRS if not args.only or any(o in p.name for o in args.only)]
    if not pairs:
        print(f"matrix: no pair matches {args.only}", file=sys.stderr)
        return 2
    if args.list:
        for pair in pairs:
            print(f"{pair.name:<40} {find_python(pair.python) or 'MISSING'}  ({pair.why})")
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    say(f"matrix: {len(pairs)} pairs, installed at once, tested {args.jobs} at a time, in {args.workdir}")
    test_slots = threading.Semaphore(max(1, args.jobs))
    began = time.monotonic()

    def one(pair: Pair) -> Outcome:
        say(f"matrix: {pair.name}: started ({pair.why})")
        try:
            outcome = run_pair(pair, args.workdir, not args.allow_skips, args.timeout, test_slots)
        except Exception as exc:  # a broken pair must not hide the others' results
            outcome = Outcome(pair, detail=f"runner error: {exc!r}")
        say(
            f"matrix: {pair.name}: {outcome.result.upper()} ({outcome.detail}); install "
            f"{minutes(outcome.install_s)}, tests {minutes(outcome.test_s)}; log {outcome.log}"
        )
        if outcome.result != "passed" and outcome.tail:
            say("\n".join(f"    {line}" for line in outcome.tail))
        return outcome

    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        outcomes = list(pool.map(one, pairs))

    passed = sum(o.result == "passed" for o in outcomes)
    print()
    print(table(outcomes))
    print(f"\nmatrix: wall time {minutes(time.monotonic() - began)}")
    print(f"matrix: {passed} passed, {len(outcomes) - passed} failed")
    return 0 if passed == len(outcomes) == len(pairs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
