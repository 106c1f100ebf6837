"""Rich markup in benchmark names, parameters, units and run ids is shown as text by every
command that prints them, never taken as styling (and a stray ``[/]`` never crashes one)."""

from __future__ import annotations

import pytest
from helpers import run_perfwatch, write_suite

SUITE = """
def track_items(p):
    return 1.0
track_items.params = ["[/]", "[red]x[/red]"]
track_items.param_names = ["p"]
track_items.unit = "items [per batch]"
track_items.repeat = 3
track_items.warmup_time = 0
"""


@pytest.fixture
def project(tmp_path):
    write_suite(tmp_path / "suites", "bench_markup.py", SUITE)
    (tmp_path / "perfwatch.toml").write_text('store = ".perfwatch/results"  # runs committed as JSON documents\n')
    return tmp_path


def assert_shown_literally(proc, *texts: str) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "MarkupError" not in proc.stderr and "internal error" not in proc.stderr
    for text in texts:
        assert text in proc.stdout, proc.stdout


def test_list_run_show_runs_and_compare_print_markup_as_text(project):
    names = ("bench_markup.track_items(p='[/]')", "bench_markup.track_items(p='[red]x[/red]')")
    assert_shown_literally(run_perfwatch("list", cwd=project), *names, "items [per batch]")
    assert_shown_literally(run_perfwatch("run", cwd=project), *names, "1 items [per batch]")
    assert_shown_literally(run_perfwatch("show", cwd=project), *names, "1 items [per batch]")
    assert_shown_literally(run_perfwatch("run", cwd=project), *names)
    assert_shown_literally(run_perfwatch("runs", cwd=project), "quick")
    first, latest = sorted((project / ".perfwatch" / "results").glob("*.json"))[-2:]
    compared = run_perfwatch("compare", first.stem, latest.stem, cwd=project)
    assert compared.returncode in (0, 1), compared.stderr
    assert all(name in compared.stdout for name in names), compared.stdout
    assert "1 items [per batch]" in compared.stdout
