"""Hostile strings in stored runs: a run id that climbs out of the reports directory and
benchmark names with matplotlib's ``$...$`` mathtext reach `perfwatch report` and
`perfwatch history` as data, never as paths or markup."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from helpers import run_perfwatch

from perfwatch.paths import safe_name
from perfwatch.results import BenchResult, RunRecord

MATHTEXT = "loader.time_batch(fmt='$x^$', cost='$$')"
CLIMBING_ID = "../../../escaped"


def write_run(path: Path, run_id: str, created: datetime, median: float) -> Path:
    run = RunRecord(run_id=run_id, created=created.isoformat(), suite="quick",
                    env={"host": "h", "git_commit": f"{int(created.timestamp()):040x}"[-40:]},
                    benchmarks=[BenchResult(name=MATHTEXT, params={"fmt": "$x^$"}, kind="time", unit="seconds",
                                            higher_is_better=False, status="ok", samples=[median * (1 + i / 100) for i in range(8)])])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run.to_dict()))
    return path


def files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def test_a_run_id_with_dot_dot_never_writes_outside_the_reports_directory(tmp_path):
    project = tmp_path / "a" / "b" / "c"
    document = write_run(project / "hostile.json", CLIMBING_ID, datetime(2026, 1, 1, tzinfo=timezone.utc), 0.01)
    before = files_under(tmp_path)

    proc = run_perfwatch("report", str(document), cwd=project)

    assert proc.returncode == 0, proc.stderr
    written = files_under(tmp_path) - before
    assert written and all(p.parts[:4] == ("a", "b", "c", "reports") for p in written), written
    assert (project / "reports" / "run-escaped" / "report.html").is_file()


def test_mathtext_in_a_benchmark_name_is_drawn_literally_in_report_and_history(tmp_path):
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for day in range(6):
        write_run(tmp_path / "results" / f"r{day}.json", f"2026010{day + 1}T000000-{day:06x}", start + timedelta(day),
                  0.01)

    report = run_perfwatch("report", "--results-dir", "results", cwd=tmp_path)
    history = run_perfwatch("history", "--results-dir", "results", "--plot-dir", "plots", cwd=tmp_path)

    assert report.returncode == 0, report.stderr
    assert history.returncode == 0, history.stderr
    assert "ParseException" not in report.stderr + history.stderr
    assert (tmp_path / "plots" / f"{safe_name(MATHTEXT)}.png").read_bytes()[:4] == b"\x89PNG"
    markdown = next((tmp_path / "reports").glob("run-*/report.md")).read_text()
    assert f"`{MATHTEXT}`" in markdown  # shown as it is, not dropped


def test_safe_name_never_leaves_the_directory_and_keeps_long_names_apart():
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("..") == "unnamed"
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(safe_name(long_a)) == 120 and safe_name(long_a) != safe_name(long_b)
