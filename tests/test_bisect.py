"""`perfwatch bisect`: the search rule on literal verdicts (perfwatch.regress.bisect), a pair's judgement
over pooled measurements on literal samples, then the real command on throw-away git repositories whose
benchmark knob changes at a known commit (also as `perfwatch history` prints it for a stored step).

The repositories' benchmark is a track_ benchmark of the knob itself: its value is exact, so the
paired verdicts are exact too and the tests never depend on the machine's noise (the accuracy of
bisection under real timing noise is scripts/bisect_accuracy.py's to measure).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers import assert_one_line_error, default_sigint, hung_process_report, run_perfwatch, write_suite
from servers import wait_until

from perfwatch.bench.suite import Benchmark
from perfwatch.regress.bisect import (
    Judgement,
    Progress,
    Step,
    bisect,
    decide,
    eliminated,
    midpoint,
    skip,
    steps_needed,
)
from perfwatch.regress.bisect_run import Commit, PairedMeasure, Target
from perfwatch.results import BenchResult, RunRecord
from perfwatch.store import Store

# --- the rule, on literal verdicts --------------------------------------------------------------


def exact(levels: list[float], threshold: float = 0.03, broken: tuple[int, ...] = ()):
    """A noise-free measure: the benchmark's value at each position; a broken position cannot be measured."""
    calls: list[tuple[int, int]] = []

    def measure(a: int, b: int) -> Judgement:
        calls.append((a, b))
        bad = tuple(p for p in (a, b) if p in broken)
        if bad:
            return skip(bad, f"suites/bench.py does not import at {bad[0]}")
        change = levels[b] / levels[a] - 1
        verdict = "regressed" if change > threshold else "improved" if change < -threshold else "unchanged"
        return Judgement(verdict, change, change, change, 1.0 if verdict == "unchanged" else 0.0)

    measure.calls = calls
    return measure


def step_at(count: int, culprit: int, factor: float = 1.4) -> list[float]:
    return [1.0 if p < culprit else factor for p in range(count + 1)]


NOISY = Judgement("too-noisy", 0.02, -0.05, 0.09, 0.2)
FLAT = Judgement("unchanged", 0.0, -0.01, 0.01, 0.9)
UP = Judgement("regressed", 0.12, 0.09, 0.15, 1e-4)


@pytest.mark.parametrize("count", [1, 2, 7, 8, 13, 16, 64])
def test_every_culprit_is_found_in_ceil_log2_steps(count):
    for culprit in range(1, count + 1):
        measure = exact(step_at(count, culprit))
        found = bisect(count, measure)
        assert found.outcome == "culprit" and found.findings[0].hi == culprit
        assert len(found.steps) <= steps_needed(0, count) == math.ceil(math.log2(count))
        assert found.measurements == 1 + 2 * len(found.steps) == len(measure.calls)
        assert found.findings[0].judgement.change == pytest.approx(0.4)  # the culprit's own step, its parent first


def test_each_step_compares_the_midpoint_with_both_ends_of_the_range_left():
    measure = exact(step_at(8, 6))
    found = bisect(8, measure)
    assert measure.calls == [(0, 8), (0, 4), (4, 8), (4, 6), (6, 8), (4, 5), (5, 6)]
    assert [(s.lo, s.mid, s.hi, s.go) for s in found.steps] == [(0, 4, 8, "upper"), (4, 6, 8, "lower"),
                                                                (4, 5, 6, "upper")]


def test_no_regression_between_good_and_bad_stops_after_the_confirmation():
    found = bisect(16, exact([1.0] * 17))
    assert found.outcome == "no-regression" and found.steps == [] and found.measurements == 1
    assert bisect(16, exact([1.0] * 8 + [0.7] * 9)).outcome == "no-regression"  # it got faster


def test_a_confirmation_that_stays_too_noisy_is_measured_three_times_and_not_bisected():
    calls = []
    found = bisect(16, lambda a, b: calls.append((a, b)) or NOISY)
    assert found.outcome == "unconfirmed" and calls == [(0, 16)] * 3  # not ruled out either: not "no-regression"
    assert found.confirmation.measurements == 3


