"""The command line as users meet it: exit codes, one-line errors, nothing stored is lost."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_perfwatch, write_suite

GOOD = '''
def time_tiny():
    sum(range(100))

def track_answer():
    return 42.0
track_answer.unit = "answers"
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_suite(tmp_path / "suites", "basic.py", GOOD)
    (tmp_path / "perfwatch.toml").write_text('store = ".perfwatch/results"  # runs committed as JSON documents\n')
    return tmp_path


def stored(project: Path) -> list[Path]:
    return sorted((project / ".perfwatch" / "results").glob("*.json"))


def digests(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_run_prints_a_table_and_stores_a_results_document(project):
    proc = run_perfwatch("run", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "basic.time_tiny" in proc.stdout and "42 answers" in proc.stdout
    [path] = stored(project)
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 1 and doc["suite"] == "quick"
    assert {"host", "cpu", "cpu_cores_logical", "memory_bytes", "gpu", "torch", "python", "git_commit", "git_dirty",
            "thread_env"} <= set(doc["env"])
    tiny = next(b for b in doc["benchmarks"] if b["name"] == "basic.time_tiny")
    assert tiny["status"] == "ok" and tiny["unit"] == "seconds" and len(tiny["samples"]) >= 5


def test_json_output_is_the_stored_document(project):
    proc = run_perfwatch("run", "--json", "--filter", "answer", cwd=project)
    assert proc.returncode == 0, proc.stderr
    [path] = stored(project)
    assert json.loads(proc.stdout) == json.loads(path.read_text())


def test_list_and_show(project):
    listed = run_perfwatch("list", cwd=project)
    assert listed.returncode == 0 and "basic.track_answer" in listed.stdout and "2 benchmarks" in listed.stdout
    assert run_perfwatch("run", cwd=project).returncode == 0
    shown = run_perfwatch("show", cwd=project)
    assert shown.returncode == 0 and "basic.time_tiny" in shown.stdout
    run_id = stored(project)[0].stem
    as_json = run_perfwatch("show", run_id[:12], "--json", cwd=project)
    assert json.loads(as_json.stdout)["run_id"] == run_id
    assert run_id in run_perfwatch("runs", cwd=project).stdout
    unknown = run_perfwatch("show", "19990101", cwd=project)
    assert unknown.returncode == 2 and "19990101: no stored run with that id" in unknown.stderr


def test_a_benchmark_that_raises_exits_3_and_is_stored(project):
    write_suite(project / "suites", "bad.py", "def time_broken():\n    raise RuntimeError('no luck')\n")
    proc = run_perfwatch("run", cwd=project)
    assert proc.returncode == 3
    assert "bad.time_broken: RuntimeError: no luck (bad.py:2)" in proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(stored(project)[0].read_text())
    broken = next(b for b in doc["benchmarks"] if b["name"] == "bad.time_broken")
    assert broken["status"] == "failed" and broken["samples"] == []


def test_names_and_errors_that_look_like_markup_are_shown_as_written(project):
    write_suite(project / "suites", "odd.py", "def time_broken():\n    raise KeyError('[bold]list[int][/bold]')\n")
    proc = run_perfwatch("run", cwd=project)
    shown = run_perfwatch("show", cwd=project)
    assert proc.returncode == 3 and "[bold]list[int][/bold]" in shown.stdout


def test_debug_shows_the_traceback(project):
    write_suite(project / "suites", "bad.py", "def time_broken():\n    raise RuntimeError('no luck')\n")
    proc = run_perfwatch("--debug", "run", "--filter", "broken", cwd=project)
    assert proc.returncode == 3 and "Traceback" in proc.stderr


def test_a_suite_file_with_a_syntax_error_is_named_and_the_rest_runs(project):
    write_suite(project / "suites", "typo.py", "def time_x()\n    pass\n")
    proc = run_perfwatch("run", cwd=project)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert "typo: suites/typo.py:1: syntax error" in proc.stderr
    [doc] = [json.loads(p.read_text()) for p in stored(project)]
    status = {b["name"]: b["status"] for b in doc["benchmarks"]}
    assert status == {"typo": "failed", "basic.time_tiny": "ok", "basic.track_answer": "ok"}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "no/such/dir"], "no/such/dir: no such file or directory"),
        (["run", "--suite", "huge"], "'huge' is not one of 'quick', 'ci', 'full'"),
        (["run", "--frobnicate"], "No such option '--frobnicate'"),
        (["run", "--filter", "("], "filter '(': invalid regular expression"),
        (["run", "--filter", "nothing-matches"], "no benchmarks in the quick suite"),
        (["show", "nope"], ".perfwatch/results: no stored runs yet; run `perfwatch run` first"),
    ],
)
def test_bad_input_gets_a_clear_error_and_exit_2(project, args, needle):
    proc = run_perfwatch(*args, cwd=project)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_an_unwritable_results_dir_is_reported(project):
    (project / "occupied").write_text("a file where a directory should be")
    proc = run_perfwatch("run", "--results-dir", "occupied/results", cwd=project)
    assert_one_line_error(proc, "occupied/results: cannot write results")


def test_corrupt_and_future_results_files_are_refused_and_left_untouched(project):
    assert run_perfwatch("run", cwd=project).returncode == 0
    results = project / ".perfwatch" / "results"
    corrupt = results / "20200101T000000Z-000000.json"
    corrupt.write_text('{"format_version": 1, "run_id": ')
    future = results / "20200101T000001Z-000000.json"
    future.write_text(json.dumps({"format_version": 99, "run_id": "x"}))
    before = digests(stored(project))

    proc = run_perfwatch("show", str(corrupt), cwd=project)
    assert_one_line_error(proc, str(corrupt), "corrupt results file")

    proc = run_perfwatch("show", str(future), cwd=project)
    assert_one_line_error(proc, "format_version 99", "upgrade perfwatch")

    listed = run_perfwatch("runs", cwd=project)  # the good run is still listed; the bad ones are named
    assert listed.returncode == 0 and "corrupt results file" in listed.stderr
    assert run_perfwatch("run", cwd=project).returncode == 0  # storing goes on beside them
    assert {p: d for p, d in digests(stored(project)).items() if p in before} == before
    assert len(stored(project)) == len(before) + 1


def test_help_on_every_command(project):
    for command in ("run", "list", "show", "runs"):
        proc = run_perfwatch(command, "--help", cwd=project)
        assert proc.returncode == 0 and "Usage: perfwatch " + command in proc.stdout
