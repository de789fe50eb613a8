"""The support matrix (``.ci/matrix.py``) covers every promise ``pyproject.toml`` makes.

The matrix itself runs the whole suite per pair (in CI, after the README's test command);
these tests keep it honest from inside the suite: the floors it tests are the floors
pyproject.toml states, no Python minor and no Celery minor in between is left out, and a
pair that cannot run (its interpreter missing) fails the matrix instead of vanishing.

Covers: .ci/matrix.py
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (3.9, 3.10: the backport, a dev dependency there)
    import tomli as tomllib


def load_matrix() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_matrix", ROOT / ".ci" / "matrix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ci_matrix"] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def floor(requirement: str) -> tuple[int, int, int]:
    """The oldest release ``>=`` allows: ``>=5.3`` is 5.3.0, ``>=5.3.2`` is 5.3.2."""
    match = re.search(r">=\s*(\d+)\.(\d+)(?:\.(\d+))?", requirement)
    assert match, requirement
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def minor(spec: str) -> tuple[int, int] | None:
    """The Celery/kombu minor a pair's specifier names (``==5.3.0``, ``~=5.4.0``), or None (newest)."""
    if not spec:
        return None
    match = re.fullmatch(r"(?:==|~=)(\d+)\.(\d+)\.\d+", spec)
    assert match, f"a specifier the matrix does not know: {spec!r}"
    return int(match.group(1)), int(match.group(2))


@pytest.fixture(scope="module")
def promises() -> dict[str, tuple[int, int, int]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps: dict[str, str] = {
        re.split(r"[<>=~!; \[]", d, maxsplit=1)[0].lower(): d for d in project["dependencies"]
    }
    return {
        "python": floor(project["requires-python"]),
        "celery": floor(deps["celery"]),
        "kombu": floor(deps["kombu"]),
    }


def test_the_floors_are_tested_together(promises: dict[str, tuple[int, int, int]]) -> None:
    """The oldest Python with the oldest Celery *and* the oldest kombu pyproject.toml allows."""
    pairs: Any = load_matrix().PAIRS
    py, celery, kombu = promises["python"], promises["celery"], promises["kombu"]
    floor_pairs = [
        p for p in pairs
        if p.python == f"{py[0]}.{py[1]}" and p.celery == "==" + ".".join(map(str, celery))
        and p.kombu == "==" + ".".join(map(str, kombu))
    ]  # fmt: skip
    assert floor_pairs, [p.name for p in pairs]


def test_no_python_and_no_celery_minor_is_left_out(promises: dict[str, tuple[int, int, int]]) -> None:
    """Every Python minor from the floor to the newest the matrix runs; every Celery minor from
    the floor to the newest one it names, plus a pair on the newest Celery there is."""
    pairs: Any = load_matrix().PAIRS
    pythons: set[tuple[int, int]] = set()
    for p in pairs:
        major, minor_ = p.python.split(".")
        pythons.add((int(major), int(minor_)))
    newest_python = max(pythons)
    assert newest_python >= (3, 13)
    want = {(3, m) for m in range(promises["python"][1], newest_python[1] + 1)}
    assert want <= pythons, sorted(want - pythons)
    celeries = {minor(p.celery) for p in pairs}
    assert None in celeries, "no pair runs the newest Celery"
    named = {c for c in celeries if c is not None}
    want_celery = {(5, m) for m in range(promises["celery"][1], max(named)[1] + 1)}
    assert want_celery <= named, sorted(want_celery - named)
    newest_pair = next(p for p in pairs if minor(p.celery) is None)
    assert newest_pair.python == f"{newest_python[0]}.{newest_python[1]}" and newest_pair.kombu == ""
    # pair names are the folders and log names: one each
    assert len({p.name for p in pairs}) == len(pairs)


def test_a_pair_that_cannot_run_fails_the_matrix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No interpreter for a pair: the pair is "missing", and the matrix exits non-zero."""
    matrix: Any = load_matrix()
    monkeypatch.setattr(matrix, "find_python", lambda minor: None)
    status = matrix.main(["--only", "py3.9-", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "matrix: 0 passed, 2 failed" in out.splitlines()[-1]
    assert out.count("MISSING (no python3.9 on this machine)") == 2, out
    assert matrix.main(["--only", "no-such-pair", "--workdir", str(tmp_path)]) == 2
