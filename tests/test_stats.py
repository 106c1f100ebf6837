"""Pure statistics, checked against literal numbers."""

import math

import pytest

from perfwatch import stats


def test_quantiles_match_numpy_linear_interpolation():
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert stats.quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.25) == 2.0
    assert stats.iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0
    assert math.isnan(stats.median([]))


def test_spread_flags_noise_like_torch_utils_benchmark():
    assert stats.spread([10.0, 10.0, 10.0]) == 0.0
    assert stats.spread([9.0, 10.0, 11.0]) == 0.1
    assert not stats.is_noisy([9.5, 10.0, 10.5])
    assert stats.is_noisy([5.0, 10.0, 15.0])


# --- Inference -------------------------------------------------------------------------------

BASE = [1.0, 1.1, 0.9, 1.05, 0.95]


def test_mann_whitney_exact_for_small_samples_matches_the_counting_formula():
    # Complete separation of 5 vs 5: 2 of the C(10, 5) = 252 orderings are as extreme.
    assert stats.mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    assert stats.mann_whitney_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0


def test_mann_whitney_normal_approximation_has_tie_correction():
    # 30 vs 30 separated: z = (450 - 0.5) / sqrt(900 * 61 / 12) = 6.645.
    assert stats.mann_whitney_p(list(range(30)), list(range(30, 60))) == pytest.approx(3.02e-11, rel=0.01)
    # Two constant groups: ties shrink the variance, z = 449.5 / 58.59 = 7.67 (6.6 without the correction).
    assert stats.mann_whitney_p([1.0] * 30, [2.0] * 30) == pytest.approx(1.69e-14, rel=0.01)
    assert stats.mann_whitney_p([1.0] * 30, [1.0] * 30) == 1.0


def test_wilcoxon_exact_and_degenerate_cases():
    assert stats.wilcoxon_p([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == pytest.approx(2 / 1024)
    assert stats.wilcoxon_p([-3, -2, -1, 1, 2, 3]) == 1.0
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0


def test_smallest_p_says_when_a_test_can_never_reject():
    assert stats.smallest_p(5, 5) == pytest.approx(2 / 252)
    assert stats.smallest_p(4, 4) == pytest.approx(2 / 70)
    assert stats.smallest_p(8, 8, paired=True) == pytest.approx(2 / 256)


def test_unpaired_ratio_hodges_lehmann_with_moses_interval():
    est = stats.unpaired_ratio(BASE, [1.2 * x for x in BASE])
    assert est.ratio == pytest.approx(1.2)
    # 5 vs 5 at 99%: the interval is the extreme pairwise ratios, 1.2 * 0.9/1.1 .. 1.2 * 1.1/0.9.
    assert (est.low, est.high) == pytest.approx((1.2 * 0.9 / 1.1, 1.2 * 1.1 / 0.9))
    assert est.p_value == pytest.approx(4 / 252)  # one crossed pair: U = 1
    assert (est.method, est.confidence) == ("mann-whitney", 0.99)


def test_unpaired_ratio_interval_excludes_one_exactly_when_the_test_rejects():
    est = stats.unpaired_ratio([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert est.low > 1 and est.p_value < 0.01
    same = stats.unpaired_ratio(BASE, BASE[::-1])
    assert same.ratio == 1.0 and same.low < 1 < same.high and same.p_value == 1.0


def test_paired_ratio_sees_through_drift_that_hides_the_change_unpaired():
    drift = [1.0, 1.5, 0.8, 2.0, 1.2, 0.9, 1.7, 1.1, 1.3, 1.0]  # the machine's speed, pair by pair
    change = [1.10, 1.12, 1.08, 1.11, 1.09, 1.10, 1.13, 1.07, 1.10, 1.10]
    candidate = [d * c for d, c in zip(drift, change)]
    paired = stats.paired_ratio(drift, candidate)
    assert paired.ratio == pytest.approx(1.10)
    assert 1.0 < paired.low <= 1.10 <= paired.high < 1.13
    assert paired.p_value < 0.01 and paired.method == "wilcoxon"
    unpaired = stats.unpaired_ratio(drift, candidate)
    assert unpaired.low < 1 < unpaired.high and unpaired.p_value > 0.5


def test_ratios_refuse_unusable_samples():
    with pytest.raises(ValueError, match="positive samples; the candidate has 0.0"):
        stats.unpaired_ratio(BASE, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="equal sample counts, got 5 and 4"):
        stats.paired_ratio(BASE, BASE[:4])


def test_too_few_samples_give_an_unbounded_interval():
    est = stats.unpaired_ratio([1.0, 1.1], [1.2, 1.3])
    assert (est.low, est.high) == (0.0, math.inf)
