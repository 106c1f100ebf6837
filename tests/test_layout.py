"""The house rules of docs/architecture.md, checked on the code: no import cycles, the core
imports no wing, wings meet only where the map says, and the light entry points stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import perfwatch

PACKAGE = Path(perfwatch.__file__).parent
CORE = {"errors", "config", "env", "gpu", "stats", "results", "store", "thresholds", "instrument", "launch",
        "pages", "figures", "display", "paths", "urls", "assets", "proctree", "channel", "worker",
        "__main__"}
WINGS = {"bench", "regress", "monitoring", "profile", "publish", "tune", "pipelines", "cli"}
# (importer's wing, imported wing) pairs the map allows; the CLI may import anything.
WING_EDGES = {("regress", "bench"), ("profile", "monitoring"), ("publish", "regress"), ("tune", "pipelines")}
# The core -> wing edges: the two entry points that other code reaches by name.
CORE_EDGES = {("perfwatch.worker", "perfwatch.bench.worker"),
              ("perfwatch.__main__", "perfwatch.cli")}
HEAVY = ("prometheus_client", "psutil", "matplotlib", "pandas", "rich", "click", "pyarrow")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str) -> set[str]:
    """Every perfwatch module ``name`` imports at run time, at module level or inside a function."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_no_import_cycles_anywhere_in_the_package():
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])
    assert cycles == []


def _wing(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else None


def test_the_core_imports_no_wing_and_wings_meet_only_where_the_map_says():
    wrong = []
    for name, targets in GRAPH.items():
        for target in targets:
            source_wing, target_wing = _wing(name), _wing(target)
            if target_wing is None or source_wing == target_wing or source_wing == "cli":
                continue
            if source_wing is None and (name, target) not in CORE_EDGES:
                wrong.append(f"core module {name} imports {target}")
            elif source_wing is not None and (source_wing, target_wing) not in WING_EDGES:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_every_core_module_is_named_in_the_map():
    top = {name.split(".")[1] for name in MODULES if name.count(".") == 1 and _wing(name) is None}
    assert top == CORE


def _loaded_by(*argv: str) -> set[str]:
    """Top-level packages a fresh interpreter imports to run ``argv`` (from -X importtime)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, timeout=120)
    loaded = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            loaded.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return loaded


@pytest.mark.parametrize("argv", [
    ("-c", "from perfwatch import StepTimer; StepTimer()"),
    ("-m", "perfwatch.worker", "no-such-mode"),
    ("-c", "import perfwatch.pipelines.train"),
    ("-c", "import perfwatch.monitoring.step_timing"),  # the sitecustomize injected into every launched command
], ids=["StepTimer", "worker", "pipelines", "step_timing"])
def test_light_entry_points_load_none_of_the_heavy_packages(argv):
    loaded = _loaded_by(*argv)
    assert "perfwatch" in loaded  # the probe saw the import at all
    assert sorted(loaded & set(HEAVY)) == []


def test_the_worker_runs_by_its_old_path_without_a_runtime_warning():
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "perfwatch.worker", "no-such-mode"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "unknown worker mode 'no-such-mode'"
