"""The project's own commands: the README's two, CI, the benchmark's smoke mode, lint and types."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workers import need_service

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```sh\n(.+?)\n```", text)
    assert match, f"README.md has no command after <!-- {marker} -->"
    return match.group(1)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    demo, tests = readme_command("demo-command"), readme_command("test-command")
    for cmd in (demo, tests):
        assert cmd.startswith("python3 -m venv .venv && .venv/bin/pip install")  # self-installing
    assert demo.endswith(".venv/bin/bugsnag-celery demo")
    assert tests.endswith(".venv/bin/python -m pytest")
    # .ci/run extracts the command from the README: run its extraction and compare.
    ci = (ROOT / ".ci" / "run").read_text()
    extraction = re.search(r"cmd=\$\((awk .+ README\.md)\)", ci)
    assert extraction
    got = subprocess.run(
        ["bash", "-c", extraction.group(1)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert got.stdout.strip() == tests
    assert "BUGSNAG_CELERY_REQUIRE_BROKERS=1" in ci and "-eq 5" in ci


@pytest.mark.parametrize(
    ("suite", "matrix", "status", "matrix_ran"),
    [(0, 0, 0, True), (0, 3, 3, True), (1, 0, 1, False), (5, 0, 1, False)],
    ids=["both-pass", "a-pair-fails", "suite-fails", "no-tests"],
)  # fmt: skip
def test_ci_runs_the_matrix_after_the_suite_and_fails_with_either(
    tmp_path: Path, suite: int, matrix: int, status: int, matrix_ran: bool
) -> None:
    """.ci/run, on a README whose two commands are stand-ins: the matrix runs only after a
    passing suite, every pair, two at a time, with CI's per-pair limit, and either one
    failing fails CI."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text())
    (tmp_path / "README.md").write_text(
        f"<!-- test-command -->\n```sh\necho suite-ran; exit {suite}\n```\n\n"
        f"<!-- matrix-command -->\n```sh\nsh -c 'echo matrix-ran \"$@\"; exit {matrix}' matrix\n```\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUGSNAG_CELERY_")}
    out = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == status, out.stdout + out.stderr
    assert "suite-ran" in out.stdout
    ran = "matrix-ran --jobs 2 --timeout 1200"
    assert (ran in out.stdout) is matrix_ran, out.stdout
    assert readme_command("matrix-command") == "python3 .ci/matrix.py"


DEMO_FIGURES = [  # the workload's known truth: (row, truth, received)
    (r"sessions", "282"), (r"crashed", "22"), (r"events", "32"), (r"stability", r"92\.20%"),
]  # fmt: skip


