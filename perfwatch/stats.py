"""Pure statistics over lists of floats: no I/O, tested with literal numbers."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy

# torch.utils.benchmark warns when IQR/median exceeds 10%: the measurement is noisy.
NOISY_SPREAD = 0.10


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), q in [0, 1]."""
    if len(values) == 0:  # len(), not truthiness: numpy arrays are accepted too
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return quantile(values, 0.5)


def iqr(values: Sequence[float]) -> float:
    return quantile(values, 0.75) - quantile(values, 0.25)


def spread(values: Sequence[float]) -> float:
    """Relative spread: IQR / |median| (0 for a constant series, nan when undefined)."""
    m = median(values)
    if len(values) == 0:
        return math.nan
    if m == 0 or math.isnan(m):
        return 0.0 if iqr(values) == 0 else math.inf
    return iqr(values) / abs(m)


def is_noisy(values: Sequence[float], limit: float = NOISY_SPREAD) -> bool:
    s = spread(values)
    return not math.isnan(s) and s > limit


# --- Inference: is the candidate different from the baseline, and by how much? -------------
#
# numpy is imported inside the functions below, not at the top: store.py imports this module,
# and `import perfwatch` must stay cheap (numpy costs ~0.1 s).

# 1% two-sided, looser than asv's 0.002 because the threshold does most of the work against false
# alarms (a regression must also be over it): A/A comparisons of 30 samples are flagged 0.0-0.5%
# of the time, while 10% steps are still caught 100% (5% noise, see tests/test_compare.py).
DEFAULT_ALPHA = 0.01

# Up to this many (baseline, candidate) pairs the Mann-Whitney null distribution is computed
# exactly (_mann_whitney_cdf counts the orderings, ~1 ms once for 20 x 20); above it, the normal
# approximation is within 0.006 of exact (measured from 20 x 20 to 10 x 45) and costs nothing.
_EXACT_MAX_PAIRS = 400

# Same idea for the signed-rank test of interleaved pairs (its exact table is a cheap subset-sum count).
_EXACT_MAX_DIFFERENCES = 50

_NORMAL = NormalDist()


@dataclass(frozen=True)
class RatioEstimate:
    """How much larger the candidate is than the baseline: candidate/baseline, raw direction.

    ``low``..``high`` is a confidence interval at level ``confidence`` (0 and inf when the samples
    cannot bound it), and ``p_value`` the two-sided test of "no difference" that the interval inverts.
    """

    ratio: float
    low: float
    high: float
    p_value: float
    confidence: float
    method: str  # "mann-whitney" (independent samples) or "wilcoxon" (interleaved pairs)