def test_good_or_bad_that_cannot_be_measured_is_a_failure_not_a_search():
    found = bisect(8, exact(step_at(8, 3), broken=(0,)))
    assert found.outcome == "failed" and "does not import" in found.confirmation.reason and found.steps == []


def test_two_regressions_are_reported_as_two_not_averaged():
    levels = [1.0] * 4 + [1.2] * 7 + [1.5] * 6  # steps at 4 and 11 of 16
    found = bisect(16, exact(levels))
    assert found.outcome == "several"
    assert [(f.kind, f.hi) for f in found.findings] == [("culprit", 4), ("culprit", 11)]
    assert found.steps[0].go == "both" and "two regressions" in found.steps[0].note
    assert [round(f.judgement.change, 3) for f in found.findings] == [0.2, 0.25]


def test_a_commit_that_cannot_be_measured_is_skipped_and_the_nearest_other_one_tried():
    found = bisect(8, exact(step_at(8, 6), broken=(4,)))
    assert found.outcome == "culprit" and found.findings[0].hi == 6
    assert found.skipped == {4: "suites/bench.py does not import at 4"}
    assert [(s.mid, s.go) for s in found.steps][:2] == [(4, "skip"), (3, "upper")]


def test_skipped_commits_next_to_the_culprit_leave_a_range_it_names():
    found = bisect(8, exact(step_at(8, 6), broken=(4, 5)))
    [finding] = found.findings
    assert found.outcome == "range" and (finding.lo, finding.hi) == (3, 6)
    assert finding.note == "2 commit(s) inside could not be measured" and set(found.skipped) == {4, 5}


def test_a_too_noisy_half_is_measured_again_and_then_decided():
    truth = exact(step_at(8, 6))
    noisy_once = {(0, 4)}

    def measure(a, b):
        if (a, b) in noisy_once:
            noisy_once.discard((a, b))
            return NOISY
        return truth(a, b)

    found = bisect(8, measure)
    assert found.findings[0].hi == 6 and found.steps[0].lower.measurements == 2
    assert found.measurements == 1 + 2 * len(found.steps) + 1


def test_the_rule_step_by_step():
    more, spent = (True, True), (False, False)
    assert decide(UP, UP, FLAT, more).go == "lower"
    assert decide(UP, FLAT, UP, more).go == "upper"
    improved = Judgement("improved", -0.1, -0.12, -0.08, 1e-4)
    assert decide(UP, improved, UP, more).go == "upper"  # faster then slower: the slowdown is up there
    assert decide(UP, UP, UP, more).go == "both"
    # too noisy: measured again while it may be, never guessed
    assert decide(UP, NOISY, UP, more) == decide(UP, NOISY, UP, (True, False))
    assert decide(UP, NOISY, UP, more).again == ("lower",)
    assert decide(UP, NOISY, NOISY, more).again == ("lower", "upper")
    assert decide(UP, FLAT, FLAT, more).again == ("lower", "upper")  # contradicts the range: both again
    # out of measurements
    follow = decide(UP, NOISY, UP, spent)
    assert follow.go == "upper" and "lower half stayed too noisy to rule out a second change" in follow.note
    assert decide(UP, NOISY, NOISY, spent).go == "unresolved"
    spread = decide(UP, FLAT, FLAT, spent)
    assert spread.go == "unresolved" and "spread over several commits" in spread.note


def test_elimination_only_when_the_ranges_interval_proves_it():
    whole = Judgement("regressed", 0.20, 0.15, 0.25, 1e-5)
    inferred = eliminated(whole, FLAT)  # the flat half holds at most +1%: the other holds at least +13.9%
    assert inferred.inferred and inferred.verdict == "regressed"
    assert inferred.ci_low == pytest.approx(1.15 / 1.01 - 1) and inferred.change == pytest.approx(0.2)
    decision = decide(whole, FLAT, NOISY, (False, False))
    assert decision.go == "upper" and decision.inferred == inferred and "by elimination" in decision.note
    wide_flat = Judgement("unchanged", 0.0, -0.03, 0.029, 0.9)
    weak = Judgement("regressed", 0.05, 0.02, 0.08, 1e-3)
    assert eliminated(weak, wide_flat) is None
    assert decide(weak, NOISY, wide_flat, (False, False)).go == "unresolved"


