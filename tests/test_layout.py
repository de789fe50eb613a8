"""The package's shape, as a contract: imports flow one way, and nothing reaches into another module.

Read from the source with ``ast`` (no import-linter dependency): every import counts,
module-level or inside a function -- both run -- except those under ``TYPE_CHECKING``,
which never run. The layers, highest first::

    tools, testing                      may import anything of the core
    the package root (__init__)         re-exports the public API
    hooks                               Celery's wiring, configure(), notify()
    registry                            the configured apps, the flusher
    reporting                           failure -> event dict
    delivery                            flusher, drains, spool, status
    transport                           HTTP post, sender thread, broker queues
    payload                             pure functions: exceptions, redaction, encoding
    sessions                            the current session, the counts
    options                             what an option may be (declared), where it comes from (sources)
    about, clock, logs                  the base: import nothing of the package

A module may import its own layer's modules and those below; never above. The README's
Layout section states the same order (the line after ``<!-- layers -->``) and lists every
module in it: both are read and checked here, so the README cannot drift from this rule.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bugsnag_celery"

LAYERS: list[tuple[str, ...]] = [
    ("tools", "testing"),
    ("__init__",),
    ("hooks",),
    ("registry",),
    ("reporting",),
    ("delivery",),
    ("transport",),
    ("payload",),
    ("sessions",),
    ("options",),
    ("about", "clock", "logs"),
]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, except what sits under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if not MODULES[module].name == "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> Iterator[tuple[str, list[str], int]]:
    """``(imported package module, names taken from it, line)`` for every runtime import."""
    tree = ast.parse(MODULES[module].read_text())
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bugsnag_celery"):
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if not target.startswith("bugsnag_celery"):
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES]
            others = [n for n in names if f"{target}.{n}" not in MODULES]
            if others:  # ``from .. import registry`` imports the submodule, not the package's names
                yield target, others, node.lineno
            for sub in submodules:
                yield sub, [], node.lineno


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports_of(m) if t in MODULES and t != m} for m in MODULES}


def test_every_module_is_in_a_layer_and_imports_only_its_own_or_lower_layers() -> None:
    wrong = []
    for module in MODULES:
        for target, _names, line in imports_of(module):
            if target in MODULES and layer_of(target) < layer_of(module):
                wrong.append(f"{module}:{line} imports {target} (a higher layer)")
    assert wrong == []


def test_the_core_never_imports_the_tools() -> None:
    core = [m for m in MODULES if layer_of(m) > 0]
    wrong = [f"{m} imports {t}" for m in core for t in graph()[m] if layer_of(t) == 0]
    assert wrong == []


def test_no_import_cycle_anywhere_in_the_package() -> None:
    edges = graph()
    # A package's __init__ runs before its submodules: importing a package imports it.
    for module in MODULES:
        for target in list(edges[module]):
            parent = target.rsplit(".", 1)[0]
            while parent.count(".") >= 1 and parent in MODULES and parent != module:
                if not module.startswith(parent + "."):
                    edges[module].add(parent)
                parent = parent.rsplit(".", 1)[0]
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_no_module_reads_another_modules_private_names() -> None:
    wrong = []
    for module in MODULES:
        tree = ast.parse(MODULES[module].read_text())
        aliases: dict[str, str] = {}
        for target, names, line in imports_of(module):
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    wrong.append(f"{module}:{line} imports {name} from {target}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, node)
                for alias in node.names:
                    if f"{target}.{alias.name}" in MODULES:
                        aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                wrong.append(f"{module}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    assert wrong == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_400_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


def test_queue_names_are_spelled_in_one_place() -> None:
    spelled = re.compile(r"""\.(sessions|events|status|beat_mark)["']""")
    places = [
        f"{m}:{n}"
        for m, path in MODULES.items()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line) and not line.lstrip().startswith("#")
    ]
    assert [p for p in places if not p.startswith("bugsnag_celery.transport.queues:")] == []


