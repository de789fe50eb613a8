"""The project's own commands: the README's two, CI, the benchmark's smoke mode, lint and types."""

from __future__ import annotations

import ast
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
    ("suite", "matrix", "status"),
    [(0, 0, 0), (0, 3, 3), (1, 0, 1), (5, 0, 1), (1, 3, 1)],
    ids=["both-pass", "a-pair-fails", "suite-fails", "no-tests", "both-fail"],
)  # fmt: skip
def test_ci_runs_the_matrix_beside_the_suite_and_fails_with_either(
    tmp_path: Path, suite: int, matrix: int, status: int
) -> None:
    """.ci/run, on a README whose two commands are stand-ins: the matrix runs beside the
    suite (every pair, three test runs at a time, with CI's per-pair limit), CI waits for
    both, and either one failing fails CI; "no tests collected" is a failure."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text())
    (tmp_path / "README.md").write_text(
        f"<!-- test-command -->\n```sh\nsleep 1; echo suite-ran; exit {suite}\n```\n\n"
        f"<!-- matrix-command -->\n```sh\nsh -c 'sleep 2; echo matrix-ran \"$@\"; exit {matrix}' m\n```\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUGSNAG_CELERY_")}
    out = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == status, out.stdout + out.stderr
    assert "suite-ran" in out.stdout
    # waited for, whatever the suite did (it finished first: the matrix sleeps longer)
    assert "[matrix] matrix-ran --jobs 3 --timeout 2400" in out.stdout, out.stdout
    assert f"ci: the matrix exited {matrix}" in out.stdout, out.stdout
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


def run_benchmark(script: str, timeout: float, *args: str) -> subprocess.CompletedProcess[str]:
    """``benchmarks/<script> --quick *args``, which must exit 0 within *timeout* seconds.

    Past *timeout* the benchmark gets SIGTERM, so that it stops the workers it started (they
    lead process groups of their own: killing the script alone would leave them running into
    the tests after this one), and the failure shows where it was.
    """
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as stopped:  # this deadline, or pytest's: the benchmark stops its workers
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        if not isinstance(stopped, subprocess.TimeoutExpired):
            raise
        raise AssertionError(
            f"{script} --quick {' '.join(args)}: over {timeout} s\n{stdout}{stderr}"
        ) from None
    assert proc.returncode == 0, stdout + stderr
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


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


# The limits below catch a hang, never a slow machine: in CI four suites run at once (the
# support matrix beside the README's command), and the eager group's valgrind counts then
# took over 180 s (78 s alone). pytest's own limit is raised to match.
SMOKE_LIMIT = 480


@pytest.mark.timeout(SMOKE_LIMIT + 120)
def test_benchmark_smoke_mode() -> None:
    out = run_benchmark("overhead.py", SMOKE_LIMIT)
    assert "added per task: median" in out.stdout
    assert exact_lines(out.stdout) == ["success", "failure", "failure"], out.stdout


VARIANTS = ("plain", "bugsnag_celery", "bugsnag_python", "sentry", "otel")
#: The failure path's checks of bugsnag-celery with the official client configured too
#: (``bugsnag_celery_official``, which compare.py measures there and in the storm only).
OFFICIAL = "failure, official client configured (1 callback, 20 breadcrumbs, 2 flags)"
#: compare.py --quick in three runs, each a fraction of pytest's 300 s limit (one run of all
#: eight took 100-140 s on CI's machine, and once past 300): its parts (``--only``), the
#: units every variant's line shows, and the exactness verdicts the parts give.
COMPARE_SMOKE = {
    "eager": (["success", "failure", "inprocess", "instructions"], ["us/task"],
              ["success", "failure", "failure", OFFICIAL, OFFICIAL]),
    "workers": (["throughput", "storm"], ["tasks/s"], ["storm"]),
    "memory-network": (["memory", "network"], [" MB: ", " requests "], ["network"]),
}  # fmt: skip


@pytest.mark.timeout(SMOKE_LIMIT + 120)
@pytest.mark.parametrize("group", list(COMPARE_SMOKE))
def test_comparison_benchmark_smoke_mode(group: str) -> None:
    """benchmarks/compare.py --quick: every variant through all eight measures (tiny numbers).

    The README's test command installs the peers (the ``bench`` group), so none may be left
    out here; ``--quick`` prints no verdict and writes no results file.
    """
    need_service("Redis", 6379)
    parts, units, exact = COMPARE_SMOKE[group]
    out = run_benchmark("compare.py", SMOKE_LIMIT, "--only", *parts)
    assert "not installed" not in out.stdout, out.stdout
    for variant in VARIANTS:
        for unit in units:
            assert re.search(rf"\n  {variant} +[^\n]*{unit}", out.stdout), (variant, unit, out.stdout)
    assert exact_lines(out.stdout) == exact, out.stdout
    assert "smoke mode" in out.stdout
    if group == "eager":
        # the failure path with the official client configured too (bugsnag is installed)
        assert re.search(r"\n  bugsnag_celery_official +median [^\n]*us/task", out.stdout), out.stdout
        # in one process (two tiny rounds in smoke mode: the figure may have either sign)
        assert re.search(r"\n  bugsnag_celery +added [+-][\d.]+ us/task", out.stdout), out.stdout
        # in CPU instructions (valgrind; CI's machine has it): deterministic, so ours adds some
        if shutil.which("valgrind") or os.environ.get("BUGSNAG_CELERY_REQUIRE_BROKERS") == "1":
            assert re.search(r"\n  bugsnag_celery +added \+[1-9][\d,]* instructions/task", out.stdout), (
                out.stdout
            )
        else:
            assert "valgrind missing: not counted" in out.stdout, out.stdout
    if group == "workers":
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


def test_comparison_smoke_runs_every_part() -> None:
    """The three smoke runs above, together, are the whole comparison: no part left out."""
    tree = ast.parse((ROOT / "benchmarks" / "compare.py").read_text())
    assigned = [
        n.value for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "PARTS"
    ]
    assert len(assigned) == 1
    parts = ast.literal_eval(assigned[0])
    assert sorted(p for group, _, _ in COMPARE_SMOKE.values() for p in group) == sorted(parts)


@pytest.mark.timeout(SMOKE_LIMIT + 120)
def test_delivery_benchmark_smoke_mode() -> None:
    need_service("Redis", 6379)
    need_service("RabbitMQ", 5672)
    out = run_benchmark("delivery.py", SMOKE_LIMIT)
    assert exact_lines(out.stdout) == ["network", "drain redis", "drain amqp", "recycle"], out.stdout
    assert "memory:  worker RSS" in out.stdout


def benchmark_imports(folder: Path) -> dict[str, set[str]]:
    """Which modules of *folder* each of its modules imports, anywhere in it (a function's
    ``import`` too: a circle closed at run time is a circle)."""
    names = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in names:
        tree = ast.parse((folder / f"{name}.py").read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
        graph[name] = found & names - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle of *graph*, each once (as the path from its first module back to it)."""
    cycles: list[list[str]] = []

    def walk(path: list[str]) -> None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == path[0]:
                cycles.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each circle from its smallest name only
                walk([*path, nxt])

    for start in sorted(graph):
        walk([start])
    return cycles