def midranks(values: Sequence[float]) -> "numpy.ndarray":
    """1-based ranks, tied values sharing the mean of their ranks (what rank tests expect)."""
    import numpy as np

    _, inverse, counts = np.unique(np.asarray(values, dtype=float), return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


@functools.lru_cache(maxsize=64)
def _mann_whitney_cdf(m: int, n: int) -> tuple[float, ...]:
    """P(U <= u) for u = 0..m*n: the exact Mann-Whitney null of m x's and n y's, U = #(x > y).

    Counts orderings with Mann and Whitney's recursion r(i, j, u) = r(i, j-1, u) + r(i-1, j, u-j)
    (the largest of the i + j values is a y, or an x above all j y's), one x at a time. The counts
    are exact in int64 far past the exact-test limit (C(40, 20) ~ 1.4e11 for 20 x 20).
    """
    import numpy as np

    counts = np.zeros((n + 1, m * n + 1), dtype=np.int64)  # counts[j, u]: orderings of i x's, j y's
    counts[:, 0] = 1  # no x's yet: one ordering, U = 0
    for _ in range(m):
        for j in range(1, n + 1):
            shifted = np.zeros_like(counts[j])
            shifted[j:] = counts[j, :-j]
            counts[j] = counts[j - 1] + shifted
    return tuple((np.cumsum(counts[n]) / math.comb(m + n, m)).tolist())


def mann_whitney_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value that ``x`` and ``y`` come from one distribution.

    Small samples use the exact null distribution, tied pairs counted the least significant way
    (as asv does; scipy's exact test counts them as halves, which overstates significance);
    larger ones the normal approximation with tie and continuity corrections, without which
    quantised timings with many ties are judged wrongly.
    """
    import numpy as np

    m, n = len(x), len(y)
    if m == 0 or n == 0:
        return math.nan
    if m * n <= _EXACT_MAX_PAIRS:
        x_arr, y_sorted = np.asarray(x, dtype=float), np.sort(np.asarray(y, dtype=float))
        below = np.searchsorted(y_sorted, x_arr, side="left")  # how many y's lie below each x
        ties = int((np.searchsorted(y_sorted, x_arr, side="right") - below).sum())
        u = int(below.sum())
        # U lies anywhere in u..u+ties; take the value nearest m*n/2, then the smaller tail.
        return min(1.0, 2 * _mann_whitney_cdf(m, n)[min(u + ties, m * n - u, m * n // 2)])
    pooled = np.concatenate([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    u = float(midranks(pooled)[:m].sum()) - m * (m + 1) / 2
    ties = np.unique(pooled, return_counts=True)[1].astype(float)
    total = m + n
    variance = m * n / 12 * ((total + 1) - float((ties**3 - ties).sum()) / (total * (total - 1)))
    if variance <= 0:  # every value identical
        return 1.0
    z = max(abs(u - m * n / 2) - 0.5, 0.0) / math.sqrt(variance)
    return min(1.0, 2 * _NORMAL.cdf(-z))


@functools.lru_cache(maxsize=64)
def _signed_rank_cdf(n: int) -> tuple[float, ...]:
    """P(W+ <= w) for w = 0..n(n+1)/2: the exact Wilcoxon null, counted by subset sums of 1..n."""
    import numpy as np

    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for rank in range(1, n + 1):
        counts[rank:] = counts[rank:] + counts[:-rank]
    return tuple((np.cumsum(counts) / 2.0**n).tolist())


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value that the differences are centred on zero.

    Zero differences are dropped (Wilcoxon's convention). Exact up to 50 differences without tied
    magnitudes; otherwise the normal approximation with tie and continuity corrections.
    """
    import numpy as np

    d = np.asarray([x for x in differences if x != 0], dtype=float)
    n = len(d)
    if n == 0:
        return 1.0
    ranks = midranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    ties = np.unique(np.abs(d), return_counts=True)[1].astype(float)
    if n <= _EXACT_MAX_DIFFERENCES and len(ties) == n:
        cdf = _signed_rank_cdf(n)
        w = int(w_plus)
        lower = cdf[w]
        upper = 1.0 - (cdf[w - 1] if w > 0 else 0.0)
        return min(1.0, 2 * min(lower, upper))
    variance = n * (n + 1) * (2 * n + 1) / 24 - float((ties**3 - ties).sum()) / 48
    if variance <= 0:
        return 1.0
    z = max(abs(w_plus - n * (n + 1) / 4) - 0.5, 0.0) / math.sqrt(variance)
    return min(1.0, 2 * _NORMAL.cdf(-z))


def smallest_p(n_baseline: int, n_candidate: int, paired: bool = False) -> float:
    """The smallest p-value the test can reach with these counts (complete separation).

    If it is not below alpha, no amount of difference can be significant: the comparison is
    undecidable by construction, not "unchanged".
    """
    if paired:
        return min(1.0, 2 * 0.5 ** min(n_baseline, n_candidate))
    return min(1.0, 2 / math.comb(n_baseline + n_candidate, n_baseline))


@functools.lru_cache(maxsize=256)
def _moses_rank(m: int, n: int, alpha: float) -> int:
    """Rank k: the k-th smallest and k-th largest of the m*n pairwise differences bound a
    >= 1-alpha interval for the shift (Moses); 0 when the samples are too few to bound it."""
    if m * n <= _EXACT_MAX_PAIRS:
        return next(u for u, p in enumerate(_mann_whitney_cdf(m, n)) if p > alpha / 2)
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    return max(0, math.floor(m * n / 2 - 0.5 - z * math.sqrt(m * n * (m + n + 1) / 12)) + 1)


@functools.lru_cache(maxsize=256)
def _tukey_rank(n: int, alpha: float) -> int:
    """Rank k: the k-th smallest and k-th largest of the n(n+1)/2 Walsh averages bound a
    >= 1-alpha interval for the centre of n paired differences (Tukey); 0 when none exists."""
    if n <= _EXACT_MAX_DIFFERENCES:
        cdf = _signed_rank_cdf(n)
        return next(w for w, p in enumerate(cdf) if p > alpha / 2)
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    return max(0, math.floor(n * (n + 1) / 4 - 0.5 - z * math.sqrt(n * (n + 1) * (2 * n + 1) / 24)) + 1)


def _interval(values: "numpy.ndarray", k: int) -> tuple[float, float]:
    """exp of the k-th smallest and k-th largest value: an interval on the ratio scale."""
    import numpy as np

    if not k:
        return 0.0, math.inf
    bounds = np.partition(values, (k - 1, values.size - k))
    return math.exp(bounds[k - 1]), math.exp(bounds[values.size - k])


def _logs(values: Sequence[float], side: str) -> list[float]:
    """Logs of the samples; a ratio needs every sample positive and finite."""
    bad = [v for v in values if not (v > 0 and math.isfinite(v))]
    if bad:
        raise ValueError(f"a ratio needs positive samples; the {side} has {bad[0]!r}")
    return [math.log(v) for v in values]


def unpaired_ratio(
    baseline: Sequence[float], candidate: Sequence[float], alpha: float = DEFAULT_ALPHA
) -> RatioEstimate:
    """Candidate/baseline for independent samples: Hodges-Lehmann on log scale, Moses interval.

    Timings vary multiplicatively, so a shift of log values is a ratio (equal to the ratio of
    medians when the change is a pure scaling). Hodges-Lehmann (median of all pairwise log
    ratios) is the estimator of the Mann-Whitney test: its distribution-free interval excludes 1
    exactly when the test rejects, it covers at its level even for 5 samples, it ignores outliers,
    is ~95% as efficient as a mean on clean data, and needs no bootstrap seed.
    """
    import numpy as np

    log_base = np.asarray(_logs(baseline, "baseline"))
    log_cand = np.asarray(_logs(candidate, "candidate"))
    if not (len(log_base) and len(log_cand)):
        raise ValueError("a ratio needs samples on both sides")
    diffs = np.subtract.outer(log_cand, log_base).ravel()
    low, high = _interval(diffs, _moses_rank(len(log_base), len(log_cand), alpha))
    return RatioEstimate(
        ratio=math.exp(float(np.median(diffs))), low=low, high=high,
        p_value=mann_whitney_p(baseline, candidate), confidence=1 - alpha, method="mann-whitney",
    )


def paired_ratio(
    baseline: Sequence[float], candidate: Sequence[float], alpha: float = DEFAULT_ALPHA
) -> RatioEstimate:
    """Candidate/baseline for interleaved runs, where sample i of both sides ran back to back.

    Drift of a shared machine (load, clocks, thermals) hits both halves of a pair and cancels in
    its log ratio, so only the change is left. The estimate is Hodges-Lehmann of those per-pair
    log ratios (median of Walsh averages) with Tukey's interval, inverting the Wilcoxon signed-rank
    test: distribution-free like a sign test, but ~1.5x as efficient (a sign test caught 56% of 5%
    steps at a 3% threshold where this catches 81%; 30 pairs, 5% noise). Symmetry, its one
    assumption, holds under "no change" because both halves of a pair carry the same noise.
    """
    import numpy as np

    if len(baseline) != len(candidate):
        raise ValueError(f"pairs need equal sample counts, got {len(baseline)} and {len(candidate)}")
    if len(baseline) == 0:
        raise ValueError("a ratio needs samples on both sides")
    log_ratios = np.asarray(_logs(candidate, "candidate")) - np.asarray(_logs(baseline, "baseline"))
    upper = np.triu_indices(len(log_ratios))
    walsh = (log_ratios[upper[0]] + log_ratios[upper[1]]) / 2
    low, high = _interval(walsh, _tukey_rank(len(log_ratios), alpha))
    return RatioEstimate(
        ratio=math.exp(float(np.median(walsh))), low=low, high=high,
        p_value=wilcoxon_p(log_ratios), confidence=1 - alpha, method="wilcoxon",
    )


# --- Rounds of fresh processes: the test at the level that varies ----------------------------
#
# Two processes running the same code differ by a few percent (address-space layout, environment
# size, core, allocator state: Mytkowicz et al., ASPLOS 2009), and samples within one process all
# share its offset. Pairs within one round cancel drift but not that offset, so the unit of
# replication is the round: each round gets one log ratio, and the test is over those.

_BETA_EPSILON = 1e-15
_MAD_TO_SD = 1.4826  # 1 / the normal's 0.75 quantile: MAD x this estimates sd
_BETA_TINY = 1e-300


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), for x < (a+1)/(a+b+2)."""

    def guarded(value: float) -> float:
        return value if abs(value) > _BETA_TINY else _BETA_TINY

    c, d = 1.0, 1.0 / guarded(1.0 - (a + b) * x / (a + 1.0))
    fraction = d
    for m in range(1, 1000):
        even = m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m))
        d, c = 1.0 / guarded(1.0 + even * d), guarded(1.0 + even / c)
        fraction *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))
        d, c = 1.0 / guarded(1.0 + odd * d), guarded(1.0 + odd / c)
        fraction *= d * c
        if abs(d * c - 1.0) < _BETA_EPSILON:
            break
    return fraction


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (the CDF of a Beta(a, b) at x)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # where the fraction converges fast; else use the symmetry
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1.0 - x, b, a) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / (df + t * t), df / 2.0, 0.5)


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile (0.5 <= q < 1) of Student's t, by bisection of t_two_sided_p (monotone)."""
    if not 0.5 <= q < 1.0:
        raise ValueError(f"t_quantile takes 0.5 <= q < 1, got {q}")
    tail = 2.0 * (1.0 - q)
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > tail:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if middle in (low, high):
            break
        low, high = (middle, high) if t_two_sided_p(middle, df) > tail else (low, middle)
    return (low + high) / 2.0


def hodges_lehmann(values: Sequence[float]) -> float:
    """Centre of a sample: the median of its Walsh averages (the Wilcoxon signed-rank estimator)."""
    walsh = [(a + b) / 2.0 for i, a in enumerate(values) for b in values[i:]]
    return median(walsh)


@dataclass(frozen=True)
class RoundsEstimate(RatioEstimate):
    """A ratio from rounds of fresh processes: ``round_ratios`` has one candidate/baseline per round;
    ``between`` is the spread (sd, log scale ~ relative) of the rounds' log ratios and ``within`` that
    of single pairs inside a round, robustly (1.4826 x MAD: one preempted sample must not set it;
    nan when no round has two pairs)."""

    round_ratios: tuple[float, ...] = ()
    between: float = math.nan
    within: float = math.nan


def rounds_ratio(
    baseline: Sequence[float], candidate: Sequence[float], sizes: Sequence[int], alpha: float = DEFAULT_ALPHA
) -> RoundsEstimate:
    """Candidate/baseline from interleaved pairs taken in rounds; ``sizes[r]`` pairs belong to round r, in order.

    Each round's log ratio is the Hodges-Lehmann centre of its pairs; the estimate is their mean
    with a t-interval on len(sizes) - 1 degrees of freedom, so a per-process offset widens the
    interval instead of passing as a change. The variance of a round's log ratio is taken as the
    larger of what the rounds show and what the within-round noise alone implies (the ANOVA
    estimate of the between-round variance, truncated at zero): rounds that agree by chance
    cannot make the interval narrower than the pairs allow.
    """
    if len(baseline) != len(candidate) or sum(sizes) != len(baseline):
        raise ValueError(f"rounds of {list(sizes)} pairs need {sum(sizes)} samples per side, "
                         f"got {len(baseline)} and {len(candidate)}")
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"a test over rounds needs at least 2 rounds of at least 1 pair, got {list(sizes)}")
    log_ratios = [c - b for b, c in zip(_logs(baseline, "baseline"), _logs(candidate, "candidate"))]
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    groups = [log_ratios[start:start + size] for start, size in zip(starts, sizes)]
    centres = [hodges_lehmann(group) for group in groups]
    rounds = len(centres)
    mean = math.fsum(centres) / rounds
    between = math.sqrt(math.fsum((c - mean) ** 2 for c in centres) / (rounds - 1))
    spread_groups = [g for g in groups if len(g) > 1]
    if spread_groups:
        mads = [median([abs(x - median(g)) for x in g]) * _MAD_TO_SD for g in spread_groups]
        pooled = math.fsum((len(g) - 1) * mad**2 for g, mad in zip(spread_groups, mads))
        within = math.sqrt(pooled / sum(len(g) - 1 for g in spread_groups))
        within_part = within**2 * sum(1 / s for s in sizes) / rounds  # a round centre's variance from pairs alone
    else:
        within, within_part = math.nan, 0.0
    standard_error = math.sqrt(max(between**2, within_part) / rounds)
    if standard_error == 0:
        p, half = (1.0 if mean == 0 else 0.0), 0.0
    else:
        p = t_two_sided_p(mean / standard_error, rounds - 1)
        half = t_quantile(1 - alpha / 2, rounds - 1) * standard_error
    return RoundsEstimate(
        ratio=math.exp(mean), low=math.exp(mean - half), high=math.exp(mean + half), p_value=p,
        confidence=1 - alpha, method="t over rounds", round_ratios=tuple(math.exp(c) for c in centres),
        between=between, within=within,
    )
