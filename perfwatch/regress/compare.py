"""Baseline vs candidate -> one verdict row per benchmark. Pure: results or plain lists in, rows out.

Conventions (every row, whatever the metric's direction):

* ``ratio`` is candidate/baseline as measured (1.10: the candidate's number is 10% larger), the
  Hodges-Lehmann estimate of stats.py; ``baseline_median``/``candidate_median`` are the raw medians.
* ``change`` is direction-normalised: +0.10 means 10% *worse* (10% more time or memory, or 10%
  less throughput), negative means better; ``ci_low``..``ci_high`` is its confidence interval.
  Thresholds apply to ``change`` in the metric's own terms, like pytest-benchmark's ``median:5%``.

The rules (docs/architecture.md: a regression is over the threshold AND significant; noise is reported, not judged):

* regressed: p < alpha, the interval lies above 0, and the estimate is over the threshold (asv's rule);
* improved: the mirror image;
* unchanged: the whole interval lies within +-threshold, so a change that large is ruled out;
* too-noisy: anything else. The data cannot tell a change over the threshold from none: the
  interval reaches over the threshold and either includes 0 or includes changes under it.
  Also when rounds of fresh processes disagree: rounds over +threshold and rounds under -threshold,
  at least one in six each way.

Samples of one process share its offset (layout, environment, core: a few percent), so paired
samples taken in two or more rounds of fresh processes are tested over the rounds
(stats.rounds_ratio), and the row reports the spread between rounds next to that within them.
A verdict that rests on one process per side says so in its reason (``rounds`` = 1).

Rows that are not judged: "new" (candidate only), "missing" (baseline only), "failed" (the
candidate failed or timed out), "insufficient" (too few samples for the test ever to reach alpha,
a side skipped or failed in the baseline, a changed unit, or samples a ratio cannot use).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from perfwatch import stats
from perfwatch.errors import BenchmarkFailed, PerfwatchError, RegressionFound, UserError
from perfwatch.results import BenchResult, RunRecord
from perfwatch.stats import DEFAULT_ALPHA
from perfwatch.thresholds import DEFAULT_THRESHOLD, Thresholds, parse_thresholds

VERDICTS = ("regressed", "improved", "unchanged", "too-noisy", "new", "missing", "failed", "insufficient")

# Fewer samples than this on a side say nothing about its spread, even where a lopsided
# test (2 vs 200) could reach alpha.
MIN_SAMPLES = 3


@dataclass(frozen=True)
class Verdict:
    """One benchmark's comparison; numbers are nan where they do not apply (see module doc)."""

    name: str
    unit: str
    higher_is_better: bool
    verdict: str
    reason: str
    threshold: float
    baseline_median: float = math.nan
    candidate_median: float = math.nan
    ratio: float = math.nan
    change: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    n_baseline: int = 0
    n_candidate: int = 0
    rounds: int = 0  # processes per side the verdict rests on (the fewer side's); 0 where not judged
    spread_between: float = math.nan  # sd of the rounds' log ratios (~ relative), rounds only
    spread_within: float = math.nan  # sd of single pairs' log ratios within a round, rounds only


@dataclass(frozen=True)
class Summary:
    """How many rows got each verdict (every verdict listed, zeros included)."""

    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def has_regression(self) -> bool:
        return self.counts.get("regressed", 0) > 0

    @property
    def has_failure(self) -> bool:
        return self.counts.get("failed", 0) > 0


def summarize(verdicts: Sequence[Verdict]) -> Summary:
    return Summary({kind: sum(1 for v in verdicts if v.verdict == kind) for kind in VERDICTS})


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _evidence(low: float, high: float, p: float, confidence: float) -> str:
    return f"{confidence:.0%} CI {low:+.1%}..{high:+.1%}, p={p:.2g}"


def judge(change: float, low: float, high: float, p: float, threshold: float, alpha: float, confidence: float,
           advice: str = "take more samples or compare interleaved runs (paired)") -> tuple[str, str]:
    """Verdict and reason from a direction-normalised change, its interval and p-value: the test alone,
    before any rule over rounds (bisect uses it to decide a pair it has pooled from several measurements)."""
    limit = _percent(threshold)
    evidence = _evidence(low, high, p, confidence)
    if p < alpha and low > 0 and change > threshold:
        return "regressed", f"{change:.1%} worse ({evidence}), over the {limit} threshold"
    if p < alpha and high < 0 and change < -threshold:
        return "improved", f"{-change:.1%} better ({evidence}), over the {limit} threshold"
    if -threshold <= low and high <= threshold:
        return "unchanged", f"{change:+.1%} ({evidence}), within +-{limit}"
    return "too-noisy", f"{change:+.1%} with {evidence}: cannot tell a change over {limit} from none; {advice}"


