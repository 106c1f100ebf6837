"""Pure statistics, checked against literal numbers."""

import math
import subprocess
import sys

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


# Literal samples without ties: 5 vs 7, 12 vs 9 (overlapping), 20 vs 20 and 8 vs 50 (the exact limit, 400 pairs).
UNTIED = [
    ([0.91, 1.07, 0.98, 1.12, 1.03], [1.15, 1.09, 1.21, 1.02, 1.18, 1.25, 1.11]),
    ([3.1, 2.7, 3.9, 3.3, 2.9, 3.6, 4.1, 3.0, 2.8, 3.4, 3.8, 2.6], [3.5, 3.2, 4.0, 3.7, 4.3, 4.4, 3.95, 4.2, 3.15]),
    ([1 + i / 97 for i in range(0, 40, 2)], [1.1 + i / 89 for i in range(1, 40, 2)]),
    ([10 + i / 3.1 for i in range(8)], [10.05 + i / 7.3 for i in range(50)]),
]
# Quantised timings: tied pairs inside and across the samples.
TIED = [
    ([1, 2, 2, 3, 5], [2, 4, 5, 6, 7, 8]),
    ([1.0, 1.0, 1.1, 1.1, 1.2, 1.0], [1.1, 1.2, 1.2, 1.3, 1.1, 1.2, 1.3]),
    ([5, 5, 5, 6, 6, 7, 7, 7, 8, 8], [6, 7, 7, 8, 8, 8, 9, 9, 9, 10]),
]


@pytest.mark.parametrize("x, y", UNTIED)
def test_exact_mann_whitney_equals_scipy_and_asv_without_ties(x, y):
    scipy_stats = pytest.importorskip("scipy.stats")
    asv_stats = pytest.importorskip("asv._stats")  # asv's private module: the reference, never perfwatch's import
    p = stats.mann_whitney_p(x, y)
    assert p == pytest.approx(scipy_stats.mannwhitneyu(x, y, method="exact").pvalue, rel=1e-9)
    assert p == pytest.approx(min(1.0, asv_stats.mann_whitney_u(x, y, method="exact")[1]), rel=1e-9)


@pytest.mark.parametrize("x, y", TIED)
def test_exact_mann_whitney_breaks_ties_the_least_significant_way(x, y):
    scipy_stats = pytest.importorskip("scipy.stats")
    asv_stats = pytest.importorskip("asv._stats")
    p = stats.mann_whitney_p(x, y)
    assert p == pytest.approx(min(1.0, asv_stats.mann_whitney_u(x, y, method="exact")[1]), rel=1e-9)
    # scipy counts a tied pair as half of each side, so it calls the same data more significant.
    assert p > scipy_stats.mannwhitneyu(x, y, method="exact").pvalue


def test_mann_whitney_null_counts_every_ordering_once_and_is_symmetric():
    # 2 vs 2: the C(4, 2) = 6 orderings have U = 0, 1, 2, 2, 3, 4.
    assert stats._mann_whitney_cdf(2, 2) == pytest.approx((1 / 6, 2 / 6, 4 / 6, 5 / 6, 1.0))
    for m, n in [(1, 1), (3, 7), (20, 20), (8, 50), (1, 400)]:
        cdf = stats._mann_whitney_cdf(m, n)
        pmf = [b - a for a, b in zip((0.0, *cdf), cdf)]
        assert len(pmf) == m * n + 1 and cdf[-1] == pytest.approx(1.0, rel=1e-12)
        assert min(pmf) > 0 and pmf == pytest.approx(pmf[::-1], rel=1e-9)
    assert stats._mann_whitney_cdf(20, 20)[0] == pytest.approx(1 / math.comb(40, 20))


@pytest.mark.parametrize("alpha", [0.01, 0.05])
@pytest.mark.parametrize("m, n", [(5, 5), (6, 9), (10, 10), (20, 20), (7, 30), (8, 50)])
def test_moses_rank_equals_asvs_exact_null(m, n, alpha):
    asv_stats = pytest.importorskip("asv._stats")
    memo: dict = {}
    rank = next(u for u in range(m * n + 1) if asv_stats.mann_whitney_u_cdf(m, n, u, memo) > alpha / 2)
    assert stats._moses_rank(m, n, alpha) == rank


def test_stats_imports_neither_asv_nor_scipy():
    every_function = """
import sys
from perfwatch import stats
x, y, big = [1.0, 1.1, 0.9, 1.05, 0.95], [1.2, 1.3, 1.1, 1.25, 1.15], [1.0 + i / 100 for i in range(30)]
stats.quantile(x, 0.3), stats.median(x), stats.iqr(x), stats.spread(x), stats.is_noisy(x), stats.midranks(x)
stats.mann_whitney_p(x, y), stats.mann_whitney_p(big, big[::-1]), stats.smallest_p(5, 5)
stats.wilcoxon_p(range(1, 11)), stats.wilcoxon_p(big[:-1] * 2)
stats.unpaired_ratio(x, y), stats.unpaired_ratio(big, big), stats.paired_ratio(x, y), stats.paired_ratio(big, big)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""
    done = subprocess.run([sys.executable, "-c", every_function],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "numpy" in loaded  # the functions did run
    assert sorted(loaded & {"asv", "asv_runner", "scipy"}) == []


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
