"""Verdicts that survive per-process bias: paired runs in rounds of fresh processes, tested over the rounds.

Two processes of the same code differ by a few percent, and every sample of a process shares
its offset; so the pure tests below give each round's candidate process an offset of its own
and tiny noise inside it, as the A/A runs of issue #16 showed.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from helpers import STEADY, bench, run_perfwatch, scaled, store_run, write_suite

from perfwatch import stats
from perfwatch.bench.paired import ENV_PAD_STEP, PAIRED_BUDGETS, ROUNDS, env_pad, round_budgets, round_count, split
from perfwatch.bench.suite import discover
from perfwatch.regress.compare import compare_runs, compare_samples
from perfwatch.results import RunRecord


def rounds_of(offsets: list[float], pairs: int = 10) -> tuple[list[float], list[float], list[int]]:
    """Paired samples of len(offsets) rounds: round r's candidate process runs ``offsets[r]`` slower than
    its baseline process, and every sample wiggles by up to +-0.1%; returns baseline, candidate, round sizes."""
    baseline, candidate = [], []
    for offset in offsets:
        for i in range(pairs):
            baseline.append(1e-3 * (1 + 0.001 * math.sin(1.7 * i)))
            candidate.append(1e-3 * (1 + offset) * (1 + 0.001 * math.cos(2.3 * i)))
    return baseline, candidate, [pairs] * len(offsets)


def in_rounds(offsets: list[float], **options):
    baseline, candidate, sizes = rounds_of(offsets)
    return compare_samples("b", baseline, candidate, paired=True, baseline_rounds=sizes, candidate_rounds=sizes,
                           **options)


# --- Student's t, from scratch (no scipy at run time) -------------------------------------------

def test_t_quantiles_match_the_published_table():
    for df, q, table in [(1, 0.995, 63.65674), (2, 0.995, 9.924843), (3, 0.995, 5.840909),
                         (5, 0.995, 4.032143), (10, 0.975, 2.228139), (30, 0.995, 2.749996)]:
        assert stats.t_quantile(q, df) == pytest.approx(table, rel=1e-6)
    assert stats.t_quantile(0.995, 1e7) == pytest.approx(2.575829, rel=1e-5)  # the normal's, at infinite df


def test_t_tails_match_the_closed_forms_of_one_and_two_degrees_of_freedom():
    for t in (0.0, 0.5, 1.0, 3.0, 40.0):
        assert stats.t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert stats.t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    assert stats.t_two_sided_p(math.inf, 3) == 0.0


def test_the_incomplete_beta_function_is_a_binomial_tail_for_whole_arguments():
    # I_x(a, n - a + 1) = P(Binomial(n, x) >= a)
    for x, a, n in [(0.3, 2, 4), (0.9, 5, 9), (0.01, 1, 30)]:
        tail = sum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(a, n + 1))
        assert stats.regularized_beta(x, a, n - a + 1) == pytest.approx(tail, rel=1e-12)


def test_hodges_lehmann_is_the_median_of_walsh_averages():
    assert stats.hodges_lehmann([1.0, 2.0, 9.0]) == 3.5  # Walsh averages 1, 1.5, 2, 5, 5.5, 9
    assert stats.hodges_lehmann([0.0, 0.0, 0.0, 100.0]) == 0.0  # one outlier barely moves it


# --- the test at the level that varies ------------------------------------------------------

def test_a_per_process_offset_passes_for_a_change_in_pooled_pairs_but_not_over_rounds():
    # A/A: the code is the same, but three of four candidate processes landed ~3.5% slow.
    baseline, candidate, sizes = rounds_of([0.035, 0.04, 0.004, 0.036])
    pooled = compare_samples("b", baseline, candidate, paired=True)
    assert pooled.verdict == "regressed" and pooled.p_value < 1e-6  # the bug of issue #16
    assert "one process per side" in pooled.reason and pooled.rounds == 1
    rounds = compare_samples("b", baseline, candidate, paired=True, baseline_rounds=sizes, candidate_rounds=sizes)
    assert rounds.verdict == "too-noisy" and rounds.p_value > 0.01, rounds.reason
    assert rounds.ci_low < 0 < rounds.ci_high
    assert rounds.ci_high - rounds.ci_low > 5 * (pooled.ci_high - pooled.ci_low)  # the offset widened it
    assert rounds.rounds == 4 and "one process per side" not in rounds.reason


def test_the_reason_gives_the_spread_between_rounds_next_to_the_one_within():
    v = in_rounds([0.035, 0.04, 0.004, 0.036])
    assert v.spread_between == pytest.approx(0.0163, abs=5e-4) and v.spread_within == pytest.approx(0.00124, abs=5e-5)
    assert "4 rounds of fresh processes × 10 pairs, spread (sd) 1.6% between rounds, 0.1% within one" in v.reason
    assert "give it more rounds" in v.reason
    baseline, candidate, sizes = rounds_of([0.035, 0.04, 0.004, 0.036])
    candidate[3] *= 1.5  # one sample preempted by a neighbour: the within-round spread stays robust
    preempted = compare_samples("b", baseline, candidate, paired=True, baseline_rounds=sizes, candidate_rounds=sizes)
    assert preempted.spread_within == pytest.approx(v.spread_within, rel=0.2)


def test_a_real_twenty_percent_slowdown_in_every_round_is_caught_by_four_rounds():
    v = in_rounds([0.20, 0.22, 0.18, 0.21])
    assert v.verdict == "regressed", v.reason
    assert 0.10 < v.ci_low < 0.20 < v.ci_high < 0.30 and v.p_value < 0.001


def test_a_throughput_drop_in_rounds_is_direction_normalised():
    baseline, candidate, sizes = rounds_of([-0.10, -0.11, -0.09, -0.10, -0.10, -0.12])  # 10% fewer items/s
    v = compare_samples("b", baseline, candidate, unit="samples/s", higher_is_better=True, paired=True,
                        baseline_rounds=sizes, candidate_rounds=sizes)
    assert v.verdict == "regressed" and 0 < v.ci_low < v.change < v.ci_high, v.reason


def test_rounds_that_agree_by_chance_do_not_narrow_the_interval_below_what_the_pairs_allow():
    # Every round's centre is 0, but single pairs swing +-5%: the interval must stay wide.
    baseline = [1.0] * 12
    candidate = [1.05, 0.95, 1.05, 0.95] * 3
    v = compare_samples("b", baseline, candidate, paired=True, baseline_rounds=[4, 4, 4], candidate_rounds=[4, 4, 4])
    assert v.spread_between == pytest.approx(0.0, abs=1e-12)
    assert v.verdict == "too-noisy" and v.ci_high > 0.03, v.reason


def test_rounds_that_disagree_are_too_noisy_even_when_the_interval_is_clear():
    v = in_rounds([0.20] * 8 + [-0.04] * 2)  # two pairs of processes say 4% better, eight say 20% worse
    assert v.ci_low > 0 and v.p_value < 0.01  # the t-interval alone would call it regressed
    assert v.verdict == "too-noisy"
    assert "the rounds disagree: from -4.0% to +20.0%, over +-3% both ways" in v.reason


def test_one_stray_round_in_ten_is_noise_the_interval_has_counted_not_disagreement():
    v = in_rounds([0.10] * 9 + [-0.04])
    assert v.verdict == "regressed" and v.ci_low > 0.03, v.reason
    assert in_rounds([0.10] * 5 + [-0.04]).verdict == "too-noisy"  # but one in six is a share


def test_equal_rounds_of_an_exact_metric_are_unchanged_and_a_moved_one_regressed():
    same = compare_samples("b", [5.0] * 8, [5.0] * 8, paired=True, baseline_rounds=[2] * 4, candidate_rounds=[2] * 4)
    assert (same.verdict, same.p_value, same.ci_low, same.ci_high) == ("unchanged", 1.0, 0.0, 0.0)
    moved = compare_samples("b", [5.0] * 8, [6.0] * 8, paired=True, baseline_rounds=[2] * 4, candidate_rounds=[2] * 4)
    assert moved.verdict == "regressed" and moved.change == pytest.approx(0.2)


def test_round_sizes_that_do_not_match_the_samples_are_not_tested_over_rounds():
    baseline, candidate, _ = rounds_of([0.20, 0.22, 0.18, 0.21])
    v = compare_samples("b", baseline, candidate, paired=True, baseline_rounds=[10] * 4, candidate_rounds=[20, 20])
    assert v.rounds == 2 and math.isnan(v.spread_between)  # the pooled pairs test, no claim about rounds
    with pytest.raises(ValueError, match="at least 2 rounds"):
        stats.rounds_ratio([1.0, 1.0], [1.0, 1.0], [2])


def test_compare_runs_reads_the_rounds_a_paired_run_keeps_and_unpaired_runs_rest_on_one_process():
    baseline, candidate, sizes = rounds_of([0.035, 0.04, 0.004, 0.036])
    env = {"paired": True, "rounds": {"b": sizes}}
    runs = [RunRecord(run_id=i, created="2026-01-01T00:00:00+00:00", suite="ci", env=env, benchmarks=[bench("b", s)])
            for i, s in (("base", baseline), ("cand", candidate))]
    [paired] = compare_runs(*runs, paired=True)
    assert paired.verdict == "too-noisy" and paired.rounds == 4
    one_process = [RunRecord(run_id=r.run_id, created=r.created, suite=r.suite, env={}, benchmarks=r.benchmarks)
                   for r in runs]
    [unpaired] = compare_runs(*one_process)
    assert unpaired.rounds == 1 and unpaired.reason.endswith("; one process per side")


# --- how a benchmark is cut into rounds -------------------------------------------------------

def test_rounds_share_the_budget_and_each_round_warms_up_in_full():
    assert split(10, 4) == [3, 3, 2, 2] and split(3, 3) == [1, 1, 1]
    budget = PAIRED_BUDGETS["ci"]
    rounds = round_budgets(budget, ROUNDS["ci"])
    assert len(rounds) == 10
    assert sum(r.max_repeat for r in rounds) == budget.max_repeat
    assert sum(r.min_repeat for r in rounds) == budget.min_repeat
    assert all(r.warmup_time == budget.warmup_time and r.max_time == pytest.approx(budget.max_time / 10) for r in rounds)
    assert [r.max_repeat for r in rounds] == [16] * 10  # ten rounds of up to 16 pairs (the detection studies)


def test_a_benchmark_gets_its_suite_size_rounds_but_never_more_rounds_than_samples(tmp_path):
    suite = write_suite(tmp_path, "bench_r.py", """
        def time_a():
            pass

        def time_few():
            pass
        time_few.repeat = 2
    """)
    many, few = discover([suite])
    sizes = ("quick", "ci", "full")
    assert [round_count(many, size, PAIRED_BUDGETS[size].for_benchmark(many)) for size in sizes] == [4, 10, 10]
    assert round_count(few, "ci", PAIRED_BUDGETS["ci"].for_benchmark(few)) == 2


def test_a_benchmark_sets_its_own_rounds_as_in_asv_and_a_bad_value_is_one_line(tmp_path):
    suite = write_suite(tmp_path, "bench_own.py", """
        def time_own():
            pass
        time_own.rounds = 3
    """)
    [own] = discover([suite])
    assert round_count(own, "full", PAIRED_BUDGETS["full"].for_benchmark(own)) == 3
    write_suite(tmp_path / "bad", "bench_bad.py", "def time_bad():\n    pass\ntime_bad.rounds = 0\n")
    proc = run_perfwatch("list", "bad", cwd=tmp_path)
    assert proc.returncode == 2 and "rounds" in proc.stderr and "bench_bad" in proc.stderr, proc.stderr


def test_each_round_has_an_environment_of_another_size():
    assert env_pad(0) == "" and len(env_pad(1)) == ENV_PAD_STEP
    assert len({len(env_pad(r)) for r in range(10)}) == 10 and max(len(env_pad(r)) for r in range(10)) < 4096


# --- through the real commands -------------------------------------------------------------

SIDE = 'SIDE = "{side}"\n'

SUITE = """
import os
import side