def worse_by(ratio: float, higher_is_better: bool) -> float:
    """The direction-normalised change of a candidate/baseline ratio: + is worse."""
    return 1 - ratio if higher_is_better else ratio - 1


def _judge_rounds(verdict: str, reason: str, change: float, low: float, high: float,
                  estimate: stats.RoundsEstimate, sizes: Sequence[int], higher_is_better: bool,
                  threshold: float) -> tuple[str, str]:
    """A verdict over rounds: too-noisy when the rounds disagree, and the reason gives both spreads."""
    changes = [worse_by(r, higher_is_better) for r in estimate.round_ratios]
    # Disagreement: rounds beyond the threshold both ways, at least one in six each way (one of six
    # rounds of ci, two of ten): of many rounds, a single stray one is noise the t-interval has
    # already counted; a share of them each way is two kinds of process.
    needed = math.ceil(len(changes) / 6)
    over, under = sum(c > threshold for c in changes), sum(c < -threshold for c in changes)
    if verdict != "too-noisy" and over >= needed and under >= needed:
        verdict = "too-noisy"
        reason = (f"{change:+.1%} with {_evidence(low, high, estimate.p_value, estimate.confidence)}, but the rounds "
                  f"disagree: from {min(changes):+.1%} to {max(changes):+.1%}, over +-{_percent(threshold)} both ways")
    pairs = f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
    within = "n/a" if math.isnan(estimate.within) else f"{estimate.within:.1%}"
    return verdict, (f"{reason}; {len(sizes)} rounds of fresh processes × {pairs} pairs, spread (sd) "
                     f"{estimate.between:.1%} between rounds, {within} within one")


def compare_samples(
    name: str,
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    unit: str = "seconds",
    higher_is_better: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    paired: bool = False,
    baseline_rounds: Sequence[int] = (),
    candidate_rounds: Sequence[int] = (),
) -> Verdict:
    """Judge one benchmark from raw samples; ``paired`` when sample i of both sides ran back to back.

    ``baseline_rounds`` and ``candidate_rounds`` are a side's samples per round of fresh processes,
    in order; empty means all came from one process (as `perfwatch run` measures). Paired samples
    of two or more rounds are tested over the rounds; otherwise the reason says "one process per side".
    """
    row = Verdict(
        name=name, unit=unit, higher_is_better=higher_is_better, verdict="insufficient", reason="",
        threshold=threshold, baseline_median=stats.median(baseline), candidate_median=stats.median(candidate),
        n_baseline=len(baseline), n_candidate=len(candidate),
    )
    m, n = len(baseline), len(candidate)
    if min(m, n) < MIN_SAMPLES:
        return replace(row, reason=f"{m} baseline and {n} candidate samples; need at least {MIN_SAMPLES} each")
    pairs = paired and m == n
    processes = min(len(baseline_rounds) or 1, len(candidate_rounds) or 1)
    same_rounds = list(baseline_rounds) == list(candidate_rounds) and sum(candidate_rounds) == n
    by_rounds = pairs and processes > 1 and same_rounds
    best = 0.0 if by_rounds else stats.smallest_p(m, n, paired=pairs)  # a t-test over rounds can reach any p
    if best >= alpha:
        return replace(row, reason=(f"{m} vs {n} {'pairs' if pairs else 'samples'} can never reach "
                                    f"p < {alpha:g} (best p={best:.2g}); take more samples"))
    try:
        if by_rounds:
            estimate = stats.rounds_ratio(baseline, candidate, candidate_rounds, alpha)
        else:
            estimate = (stats.paired_ratio if pairs else stats.unpaired_ratio)(baseline, candidate, alpha)
    except ValueError as exc:
        return replace(row, reason=str(exc))
    change = worse_by(estimate.ratio, higher_is_better)
    low, high = sorted((worse_by(estimate.low, higher_is_better), worse_by(estimate.high, higher_is_better)))
    if isinstance(estimate, stats.RoundsEstimate):  # by_rounds, as the type checker can see
        verdict, reason = judge(change, low, high, estimate.p_value, threshold, alpha, estimate.confidence,
                                 advice="give it more rounds or a quieter machine")
        verdict, reason = _judge_rounds(verdict, reason, change, low, high, estimate, candidate_rounds,
                                        higher_is_better, threshold)
        row = replace(row, spread_between=estimate.between, spread_within=estimate.within)
    else:
        verdict, reason = judge(change, low, high, estimate.p_value, threshold, alpha, estimate.confidence)
        if processes == 1:
            reason += "; one process per side"
    if paired and not pairs:
        reason += f"; compared unpaired: {m} vs {n} samples cannot be paired"
    return replace(row, verdict=verdict, reason=reason, ratio=estimate.ratio, change=change,
                   ci_low=low, ci_high=high, p_value=estimate.p_value, rounds=processes)


