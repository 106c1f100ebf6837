"""Pure statistics over lists of floats: no I/O, tested with literal numbers."""

from __future__ import annotations

import math
from typing import Sequence

# torch.utils.benchmark warns when IQR/median exceeds 10%: the measurement is noisy.
NOISY_SPREAD = 0.10


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), q in [0, 1]."""
    if not values:
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
    if not values or m == 0 or math.isnan(m):
        return math.nan if not values else (0.0 if iqr(values) == 0 else math.inf)
    return iqr(values) / abs(m)


def is_noisy(values: Sequence[float], limit: float = NOISY_SPREAD) -> bool:
    s = spread(values)
    return not math.isnan(s) and s > limit
