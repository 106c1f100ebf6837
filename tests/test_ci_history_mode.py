"""`perfwatch ci --history`: a dedicated runner's new run judged against its own recent runs in the store."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from helpers import MACHINE, assert_one_line_error, bench, run_perfwatch, scaled, write_suite
from servers import postgres_fixture

from perfwatch.regress.recent_runs import FEWEST_RUNS, judge_against_recent, judge_benchmark, recent_runs
from perfwatch.results import RunRecord
from perfwatch.store import open_store
from perfwatch.store.base import RunFilter
from perfwatch.thresholds import Thresholds


def between_runs(run: int, level: float = 1.0, drift: float = 0.02) -> list[float]:
    """Samples of one run: tight inside the run (0.2%), but each run's level off by ~``drift`` (its process)."""
    rng = random.Random(run)
    offset = level * (1 + rng.gauss(0, drift))
    return [offset * (1 + rng.gauss(0, 0.002)) for _ in range(20)]


# --- the judgement, on literal results --------------------------------------------------------

def test_a_change_inside_the_spread_between_runs_is_not_a_regression():
    history = [bench("m.time_x", between_runs(i)) for i in range(10)]
    # 4% slower: far outside this run's own 0.2% spread, so a rank test inside one run would say "regressed";
    # but the runs themselves wander by 2%, and 4% is inside what they show.
    verdict = judge_benchmark(history, bench("m.time_x", [s * 1.04 for s in between_runs(99, drift=0)]), 0.03)
    assert verdict.verdict in ("too-noisy", "unchanged"), verdict.reason
    assert verdict.rounds == 10 and 0.01 < verdict.spread_between < 0.04
    assert "against 10 earlier runs of this machine" in verdict.reason


def test_a_change_well_beyond_the_spread_between_runs_is_a_regression():
    history = [bench("m.time_x", between_runs(i)) for i in range(10)]
    verdict = judge_benchmark(history, bench("m.time_x", between_runs(99, level=1.3, drift=0)), 0.03)
    assert verdict.verdict == "regressed", verdict.reason
    assert 0.2 < verdict.change < 0.4 and verdict.ci_low > 0.03 and verdict.p_value < 0.01


def test_throughput_falling_is_worse_and_rising_is_better():
    history = [bench("m.track_rate", between_runs(i, 100.0), unit="items/s", higher_is_better=True) for i in range(8)]
    slower = judge_benchmark(history, bench("m.track_rate", [70.0] * 5, unit="items/s", higher_is_better=True), 0.03)
    faster = judge_benchmark(history, bench("m.track_rate", [140.0] * 5, unit="items/s", higher_is_better=True), 0.03)
    assert (slower.verdict, faster.verdict) == ("regressed", "improved")


def test_a_metric_that_never_varies_is_judged_exactly():
    history = [bench("m.peakmem_x", [1000.0], unit="bytes") for _ in range(6)]
    assert judge_benchmark(history, bench("m.peakmem_x", [1010.0], unit="bytes"), 0.03).verdict == "unchanged"
    assert judge_benchmark(history, bench("m.peakmem_x", [1200.0], unit="bytes"), 0.03).verdict == "regressed"


def test_too_short_a_history_is_insufficient_and_says_from_when_it_judges():
    history = [bench("m.time_x", between_runs(i)) for i in range(FEWEST_RUNS - 1)]
    verdict = judge_benchmark(history, bench("m.time_x", between_runs(99, level=2.0)), 0.03)
    assert verdict.verdict == "insufficient"
    assert f"{FEWEST_RUNS - 1} earlier run(s)" in verdict.reason and f"from {FEWEST_RUNS} on" in verdict.reason


def test_failed_runs_in_the_history_do_not_count_and_a_failed_candidate_fails():
    history = [bench("m.time_x", between_runs(i)) for i in range(5)] + [bench("m.time_x", [], status="failed")]
    assert judge_benchmark(history, bench("m.time_x", between_runs(99)), 0.03).rounds == 5
    assert judge_benchmark(history, bench("m.time_x", [], status="failed", error="boom"), 0.03).verdict == "failed"
    assert judge_benchmark([], bench("m.time_x", between_runs(1)), 0.03).reason == \
        "no earlier run of this machine measured this version of it"


def test_a_comparison_names_the_runs_it_was_judged_against():
    history = [RunRecord(f"r{i}", f"2026-01-0{i + 1}T00:00:00+00:00", "ci", MACHINE,
                         [bench("m.time_x", between_runs(i))]) for i in range(6)]
    candidate = RunRecord("new", "2026-02-01T00:00:00+00:00", "ci", MACHINE,
                          [bench("m.time_x", between_runs(9, level=2.0)), bench("m.time_new", scaled([1.0] * 5, 1))])
    comparison = judge_against_recent(history, candidate, Thresholds())
    assert (comparison.mode, comparison.baseline.run_id) == ("history", "r5")
    assert comparison.history == tuple(f"r{i}" for i in range(6))
    assert [v.verdict for v in comparison.verdicts] == ["regressed", "new"]
    assert comparison.exit_code == 1
    assert "6 recent runs of this machine (r0 .. r5)" == comparison.baseline_text


