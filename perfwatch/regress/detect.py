"""Change points in a benchmark's history (one value, or one list of samples, per run); pure.

Hierarchical, like Matteson & James' E-divisive and Apache Otava (Hunter), one segment at a time:

1. *Whether* the segment holds a step: a permutation test on ranks. The largest standardised
   rank sum of a stretch of runs against the rest (every prefix: a step; windows on a 10% grid of
   lengths: a step later reverted) is compared with the same maximum over shuffled runs (seeded,
   so deterministic). Taking the maximum accounts for having searched every stretch, which a plain
   t-test at the chosen point (Hunter) ignores; ranks keep one outlier run from making a step.
2. *Where*: the E-divisive means split, the tau (and end kappa) maximising the energy divergence
   between runs [start, tau) and [tau, kappa); letting the right side end at kappa keeps a later
   step from blurring an earlier one.
3. Both sides of an accepted split are searched again until no segment holds a step.

Measured on simulated series (100 each, 2-3% noise, normal / heavy-tailed t2), against a
Hunter-style check written for the comparison (E-divisive + Mann-Whitney of the adjacent
segments at p < 0.001): a false step in flat 60-500 run series 0-2% (Hunter-style 1-5%); every
step found within +-1 run: one 5% step 92% / 73% (92% / 72%), two steps up 88% / 56% (90% / 57%),
up then back down 96% / 64% (96% / 55%), a 12-run excursion in 120 runs 98% / 70% (1% / 0%).
Excursions shorter than ``min_size`` runs count as outliers.

Cost, with the answers of the plain algorithm (tests/data/detect_reference.json): the test draws its
shuffles in batches and stops once a p-value under alpha is out of reach, so a flat segment (most
of them) needs a few dozen, not all; a shuffle whose prefixes fall short and whose windows cannot
reach the observed maximum (a bound in O(runs)) is settled without scanning its windows. The split
is O(runs^2) in time but not in memory. 5,000 runs: about 0.01 s flat, 0.25 s with one step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from perfwatch import stats
from perfwatch.stats import DEFAULT_ALPHA

# Fewer runs than this on one side of a step are treated as noise (an outlier run or two).
DEFAULT_MIN_SIZE = 5
# p-values resolve to 1/(permutations + 1) = 0.002, five times finer than DEFAULT_ALPHA.
DEFAULT_PERMUTATIONS = 499
# Window lengths of the scan grow by 10%: its null quantiles match scanning every length
# (4.37 vs 4.37 at the 99th percentile, 500 runs) for a sixth of the cost.
_WINDOW_GROWTH = 1.1
# Floats in one block of rows of the energy split, and in one batch of shuffled runs of the
# permutation test: a few such arrays fit in a core's cache.
_BLOCK_FLOATS = 1 << 17


@dataclass(frozen=True)
class ChangePoint:
    """A step in the history; ``change`` is after/before - 1 in the metric's own direction."""

    index: int  # position in the history of the first run after the step
    before: float  # median of the runs since the previous change point
    after: float  # median of the runs up to the next change point
    change: float
    p_value: float  # of the test that found a step in the segment this one split


def run_values(history: Sequence[float | Sequence[float] | None]) -> list[float]:
    """One number per run: the value itself, or the median of its samples; nan when missing."""
    values = []
    for run in history:
        if run is None:
            values.append(math.nan)
        elif isinstance(run, (float, numbers.Real)):  # float first: a cheap check, not the ABC's
            values.append(float(run))
        else:
            values.append(stats.median(run))
    return values


def _present(history: Sequence) -> tuple[np.ndarray, list[int]]:
    """The finite run values, and where each one sits in the history."""
    values = run_values(history)
    positions = [i for i, v in enumerate(values) if math.isfinite(v)]
    return np.asarray([values[i] for i in positions], dtype=float), positions


