"""Hostile names and units: each string below is put everywhere a user string goes (a run id, the host,
a benchmark's name, parameter and unit, an error) and run through the commands that show it or
write files named after it. It must stay data: shown as text on the terminal (no markup, no control
characters), escaped in HTML and Markdown, drawn literally by matplotlib, and never a path out of the
chosen directory.

Two routes: a stored results document, which can hold anything (`show`, `report`, `history`), and a
suite whose parameters, parameter names and units hold the string (`list`, `run` into the default store).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import run_perfwatch, write_suite

from perfwatch.results import BenchResult, RunRecord

pytestmark = pytest.mark.fault("names")

# The C0 controls but newline and tab, and DEL: a terminal acts on them (ESC starts a sequence that can
# clear the screen, retitle the window, forge a link).
CONTROL = {chr(c) for c in range(32) if chr(c) not in "\n\t"} | {"\x7f"}


@dataclass(frozen=True)
class Hostile:
    id: str
    text: str
    shown: str  # what of it the terminal must show as text


HOSTILE = [
    Hostile("rich-close", "[/]", "[/]"),
    Hostile("rich-style-link", "[bold red]x[/] [link=https://example.invalid]y[/link]",
            "[link=https://example.invalid]"),
    Hostile("mathtext", "$x^$ costs $$", "$x^$ costs $$"),
    Hostile("html-script", "<script>alert(1)</script>", "<script>alert(1)</script>"),
    Hostile("html-attribute", '"><img src=x onerror=alert(1)>', "<img src=x onerror=alert(1)>"),
    Hostile("path-climb", "../../../escaped", "../../../escaped"),
    Hostile("path-absolute", "/etc/passwd", "/etc/passwd"),
    Hostile("newline", "first\nsecond", "second"),
    Hostile("control", "\x1b[2J\x1b]0;pwned\x07red\x00\r", "red"),
    Hostile("very-long", "x" * 3000, "x" * 40),
    Hostile("lone-surrogate", "caf\udcff", "caf"),
    Hostile("bidi-override", "\u202eevil", "evil"),
    Hostile("markdown", "a|b`c`*d*_e_", "a|b`c`*d*_e_"),
]

# The cases that reach matplotlib's text or a plot's file name differently; `history` (a second or so
# each) gets only these.
PLOTTED = {"mathtext", "path-climb", "path-absolute", "newline", "control", "very-long", "lone-surrogate"}


def cases(route: str) -> list:
    """The cases as pytest params for one route."""
    return [pytest.param(case, id=case.id) for case in HOSTILE if route != "history" or case.id in PLOTTED]


def write_document(directory: Path, case: Hostile) -> Path:
    """A run whose id, host, benchmark names, parameter, unit and error are all the hostile string."""
    text = case.text
    run = RunRecord(run_id=text, created="2026-01-01T00:00:00+00:00", suite="quick",
                    env={"host": text, "git_commit": None, "git_dirty": False}, benchmarks=[
                        BenchResult(name=text, params={text: text}, kind="track", unit=text, higher_is_better=False,
                                    status="ok", samples=[1.0, 1.1, 0.9, 1.0]),
                        BenchResult(name=f"{text} (failed)", params={}, kind="track", unit="items",
                                    higher_is_better=False, status="failed", error=text, samples=[])])
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{case.id}.json"
    path.write_text(run.to_json())
    return path


def files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def assert_ran_clean(proc) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr


def assert_shown_as_text(case: Hostile, output: str) -> None:
    assert case.shown in output, output[-2000:]
    assert [c for c in case.text if c in CONTROL and c in output] == [], "a control character reached the terminal"


@pytest.mark.parametrize("case", cases("terminal"))
def test_show_prints_a_hostile_run_as_text(tmp_path, case):
    document = write_document(tmp_path / "docs", case)
    proc = run_perfwatch("show", str(document), cwd=tmp_path)
    assert_ran_clean(proc)
    assert_shown_as_text(case, proc.stdout + proc.stderr)


@pytest.mark.parametrize("case", cases("report"))
def test_report_escapes_a_hostile_run_and_writes_only_under_reports(tmp_path, case):
    document = write_document(tmp_path / "docs", case)
    before = files(tmp_path)
    proc = run_perfwatch("report", str(document), cwd=tmp_path)
    assert_ran_clean(proc)
    written = files(tmp_path) - before
    assert written and all(p.parts[0] == "reports" for p in written), written
    [page] = (tmp_path / "reports").glob("*/report.html")
    markup = page.read_text()
    if "<" in case.text:
        assert case.text not in markup and case.text in html.unescape(markup)  # escaped, never raw
    for png in (tmp_path / "reports").rglob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("case", cases("history"))
def test_history_draws_a_hostile_name_only_under_the_plot_dir(tmp_path, case):
    write_document(tmp_path / "docs", case)
    before = files(tmp_path)
    proc = run_perfwatch("history", "--results-dir", "docs", "--plot-dir", "plots", cwd=tmp_path)
    assert_ran_clean(proc)
    written = files(tmp_path) - before
    assert written and all(p.parts[0] == "plots" for p in written), written


# --- through a suite: parameters, parameter names and units -------------------------------------------

def suite_source(chosen: list[Hostile]) -> str:
    """One track benchmark per case: its parameter name, its one parameter value and its unit are the string."""
    parts = []
    for index, case in enumerate(chosen):
        text = repr(case.text)
        parts.append(f"def track_case_{index}(p):\n    return 1.0\n"
                     f"track_case_{index}.params = [{text}]\ntrack_case_{index}.param_names = [{text}]\n"
                     f"track_case_{index}.unit = {text}\ntrack_case_{index}.repeat = 2\n"
                     f"track_case_{index}.warmup_time = 0\n")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def suite_project(tmp_path_factory) -> tuple[Path, dict, dict]:
    """All cases in one suite, listed and run once into the default store: (project, list, run)."""
    project = tmp_path_factory.mktemp("hostile-suite")
    write_suite(project / "suites", "hostile.py", suite_source(HOSTILE))
    listed = run_perfwatch("list", cwd=project)
    ran = run_perfwatch("run", "--json", cwd=project)
    return project, listed, ran


def stored_case(ran, index: int) -> dict:
    [result] = [b for b in json.loads(ran.stdout)["benchmarks"] if b["name"].startswith(f"hostile.track_case_{index}(")]
    return result


@pytest.mark.parametrize("case", cases("terminal"))
def test_a_hostile_suite_lists_runs_and_stores_each_string_as_given(suite_project, case):
    _, listed, ran = suite_project
    assert_ran_clean(listed)
    assert_ran_clean(ran)
    stored = stored_case(ran, HOSTILE.index(case))
    assert (stored["unit"], stored["params"]) == (case.text, {case.text: case.text})
    assert_shown_as_text(case, listed.stdout)
    assert_shown_as_text(case, ran.stderr)  # with --json the table goes to stderr