def compare_benchmark(
    baseline: BenchResult | None,
    candidate: BenchResult | None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    paired: bool = False,
    baseline_rounds: Sequence[int] = (),
    candidate_rounds: Sequence[int] = (),
) -> Verdict:
    """One benchmark of two runs (either may be absent): statuses first, then the samples
    (``*_rounds`` as for compare_samples)."""
    row = status_verdict(baseline, candidate, threshold)
    if row is not None:
        return row
    assert baseline is not None and candidate is not None  # status_verdict judged every other case
    return compare_samples(candidate.name, baseline.samples, candidate.samples, unit=candidate.unit,
                           higher_is_better=candidate.higher_is_better, threshold=threshold,
                           alpha=alpha, paired=paired, baseline_rounds=baseline_rounds,
                           candidate_rounds=candidate_rounds)


def status_verdict(baseline: BenchResult | None, candidate: BenchResult | None, threshold: float) -> Verdict | None:
    """The row of a benchmark whose statuses leave nothing to test (absent on a side, failed, skipped, a
    changed unit); None when both sides have samples to compare."""
    shown = candidate or baseline
    if shown is None:
        raise ValueError("compare_benchmark needs a baseline or a candidate result")
    row = Verdict(name=shown.name, unit=shown.unit, higher_is_better=shown.higher_is_better,
                  verdict="insufficient", reason="", threshold=threshold,
                  n_baseline=len(baseline.samples) if baseline else 0,
                  n_candidate=len(candidate.samples) if candidate else 0)
    if candidate is None:
        return replace(row, verdict="missing", reason="in the baseline only",
                       baseline_median=stats.median(baseline.samples))
    if candidate.status in ("failed", "timeout"):
        return replace(row, verdict="failed", reason=f"{candidate.status}: {candidate.error or 'no error message'}")
    if baseline is None:
        return replace(row, verdict="new", reason="in the candidate only",
                       candidate_median=stats.median(candidate.samples))
    if not candidate.ok:
        return replace(row, reason=f"{candidate.status} in the candidate")
    if not baseline.ok:
        return replace(row, reason=f"{baseline.status} in the baseline: nothing to compare against")
    if (baseline.unit, baseline.higher_is_better) != (candidate.unit, candidate.higher_is_better):
        return replace(row, reason=f"unit changed from {baseline.unit!r} to {candidate.unit!r} "
                                   f"(higher is better: {baseline.higher_is_better} -> {candidate.higher_is_better})")
    if not same_version(baseline, candidate):
        return replace(row, reason=f"its version changed from {baseline.version[:12]} to {candidate.version[:12]} "
                                   "(asv's `version`, or its code): it measures something else now, a new history")
    return None


def same_version(a: BenchResult, b: BenchResult) -> bool:
    """Whether two results measure the same version of a benchmark; a result stored before versions were
    recorded (None) matches any."""
    return a.version is None or b.version is None or a.version == b.version


def round_sizes(run: RunRecord, name: str) -> list[int]:
    """A benchmark's samples per round of fresh processes in ``run``, as paired runs keep them in
    ``env["rounds"]``; [] for one process (how `perfwatch run` measures) or a malformed entry."""
    sizes = (run.env.get("rounds") or {}).get(name)
    if isinstance(sizes, list) and sizes and all(type(n) is int and n > 0 for n in sizes):
        return sizes
    return []


def compare_runs(
    baseline: RunRecord,
    candidate: RunRecord,
    thresholds: Thresholds | Mapping[str, object] | None = None,
    alpha: float = DEFAULT_ALPHA,
    paired: bool = False,
) -> list[Verdict]:
    """Every benchmark of either run: the candidate's in its order, then those only in the baseline."""
    limits = thresholds if isinstance(thresholds, Thresholds) else parse_thresholds(thresholds)
    before = {b.name: b for b in baseline.benchmarks}
    after = {c.name for c in candidate.benchmarks}
    rows = [compare_benchmark(before.get(c.name), c, threshold=limits.for_name(c.name), alpha=alpha, paired=paired,
                              baseline_rounds=round_sizes(baseline, c.name),
                              candidate_rounds=round_sizes(candidate, c.name))
            for c in candidate.benchmarks]
    rows += [compare_benchmark(b, None, threshold=limits.for_name(b.name), alpha=alpha, paired=paired)
             for b in baseline.benchmarks if b.name not in after]
    return rows


