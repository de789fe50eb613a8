"""The tests' shape, as a contract: from a module to its tests, and no reaching into the package.

Every core module (``bugsnag_celery/**`` but ``tools/``) that has code is named by the
``Covers:`` line of some test file's docstring, so that a newcomer changing a module finds
the tests that exercise it (the README's module -> tests map is these lines). A ``Covers:``
line names files that exist: a module renamed without its tests' line fails here.

Tests and benchmarks use the package as users do: they read no module's underscore names,
but for the few listed (and explained) in ``ALLOWED_REACH_INS``. Read from the source with
``ast``, like ``test_layout.py``.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bugsnag_celery"
TESTS = ROOT / "tests"

# (file, what it reads), each with why it may. Every entry must still be used (a stale one fails).
ALLOWED_REACH_INS: set[tuple[str, str]] = {
    # The compat tests hold the wrapper's shortcuts to the installed Celery's own API: the
    # request storage it reads instead of ``request_stack.top``, the build_tracer it wraps,
    # and its exact and generic hooks (forwarding every call as it came).
    ("tests/hooks/test_compat_tasks.py", "bugsnag_celery.hooks.runner._request_storage"),
    ("tests/hooks/test_compat_tasks.py", "bugsnag_celery.hooks.tracer_hook._original_build_tracer"),
    ("tests/hooks/test_compat_tasks.py", "bugsnag_celery.hooks.tracer_hook._exact_hook"),
    ("tests/hooks/test_compat_tasks.py", "bugsnag_celery.hooks.tracer_hook._generic_hook"),
}


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return bool(body)


def core_modules() -> list[str]:
    """``bugsnag_celery/...py`` paths of the core's modules with code (a docstring alone is no code)."""
    return [
        str(p.relative_to(PACKAGE.parent))
        for p in sorted(PACKAGE.rglob("*.py"))
        if "tools" not in p.relative_to(PACKAGE).parts and _has_code(p)
    ]


