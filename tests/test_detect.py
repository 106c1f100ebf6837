"""Change points in history, from literal series and seeded simulations."""

import numpy as np
import pytest

from perfwatch.regress.detect import ChangePoint, change_points, drop_small_steps, run_values

# Step time around 10.0 s with +-2% noise, then around 11.0 s from run 12 on.
ONE_STEP = [10.1, 9.9, 10.0, 10.2, 9.8, 10.1, 10.0, 9.9, 10.1, 10.0, 9.9, 10.2,
            11.0, 11.1, 10.9, 11.2, 10.8, 11.0, 11.1, 10.9, 11.0, 11.2]
# A regression at run 10, fixed at run 20.
UP_AND_DOWN = [5.0, 5.1, 4.9, 5.0, 5.2, 4.8, 5.0, 5.1, 4.9, 5.0,
               5.6, 5.5, 5.7, 5.6, 5.4, 5.6, 5.5, 5.7, 5.6, 5.5,
               5.0, 4.9, 5.1, 5.0, 5.0, 5.2, 4.8, 5.0, 5.1, 4.9]
# Flat with +-5% noise and one outlier run (index 17).
FLAT = [1.00, 1.04, 0.97, 1.02, 0.95, 1.05, 0.99, 1.01, 0.96, 1.03, 1.00, 0.98, 1.04, 0.96, 1.02,
        0.99, 1.05, 1.60, 0.97, 1.01, 1.03, 0.95, 1.00, 1.02, 0.98, 1.04, 0.97, 1.01, 0.99, 1.03]


def test_single_step_found_at_the_first_run_after_it():
    (point,) = change_points(ONE_STEP)
    assert point.index == 12
    assert point.before == pytest.approx(10.0) and point.after == pytest.approx(11.0)
    assert point.change == pytest.approx(0.10) and point.p_value == pytest.approx(0.002)  # 1 / (499 + 1)


def test_regression_and_its_fix_are_two_steps():
    points = change_points(UP_AND_DOWN)
    assert [p.index for p in points] == [10, 20]
    assert [round(p.change, 3) for p in points] == [0.12, -0.107]
    assert all(p.p_value < 0.01 for p in points)


def test_flat_noisy_series_with_an_outlier_has_no_step():
    assert change_points(FLAT) == []


def test_seeded_long_series_steps_and_flat():
    rng = np.random.default_rng(7)
    level = np.r_[np.ones(200), np.full(150, 1.05), np.full(150, 0.97)]  # +5%, then -7.6%
    found = change_points(level * np.exp(rng.normal(0, 0.02, 500)))
    assert [p.index for p in found] == pytest.approx([200, 350], abs=1)
    assert change_points(np.exp(rng.normal(0, 0.05, 500))) == []


def test_sample_lists_and_missing_runs():
    history = [[x * 0.98, x, x * 1.03] for x in ONE_STEP]
    history.insert(5, None)
    history.insert(8, [])
    assert run_values(history[:3]) == pytest.approx([10.1, 9.9, 10.0])
    (point,) = change_points(history)
    assert point.index == 14  # run 12 of ONE_STEP, shifted by the two missing runs before it


def test_deterministic_given_the_seed_and_nothing_for_short_histories():
    assert change_points(UP_AND_DOWN, seed=3) == change_points(UP_AND_DOWN, seed=3)
    assert change_points(ONE_STEP[:9]) == []
    with pytest.raises(ValueError, match="min_size must be at least 2"):
        change_points(ONE_STEP, min_size=1)


def test_drop_small_steps_merges_segments_and_recomputes_neighbours():
    level = [1.000, 1.002, 0.998, 1.001, 0.999, 1.000, 1.002, 0.998, 1.001, 0.999]
    history = level + [x + 0.02 for x in level] + [x + 0.12 for x in level]  # +2%, then +9.8%
    points = change_points(history, min_size=4)
    assert [p.index for p in points] == [10, 20]
    assert [round(p.change, 3) for p in points] == [0.02, 0.098]
    (big,) = drop_small_steps(history, points, min_change=0.03)
    # The merged first segment now has median 1.01, so the remaining step is +10.9%.
    assert big == ChangePoint(index=20, before=pytest.approx(1.01), after=pytest.approx(1.12),
                              change=pytest.approx(1.12 / 1.01 - 1), p_value=points[1].p_value)
    assert drop_small_steps(history, points, min_change=0.0) == points
