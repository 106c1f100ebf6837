"""Baseline vs candidate verdicts, from literal samples and from seeded simulations."""

import numpy as np
import pytest

from perfwatch.regress.compare import VERDICTS, compare_benchmark, compare_runs, compare_samples, summarize
from perfwatch.results import BenchResult, RunRecord

# 20 timings around 1 s with ~1% spread, and the same values in another order (an A/A pair).
STEADY = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00, 1.01, 0.99, 1.00, 1.02,
          0.98, 1.01, 1.00, 0.99, 1.00, 1.01, 0.99, 1.00, 1.02, 0.98]
STEADY_AGAIN = STEADY[::-1]
NOISY_A = [0.6, 1.5, 0.9, 1.3, 0.7, 1.1, 1.6, 0.8, 1.2, 1.0]
NOISY_B = [0.7, 1.7, 1.0, 1.4, 0.8, 1.2, 1.8, 0.9, 1.3, 1.1]  # ~10% higher, buried in +-50% noise


def scaled(values, factor):
    return [v * factor for v in values]


def bench(name, samples, status="ok", kind="time", unit="seconds", higher_is_better=False, error=None):
    return BenchResult(name=name, params={}, kind=kind, unit=unit, higher_is_better=higher_is_better,
                       status=status, error=error, samples=list(samples))


def run(*benchmarks):
    return RunRecord(run_id="r", created="2025-01-01T00:00:00+00:00", suite="s", env={}, benchmarks=list(benchmarks))


def test_identical_distributions_are_unchanged():
    v = compare_samples("a", STEADY, STEADY_AGAIN)
    assert v.verdict == "unchanged", v.reason
    assert v.ratio == 1.0 and v.change == 0.0 and v.ci_low < 0 < v.ci_high and v.p_value == 1.0
    assert "within +-3%" in v.reason


def test_ten_percent_slower_with_low_noise_is_regressed():
    v = compare_samples("a", STEADY, scaled(STEADY_AGAIN, 1.10))
    assert v.verdict == "regressed", v.reason
    assert v.ratio == pytest.approx(1.10) and v.change == pytest.approx(0.10)
    assert 0.05 < v.ci_low < 0.10 < v.ci_high and v.p_value < 1e-6
    assert v.candidate_median / v.baseline_median == pytest.approx(1.10)
    assert v.reason.startswith("10.0% worse") and "over the 3% threshold" in v.reason


def test_ten_percent_faster_is_improved():
    v = compare_samples("a", STEADY, scaled(STEADY_AGAIN, 0.90))
    assert v.verdict == "improved" and v.change == pytest.approx(-0.10)


def test_throughput_direction_is_honoured():
    dropped = compare_samples("tput", STEADY, scaled(STEADY_AGAIN, 0.90), unit="samples/s", higher_is_better=True)
    assert dropped.verdict == "regressed" and dropped.ratio == pytest.approx(0.90)
    assert dropped.change == pytest.approx(0.10) and dropped.ci_low > 0
    rose = compare_samples("tput", STEADY, scaled(STEADY_AGAIN, 1.10), unit="samples/s", higher_is_better=True)
    assert rose.verdict == "improved" and rose.change == pytest.approx(-0.10) and rose.ci_high < 0


def test_a_change_under_the_threshold_is_not_a_regression():
    v = compare_samples("a", STEADY, scaled(STEADY_AGAIN, 1.03), threshold=0.05)
    assert v.p_value < 0.01 and v.change == pytest.approx(0.03)
    assert v.verdict == "unchanged"  # significant, but the whole interval is within 5%
    assert compare_samples("a", STEADY, scaled(STEADY_AGAIN, 1.03), threshold=0.02).verdict == "regressed"


def test_high_noise_is_too_noisy_not_judged():
    v = compare_samples("a", NOISY_A, NOISY_B)
    assert v.verdict == "too-noisy", v.reason
    assert v.ci_low < 0 < 0.03 < v.ci_high and "cannot tell a change over 3% from none" in v.reason


def test_few_samples_are_insufficient():
    v = compare_samples("a", [1.0, 1.1], [2.0, 2.1, 2.2])
    assert v.verdict == "insufficient" and "need at least 3 each" in v.reason
    v = compare_samples("a", [1.0, 1.1, 1.2, 1.3], [2.0, 2.1, 2.2, 2.3])
    assert v.verdict == "insufficient"
    assert v.reason == "4 vs 4 samples can never reach p < 0.01 (best p=0.029); take more samples"
    assert compare_samples("a", [1.0, 1.1, 1.2, 1.3, 1.0], [2.0, 2.1, 2.2, 2.3, 2.0]).verdict == "regressed"