def covers(path: Path) -> list[str]:
    """What a test file's docstring says it covers: its ``Covers: a, b`` lines."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return [
        name.strip()
        for line in doc.splitlines()
        if line.startswith("Covers:")
        for name in line[len("Covers:") :].split(",")
        if name.strip()
    ]


def suite_files() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def uncovered(modules: Iterable[str], files: Iterable[Path]) -> list[str]:
    named = {name for path in files for name in covers(path)}
    return [m for m in modules if m not in named]


def missing_targets(files: Iterable[Path]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} covers {name}, which does not exist"
        for path in files
        for name in covers(path)
        if not (ROOT / name).exists()
    ]


def _package_modules() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.add(".".join(parts))
    return names


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def reach_ins(path: Path, modules: set[str]) -> Iterator[str]:
    """Every ``module._name`` of the package that *path* reads or assigns (imports included).

    A name bound to a package module (``import bugsnag_celery.x as y``, ``from
    bugsnag_celery.x import submodule``, ``import bugsnag_celery``) followed by an underscore
    attribute is a reach-in; so is ``from bugsnag_celery.x import _name``. Attributes of
    *objects* (``sender._queue``) are not module names and are not looked at.
    """
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    bound = alias.asname or alias.name.split(".")[0]
                    aliases[bound] = alias.name if alias.asname else bound
        elif isinstance(node, ast.ImportFrom) and node.module in modules and not node.level:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif _private(alias.name):
                    yield f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = _dotted(node.value)
            if base is None:
                continue
            head, _, rest = base.partition(".")
            if head in aliases:
                module = f"{aliases[head]}.{rest}" if rest else aliases[head]
                if module in modules:
                    yield f"{module}.{node.attr}"


def all_reach_ins(files: Iterable[Path]) -> set[tuple[str, str]]:
    modules = _package_modules()
    return {(str(path.relative_to(ROOT)), name) for path in files for name in reach_ins(path, modules)}


def checked_for_reach_ins() -> list[Path]:
    return sorted([*TESTS.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])


def module_map(files: Iterable[Path]) -> list[str]:
    """The README's module -> tests table, as its rows: each core module and the test files
    whose ``Covers:`` line names it (the tools' tests are found by their folder instead)."""
    tests_of: dict[str, list[str]] = {}
    for path in files:
        for name in covers(path):
            tests_of.setdefault(name, []).append(str(path.relative_to(ROOT)))
    rows = []
    for m in core_modules():
        tests = ", ".join(f"`{t}`" for t in sorted(tests_of.get(m, [])))
        rows.append(f"| `{m.removeprefix('bugsnag_celery/')}` | {tests} |")
    return rows


def readme_map(readme: str) -> list[str]:
    """The rows of the README's table after ``<!-- module-tests -->``."""
    after = readme.split("<!-- module-tests -->", 1)[1].lstrip("\n").splitlines()
    rows = []
    for line in after[2:]:  # past the header and its rule
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_the_readme_maps_each_core_module_to_its_tests() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "<!-- module-tests -->" in readme
    assert readme_map(readme) == module_map(suite_files())


def test_every_core_module_is_named_by_a_test_files_covers_line() -> None:
    assert len(core_modules()) > 30
    missing = uncovered(core_modules(), suite_files())
    assert missing == [], f"no test file's Covers: line names {', '.join(missing)}"


def test_every_covers_line_names_files_that_exist() -> None:
    wrong = missing_targets(suite_files())
    assert wrong == [], "; ".join(wrong)


def test_every_test_file_in_a_layer_folder_says_what_it_covers() -> None:
    """The folders mirror the package: a file in one says which of its modules it tests."""
    silent = [str(p.relative_to(ROOT)) for p in suite_files() if p.parent != TESTS and not covers(p)]
    assert silent == [], f"no Covers: line in {', '.join(silent)}"


def test_no_test_or_benchmark_reads_the_packages_private_names_but_the_listed_few() -> None:
    found = all_reach_ins(checked_for_reach_ins())
    assert sorted(found - ALLOWED_REACH_INS) == [], "a new reach-in: use the public API"
    assert sorted(ALLOWED_REACH_INS - found) == [], "an allowed reach-in is gone: remove its entry"


def test_the_tests_layout_checks_see_violations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above are only worth something if they can fail: feed them bad files."""
    this = sys.modules[__name__]
    (tmp_path / "tests" / "payload").mkdir(parents=True)
    silent = tmp_path / "tests" / "payload" / "test_silent.py"
    silent.write_text('"""Says nothing of what it covers."""\n')
    wrong = tmp_path / "tests" / "payload" / "test_wrong.py"
    wrong.write_text('"""Old.\n\nCovers: bugsnag_celery/payload/gone.py, bugsnag_celery/clock.py\n"""\n')
    reach = tmp_path / "tests" / "reach.py"
    reach.write_text(
        "import bugsnag_celery\nimport bugsnag_celery.sessions.counts as counts\n"
        "from bugsnag_celery.hooks import runner\nfrom bugsnag_celery.registry import _flush_interval\n"
        "runner._clock = None\nbugsnag_celery.registry._flush_targets()\ncounts._x\n"
        "runner.__name__\nsender = object()\nsender._queue\n"
    )
    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(this, "TESTS", tmp_path / "tests")
    monkeypatch.setattr(this, "suite_files", lambda: [silent, wrong])
    monkeypatch.setattr(this, "checked_for_reach_ins", lambda: [reach])
    with pytest.raises(AssertionError, match=re.escape("bugsnag_celery/hooks/runner.py")):
        test_every_core_module_is_named_by_a_test_files_covers_line()
    assert readme_map("x\n<!-- module-tests -->\n| a | b |\n| --- | --- |\n| `clock.py` | `t` |\n\nend") == [
        "| `clock.py` | `t` |"
    ]
    with pytest.raises(AssertionError, match=re.escape("covers bugsnag_celery/payload/gone.py")):
        test_every_covers_line_names_files_that_exist()
    with pytest.raises(AssertionError, match=re.escape("test_silent.py")):
        test_every_test_file_in_a_layer_folder_says_what_it_covers()
    assert all_reach_ins([reach]) == {
        ("tests/reach.py", name)
        for name in (
            "bugsnag_celery.registry._flush_interval",
            "bugsnag_celery.hooks.runner._clock",
            "bugsnag_celery.registry._flush_targets",
            "bugsnag_celery.sessions.counts._x",
        )
    }
    with pytest.raises(AssertionError, match="a new reach-in"):
        test_no_test_or_benchmark_reads_the_packages_private_names_but_the_listed_few()
    reach.write_text("import bugsnag_celery\n")
    with pytest.raises(AssertionError, match="an allowed reach-in is gone"):
        test_no_test_or_benchmark_reads_the_packages_private_names_but_the_listed_few()


def fault_rows(readme: str) -> list[str]:
    """The rows of the README's fault table (after its ``| fault | what happens |`` header)."""
    after = readme.split("| fault | what happens | what is lost |", 1)[1].splitlines()[2:]
    rows = []
    for line in after:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_every_row_of_the_fault_table_names_tests_that_exist() -> None:
    """The fault table says what the tests show: each row names at least one test function,
    and each test it names is defined in the suite."""
    defined = {
        node.name
        for path in suite_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }
    rows = fault_rows((ROOT / "README.md").read_text())
    assert len(rows) > 20
    names = re.compile(r"\btest_\w+(?![\w.])")  # a test function, not a file's name
    unnamed = [row[:80] for row in rows if not names.findall(row)]
    assert unnamed == []
    missing = sorted({name for row in rows for name in names.findall(row)} - defined)
    assert missing == []
