"""Wrong-shaped results documents and settings files: a listing skips the bad file and names it;
a command given that one file says which file and which field, in one line (exit 2)."""

from __future__ import annotations

import json

import pytest
from helpers import (
    MACHINE,
    STEADY,
    assert_one_line_error,
    bench,
    run_perfwatch,
    scaled,
    store_run,
    write_suite,
)

GOOD_ID = "20260101T000000Z-aaaaaa"
BAD_ID = "20260102T000000Z-bbbbbb"


def write_bad(project, change):
    """A copy of the stored good run with ``change`` applied to its document, stored as a later run."""
    good = store_run(project, GOOD_ID, bench("loader.time_read", scaled(STEADY, 1.0)))
    doc = {**good.to_dict(), "run_id": BAD_ID}
    change(doc)
    path = project / ".perfwatch" / "results" / f"{BAD_ID}.json"
    path.write_text(json.dumps(doc))
    return path


def set_samples(value):
    return lambda doc: doc["benchmarks"][0].update(samples=value)


WRONG_SHAPES = [
    pytest.param(lambda doc: doc.update(benchmarks="str"), "benchmarks must be a list, got str", id="benchmarks"),
    pytest.param(set_samples("abc"), "benchmarks[0].samples must be a list, got str", id="samples"),
    pytest.param(set_samples(["1.0"]), "benchmarks[0].samples[0] must be a number, got str", id="sample"),
    pytest.param(lambda doc: doc.update(env=[]), "env must be a table, got list", id="env"),
    pytest.param(lambda doc: doc["benchmarks"][0].update(status="fine"), "benchmarks[0].status must be one of",
                 id="status"),
]


@pytest.mark.parametrize("change, words", WRONG_SHAPES)
def test_a_listing_skips_a_wrong_shaped_run_and_names_it(tmp_path, change, words):
    bad = write_bad(tmp_path, change)
    listed = run_perfwatch("runs", "--results-dir", ".perfwatch/results", cwd=tmp_path)
    assert listed.returncode == 0 and GOOD_ID in listed.stdout and BAD_ID not in listed.stdout, listed.stderr
    assert f"skipping {bad.relative_to(tmp_path)}: malformed results document: {words}" in listed.stderr
    history = run_perfwatch("history", "--json", "--results-dir", ".perfwatch/results", cwd=tmp_path)
    assert history.returncode == 0 and "Traceback" not in history.stderr, history.stderr


@pytest.mark.parametrize("change, words", WRONG_SHAPES)
def test_a_command_given_the_wrong_shaped_run_names_the_file_and_the_field(tmp_path, change, words):
    bad = write_bad(tmp_path, change)
    needle = f"{bad.relative_to(tmp_path)}: malformed results document: {words}"
    assert_one_line_error(run_perfwatch("show", str(bad.relative_to(tmp_path)), cwd=tmp_path), needle)
    assert_one_line_error(run_perfwatch("compare", GOOD_ID, str(bad.relative_to(tmp_path)), cwd=tmp_path), needle)


def test_ci_refuses_a_wrong_shaped_baseline_before_running_the_suite(tmp_path):
    write_suite(tmp_path / "suites", "bench_never.py", """
        def time_never():
            raise SystemExit("the suite ran")
    """)
    baseline = tmp_path / "perfwatch-baseline.json"
    doc = store_run(tmp_path, GOOD_ID, bench("never.time_never", [1.0]), env=MACHINE).to_dict()
    doc["benchmarks"][0]["samples"] = "abc"
    baseline.write_text(json.dumps(doc))
    assert_one_line_error(run_perfwatch("ci", "--baseline", baseline.name, "suites", cwd=tmp_path),
                          "perfwatch-baseline.json (baseline): malformed results document: "
                          "benchmarks[0].samples must be a list, got str")


@pytest.mark.parametrize("name, content, words", [
    ("pyproject.toml", b'tool = "x"\n', "pyproject.toml: 'tool' must be a dict, got str"),
    ("pyproject.toml", b'[tool]\nperfwatch = "x"\n', "pyproject.toml: 'tool.perfwatch' must be a dict, got str"),
    ("pyproject.toml", b'[project]\nname = "caf\xe9"\n', "pyproject.toml: not UTF-8 text"),
    ("perfwatch.toml", b'suite = "\xff"\n', "perfwatch.toml: not UTF-8 text"),
])
def test_a_settings_file_of_the_wrong_shape_or_encoding_is_one_clear_line(tmp_path, name, content, words):
    (tmp_path / name).write_bytes(content)
    assert_one_line_error(run_perfwatch("runs", cwd=tmp_path), words)


def test_a_setting_of_the_wrong_type_names_its_type_not_its_value(tmp_path):
    (tmp_path / "perfwatch.toml").write_text('results_dir = ["hunter2-secret"]\n')
    proc = run_perfwatch("runs", cwd=tmp_path)
    assert_one_line_error(proc, "perfwatch.toml: perfwatch setting 'results_dir' must be a str, got list")
    assert "hunter2" not in proc.stderr