def track_process():
    with open(os.environ["ROUNDS_LOG"], "a") as log:
        log.write(f"{side.SIDE} {os.getpid()} {len(os.environ.get('PERFWATCH_ENV_PAD', ''))}\\n")
    return 1.0
track_process.warmup_time = 0
track_process.repeat = 8
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A committed project whose benchmark logs its side, process id and ENV_PAD length per sample."""
    repo = tmp_path_factory.mktemp("rounds")
    (repo / "side.py").write_text(SIDE.format(side="ref"))
    write_suite(repo / "suites", "bench_rounds.py", SUITE)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "ref")
    (repo / "side.py").write_text(SIDE.format(side="tree"))  # the same benchmark, telling the sides apart
    return repo


def against_head(project: Path, log: Path, *options: str) -> tuple[list[list[str]], dict]:
    """Run `ci --against HEAD` on the quick suite: (side, pid, ENV_PAD length) per sample, and report.json."""
    reports = log.parent / log.stem
    proc = run_perfwatch("ci", "--against", "HEAD", "--suite", "quick", "--report-dir", str(reports), *options,
                         cwd=project, env={"ROUNDS_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    return [line.split() for line in log.read_text().splitlines()], json.loads((reports / "report.json").read_text())


def test_ci_against_head_measures_each_round_in_new_processes_the_first_side_alternating(project, tmp_path):
    samples, report = against_head(project, tmp_path / "log.txt")
    # quick: 4 rounds of 2 pairs, ABBA inside a round, and the side that starts alternates between rounds.
    assert [side for side, _, _ in samples] == ["ref", "tree", "tree", "ref", "tree", "ref", "ref", "tree"] * 2
    rounds = [samples[i:i + 4] for i in range(0, 16, 4)]
    pids = [{pid for _, pid, _ in r} for r in rounds]
    assert all(len(p) == 2 for p in pids) and len(set().union(*pids)) == 8  # a fresh pair of processes per round
    assert [{pad for _, _, pad in r} for r in rounds] == [{"0"}, {"1237"}, {"2474"}, {"3711"}]  # both sides alike
    [verdict] = report["verdicts"]
    assert verdict["verdict"] == "unchanged" and verdict["rounds"] == 4 and verdict["spread_between"] == 0
    assert "4 rounds of fresh processes × 2 pairs" in verdict["reason"]
    baseline_run = json.loads((tmp_path / "log" / "baseline-run.json").read_text())
    assert baseline_run["env"]["rounds"] == {"bench_rounds.track_process": [2, 2, 2, 2]}


def test_the_environment_can_be_left_as_it_is(project, tmp_path):
    samples, _ = against_head(project, tmp_path / "log.txt", "--no-perturb-env")
    assert {pad for _, _, pad in samples} == {"0"} and len({pid for _, pid, _ in samples}) == 8


def test_compare_says_when_verdicts_rest_on_one_process_per_side(tmp_path):
    store_run(tmp_path, "20260101T000000Z-base00", bench("loader.time_read", scaled(STEADY, 1.0)))
    store_run(tmp_path, "20260102T000000Z-cand00", bench("loader.time_read", scaled(STEADY[::-1], 1.1)))
    proc = run_perfwatch("compare", "20260101", "20260102", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "note: 1 verdict(s) rest on one process per side" in proc.stderr
    assert "`perfwatch ci --against REF` measures both sides in rounds of fresh processes" in proc.stderr
    markdown = run_perfwatch("compare", "20260101", "20260102", "--markdown", cwd=tmp_path).stdout
    assert "> [!NOTE]\n> 1 verdict(s) rest on one process per side" in markdown
    as_json = json.loads(run_perfwatch("compare", "20260101", "20260102", "--json", cwd=tmp_path).stdout)
    assert as_json["verdicts"][0]["rounds"] == 1 and as_json["verdicts"][0]["reason"].endswith("one process per side")


def test_ci_with_a_baseline_file_says_it_too(tmp_path):
    write_suite(tmp_path / "suites", "tiny.py", "def track_steady():\n    return 5.0\n")
    for args in (("run", "--suite", "quick"), ("baseline", "save")):
        assert run_perfwatch(*args, cwd=tmp_path).returncode == 0
    proc = run_perfwatch("ci", "--suite", "quick", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "note: 1 verdict(s) rest on one process per side" in proc.stderr
    [report] = (tmp_path / "reports").glob("ci-*/report.md")
    assert "> [!NOTE]" in report.read_text()
