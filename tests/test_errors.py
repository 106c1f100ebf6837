"""The error tree and how the command line reports it: bad input (2) names the flag, a bug (70) says to report it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from helpers import run_perfwatch

import perfwatch
from perfwatch import errors
from perfwatch.errors import UserError
from perfwatch.pages import prepare_out_dir
from perfwatch.results import BenchResult, RunRecord
from perfwatch.store import Store

PACKAGE = Path(perfwatch.__file__).parent

# The famous error of a binary-incompatible numpy/matplotlib pair, raised by a matplotlib that is
# broken in the user's environment: nothing perfwatch validates, so it stays an unexpected error.
BROKEN_MATPLOTLIB = ('raise ValueError("numpy.dtype size changed, may indicate binary incompatibility. '
                     'Expected 96 from C header, got 88 from PyObject")\n')


def error_classes() -> dict[str, str]:
    """Every class the package defines on an error base it imports from perfwatch.errors: name -> module file."""
    tree_names = {name for name, value in vars(errors).items() if isinstance(value, type)}
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", None) for b in getattr(node, "bases", ())}
            if isinstance(node, ast.ClassDef) and bases & tree_names:
                found[node.name] = str(path.relative_to(PACKAGE))
    return found


def stored_run(results: Path) -> RunRecord:
    run = RunRecord(run_id="20260101T000000Z-abcdef", created="2026-01-01T00:00:00+00:00", suite="quick",
                    env={"host": "ci"}, benchmarks=[
                        BenchResult(name="loader.time_epoch", params={}, kind="time", unit="seconds",
                                    higher_is_better=False, status="ok", samples=[1.0, 1.1, 0.9])])
    Store(results).save(run)
    return run


def stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_every_perfwatch_error_lives_in_errors_py_and_is_drawn_in_its_docstring():
    outside = {name: where for name, where in error_classes().items() if where != "errors.py"}
    assert outside == {}, "define these in perfwatch/errors.py"
    drawn = errors.__doc__
    for name, value in vars(errors).items():
        if isinstance(value, type) and issubclass(value, errors.PerfwatchError):
            assert f" {name} " in drawn, f"{name} is missing from the tree in errors.py's docstring"


def test_a_bug_exits_70_with_one_line_that_says_how_to_report_it(tmp_path):
    stored_run(tmp_path / ".perfwatch" / "results")
    (tmp_path / "broken" / "matplotlib").mkdir(parents=True)
    (tmp_path / "broken" / "matplotlib" / "__init__.py").write_text(BROKEN_MATPLOTLIB)
    broken = {"PYTHONPATH": str(tmp_path / "broken")}

    proc = run_perfwatch("history", cwd=tmp_path, env=broken)  # history draws a plot per benchmark
    assert proc.returncode == errors.INTERNAL_ERROR_EXIT == 70, proc.stderr
    assert stderr_lines(proc) == [
        ("perfwatch: internal error: ValueError: numpy.dtype size changed, may indicate binary incompatibility. "
         "Expected 96 from C header, got 88 from PyObject; this is a bug: rerun with --debug and report the traceback")
    ]

    debug = run_perfwatch("--debug", "history", cwd=tmp_path, env=broken)
    assert debug.returncode == 70
    assert "Traceback (most recent call last)" in debug.stderr and 'matplotlib/__init__.py", line 1' in debug.stderr
    assert stderr_lines(debug)[-1].startswith("perfwatch: internal error: ValueError: numpy.dtype size changed")


def test_the_library_names_no_flag_and_the_command_adds_its_own(tmp_path):
    with pytest.raises(UserError) as raised:
        prepare_out_dir(Path("/sys/perfwatch-out"))
    assert str(raised.value).endswith("choose another output directory") and raised.value.setting == "out"

    stored_run(tmp_path / ".perfwatch" / "results")
    (tmp_path / "taken").write_text("a file where a directory should be")
    for args, ending in [(["report", "--out", "/sys/perfwatch-out"], "choose another output directory (--out)"),
                         (["profile", "--out", "/sys/perfwatch-out", "--", sys.executable, "-c", "pass"],
                          "choose another output directory (--out)"),
                         (["baseline", "save", "--to", "taken/baseline.json"], "pass a writable file (--to)")]:
        proc = run_perfwatch(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        (line,) = stderr_lines(proc)
        assert line.startswith("perfwatch: error: ") and line.endswith(ending), line
