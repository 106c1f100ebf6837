"""Pure statistics, checked against literal numbers."""

import math

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
