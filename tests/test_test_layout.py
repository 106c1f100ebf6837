"""The tests stay a tidy neighbourhood: what several test modules share lives in the helper
modules (helpers.py, servers.py, grafana_dashboards.py), so no module here imports a test module.
A test module imported by another is collected twice over and ties the two together."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
IMPORT_CALLS = {"importorskip", "import_module", "__import__"}  # pytest.importorskip, importlib.import_module


def imported_test_modules(source: str) -> set[str]:
    """The test_* modules that ``source`` imports: import statements anywhere (in functions
    too), ``from tests.test_x import``, and imports by name through importorskip/import_module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "tests":  # from tests import test_x
                names.update(alias.name for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in IMPORT_CALLS):
            names.add(node.args[0].value)
    modules = {name.removeprefix("tests.").split(".")[0] for name in names}
    return {name for name in modules if name.startswith("test_")}


def test_the_checker_finds_every_way_of_importing_a_test_module():
    source = (
        "import pytest\n"
        "from helpers import run_perfwatch\n"
        "from test_cli import project\n"
        "import test_gpu as gpu\n"
        "from tests.test_alerts import BAD\n"
        "from tests import test_report\n"
        "def later():\n"
        "    from test_compare_cli import bench\n"
        "    return pytest.importorskip('test_exporter'), importlib.import_module('test_tune')\n"
    )
    assert imported_test_modules(source) == {
        "test_cli", "test_gpu", "test_alerts", "test_report", "test_compare_cli", "test_exporter", "test_tune"}


def test_no_module_in_tests_imports_a_test_module():
    wrong = {
        path.name: sorted(imported)
        for path in sorted(TESTS.glob("*.py"))
        if (imported := imported_test_modules(path.read_text()))
    }
    assert wrong == {}, "move what they share into tests/helpers.py (or servers.py, grafana_dashboards.py)"