# ---------------------------------------------------------------- a judged pair of runs


def _gpu_text(env: dict[str, Any]) -> str:
    gpu = env.get("gpu") or {}
    return f"{gpu.get('model')} ×{gpu.get('count')}" if gpu else "no GPU"


def _memory_text(env: dict[str, Any]) -> str | None:
    # Identical VMs report a few MiB apart; whole GiB is what makes timings differ.
    memory = env.get("memory_bytes")
    return f"{memory / 1024**3:.0f} GiB" if isinstance(memory, (int, float)) else None


# (label, how to read the fact from an env fingerprint); see env.machine_id for the hardware facts.
# The host name is left out on purpose: CI runners get a new one per job on identical hardware.
_MACHINE_FACTS = (
    ("CPU", lambda env: env.get("cpu")),
    ("cores", lambda env: env.get("cpu_cores_logical")),
    ("memory", _memory_text),
    ("GPU", _gpu_text),
    ("torch", lambda env: env.get("torch")),
)


def machine_differences(a_env: dict[str, Any], b_env: dict[str, Any]) -> list[str]:
    """What makes two runs' timings incomparable: ``["CPU: A vs B", "torch: 2.12 vs 2.13"]``, or []."""
    differences = []
    for label, read in _MACHINE_FACTS:
        a, b = read(a_env), read(b_env)
        if a != b:
            differences.append(f"{label}: {a if a is not None else 'unknown'} vs {b if b is not None else 'unknown'}")
    return differences


@dataclass(frozen=True)
class Comparison:
    """A judged pair of runs: what was compared, every verdict, and the machine facts that differ."""

    baseline: RunRecord
    candidate: RunRecord
    verdicts: list[Verdict]
    differences: list[str]
    paired: bool = False
    history: tuple[str, ...] | None = None  # history mode: the runs judged against (baseline: the newest)

    @property
    def mode(self) -> str:
        """How the sides were measured: "paired", "history" (against recent runs) or "unpaired"."""
        return "paired" if self.paired else "history" if self.history is not None else "unpaired"

    @property
    def baseline_text(self) -> str:
        """What the candidate was judged against, in words: a run id, or the recent runs of history mode."""
        if self.history is None:
            return self.baseline.run_id
        if not self.history:
            return "no earlier run of this machine"
        return f"{len(self.history)} recent runs of this machine ({self.history[0]} .. {self.history[-1]})"

    @property
    def summary(self) -> Summary:
        return summarize(self.verdicts)

    @property
    def single_process(self) -> list[str]:
        """The benchmarks whose verdict rests on one process per side (a per-process offset passes for a change)."""
        return [v.name for v in self.verdicts if v.rounds == 1]

    def outcome_error(self) -> PerfwatchError | None:
        """The error to exit with: a failed benchmark (3) wins over a regression (1), since the
        results are incomplete; None when neither happened."""
        failed = [v.name for v in self.verdicts if v.verdict == "failed"]
        if failed:
            return BenchmarkFailed(f"{len(failed)} benchmark(s) failed in the candidate: {', '.join(failed)}")
        regressed = [v.name for v in self.verdicts if v.verdict == "regressed"]
        if regressed:
            return RegressionFound(f"{len(regressed)} benchmark(s) regressed: {', '.join(regressed)}")
        return None

    @property
    def exit_code(self) -> int:
        error = self.outcome_error()
        return error.exit_code if error else 0


def mismatch_error(differences: Sequence[str]) -> UserError:
    """The refusal of a cross-machine comparison, naming what differs and the ways out."""
    return UserError(f"baseline and candidate ran on different machines ({'; '.join(differences)}); "
                     "their timings are not comparable: save a baseline on this machine (`perfwatch baseline save`), "
                     "compare interleaved with `perfwatch ci --against REF`, or allow the mismatch",
                     setting="allow_machine_mismatch")


def compare_against(
    baseline: RunRecord,
    candidate: RunRecord,
    thresholds: Thresholds | None = None,
    *,
    paired: bool = False,
    allow_machine_mismatch: bool = False,
) -> Comparison:
    """Judge ``candidate`` against ``baseline``; refuses runs from different machines unless allowed."""
    differences = machine_differences(baseline.env, candidate.env)
    if differences and not allow_machine_mismatch:
        raise mismatch_error(differences)
    verdicts = compare_runs(baseline, candidate, thresholds, paired=paired)
    return Comparison(baseline, candidate, verdicts, differences, paired)
