"""A benchmark's version (asv's `version`, else the hash of its code) and pretty_name travel with its results:
a new version starts a new history, as asv has it, and runs of uncommitted changes stay out of history."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import sqlalchemy as sa
from helpers import MACHINE, bench, run_perfwatch, write_suite
from servers import postgres_fixture

from perfwatch.regress.compare import compare_benchmark
from perfwatch.regress.history import build_series
from perfwatch.results import RunRecord
from perfwatch.store import Store, open_store
from perfwatch.store.schema import SCHEMA_VERSION

SUITE = """
def track_plain():
    return 1.0

def track_named():
    return 2.0
track_named.pretty_name = "a named one"
track_named.version = 3
"""


def test_a_run_records_each_benchmarks_version_and_pretty_name(tmp_path):
    write_suite(tmp_path / "suites", "tiny.py", SUITE)
    assert run_perfwatch("run", "--suite", "quick", cwd=tmp_path).returncode == 0
    shown = run_perfwatch("show", "--json", cwd=tmp_path)
    results = {b["name"]: b for b in json.loads(shown.stdout)["benchmarks"]}
    assert (results["tiny.track_named"]["version"], results["tiny.track_named"]["pretty_name"]) == ("3", "a named one")
    plain = results["tiny.track_plain"]
    assert len(plain["version"]) == 64 and plain["pretty_name"] is None  # asv's default: the code's SHA-256


def versioned(run_id: str, day: int, version: str | None, value: float, **env) -> RunRecord:
    """A run of commit ``day`` measuring ``version`` of m.time_x at ``value``."""
    facts = {**MACHINE, "git_commit": f"{day:040d}", "git_commit_time": f"2026-01-{day:02d}T00:00:00+00:00", **env}
    return RunRecord(run_id, f"2026-02-{day:02d}T00:00:00+00:00", "ci", facts,
                     [replace(bench("m.time_x", [value] * 5), version=version)])


def test_a_new_version_starts_a_new_history_and_unversioned_runs_belong_to_any():
    runs = [versioned("r1", 1, "1", 1.0), versioned("r2", 2, None, 1.0), versioned("r3", 3, "1", 1.0),
            versioned("r4", 4, "2", 5.0), versioned("r5", 5, "2", 5.0)]
    [series] = build_series(runs)
    assert [p.run_id for p in series.points] == ["r2", "r4", "r5"]  # r2 was stored before versions were
    assert (series.version, series.other_versions) == ("2", 2)
    assert "2 of an earlier version of the benchmark" in series.left_out


def test_runs_of_uncommitted_changes_are_not_pooled_with_their_commit():
    runs = [versioned("r1", 1, None, 1.0), versioned("r2", 1, None, 9.0, git_dirty=True), versioned("r3", 2, None, 1.0)]
    [series] = build_series(runs)
    assert [p.run_ids for p in series.points] == [("r1",), ("r3",)] and series.dirty_runs == 1
    assert series.left_out == "1 run(s) of uncommitted changes left out"
    [only_dirty] = build_series([versioned("r2", 1, None, 9.0, git_dirty=True)])
    assert only_dirty.points == () and only_dirty.dirty_runs == 1


def test_history_says_which_runs_it_left_out(tmp_path):
    store = Store(tmp_path / "runs")
    for run in [versioned(f"r{d}", d, "1", 1.0) for d in range(1, 4)] + [versioned("r9", 9, "2", 1.0, git_dirty=True),
                                                                          versioned("r8", 8, "2", 1.0)]:
        store.save(run)
    proc = run_perfwatch("history", "--store", str(tmp_path / "runs"), "--plot-dir", "plots", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ("m.time_x: 1 run(s) of uncommitted changes and 3 of an earlier version of the benchmark "
            "(asv's `version`, or its code) left out") in proc.stdout


def test_a_changed_version_is_not_judged_as_a_change_of_speed():
    before, after = (versioned("a", 1, "1", 1.0).benchmarks[0], versioned("b", 2, "2", 2.0).benchmarks[0])
    verdict = compare_benchmark(before, after)
    assert verdict.verdict == "insufficient" and "its version changed from 1 to 2" in verdict.reason
    unversioned = versioned("c", 3, None, 2.0).benchmarks[0]
    assert compare_benchmark(before, unversioned).verdict == "regressed"


postgres = postgres_fixture()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_of_schema_1_is_migrated_and_keeps_its_runs(tmp_path, request, backend):
    url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else request.getfixturevalue("postgres").new_database()
    open_store(url).save(versioned("old", 1, None, 1.0))
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:  # as perfwatch's schema 1 had it: no version or pretty_name in results
        for column in ("version", "pretty_name"):
            conn.execute(sa.text(f"ALTER TABLE results DROP COLUMN {column}"))
        conn.execute(sa.text("UPDATE perfwatch_schema SET version = 1"))
    engine.dispose()
    store = open_store(url)
    store.save(versioned("new", 2, "7", 1.0))
    assert store.info()["schema_version"] == SCHEMA_VERSION
    assert {run.run_id: run.benchmarks[0].version for run in store.runs()} == {"old": None, "new": "7"}