def test_the_midpoint_is_the_nearest_unskipped_inner_commit():
    assert midpoint(0, 8, {}) == 4 and midpoint(0, 7, {}) == 3 and midpoint(4, 6, {}) == 5
    assert midpoint(0, 8, {4: "x"}) == 3 and midpoint(0, 8, {3: "", 4: "", 5: ""}) == 2
    assert midpoint(3, 5, {4: ""}) is None and midpoint(3, 4, {}) is None


# --- a pair's judgement over pooled measurements, on literal samples ------------------------------


def target(threshold: float = 0.03) -> Target:
    commits = [Commit(f"{i:040x}", f"commit {i}", "2026-01-01T00:00:00+00:00") for i in range(3)]
    bench = Benchmark(name="bench.time_it", file="bench.py", module="bench", qualname="time_it", param_index=0,
                      params={}, kind="time", unit="seconds", higher_is_better=False, sizes=("ci",), timeout=None,
                      number=None, repeat=None, warmup_time=None, sample_time=None)
    return Target(commits, bench, threshold, "ci", (), Path("."))


def measurement(offsets: list[float], pairs: int = 10) -> tuple[RunRecord, RunRecord]:
    """One paired measurement as run_against returns it: round r's candidate process ``offsets[r]`` slower."""
    baseline = [1e-3 * (1 + 0.001 * math.sin(1.7 * i)) for _ in offsets for i in range(pairs)]
    candidate = [1e-3 * (1 + o) * (1 + 0.001 * math.cos(2.3 * i)) for o in offsets for i in range(pairs)]
    env = {"paired": True, "rounds": {"bench.time_it": [pairs] * len(offsets)}}
    return tuple(RunRecord(f"run-{side}", "2026-01-01T00:00:00+00:00", "ci", env,
                           [BenchResult("bench.time_it", {}, "time", "seconds", False, "ok", samples=samples)])
                 for side, samples in (("a", baseline), ("b", candidate)))


def test_rounds_that_disagree_are_measured_again_and_the_pooled_t_test_then_decides():
    measure = PairedMeasure(target())
    first = measure.judged(0, 1, measurement([0.12] * 5 + [-0.04]))  # one pair of processes says 4% faster
    assert first.verdict == "too-noisy" and first.ci_low < 0  # 6 rounds: the test itself cannot tell yet
    pooled = measure.judged(0, 1, measurement([0.12] * 5 + [-0.04]))
    # compare alone would still say too-noisy (12 rounds, two under -3%), but the test over them is clear
    assert pooled.verdict == "regressed" and pooled.ci_low > 0.03 and pooled.p_value < 0.01
    assert "the t-test over 12 pooled rounds decides, though compare said" in pooled.reason
    assert "the rounds disagree: from -4.0% to +12.0%" in pooled.reason


def test_one_measurement_is_judged_as_ci_against_judges_it_rounds_that_disagree_are_too_noisy():
    once = PairedMeasure(target()).judged(0, 1, measurement([0.20] * 8 + [-0.04] * 2))  # 10 rounds (ci, full)
    assert once.verdict == "too-noisy" and once.ci_low > 0.03 and "the rounds disagree" in once.reason


def test_a_flat_half_whose_extreme_rounds_grow_with_pooling_is_unchanged_by_the_test():
    measure = PairedMeasure(target())
    assert measure.judged(1, 2, measurement([0.01, -0.01, 0.0, 0.01, -0.01, 0.0])).verdict == "unchanged"
    pooled = measure.judged(1, 2, measurement([0.035, -0.035, 0.0, 0.005, -0.005, 0.0]))
    assert pooled.verdict == "unchanged" and -0.03 <= pooled.ci_low <= pooled.ci_high <= 0.03, pooled.reason


def test_a_pooled_pair_the_test_cannot_decide_stays_too_noisy():
    measure = PairedMeasure(target())
    measure.judged(0, 1, measurement([0.10, -0.06, 0.08, -0.04, 0.09, -0.05]))
    pooled = measure.judged(0, 1, measurement([0.07, -0.05, 0.10, -0.06, 0.06, -0.03]))
    assert pooled.verdict == "too-noisy" and "pooled rounds decides" not in pooled.reason


