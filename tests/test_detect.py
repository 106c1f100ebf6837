"""Change points in history, from literal series and seeded simulations."""

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from perfwatch.regress import detect
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


# ---------------------------------------------------------------- the speed-ups keep the answers
# tests/data/detect_reference.json holds change_points' answers over CASES as detect.py gave them before the
# sequential permutation test and the blocked energy split (recorded at commit 3769d69), so a faster detect.py
# must find the same steps with the same medians and p-values. Each case: kind, runs, seed, samples per run
# (1: plain numbers), change_points options.
REFERENCE = Path(__file__).parent / "data" / "detect_reference.json"
CASES = [
    ("flat", 30, 1, 1, {}), ("flat", 300, 2, 10, {}), ("flat", 2000, 3, 1, {}),
    ("step", 30, 4, 1, {}), ("step", 120, 5, 10, {}), ("step", 1000, 6, 1, {}), ("step", 2000, 7, 10, {}),
    ("two_steps", 60, 8, 1, {}), ("two_steps", 500, 9, 5, {}), ("two_steps", 2000, 10, 1, {}),
    ("revert", 120, 11, 1, {}), ("revert", 1000, 12, 3, {}),
    ("heavy", 300, 13, 1, {}), ("heavy", 1000, 14, 10, {}),
    ("missing", 200, 15, 10, {}), ("missing", 1500, 16, 5, {}),
    ("ties", 400, 17, 1, {}),
    ("small", 60, 7, 1, {}), ("small", 150, 9, 1, {}), ("small", 400, 17, 1, {}), ("small", 400, 25, 1, {}),
    ("two_steps", 300, 18, 1, {"min_size": 3}), ("step", 200, 19, 1, {"permutations": 99}),
    ("small", 150, 5, 1, {"permutations": 199, "alpha": 0.05}),
    ("revert", 400, 20, 1, {"alpha": 0.05}), ("two_steps", 400, 21, 1, {"seed": 4}),
]


def simulated(kind: str, runs: int, seed: int, samples: int) -> list:
    """A seeded benchmark history: lognormal noise of 3% (Student t2 for heavy) around a level
    of 1 that steps as ``kind`` says; ``missing`` drops runs (None, no samples), ``ties`` rounds."""
    rng = np.random.default_rng(seed)
    where = np.arange(runs) / runs
    level = {"step": np.where(where < 0.4, 1.0, 1.2),
             "two_steps": np.where(where < 0.3, 1.0, np.where(where < 0.7, 1.05, 0.97)),
             "revert": np.where((where >= 0.5) & (where < 0.6), 1.1, 1.0),
             "heavy": np.where(where < 0.5, 1.0, 1.05),
             "small": np.where(where < 0.5, 1.0, 1.012),
             "missing": np.where(where < 0.6, 1.0, 0.9)}.get(kind, np.ones(runs))
    draw = rng.standard_t(2, (runs, samples)) * 0.01 if kind == "heavy" else rng.normal(0, 0.03, (runs, samples))
    values = level[:, None] * np.exp(draw)
    if kind == "ties":
        values = np.round(values, 2)
    history = [float(run[0]) if samples == 1 else [float(x) for x in run] for run in values]
    if kind == "missing":
        for i in rng.choice(runs, runs // 20, replace=False):
            history[i] = None if i % 2 else []
    return history


@pytest.mark.parametrize("block", [detect._BLOCK_FLOATS, 1 << 12])  # small: many row blocks and batches
def test_the_simulated_cases_give_the_recorded_answers(monkeypatch, block):
    monkeypatch.setattr(detect, "_BLOCK_FLOATS", block)
    recorded = json.loads(REFERENCE.read_text())["cases"]
    assert [tuple(r["case"]) for r in recorded] == [(*case[:4], case[4]) for case in CASES]
    for (kind, runs, seed, samples, options), want in zip(CASES, recorded):
        history = simulated(kind, runs, seed, samples)
        # A changed random stream (another numpy) changes the series, not the detector: say which.
        assert math.fsum(v for v in run_values(history) if math.isfinite(v)) == want["values_sum"], (kind, runs)
        found = [[p.index, p.before, p.after, p.change, p.p_value] for p in change_points(history, **options)]
        assert found == want["points"], (kind, runs, seed)


class CountingRng:
    """A Generator that counts the shuffled rows it hands out."""

    def __init__(self, seed):
        self.rng, self.rows = np.random.default_rng(seed), 0

    def permuted(self, x, axis):
        self.rows += len(x)
        return self.rng.permuted(x, axis=axis)


def test_the_permutation_test_stops_once_no_step_is_certain_and_draws_all_for_a_step():
    flat = np.asarray(run_values(simulated("flat", 2000, 3, 1)))
    rng = CountingRng(0)
    assert detect._step_p_value(flat, 5, 499, rng, alpha=0.01) >= 0.01
    assert rng.rows < 100  # of 499
    step = np.asarray(run_values(simulated("small", 150, 9, 1)))  # p = 0.004 (the reference): 1 shuffle of 499
    rng = CountingRng([0, 0, 150])  # change_points' seed for the segment of all 150 runs
    assert detect._step_p_value(step, 5, 499, rng, alpha=0.01) == pytest.approx(0.004)
    assert rng.rows == 499
    rng = CountingRng(2)  # 1 / (99 + 1) can never be under 0.01: nothing to draw
    assert detect._step_p_value(step, 5, 99, rng, alpha=0.01) >= 0.01 and rng.rows == 0


def test_the_window_bound_is_never_below_the_window_scan():
    rng = np.random.default_rng(5)
    for n, min_size in [(10, 5), (37, 2), (300, 5), (2000, 7)]:
        for values in (rng.normal(size=n), np.round(rng.normal(size=n), 1), np.ones(n), np.arange(n)):
            sums = detect._sums(rng.permuted(np.tile(detect._doubled_ranks(values), (20, 1)), axis=1))
            assert np.all(detect._window_bound(sums, min_size) >= detect._window_scan(sums, min_size))


def test_the_energy_split_needs_no_runs_squared_memory():
    z = np.asarray(run_values(simulated("step", 3000, 6, 1)))
    tracemalloc.start()
    try:
        assert detect._energy_split(z, 5) == 1200
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3000 ** 2 * 8 / 4  # a quarter of one 3000 x 3000 float array