def test_samples_a_ratio_cannot_use_are_insufficient():
    v = compare_samples("loss", [0.5, -0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.2, 0.3, 0.4], unit="", higher_is_better=False)
    assert v.verdict == "insufficient" and "positive samples; the baseline has -0.1" in v.reason


def test_paired_mode_cancels_drift():
    drift = [1.0, 1.5, 0.8, 2.0, 1.2, 0.9, 1.7, 1.1, 1.3, 1.0, 1.4, 0.85]
    candidate = [d * c for d, c in zip(drift, [1.10, 1.12, 1.08, 1.11, 1.09, 1.10, 1.13, 1.07, 1.10, 1.10, 1.09, 1.11])]
    assert compare_samples("a", drift, candidate).verdict == "too-noisy"
    paired = compare_samples("a", drift, candidate, paired=True)
    assert paired.verdict == "regressed" and paired.change == pytest.approx(0.10, abs=0.005)
    fallback = compare_samples("a", drift, candidate[:-1], paired=True)
    assert "compared unpaired: 12 vs 11 samples cannot be paired" in fallback.reason


def test_statuses_and_presence():
    ok = bench("x", STEADY)
    assert compare_benchmark(None, ok).verdict == "new"
    assert compare_benchmark(ok, None).verdict == "missing"
    failed = compare_benchmark(ok, bench("x", [], status="timeout", error="ran past 60 s"))
    assert (failed.verdict, failed.reason) == ("failed", "timeout: ran past 60 s")
    assert compare_benchmark(None, bench("x", [], status="failed")).verdict == "failed"
    skipped = compare_benchmark(ok, bench("x", [], status="skipped"))
    assert (skipped.verdict, skipped.reason) == ("insufficient", "skipped in the candidate")
    baseline_failed = compare_benchmark(bench("x", [], status="failed"), ok)
    assert baseline_failed.reason == "failed in the baseline: nothing to compare against"
    changed = compare_benchmark(ok, bench("x", STEADY, unit="bytes"))
    assert changed.verdict == "insufficient" and "unit changed from 'seconds' to 'bytes'" in changed.reason


def test_compare_runs_with_thresholds_and_summary():
    baseline = run(bench("loader.iterate", STEADY), bench("training.step", STEADY), bench("old", STEADY),
                   bench("tput", STEADY, kind="track", unit="samples/s", higher_is_better=True))
    candidate = run(bench("training.step", scaled(STEADY_AGAIN, 1.08)),
                    bench("loader.iterate", scaled(STEADY_AGAIN, 1.08)),
                    bench("tput", scaled(STEADY_AGAIN, 0.8), kind="track", unit="samples/s", higher_is_better=True),
                    bench("brand.new", STEADY), bench("broken", [], status="failed", error="boom"))
    rows = compare_runs(baseline, candidate, thresholds={"training.*": "10%", "*": "5%"})
    verdicts = {r.name: (r.verdict, r.threshold) for r in rows}
    assert [r.name for r in rows] == ["training.step", "loader.iterate", "tput", "brand.new", "broken", "old"]
    assert verdicts == {
        "training.step": ("unchanged", 0.10),  # +8% is significant, but its whole interval is under 10%
        "loader.iterate": ("regressed", 0.05),
        "tput": ("regressed", 0.05),
        "brand.new": ("new", 0.05),
        "broken": ("failed", 0.05),
        "old": ("missing", 0.05),
    }
    summary = summarize(rows)
    assert list(summary.counts) == list(VERDICTS)
    assert summary.counts["regressed"] == 2 and summary.counts["unchanged"] == 1
    assert summary.has_regression and summary.has_failure
    assert not summarize(compare_runs(baseline, baseline)).has_regression


def simulate(rng, shift, paired, n=30, sigma=0.05, trials=300, threshold=0.05):
    """Fraction of `trials` comparisons of lognormal noise judged "regressed"."""
    hits = 0
    for _ in range(trials):
        base = np.exp(rng.normal(0, sigma, n)).tolist()
        cand = ((1 + shift) * np.exp(rng.normal(0, sigma, n))).tolist()
        hits += compare_samples("sim", base, cand, paired=paired, threshold=threshold).verdict == "regressed"
    return hits / trials


@pytest.mark.parametrize("paired", [False, True])
def test_simulated_false_positives_and_power(paired):
    """300 comparisons each, 30 samples a side, 5% lognormal noise, default alpha and threshold."""
    rng = np.random.default_rng(20240611)
    assert simulate(rng, 0.0, paired) <= 0.02  # A/A: measured 0.0
    assert simulate(rng, 0.10, paired) >= 0.95  # measured 1.0
    # A 5% step against a 3% threshold (the estimate must clear the threshold): measured ~0.85 / 0.81.
    assert simulate(rng, 0.05, paired, threshold=0.03) >= 0.75