class Clock:
    """Ten seconds per measurement."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def timed(measure, clock: Clock, seconds: float = 10.0):
    def run(a, b):
        clock.now += seconds
        return measure(a, b)
    return run


def test_progress_tells_the_step_the_range_left_and_an_eta():
    clock, events = Clock(), []
    found = bisect(16, timed(exact(step_at(16, 11)), clock), clock=clock, progress=events.append)
    assert isinstance(events[0], Progress) and events[0].step == 0 and events[0].mid is None
    assert isinstance(events[1], Step) and events[1].number == 0 and events[1].go == "confirm"
    first = events[2]
    assert (first.step, first.lo, first.mid, first.hi) == (1, 0, 8, 16)
    assert first.eta_s == pytest.approx(4 * 20)  # 4 steps of two 10 s measurements
    later = [e for e in events if isinstance(e, Progress)][3]  # step 3, of 8..12
    assert later.eta_s == pytest.approx(2 * 20) and later.hi - later.lo == 4
    assert [e.number for e in events if isinstance(e, Step)] == [0, 1, 2, 3, 4]
    assert all(s.seconds == 20 for s in found.steps)


def test_the_budget_and_the_step_limit_stop_the_search_and_name_the_range_left():
    clock = Clock()
    found = bisect(16, timed(exact(step_at(16, 11)), clock), budget_s=55, clock=clock)
    # the confirmation (10 s) and two steps (20 s each) fit in 55 s; a third would end at 70 s
    assert len(found.steps) == 2 and found.outcome == "unfinished"
    [left] = found.findings
    assert (left.lo, left.hi) == (8, 12) and "would exceed the 55 s budget" in found.stopped
    limited = bisect(16, exact(step_at(16, 11)), max_steps=1)
    assert limited.outcome == "unfinished" and len(limited.steps) == 1
    assert limited.stopped == "stopped after 1 step(s) (the step limit)"


# --- the real command, on throw-away repositories --------------------------------------------------

WORK = "COST = {cost}\n"
SUITE = """
import work

def track_cost():
    return float(work.COST)
track_cost.warmup_time = 0
track_cost.repeat = 8

def track_other():
    return 1.0
track_other.warmup_time = 0
"""
BROKEN_WORK = "raise ImportError('work is half-written at this commit')\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def make_repo(repo: Path, costs: list[int], broken: tuple[int, ...] = (), suite: str = SUITE) -> list[str]:
    """One commit per cost (commit i sets COST to costs[i]; a broken one leaves work.py unimportable); the hashes."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q")
    write_suite(repo / "suites", "bench_knob.py", suite)
    hashes = []
    for i, cost in enumerate(costs):
        (repo / "work.py").write_text(BROKEN_WORK if i in broken else WORK.format(cost=cost))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "--allow-empty", "-m", f"commit {i}")
        hashes.append(git(repo, "rev-parse", "HEAD").strip())
    return hashes