def _upper_rows(z: np.ndarray) -> Iterator[np.ndarray]:
    """Row after row of R = cumsum(0) of the upper triangle of |z_i - z_j|, in one array updated in place.

    Each sum is added in the order a cumsum(0) of the whole matrix adds it (the zeros below the
    diagonal change nothing), so the floats are the same in O(n) memory.
    """
    columns = np.zeros(len(z))
    for i in range(len(z)):
        columns[i + 1:] += np.abs(z[i] - z[i + 1:])
        yield columns


def _energy_split(z: np.ndarray, min_size: int) -> int:
    """E-divisive (alpha = 1): the tau maximising Q(z[:tau], z[tau:kappa]) over tau and kappa.

    Q = tau (kappa - tau) / kappa * (2 mean|x - y| - mean|x - x'| - mean|y - y'|); the pairwise sums
    are entries of P, the 2-D prefix sum cumsum(0).cumsum(1) of the upper triangle of |z_i - z_j|,
    so it is O(n^2) in time. Memory is O(n x block): P's rows are made a block at a time, in two
    passes (the first for P's diagonal, which each row's right side needs), with every float added
    in the order the whole-matrix cumsums add it, so Q and its argmax are the whole matrix's.
    """
    n = len(z)
    *_, totals = _upper_rows(z)
    # Row j of R holds the column totals up to column j (the triangle is 0 below), so P[j, j] is their cumsum.
    diagonal = totals.cumsum()
    rows = max(1, _BLOCK_FLOATS // n)
    best, best_tau = -np.inf, min_size
    upper = _upper_rows(z)
    for start in range(0, n - min_size, rows):  # rows tau - 1 of P
        stop = min(start + rows, n - min_size)
        block = np.empty((stop - start, n - start))
        for row in block:
            row[:] = next(upper)[start:]
        first = max(start, min_size - 1)
        if first >= stop:
            continue
        block = block[first - start:]
        if start:
            block[:, 0] += diagonal[start - 1]  # P[i, start - 1], as row i's cumsum(1) reaches it
        prefix = block.cumsum(1)[:, first + min_size - start:]  # P[tau - 1, kappa - 1]
        taus = np.arange(first + 1, stop + 1)[:, None]
        kappas = np.arange(first + min_size + 1, n + 1)[None, :]
        q = _divergence(prefix, taus, kappas, diagonal)
        q[:, :len(q)][np.tri(len(q), dtype=bool, k=-1)] = -np.inf  # kappa - tau < min_size
        at = int(np.argmax(q))
        if q.flat[at] > best:  # strictly: the first tau of equal maxima wins, as one argmax over all
            best, best_tau = q.flat[at], int(taus[at // q.shape[1], 0])
    return best_tau


def _divergence(prefix: np.ndarray, taus: np.ndarray, kappas: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """Half of Q(tau, kappa) for a block of taus (consecutive) and kappas (from tau[0] + min_size):
    (across - (kappa - tau) within_left / (tau - 1) - tau within_right / (kappa - tau - 1)) / kappa.

    That is the formula with its factors of 2 taken out, which is exact in binary floating point
    (away from overflow and subnormals), so the argmax is that of the whole formula; in place.
    """
    width = prefix.shape[1]
    steps = np.arange(kappas[0, 0] - taus[-1, 0], kappas[0, -1] - taus[0, 0] + 1, dtype=float)
    gap = sliding_window_view(steps, width)[::-1]  # kappa - tau: the same numbers along each diagonal
    within_left = diagonal[taus - 1]
    left = np.multiply(gap, within_left)
    left /= taus - 1
    q = np.subtract(prefix, within_left)
    q -= left
    right = np.subtract(diagonal[kappas - 1], prefix, out=left)
    right *= taus
    with np.errstate(divide="ignore", invalid="ignore"):  # kappa - tau < min_size: masked out by the caller
        right /= sliding_window_view(steps - 1, width)[::-1]
    q -= right
    q /= kappas
    return q


def _window_lengths(n: int, min_size: int) -> list[int]:
    """min_size, then 10% longer each time, up to n - min_size (a geometric grid)."""
    lengths: list[int] = []
    length = float(min_size)
    while round(length) <= n - min_size:
        if not lengths or round(length) != lengths[-1]:
            lengths.append(round(length))
        length *= _WINDOW_GROWTH
    return lengths


def _scale(size: np.ndarray | int, n: int) -> np.ndarray:
    """The null standard deviation of the rank sum of ``size`` runs out of ``n``."""
    return np.sqrt(size * (n - size) * (n + 1) / 12)


def _doubled_ranks(segment: np.ndarray) -> np.ndarray:
    """Twice the midranks (they are halves): integers, so rank sums are exact, and small."""
    return np.rint(2 * stats.midranks(segment)).astype(np.int64 if len(segment) > 40_000 else np.int32)  # < 2**31


def _sums(doubled: np.ndarray) -> np.ndarray:
    """0, then the running sums of the doubled ranks (over the last axis)."""
    sums = np.zeros(doubled.shape[:-1] + (doubled.shape[-1] + 1,), doubled.dtype)
    np.cumsum(doubled, axis=-1, dtype=doubled.dtype, out=sums[..., 1:])
    return sums


def _prefix_scan(sums: np.ndarray, min_size: int) -> np.ndarray:
    """Largest standardised |rank sum - its mean| of a prefix [0, tau): a step (over the last axis)."""
    n = sums.shape[-1] - 1
    taus = np.arange(min_size, n - min_size + 1)
    return (np.abs(sums[..., min_size:n - min_size + 1] / 2 - taus * (n + 1) / 2) / _scale(taus, n)).max(axis=-1)


def _window_scan(sums: np.ndarray, min_size: int) -> np.ndarray:
    """The same over windows of a grid of lengths: a step and its revert (a regression fixed later).

    A length's largest |sum - mean| is the larger of its largest and smallest sum's, so only
    those two are standardised.
    """
    n = sums.shape[-1] - 1
    lengths = _window_lengths(n, min_size)
    best = np.zeros(sums.shape[:-1])
    for length, scale in zip(lengths, _scale(np.asarray(lengths), n)):
        windows = sums[..., length:] - sums[..., :-length]
        mean = length * (n + 1) / 2
        best = np.maximum(best, np.maximum(windows.max(axis=-1) / 2 - mean, mean - windows.min(axis=-1) / 2) / scale)
    return best


def _window_bound(sums: np.ndarray, min_size: int) -> np.ndarray:
    """What _window_scan cannot exceed, in O(n): a window's |sum - mean| is the difference of two
    centred prefix sums, so at most their range, and at most length (n - 1) / 2 (each rank's own);
    the same float division of a larger number by the same scale is never smaller."""
    n = sums.shape[-1] - 1
    centred = sums - np.arange(n + 1, dtype=sums.dtype) * (n + 1)  # doubled, exact
    spread = (centred.max(axis=-1) - centred.min(axis=-1)) / 2
    lengths = np.asarray(_window_lengths(n, min_size))
    return (np.minimum(spread[..., None], lengths * (n - 1) / 2) / _scale(lengths, n)).max(axis=-1)


def _scan(doubled: np.ndarray, min_size: int) -> float:
    """The largest standardised |rank sum| of a stretch of runs against the rest: every prefix
    [0, tau) (a step) and every window of the grid (a step and its revert), so neither kind is
    diluted by the other's shape."""
    sums = _sums(doubled)
    return float(max(_prefix_scan(sums, min_size), _window_scan(sums, min_size)))


def _exceeding(shuffled: np.ndarray, min_size: int, threshold: float) -> int:
    """How many rows of ``shuffled`` scan to ``threshold`` or more; a row whose prefixes do not and
    whose windows cannot (_window_bound) is settled without scanning its windows."""
    sums = _sums(shuffled)
    over = _prefix_scan(sums, min_size) >= threshold
    unsettled = ~over & (_window_bound(sums, min_size) >= threshold)
    windows = np.count_nonzero(_window_scan(sums[unsettled], min_size) >= threshold) if unsettled.any() else 0
    return int(np.count_nonzero(over) + windows)


def _step_p_value(segment: np.ndarray, min_size: int, permutations: int, rng: np.random.Generator,
                  alpha: float) -> float:
    """How often shuffled runs hold a stretch as extreme as this segment's most extreme one.

    Exact when below ``alpha``, else a lower bound at least ``alpha``: shuffles come in growing
    batches (the same rows as one call for all of them: Generator.permuted shuffles row after
    row) and stop once the p-value can no longer get under alpha, so a flat segment needs a few.
    """
    doubled = _doubled_ranks(segment)
    threshold = _scan(doubled, min_size) - 1e-9
    most = max(1, _BLOCK_FLOATS // len(doubled))
    exceed = drawn = 0
    batch = min(8, most)
    while drawn < permutations and (exceed + 1) / (permutations + 1) < alpha:
        size = min(batch, permutations - drawn)
        # The same shuffles as of the ranks themselves: a shuffle's draws depend on the length only.
        exceed += _exceeding(rng.permuted(np.tile(doubled, (size, 1)), axis=1), min_size, threshold)
        drawn += size
        batch = min(2 * batch, most)
    return (exceed + 1) / (permutations + 1)


def _describe(values: np.ndarray, positions: list[int], splits: dict[int, float]) -> list[ChangePoint]:
    """ChangePoints for splits (index into values -> p-value), medians between neighbours."""
    cuts = sorted(splits)
    bounds = [0, *cuts, len(values)]
    points = []
    for i, cut in enumerate(cuts):
        before = float(np.median(values[bounds[i]:cut]))
        after = float(np.median(values[cut:bounds[i + 2]]))
        change = after / before - 1 if before else math.inf
        points.append(ChangePoint(index=positions[cut], before=before, after=after, change=change,
                                  p_value=splits[cut]))
    return points


def change_points(
    history: Sequence[float | Sequence[float] | None],
    *,
    alpha: float = DEFAULT_ALPHA,
    min_size: int = DEFAULT_MIN_SIZE,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> list[ChangePoint]:
    """Steps in a history, oldest first; runs without a value (None, nan, no samples) are skipped."""
    if min_size < 2:
        raise ValueError(f"min_size must be at least 2 (a side needs a spread), got {min_size}")
    values, positions = _present(history)
    splits: dict[int, float] = {}
    segments = [(0, len(values))]
    while segments:
        start, end = segments.pop()
        if end - start < 2 * min_size:
            continue
        segment = values[start:end]
        # Seeded per segment: a segment's verdict does not depend on the order segments are visited.
        p = _step_p_value(segment, min_size, permutations, np.random.default_rng([seed, start, end]), alpha)
        if p < alpha:
            tau = _energy_split(segment, min_size)
            splits[start + tau] = p
            segments += [(start, start + tau), (start + tau, end)]
    return _describe(values, positions, splits)


def drop_small_steps(
    history: Sequence[float | Sequence[float] | None], points: Sequence[ChangePoint], min_change: float
) -> list[ChangePoint]:
    """Remove steps smaller than ``min_change`` (a fraction), smallest first.

    One at a time, because removing a step merges two segments and so changes its neighbours'
    before/after medians (the merge step of Hunter); the survivors keep their p-values.
    """
    values, positions = _present(history)
    where = {position: i for i, position in enumerate(positions)}
    splits = {where[p.index]: p.p_value for p in points}
    while True:
        described = _describe(values, positions, splits)
        small = [p for p in described if abs(p.change) < min_change]
        if not small:
            return described
        del splits[where[min(small, key=lambda p: abs(p.change)).index]]