def check_demo(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stdout + out.stderr
    for row, value in DEMO_FIGURES:
        assert re.search(rf"\n  {row}\s+{value}\s+{value}\n", out.stdout), out.stdout
    assert "  MATCH" in out.stdout and "the collector's page: http://127.0.0.1:" in out.stdout
    took = float(re.search(r"took ([\d.]+) s", out.stdout).group(1))  # type: ignore[union-attr]
    assert took < 60, f"the demo took {took} s, over the minute it promises"


def test_demo_command_matches_the_truth() -> None:
    """The README's main job, minus the install: a real worker and beat on the embedded
    broker, the collector's figures equal the truth, in under a minute."""
    out = subprocess.run(
        [str(BIN / "bugsnag-celery"), "demo", "--port", "0"], capture_output=True, text=True, timeout=180,
        env={k: v for k, v in os.environ.items() if not k.startswith("BUGSNAG_API")},
    )  # fmt: skip
    check_demo(out)
    assert "broker filesystem://" in out.stdout and "/292 tasks finished" in out.stdout


@pytest.mark.parametrize("name", ["redis", "rabbitmq"])
def test_demo_on_a_real_broker(name: str) -> None:
    """``--broker URL``: the same truth on Redis (the tests' database 11) and RabbitMQ;
    the demo removes its own queues afterwards."""
    need_service(name, 6379 if name == "redis" else 5672)
    url = "redis://127.0.0.1:6379/11" if name == "redis" else "amqp://guest:guest@127.0.0.1:5672//"
    out = subprocess.run(
        [str(BIN / "bugsnag-celery"), "demo", "--port", "0", "--broker", url],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    check_demo(out)
    queue = re.search(r"queue (bugsnag-celery-demo-[0-9a-f]+)", out.stdout)
    assert queue, out.stdout
    if name == "redis":
        import redis

        left = sorted(k.decode() for k in redis.Redis(db=11).scan_iter(f"*{queue.group(1)}*"))
        assert left == [], left


def run_benchmark(script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``benchmarks/<script> --quick``, which must exit 0."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"], capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out


EXACT_LINE = re.compile(
    r"^exact: ([^:]+): the endpoint received ([\d,]+) (sessions|events) (?:for|of) ([\d,]+)[^\n]* -> MET$",
    re.M,
)


def exact_lines(stdout: str) -> list[str]:
    """The benchmark's exactness verdicts: received (by the endpoint) == runs, and not zero."""
    found = EXACT_LINE.findall(stdout)
    for _what, received, _kind, runs in found:
        assert received == runs and int(received.replace(",", "")) > 0, (received, runs)
    return [what for what, *_ in found]


def test_benchmark_verdicts_decide_the_exit_status() -> None:
    """--quick fails on exactness only; a full run on exactness and the README's met targets."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from verdict import EXACT, REPORT, TARGET, Check, conclude
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    lost = Check("a count lost", False, EXACT)
    slow = Check("a met target missed", False, TARGET)
    known = Check("the known miss", False, REPORT)
    fine = [Check("exact", True, EXACT), Check("fast", True, TARGET)]
    assert conclude([*fine, lost], quick=True) == 1
    assert conclude([*fine, slow, known], quick=True) == 0  # smoke numbers judge nothing else
    assert conclude([*fine, known], quick=False) == 0
    assert conclude([*fine, slow], quick=False) == 1
    assert conclude([*fine, lost], quick=False) == 1


def test_benchmark_smoke_mode() -> None:
    out = run_benchmark("overhead.py", 180)
    assert "added per task: median" in out.stdout
    assert exact_lines(out.stdout) == ["success", "failure", "failure"], out.stdout


def test_comparison_benchmark_smoke_mode() -> None:
    """benchmarks/compare.py --quick: every variant through all eight measures (tiny numbers).

    The README's test command installs the peers (the ``bench`` group), so none may be left
    out here; ``--quick`` prints no verdict and writes no results file.
    """
    need_service("Redis", 6379)
    out = run_benchmark("compare.py", 600)
    assert "not installed" not in out.stdout, out.stdout
    for variant in ("plain", "bugsnag_celery", "bugsnag_python", "sentry", "otel"):
        for unit in ("us/task", "tasks/s", " MB: ", " requests "):
            assert re.search(rf"\n  {variant} +[^\n]*{unit}", out.stdout), (variant, unit, out.stdout)
    assert exact_lines(out.stdout) == ["success", "failure", "failure", "storm", "network"], out.stdout
    # the storm: every event once, every Retry-After waited out (counted by the endpoint)
    once = re.search(
        r"^exact: storm: every failing run's event received exactly once "
        r"\(200 runs, 0 duplicates, for 200 runs\) -> MET$",
        out.stdout,
        re.M,
    )
    waited = re.search(
        r"^exact: storm: every 429's Retry-After waited out \(([1-9]\d*)/\1\) -> MET$", out.stdout, re.M
    )
    assert once and waited, out.stdout
    # in one process (two tiny rounds in smoke mode: the figure may have either sign)
    assert re.search(r"\n  bugsnag_celery +added [+-][\d.]+ us/task", out.stdout), out.stdout
    # in CPU instructions (valgrind; CI's machine has it): deterministic, so ours adds some
    if shutil.which("valgrind") or os.environ.get("BUGSNAG_CELERY_REQUIRE_BROKERS") == "1":
        assert re.search(r"\n  bugsnag_celery +added \+[1-9][\d,]* instructions/task", out.stdout), out.stdout
    else:
        assert "valgrind missing: not counted" in out.stdout, out.stdout
    assert "smoke mode" in out.stdout


def test_delivery_benchmark_smoke_mode() -> None:
    need_service("Redis", 6379)
    need_service("RabbitMQ", 5672)
    out = run_benchmark("delivery.py", 300)
    assert exact_lines(out.stdout) == ["network", "drain redis", "drain amqp", "recycle"], out.stdout
    assert "memory:  worker RSS" in out.stdout


def test_ruff_is_clean() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        out = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_is_clean() -> None:
    """Strict over the package, the tests and the benchmarks (pyproject's ``files``)."""
    mypy_section = (ROOT / "pyproject.toml").read_text().split("[tool.mypy]")[1].split("\n[")[0]
    assert "strict = true" in mypy_section
    dirs = ["bugsnag_celery", "tests", "benchmarks"]
    assert f"files = {dirs}".replace("'", '"') in mypy_section
    out = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    checked = len([p for d in dirs for p in (ROOT / d).rglob("*.py")])
    assert f"in {checked} source files" in out.stdout, out.stdout


def test_everything_the_readme_cites_is_in_the_repository() -> None:
    """Paths in the README name files of this repository (never a folder outside it)."""
    text = (ROOT / "README.md").read_text()
    assert "shared/" not in text
    cited = set(re.findall(r"`([\w.-]+(?:/[\w.-]+)*\.(?:py|json|md|yml|toml))`", text))
    assert len(cited) > 30

    def exists(path: str) -> bool:
        return (ROOT / path).exists() or (ROOT / "bugsnag_celery" / path).exists()

    missing = sorted(p for p in cited if not exists(p) and "/" in p)
    assert missing == [], missing
