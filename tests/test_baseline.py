"""Baseline files: save, show, what a missing or corrupt one says, and when two machines differ."""

from __future__ import annotations

import json

from helpers import MACHINE, STEADY, assert_one_line_error, bench, run_perfwatch, scaled, store_run

from perfwatch.regress.compare import machine_differences


def test_machine_differences_name_each_fact_that_differs():
    assert machine_differences(MACHINE, dict(MACHINE)) == []
    gpu = {"model": "NVIDIA H100 80GB HBM3", "count": 8, "driver": "550.54"}
    other = {**MACHINE, "cpu_cores_logical": 16, "memory_bytes": 64 * 1024**3, "gpu": gpu, "torch": "2.12.0"}
    assert machine_differences(MACHINE, other) == [
        "cores: 2 vs 16", "memory: 8 GiB vs 64 GiB", "GPU: no GPU vs NVIDIA H100 80GB HBM3 ×8", "torch: 2.13.0 vs 2.12.0"]
    # A CI runner's host name changes every job and identical VMs report a few MiB apart: same machine.
    assert machine_differences(MACHINE, {**MACHINE, "host": "runner-42", "memory_bytes": 8 * 1024**3 - 2**20}) == []
    assert machine_differences(MACHINE, {"host": "ci-1"}) == [
        "CPU: AMD EPYC 7763 vs unknown", "cores: 2 vs unknown", "memory: 8 GiB vs unknown", "torch: 2.13.0 vs unknown"]


def test_save_and_show_round_trip(tmp_path):
    first = store_run(tmp_path, "20260101T000000Z-aaaaaa", bench("loader.time_read", scaled(STEADY, 1.0)))
    store_run(tmp_path, "20260102T000000Z-bbbbbb", bench("loader.time_read", scaled(STEADY, 1.2)),
              bench("train.time_step", scaled(STEADY, 1.0)))
    stored = sorted((tmp_path / ".perfwatch" / "results").glob("*.json"))
    before = {p: p.read_bytes() for p in stored}

    saved = run_perfwatch("baseline", "save", "20260101", cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    assert "saved run 20260101T000000Z-aaaaaa (1 benchmarks" in saved.stdout and "replaced" not in saved.stdout
    baseline_file = tmp_path / "perfwatch-baseline.json"
    assert json.loads(baseline_file.read_text()) == first.to_dict()  # a results document, env included
    assert baseline_file.stat().st_mode & 0o777 == 0o644

    again = run_perfwatch("baseline", "save", cwd=tmp_path)  # the latest run replaces it
    assert again.returncode == 0 and "replaced run 20260101T000000Z-aaaaaa" in again.stdout.replace("\n", " ")
    shown = run_perfwatch("baseline", "show", cwd=tmp_path)
    assert shown.returncode == 0 and "train.time_step" in shown.stdout and "20260102T000000Z-bbbbbb" in shown.stdout
    assert "AMD EPYC 7763" in shown.stdout

    elsewhere = run_perfwatch("baseline", "save", "20260101", "--to", "bench/base.json", cwd=tmp_path)
    assert elsewhere.returncode == 0
    assert "loader.time_read" in run_perfwatch("baseline", "show", "bench/base.json", cwd=tmp_path).stdout
    assert {p: p.read_bytes() for p in stored} == before  # stored runs are never touched


def test_a_missing_baseline_says_how_to_make_one(tmp_path):
    store_run(tmp_path, "20260101T000000Z-aaaaaa", bench("loader.time_read", scaled(STEADY, 1.0)))
    for args in (("baseline", "show"), ("compare",)):
        assert_one_line_error(run_perfwatch(*args, cwd=tmp_path), "perfwatch-baseline.json: no baseline file",
                              "`perfwatch baseline save`")


def test_a_corrupt_baseline_is_refused_and_left_alone(tmp_path):
    store_run(tmp_path, "20260101T000000Z-aaaaaa", bench("loader.time_read", scaled(STEADY, 1.0)))
    baseline_file = tmp_path / "perfwatch-baseline.json"
    baseline_file.write_text('{"format_version": 1, "run_id": ')
    assert_one_line_error(run_perfwatch("compare", cwd=tmp_path), "perfwatch-baseline.json: corrupt baseline",
                          "`perfwatch baseline save`")
    baseline_file.write_text('{"format_version": 7}')
    assert_one_line_error(run_perfwatch("baseline", "show", cwd=tmp_path), "perfwatch-baseline.json (baseline)",
                          "format_version 7 is newer than this perfwatch")
    baseline_file.write_text('{"format_version": 1, "run_id": "x"}')
    assert_one_line_error(run_perfwatch("compare", cwd=tmp_path), "malformed results document")
    assert baseline_file.read_text() == '{"format_version": 1, "run_id": "x"}'
    saved = run_perfwatch("baseline", "save", cwd=tmp_path)  # writing a new one is the way out
    assert saved.returncode == 0 and "replaced an unreadable baseline file" in saved.stdout.replace("\n", " ")


def test_saving_without_runs_or_with_failures(tmp_path):
    assert_one_line_error(run_perfwatch("baseline", "save", cwd=tmp_path), "no stored runs yet")
    store_run(tmp_path, "20260101T000000Z-aaaaaa", bench("loader.time_read", [], status="timeout", error="timed out"))
    saved = run_perfwatch("baseline", "save", cwd=tmp_path)
    assert saved.returncode == 0 and "warning: 1 benchmark(s) failed in this run" in saved.stderr