# --- which runs count, in every kind of store ------------------------------------------------

def literal(run_id: str, day: int, *, suite: str = "ci", **env) -> RunRecord:
    facts = {**MACHINE, "git_branch": "main", "git_commit": f"{day:040d}",
             "git_commit_time": f"2026-01-{day:02d}T00:00:00+00:00", **env}
    return RunRecord(run_id, f"2026-03-{day:02d}T00:00:00+00:00", suite, facts, [bench("m.time_x", between_runs(day))])


postgres = postgres_fixture()


@pytest.fixture(params=["directory", "sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").new_database()
    return str(tmp_path / "runs") if request.param == "directory" else f"sqlite:///{tmp_path / 'runs.db'}"


def test_only_this_machines_recent_clean_runs_of_the_branch_and_suite_count(store_url):
    here = {**MACHINE, "git_branch": "main", "git_commit": "c" * 40}
    runs = [literal(f"r{day:02d}", day) for day in range(1, 13)]
    others = [literal("x1", 13, machine_id="fedcba987654"), literal("x2", 14, git_dirty=True),
              literal("x3", 15, git_branch="feature"), literal("x4", 16, suite="quick"),
              literal("x5", 17, git_commit="c" * 40), literal("x6", 18, torch="2.12.0")]
    store = open_store(store_url)
    store.import_runs(runs + others)
    chosen = recent_runs(store, here, "ci", runs=5)
    # x6 passes the store's filter (same machine id) but its torch differs: the newest 5 lose it
    assert [r.run_id for r in chosen] == ["r09", "r10", "r11", "r12"]
    assert [r.run_id for r in recent_runs(store, here, "ci", runs=10, branch="feature")] == ["x3"]
    newest = RunFilter(newest=3, suite="ci", clean=True)
    assert [r.run_id for r in store.select(newest)] == ["x3", "x5", "x6"]


# --- the command, end to end -----------------------------------------------------------------

# A track_ benchmark that measures no time, with the spread between runs that real timings have:
# each process draws its level once (2%), and LEVEL moves it, as a slower commit would.
SUITE = """
import os, random

_level = float(os.environ.get("LEVEL", "1")) * (1 + random.Random(os.getpid()).gauss(0, 0.02))

def track_rate():
    return 100.0 * _level
"""


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)


@pytest.fixture
def runner_checkout(tmp_path) -> Path:
    """A project on main whose five earlier commits each ran `perfwatch run --suite ci` on this machine."""
    repo = tmp_path / "project"
    write_suite(repo / "suites", "tiny.py", SUITE)
    (repo / ".gitignore").write_text(".perfwatch/\nreports/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    for i in range(FEWEST_RUNS):
        git(repo, "commit", "-q", "--allow-empty", "-m", f"commit {i}")
        proc = run_perfwatch("run", "--suite", "ci", cwd=repo)
        assert proc.returncode == 0, proc.stderr
    git(repo, "commit", "-q", "--allow-empty", "-m", "the commit under test")
    return repo


def test_ci_history_fails_a_push_that_is_slower_than_the_machines_recent_runs(runner_checkout):
    slower = run_perfwatch("ci", "--history", "--report-dir", "reports/slow", cwd=runner_checkout,
                           env={"LEVEL": "1.5"})
    assert slower.returncode == 1, slower.stdout + slower.stderr
    assert "regressed" in slower.stdout and "5 recent runs of this machine" in slower.stdout
    report = json.loads((runner_checkout / "reports" / "slow" / "report.json").read_text())
    assert report["mode"] == "history" and len(report["history"]) == FEWEST_RUNS
    assert "history (against the spread between" in (runner_checkout / "reports" / "slow" / "report.md").read_text()
    same = run_perfwatch("ci", "--history", "--report-dir", "reports/same", cwd=runner_checkout)
    assert same.returncode == 0, same.stdout + same.stderr  # the slower run of this commit is not its own history


def test_ci_history_on_a_new_runner_says_it_is_learning_and_passes(tmp_path):
    write_suite(tmp_path / "suites", "tiny.py", SUITE)
    proc = run_perfwatch("ci", "--history", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "history mode: 0 earlier run(s)" in proc.stderr and "new" in proc.stdout


@pytest.mark.parametrize(("args", "needles"), [
    (("--history", "--against", "HEAD"), ["--against and --history", "choose one"]),
    (("--history", "--baseline", "b.json"), ["--history and --baseline"]),
    (("--history-runs", "7"), ["--history-runs belongs to history mode"]),
])
def test_mixed_modes_are_one_line_errors(tmp_path, args, needles):
    assert_one_line_error(run_perfwatch("ci", *args, cwd=tmp_path), *needles)