#: What a benchmark may import of benchmarks/: the shared pieces, and compare.py the measures
#: it runs in its own process and the writing of RESULTS.md. A script is not a library:
#: nothing imports delivery.py or compare.py, so each can change without breaking another.
BENCHMARK_LIBRARIES = {"harness", "variants", "verdict"}
COMPARE_PARTS = {"overhead", "storm", "report"}


def test_benchmarks_share_one_harness_and_import_in_no_circle(tmp_path: Path) -> None:
    graph = benchmark_imports(ROOT / "benchmarks")
    assert import_cycles(graph) == []
    for module, imported in graph.items():
        allowed = BENCHMARK_LIBRARIES | (COMPARE_PARTS if module == "compare" else set())
        assert imported <= allowed, (module, imported - allowed)
    # the check sees a circle closed inside a function, as storm.py's import of compare.py was
    (tmp_path / "compare.py").write_text("import storm\nimport harness\n")
    (tmp_path / "storm.py").write_text("from harness import REDIS\n\ndef once():\n    import compare\n")
    (tmp_path / "harness.py").write_text("import json\n")
    assert import_cycles(benchmark_imports(tmp_path)) == [["compare", "storm", "compare"]]


def test_one_bugsnag_stand_in_for_tests_and_benchmarks() -> None:
    """The tests' ``endpoint`` fixture and the benchmarks serve ``bugsnag_celery.testing.Endpoint``;
    no other HTTP server stands in for BugSnag there (the collector, ``bugsnag-celery
    collector``, is the validating one, for users)."""
    servers = [
        str(p.relative_to(ROOT))
        for folder in ("tests", "benchmarks")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if "BaseHTTPRequestHandler" in p.read_text() and p.name != "test_tooling.py"
    ]
    assert servers == [], servers
    text = (ROOT / "tests" / "endpoint.py").read_text()
    assert "from bugsnag_celery.testing import Endpoint" in text


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