def worktrees(repo: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def bisect_json(repo: Path, good: str, *args: str, tmp: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    proc = run_perfwatch("bisect", "bench_knob.track_cost", "--good", good, "--suite", "quick", "--json",
                         "--report-dir", str(tmp / "report"), *args, cwd=repo, env={"TMPDIR": str(tmp)})
    return proc, json.loads(proc.stdout) if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def culprit_repo(tmp_path_factory) -> dict:
    """8 commits, the knob 40% higher from commit 5 on; the working tree dirty (a 100x knob, not committed)."""
    tmp = tmp_path_factory.mktemp("bisect")
    repo = tmp / "repo"
    hashes = make_repo(repo, [1000] * 5 + [1400] * 3)
    (repo / "work.py").write_text(WORK.format(cost=100_000))
    (repo / "scratch.txt").write_text("mine")
    status = git(repo, "status", "--porcelain")
    proc, doc = bisect_json(repo, hashes[0], tmp=tmp)
    assert proc.returncode == 0, proc.stderr
    return {"repo": repo, "hashes": hashes, "proc": proc, "doc": doc, "status": status, "tmp": tmp}


def test_bisect_names_the_first_bad_commit_with_its_ratio_and_every_step(culprit_repo):
    doc, hashes = culprit_repo["doc"], culprit_repo["hashes"]
    assert doc["outcome"] == "culprit" and doc["commits"] == 7
    [finding] = doc["findings"]
    assert finding["first_bad"]["commit"] == hashes[5] and finding["first_bad"]["subject"] == "commit 5"
    assert finding["first_bad"]["date"].startswith("20") and finding["ratio"] == pytest.approx(1.4)
    assert finding["ratio_low"] == finding["ratio_high"] == pytest.approx(1.4)  # an exact metric: no spread
    assert doc["confirmation"]["verdict"] == "regressed" and doc["confirmation"]["change"] == pytest.approx(0.4)
    assert doc["steps_taken"] <= doc["steps_expected"] == 3
    assert doc["steps"][0]["commit"]["commit"] == hashes[3]
    assert {s["went"] for s in doc["steps"]} <= {"lower", "upper"}
    assert doc["message"].startswith(f"first bad commit {hashes[5][:10]} 'commit 5'")
    assert doc["samples"][0]["baseline"] == hashes[0] and doc["samples"][0]["rounds"] == [2, 2, 2, 2]


def test_bisect_shows_progress_and_writes_a_markdown_report(culprit_repo):
    stderr = culprit_repo["proc"].stderr
    assert "confirming: " in stderr and "step 1: testing " in stderr and "candidate(s) left" in stderr
    assert "ETA ~" in stderr
    report = (culprit_repo["tmp"] / "report" / "report.md").read_text()
    assert report.startswith("# bisect bench_knob.track_cost: ")
    assert "## Steps" in report and f"`{culprit_repo['hashes'][5][:10]}`" in report
    assert json.loads((culprit_repo["tmp"] / "report" / "report.json").read_text())["outcome"] == "culprit"


def test_bisect_never_touches_the_working_tree_and_leaves_no_worktree(culprit_repo):
    repo = culprit_repo["repo"]
    assert git(repo, "status", "--porcelain") == culprit_repo["status"]  # the dirty tree, as it was
    assert (repo / "work.py").read_text() == WORK.format(cost=100_000)
    assert worktrees(repo) == [str(repo)]
    assert not list(culprit_repo["tmp"].glob("perfwatch-against-*"))


def test_the_text_output_ends_with_the_culprit(culprit_repo):
    repo, hashes = culprit_repo["repo"], culprit_repo["hashes"]
    proc = run_perfwatch("bisect", "bench_knob.track_c*", "--good", hashes[3], "--bad", hashes[6], "--suite",
                         "quick", "--report-dir", str(culprit_repo["tmp"] / "text"), cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith(f"first bad commit {hashes[5][:10]} 'commit 5'")


def test_two_regressions_in_the_range_are_both_named(tmp_path):
    hashes = make_repo(tmp_path / "repo", [1000] * 3 + [1300] * 3 + [1700] * 2)
    proc, doc = bisect_json(tmp_path / "repo", hashes[0], tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert doc["outcome"] == "several"
    assert [f["first_bad"]["commit"] for f in doc["findings"]] == [hashes[3], hashes[6]]
    assert "2 changes of bench_knob.track_cost" in doc["message"]


def test_an_unimportable_commit_is_skipped_and_the_range_it_leaves_is_named(tmp_path):
    hashes = make_repo(tmp_path / "repo", [1000] * 5 + [1400] * 3, broken=(4,))
    proc, doc = bisect_json(tmp_path / "repo", hashes[0], tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert doc["outcome"] == "range"
    [finding] = doc["findings"]
    assert finding["first_bad"] is None and finding["commits"] == [hashes[4], hashes[5]]
    [skipped] = doc["skipped"]
    assert skipped["commit"] == hashes[4] and "work is half-written at this commit" in skipped["reason"]
    assert worktrees(tmp_path / "repo") == [str(tmp_path / "repo")]


def test_a_benchmark_that_fails_at_good_and_bad_exits_3(tmp_path):
    suite = SUITE.replace("return float(work.COST)", "raise RuntimeError('the knob is gone')")
    hashes = make_repo(tmp_path / "repo", [1000] * 2 + [1400] * 2, suite=suite)
    proc = run_perfwatch("bisect", "bench_knob.track_cost", "--good", hashes[0], "--suite", "quick",
                         "--report-dir", str(tmp_path / "report"), cwd=tmp_path / "repo")
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("perfwatch: bench_knob.track_cost could not be measured at GOOD or BAD")
    assert "RuntimeError: the knob is gone" in last and "Traceback" not in proc.stderr


def test_history_names_the_bisect_command_line_that_then_finds_the_commit(tmp_path):
    """Runs stored at every other commit of 28: history sees the knob step between commits 14 and 16 and
    prints the bisect command that splits them; run as printed, it names commit 15."""
    repo = tmp_path / "repo"
    hashes = make_repo(repo, [1000] * 15 + [1400] * 13)
    store = Store(tmp_path / "results")
    for i in range(0, 28, 2):
        cost = 1000 if i < 15 else 1400
        store.save(RunRecord(f"202501{i // 2 + 1:02d}T000000Z-{i:06x}", f"2025-01-{i // 2 + 1:02d}T00:00:00+00:00",
                             "quick", {"host": "ci-runner-7", "git_commit": hashes[i]},
                             [BenchResult("bench_knob.track_cost", {}, "track", "unit", False, "ok",
                                          samples=[cost * (1 + 0.001 * k) for k in range(5)])]))
    listed = run_perfwatch("history", "bench_knob.track_cost", "--results-dir", str(tmp_path / "results"),
                           "--plot-dir", str(tmp_path / "plots"), "--json", cwd=repo)
    assert listed.returncode == 0, listed.stderr
    [series] = json.loads(listed.stdout)["benchmarks"]
    [step] = series["steps"]
    assert (step["commit_before"], step["commit"]) == (hashes[14], hashes[16])
    command = shlex.split(step["bisect"])
    assert command == ["perfwatch", "bisect", "bench_knob.track_cost", "--good", hashes[14], "--bad", hashes[16],
                       "--suite", "quick"]
    printed = run_perfwatch("history", "bench_knob.track_cost", "--results-dir", str(tmp_path / "results"),
                            "--plot-dir", str(tmp_path / "plots"), cwd=repo)
    assert (f"to find the commit: perfwatch bisect bench_knob.track_cost --good {hashes[14][:10]} --bad "
            f"{hashes[16][:10]} --suite quick") in printed.stdout.splitlines()
    found = run_perfwatch(*command[1:], "--json", "--report-dir", str(tmp_path / "report"), cwd=repo)
    assert found.returncode == 0, found.stderr
    [finding] = json.loads(found.stdout)["findings"]
    assert finding["kind"] == "culprit" and finding["first_bad"]["commit"] == hashes[15]


# --- bad input: one clear line each, before anything is measured -------------------------------


@pytest.fixture(scope="module")
def forked(tmp_path_factory) -> dict:
    """main: 4 commits; side: a branch off commit 1 (not an ancestor of main), merged into main as commit 5."""
    repo = tmp_path_factory.mktemp("forked") / "repo"
    hashes = make_repo(repo, [1000] * 4)
    git(repo, "checkout", "-q", "-b", "side", hashes[1])
    (repo / "side.txt").write_text("side")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "on the side")
    side = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "-")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge side", "side")
    return {"repo": repo, "hashes": hashes, "side": side, "merge": git(repo, "rev-parse", "HEAD").strip()}


def bad_input(forked: dict, *args: str, bench: str = "bench_knob.track_cost", cwd: Path | None = None):
    return run_perfwatch("bisect", bench, "--suite", "quick", *args, cwd=cwd or forked["repo"])


def test_an_unknown_ref_is_one_line_naming_it(forked):
    assert_one_line_error(bad_input(forked, "--good", "no-such-tag"), "'no-such-tag': no such commit", "(--good)")
    assert_one_line_error(bad_input(forked, "--good", "HEAD~2", "--bad", "nope"), "'nope'", "(--bad)")


def test_good_not_an_ancestor_of_bad_is_one_line(forked):
    proc = bad_input(forked, "--good", forked["side"], "--bad", forked["hashes"][3])
    assert_one_line_error(proc, "is not an ancestor of BAD", f"merge base is {forked['hashes'][1][:10]}", "(--good)")


def test_good_off_the_first_parent_line_is_one_line_naming_the_commit_to_use(forked):
    proc = bad_input(forked, "--good", forked["side"], "--bad", forked["merge"])
    assert_one_line_error(proc, "not on the first-parent history", f"pass {forked['hashes'][1][:10]}")


def test_good_and_bad_the_same_commit_is_one_line(forked):
    assert_one_line_error(bad_input(forked, "--good", "HEAD", "--bad", forked["merge"]), "are the same commit")


def test_a_benchmark_matching_nothing_or_several_is_one_line(forked):
    assert_one_line_error(bad_input(forked, "--good", "HEAD~1", bench="nothing.like_it"),
                          "no benchmark matches 'nothing.like_it'", "`perfwatch list` shows them")
    assert_one_line_error(bad_input(forked, "--good", "HEAD~1", bench="bench_knob.*"),
                          "matches 2 benchmarks (bench_knob.track_cost, bench_knob.track_other)", "name it")
    assert worktrees(forked["repo"]) == [str(forked["repo"])]


def test_outside_a_git_repository_is_one_line(tmp_path):
    write_suite(tmp_path / "suites", "bench_knob.py", SUITE)
    proc = run_perfwatch("bisect", "bench_knob.track_cost", "--good", "HEAD~1", cwd=tmp_path)
    assert_one_line_error(proc, "not inside a git repository")


# --- interrupted: no worktree or process left --------------------------------------------------

HANGING = """
import os, time
import work

def track_hangs():
    with open(os.environ["BISECT_PID_FILE"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(600)
    return float(work.COST)
track_hangs.warmup_time = 0
"""


def start_hanging(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path, list[psutil.Process]]:
    """A bisection whose benchmark hangs, started and waited for until both sides' workers measure."""
    repo, pid_file = tmp_path / "repo", tmp_path / "pids"
    hashes = make_repo(repo, [1000, 1000, 1400], suite=HANGING)
    env = {**os.environ, "TMPDIR": str(tmp_path), "BISECT_PID_FILE": str(pid_file)}
    proc = subprocess.Popen([sys.executable, "-m", "perfwatch", "bisect", "bench_knob.track_hangs", "--good",
                             hashes[0], "--suite", "quick"], cwd=repo, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    wait_until(lambda: pid_file.exists() and len(pid_file.read_text().split()) >= 1, timeout=120,
               what="the benchmark to start")
    assert len(worktrees(repo)) == 3  # GOOD's and BAD's, beside the repository's own
    return proc, repo, pid_file, [psutil.Process(int(p)) for p in pid_file.read_text().split()]


def test_ctrl_c_or_kill_term_removes_the_worktrees_and_the_workers(tmp_path):
    for sig in (signal.SIGINT, signal.SIGTERM):
        trial = tmp_path / sig.name
        proc, repo, _, workers = start_hanging(trial)
        try:
            proc.send_signal(sig)
            try:
                assert proc.wait(timeout=60) == 130
            except subprocess.TimeoutExpired:
                pytest.fail(f"perfwatch bisect still runs 60 s after {sig.name}: {hung_process_report(proc.pid)}")
        finally:
            proc.kill()
            proc.communicate()
        for worker in workers:
            worker.wait(timeout=30)  # raises if it survived
        assert worktrees(repo) == [str(repo)] and not list(trial.glob("perfwatch-against-*"))


def test_after_kill_9_the_next_run_removes_what_the_killed_one_left(tmp_path):
    proc, repo, _, workers = start_hanging(tmp_path)
    proc.kill()  # SIGKILL: no finally runs
    proc.communicate()
    for worker in workers:
        worker.wait(timeout=30)  # the workers end with their parent, however it died
    assert len(worktrees(repo)) == 3 and len(list(tmp_path.glob("perfwatch-against-*"))) == 2
    # even a run that stops at bad input, before it checks anything out, cleans up first
    later = run_perfwatch("bisect", "bench_knob.track_hangs", "--good", "HEAD", "--bad", "HEAD", "--suite", "quick",
                          cwd=repo, env={"TMPDIR": str(tmp_path)})
    assert_one_line_error(later, "are the same commit")
    assert worktrees(repo) == [str(repo)] and not list(tmp_path.glob("perfwatch-against-*"))
