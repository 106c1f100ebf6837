"""`perfwatch compare` through the real command line, over stored runs with literal samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import MACHINE, NOISY, STEADY, assert_one_line_error, bench, run_perfwatch, scaled, store_run


def verdicts_of(proc) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(proc.stdout)["verdicts"]}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A baseline with one benchmark of each kind, saved as the committed baseline file."""
    store_run(tmp_path, "20260101T000000Z-base00",
              bench("loader.time_read", scaled(STEADY, 1.0)),
              bench("train.time_step", scaled(STEADY, 1.0)),
              bench("train.track_throughput", STEADY, unit="samples/s", higher_is_better=True),
              bench("loader.time_noisy", scaled(NOISY, 1.0)),
              bench("loader.time_removed", scaled(STEADY, 1.0)))
    saved = run_perfwatch("baseline", "save", cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    return tmp_path


def test_every_verdict_in_one_comparison(project):
    store_run(project, "20260102T000000Z-cand00",
              bench("loader.time_read", scaled(STEADY[::-1], 1.10)),  # 10% slower: regressed
              bench("train.time_step", scaled(STEADY[::-1], 0.90)),  # 10% faster: improved
              bench("train.track_throughput", [v * 1.001 for v in STEADY[::-1]], unit="samples/s",
                    higher_is_better=True),  # unchanged
              bench("loader.time_noisy", scaled(NOISY[::-1], 1.10)),  # too noisy to judge
              bench("loader.time_added", scaled(STEADY, 1.0)))  # new; loader.time_removed is missing
    proc = run_perfwatch("compare", cwd=project)
    assert proc.returncode == 1, proc.stderr  # the regression
    assert "perfwatch: 1 benchmark(s) regressed: loader.time_read" in proc.stderr
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") > 5}
    assert "regressed" in rows["loader.time_read"] and "+10.0%" in rows["loader.time_read"]
    assert "improved" in rows["train.time_step"] and "-10.0%" in rows["train.time_step"]
    assert "unchanged" in rows["train.track_throughput"] and "↑" in rows["train.track_throughput"]
    assert "too-noisy" in rows["loader.time_noisy"] and "cannot tell" in rows["loader.time_noisy"]
    assert "new" in rows["loader.time_added"] and "missing" in rows["loader.time_removed"]
    assert "1 regressed, 1 improved, 1 unchanged, 1 too-noisy, 1 new, 1 missing" in proc.stdout


def test_an_unpaired_comparison_with_a_busy_run_says_so(project):
    busy = {**MACHINE, "load_average": [3.5, 2.0, 1.0]}
    store_run(project, "20260102T000000Z-cand00", bench("loader.time_read", scaled(STEADY, 1.0)), env=busy)
    proc = run_perfwatch("compare", cwd=project)
    assert "candidate run began on a busy machine (load 3.5 on 2 cores)" in proc.stderr
    assert "baseline run began" not in proc.stderr  # its fingerprint has no load: nothing to say


def test_json_and_markdown_output(project):
    store_run(project, "20260102T000000Z-cand00", bench("loader.time_read", scaled(STEADY, 1.10)))
    as_json = run_perfwatch("compare", "--json", cwd=project)
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert doc["baseline"]["run_id"] == "20260101T000000Z-base00" and doc["exit_code"] == 1
    read = verdicts_of(as_json)["loader.time_read"]
    assert read["verdict"] == "regressed" and read["change"] == pytest.approx(0.10) and read["ci_low"] > 0
    assert verdicts_of(as_json)["train.time_step"]["candidate_median"] is None  # missing: no number, not NaN
    markdown = run_perfwatch("compare", "--markdown", cwd=project)
    assert markdown.returncode == 1 and markdown.stdout.startswith("## perfwatch: 1 regressed, 4 missing")
    assert "| 🔴 | loader.time_read |" in markdown.stdout
    both = run_perfwatch("compare", "--json", "--markdown", cwd=project)
    assert_one_line_error(both, "--json and --markdown")


def test_a_throughput_drop_is_a_regression(project):
    store_run(project, "20260102T000000Z-cand00",
              bench("train.track_throughput", [v * 0.9 for v in STEADY], unit="samples/s", higher_is_better=True))
    proc = run_perfwatch("compare", "--json", cwd=project)
    row = verdicts_of(proc)["train.track_throughput"]
    assert proc.returncode == 1 and row["verdict"] == "regressed" and row["ratio"] == pytest.approx(0.9)


def test_too_few_samples_are_insufficient_not_judged(project):
    store_run(project, "20260102T000000Z-cand00", bench("loader.time_read", [2e-3, 2e-3]), suite="quick")
    proc = run_perfwatch("compare", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "insufficient" in proc.stdout and "need at least 3 each" in proc.stdout
    assert "warning: the baseline is a ci run and the candidate a quick run" in proc.stderr


def test_a_failed_candidate_exits_3_even_with_a_regression(project):
    store_run(project, "20260102T000000Z-cand00",
              bench("loader.time_read", scaled(STEADY, 1.5)),
              bench("train.time_step", [], status="failed", error="RuntimeError: CUDA out of memory"))
    proc = run_perfwatch("compare", cwd=project)
    assert proc.returncode == 3, proc.stderr
    assert "1 benchmark(s) failed in the candidate: train.time_step" in proc.stderr
    assert "CUDA out of memory" in proc.stdout and "regressed" in proc.stdout  # the report is printed first


def test_runs_are_named_by_id_prefix_file_or_latest(project):
    store_run(project, "20260102T000000Z-cand00", bench("loader.time_read", scaled(STEADY, 1.0)))
    store_run(project, "20260103T000000Z-cand01", bench("loader.time_read", scaled(STEADY, 1.3)))
    older = run_perfwatch("compare", "20260101", "20260102", "--json", cwd=project)
    assert older.returncode == 0 and verdicts_of(older)["loader.time_read"]["verdict"] == "unchanged"
    latest = run_perfwatch("compare", "perfwatch-baseline.json", "latest", "--json", cwd=project)
    assert latest.returncode == 1 and json.loads(latest.stdout)["candidate"]["run_id"] == "20260103T000000Z-cand01"
    unknown = run_perfwatch("compare", "1999", cwd=project)
    assert_one_line_error(unknown, "1999: no stored run with that id")


def test_a_run_from_another_machine_is_refused_then_allowed(project):
    other = {**MACHINE, "host": "ci-2", "cpu": "Intel Xeon 8375C", "torch": "2.12.0", "machine_id": "fedcba987654"}
    store_run(project, "20260102T000000Z-cand00", bench("loader.time_read", scaled(STEADY, 1.10)), env=other)
    refused = run_perfwatch("compare", cwd=project)
    assert_one_line_error(refused, "different machines", "CPU: AMD EPYC 7763 vs Intel Xeon 8375C",
                          "torch: 2.13.0 vs 2.12.0", "--allow-machine-mismatch")
    allowed = run_perfwatch("compare", "--allow-machine-mismatch", cwd=project)
    assert allowed.returncode == 1 and "regressed" in allowed.stdout
    assert "warning: comparing runs from different machines: CPU: AMD EPYC 7763 vs Intel Xeon 8375C" in allowed.stderr
    as_json = run_perfwatch("compare", "--allow-machine-mismatch", "--json", cwd=project)
    assert json.loads(as_json.stdout)["machine_differences"] == ["CPU: AMD EPYC 7763 vs Intel Xeon 8375C",
                                                                 "torch: 2.13.0 vs 2.12.0"]


def test_a_new_host_name_alone_is_the_same_machine(project):
    store_run(project, "20260102T000000Z-cand00", bench("loader.time_read", scaled(STEADY, 1.0)),
              env={**MACHINE, "host": "ci-7", "memory_bytes": MACHINE["memory_bytes"] - 3 * 1024**2})
    proc = run_perfwatch("compare", cwd=project)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def test_thresholds_from_config_and_the_command_line(project):
    store_run(project, "20260102T000000Z-cand00", bench("loader.time_read", scaled(STEADY, 1.10)))
    (project / "perfwatch.toml").write_text('[thresholds]\n"loader.*" = "20%"\n')
    relaxed = run_perfwatch("compare", "--json", cwd=project)
    row = verdicts_of(relaxed)["loader.time_read"]
    assert relaxed.returncode == 0 and row["verdict"] == "unchanged" and row["threshold"] == 0.2
    tightened = run_perfwatch("compare", "--json", "--threshold", "*=5%", cwd=project)  # the command line wins
    assert tightened.returncode == 1 and verdicts_of(tightened)["loader.time_read"]["threshold"] == 0.05


@pytest.mark.parametrize("spec, needles", [
    ("loader.*=5", ("--threshold", "'5' for 'loader.*' is ambiguous")),
    ("loader.*", ("--threshold 'loader.*': write PATTERN=VALUE",)),
    ("=5%", ("--threshold", "pattern '' must be a non-empty glob")),
])
def test_an_unknown_threshold_syntax_on_the_command_line(project, spec, needles):
    assert_one_line_error(run_perfwatch("compare", "--threshold", spec, cwd=project), *needles)


def test_an_unknown_threshold_syntax_in_config(project):
    (project / "pyproject.toml").write_text('[tool.perfwatch.thresholds]\n"training.*" = "fast"\n')
    assert_one_line_error(run_perfwatch("compare", cwd=project), "pyproject.toml", "'fast' for 'training.*'",
                          "is not a number")
