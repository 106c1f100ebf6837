"""Per-benchmark regression thresholds: glob patterns on the benchmark name -> a fraction.

A spec maps fnmatch patterns (case-sensitive) to thresholds::

    {"loader.*": "5%", "training.*Transformer*": "10%", "*": "7%"}

Values are a percentage (``"5%"``) or a fraction below 1 (``"0.05"`` or ``0.05``). A bare ``5``
is refused: it could mean 5% or 500%. Zero, negative and over-100% values are refused too.

When several patterns match, the most specific wins: the one with the most literal (non-wildcard)
characters, ties going to the one declared first. Not "first match wins": config tables get
sorted or written catch-all first, and a leading ``"*"`` would then silently shadow every rule.

Without a matching pattern the threshold is DEFAULT_THRESHOLD, 3%: tighter than pytest-benchmark's
``median:5%``, TorchBench's nightly 7% and asv's 10%. That is affordable because a regression must
also be statistically significant (compare.py), so noise alone rarely crosses it, and it is needed:
a threshold equal to the change to catch lets half of those changes through by construction (a 5%
threshold caught 4 in 10 paired 5% slowdowns, 3% caught 8 in 10 with no A/A false alarm; see
docs/performance.md, "Regression detection quality").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Mapping

from perfwatch.errors import ThresholdError

DEFAULT_THRESHOLD = 0.03

_SYNTAX = "write a percentage like '5%' or a fraction below 1 like 0.05"
_WILDCARDS = re.compile(r"\[[^\]]*\]|[*?]")


@dataclass(frozen=True)
class Thresholds:
    """Parsed spec: (pattern, fraction) rules, most specific first, and the fallback."""

    rules: tuple[tuple[str, float], ...] = ()
    default: float = DEFAULT_THRESHOLD

    def for_name(self, name: str) -> float:
        """The first (most specific) rule matching the benchmark name, else the default."""
        return next((value for pattern, value in self.rules if fnmatchcase(name, pattern)), self.default)


def parse_threshold(value: object, pattern: str = "*") -> float:
    """One threshold as a fraction: ``"5%"`` -> 0.05, ``"0.05"`` or ``0.05`` -> 0.05."""

    def refuse(problem: str) -> ThresholdError:
        return ThresholdError(f"threshold {value!r} for {pattern!r} {problem}; {_SYNTAX}")

    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise refuse("is not a number")
    text = value.strip() if isinstance(value, str) else None
    percent = text is not None and text.endswith("%")
    try:
        number = float(text[:-1] if percent else text) if text is not None else float(value)
    except ValueError:
        raise refuse("is not a number") from None
    if not math.isfinite(number):
        raise refuse("is not a finite number")
    if number <= 0:
        raise refuse("must be above zero")
    if percent:
        if number > 100:
            raise refuse("is over 100%")
        return number / 100
    if number >= 1:
        raise refuse("is ambiguous (percent or fraction?)")
    return number


def _specificity(pattern: str) -> int:
    """How many characters of the pattern must match literally."""
    return len(_WILDCARDS.sub("", pattern))


def parse_thresholds(spec: Mapping[str, object] | None, default: float = DEFAULT_THRESHOLD) -> Thresholds:
    """A spec mapping (from TOML or the CLI) -> Thresholds, refusing anything unclear."""
    if spec is None:
        return Thresholds(default=default)
    if not isinstance(spec, Mapping):
        raise ThresholdError(f"thresholds must be a table of pattern = threshold, got {type(spec).__name__}; {_SYNTAX}")
    rules = []
    for pattern, value in spec.items():
        if not isinstance(pattern, str) or not pattern.strip():
            raise ThresholdError(f"threshold pattern {pattern!r} must be a non-empty glob like 'loader.*'")
        rules.append((pattern, parse_threshold(value, pattern)))
    rules.sort(key=lambda rule: -_specificity(rule[0]))  # stable: ties keep declared order
    return Thresholds(rules=tuple(rules), default=default)