def test_time_formatting_lives_in_clock_only() -> None:
    places = [
        m for m, path in MODULES.items() if "strftime(" in path.read_text() or "strptime(" in path.read_text()
    ]
    # the collector page formats minutes for its chart axis: a tool, not a wire format
    assert sorted(places) == ["bugsnag_celery.clock", "bugsnag_celery.tools.collector.page"]


def test_the_layering_test_sees_violations(tmp_path: Path) -> None:
    """The checks above are only worth something if they can fail: feed them bad modules."""
    probes = {
        "bugsnag_celery.sessions._probe_a": "from ..hooks import wiring\nfrom ..registry import _states\n"
        "from . import _probe_b\n",
        "bugsnag_celery.sessions._probe_b": "from . import _probe_a\n",
    }
    try:
        for name, text in probes.items():
            path = tmp_path / f"{name.rsplit('.', 1)[1]}.py"  # read as if it sat in sessions/
            path.write_text(text)
            MODULES[name] = path
        with pytest.raises(AssertionError, match="higher layer"):
            test_every_module_is_in_a_layer_and_imports_only_its_own_or_lower_layers()
        with pytest.raises(AssertionError, match="_states"):
            test_no_module_reads_another_modules_private_names()
        with pytest.raises(AssertionError, match=re.escape("_probe_a -> bugsnag_celery.sessions._probe_b")):
            test_no_import_cycle_anywhere_in_the_package()
    finally:
        for name in probes:
            MODULES.pop(name, None)


README = ROOT / "README.md"


def readme_layers(text: str) -> list[tuple[str, ...]]:
    """The layers the README states, highest first (the line after ``<!-- layers -->``)."""
    line = text.split("<!-- layers -->", 1)[1].strip().splitlines()[0]
    groups = []
    for group in line.split("→"):
        names = re.findall(r"`([^`]+)`", group)
        groups.append(tuple(names) if names else ("__init__",) if "package root" in group else ())
    return groups


def readme_modules(text: str) -> list[str]:
    """The package modules the README's Layout table lists, in its order (as dotted names)."""
    section = text.split("<!-- layers -->", 1)[1].split("\n## ", 1)[0]
    table = section.split("| module | holds |", 1)[1].split("\n\n", 1)[0]
    listed = []
    for row in table.splitlines():
        match = re.match(r"\| `([\w/]+)\.py` \|", row)
        if match:
            name = match.group(1).replace("/", ".")
            dotted = f"bugsnag_celery.{name}".removesuffix(".__init__")
            listed.append("bugsnag_celery" if name == "__init__" else dotted)
    return listed


def _is_only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return len(body) == 1 and isinstance(body[0], ast.Expr)


def test_the_readme_states_the_layers_this_test_enforces() -> None:
    assert readme_layers(README.read_text()) == LAYERS


def test_the_readme_lists_every_module_in_the_order_of_its_layers() -> None:
    listed = readme_modules(README.read_text())
    # a package's __init__ that holds only its map (a docstring) is said once, not listed
    maps = {
        m
        for m in MODULES
        if MODULES[m].name == "__init__.py" and m != "bugsnag_celery" and _is_only_a_docstring(MODULES[m])
    }
    assert sorted(listed) == sorted(set(MODULES) - maps), "the README's Layout table and the package differ"
    layers = [layer_of(m) for m in listed]
    out_of_order = [listed[i] for i in range(1, len(listed)) if layers[i] < layers[i - 1]]
    assert out_of_order == [], f"listed under a lower layer than the row before: {out_of_order}"


def test_the_readme_checks_see_a_wrong_readme() -> None:
    text = README.read_text()
    swapped = text.replace("`delivery` → `transport`", "`transport` → `delivery`", 1)
    assert swapped != text and readme_layers(swapped) != LAYERS
    rows = readme_modules(text)
    assert rows and "bugsnag_celery.hooks.runner" in rows
    dropped = text.replace("| `hooks/runner.py` |", "| hooks/runner |", 1)
    assert "bugsnag_celery.hooks.runner" not in readme_modules(dropped)
