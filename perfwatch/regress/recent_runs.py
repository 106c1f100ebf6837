"""History mode of `perfwatch ci`: judge a new run against the same machine's recent runs in the store.

For a dedicated runner, where a push to main is measured once and nothing runs beside it to pair
with. A rank test inside one run cannot see the drift between runs (a process's own offset, the
day's temperature, an update of the machine): two runs of the same code differ by more than their
samples say. So each benchmark is judged by its medians of the last runs instead: if the code did
not change, the new run's median is one more draw from the distribution those runs show, and

    t = (log new - mean log recent) / (sd of log recent * sqrt(1 + 1/k))

follows Student's t on k - 1 degrees of freedom (a prediction interval for one new observation).
The verdict rules are compare.judge's, on that change, its interval and its p-value; a benchmark
with fewer than FEWEST_RUNS earlier runs is "insufficient" (the gate learns the machine first).

Which runs count: this machine's (same machine id and no machine difference in CPU, cores,
memory, GPU or torch), the same branch and suite size, committed code (no dirty tree), and not the
new run's own commit (its earlier runs would carry the change being judged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from perfwatch import stats
from perfwatch.regress.compare import (
    Comparison,
    Verdict,
    judge,
    machine_differences,
    same_version,
    status_verdict,
    worse_by,
)
from perfwatch.results import BenchResult, RunRecord
from perfwatch.stats import DEFAULT_ALPHA
from perfwatch.store.base import RunFilter, RunStore
from perfwatch.thresholds import Thresholds

DEFAULT_RUNS = 10  # recent runs to judge against: enough for a t on 9 degrees of freedom, recent enough to be today's
FEWEST_RUNS = 5  # fewer give a t-quantile so wide (t(3) = 5.8 at alpha 0.01) that nothing but a 2x change shows


def recent_filter(env: dict[str, Any], suite: str, runs: int = DEFAULT_RUNS, branch: str | None = None) -> RunFilter:
    """The runs a candidate made here (``env``: its fingerprint) is judged against; ``branch`` defaults to its own."""
    return RunFilter(machine=env.get("machine_id") or env.get("host"), branch=branch or env.get("git_branch"),
                     suite=suite, clean=True, not_commit=env.get("git_commit"), newest=runs)


def recent_runs(store: RunStore, env: dict[str, Any], suite: str, runs: int = DEFAULT_RUNS,
                branch: str | None = None) -> list[RunRecord]:
    """This machine's recent runs (see the module doc), oldest first."""
    return [run for run in store.select(recent_filter(env, suite, runs, branch))
            if not machine_differences(run.env, env)]


def judge_benchmark(history: Sequence[BenchResult], candidate: BenchResult, threshold: float,
                    alpha: float = DEFAULT_ALPHA) -> Verdict:
    """One benchmark: the new run's median against the medians of its ``history`` (oldest first); results of
    another version of the benchmark do not count (a new version starts a new history)."""
    history = [b for b in history if same_version(b, candidate)]
    earlier = [b for b in history if b.ok and b.samples]
    row = status_verdict(earlier[-1] if earlier else (history[-1] if history else None), candidate, threshold)
    if row is not None:
        return replace(row, reason="no earlier run of this machine measured this version of it") \
            if row.verdict == "new" else row
    medians = [stats.median(b.samples) for b in earlier]
    row = Verdict(name=candidate.name, unit=candidate.unit, higher_is_better=candidate.higher_is_better,
                  verdict="insufficient", reason="", threshold=threshold,
                  baseline_median=stats.median(medians), candidate_median=stats.median(candidate.samples),
                  n_baseline=sum(len(b.samples) for b in earlier), n_candidate=len(candidate.samples))
    k = len(medians)
    if k < FEWEST_RUNS:
        return replace(row, reason=f"{k} earlier run(s) of this machine measured it; the history gate judges "
                                   f"from {FEWEST_RUNS} on (until then, run `perfwatch ci --against REF`)")
    if min(medians + [row.candidate_median]) <= 0:
        return replace(row, reason="a median of 0 or less: a ratio cannot use it")
    logs = [math.log(m) for m in medians]
    centre = math.fsum(logs) / k
    between = math.sqrt(math.fsum((x - centre) ** 2 for x in logs) / (k - 1))
    offset = math.log(row.candidate_median) - centre
    error = between * math.sqrt(1 + 1 / k)
    if error == 0:  # a deterministic metric (bytes, counts): any difference is real
        p, half = (1.0 if offset == 0 else 0.0), 0.0
    else:
        p = stats.t_two_sided_p(offset / error, k - 1)
        half = stats.t_quantile(1 - alpha / 2, k - 1) * error
    ratio = math.exp(offset)
    change = worse_by(ratio, candidate.higher_is_better)
    low, high = sorted(worse_by(math.exp(offset + side), candidate.higher_is_better) for side in (-half, half))
    verdict, reason = judge(change, low, high, p, threshold, alpha, 1 - alpha,
                            advice="give the history more runs, or compare interleaved with `ci --against REF`")
    reason += f"; against {k} earlier runs of this machine, spread (sd) {between:.1%} between runs"
    return replace(row, verdict=verdict, reason=reason, baseline_median=math.exp(centre), ratio=ratio,
                   change=change, ci_low=low, ci_high=high, p_value=p, rounds=k, spread_between=between)


def judge_against_recent(history: Sequence[RunRecord], candidate: RunRecord, thresholds: Thresholds,
                         alpha: float = DEFAULT_ALPHA) -> Comparison:
    """Every benchmark of ``candidate`` judged against ``history`` (recent_runs); the newest run stands as
    the comparison's baseline, for the reports' run line; without history, the candidate itself."""
    by_name: dict[str, list[BenchResult]] = {}
    for run in history:
        for bench in run.benchmarks:
            by_name.setdefault(bench.name, []).append(bench)
    verdicts = [judge_benchmark(by_name.get(bench.name, []), bench, thresholds.for_name(bench.name), alpha)
                for bench in candidate.benchmarks]
    baseline = history[-1] if history else candidate
    return Comparison(baseline, candidate, verdicts, [], history=tuple(run.run_id for run in history))
