"""A benchmark's history over every stored run, its steps (change points), and a plot of it.

Building series and finding steps is pure (runs in, dataclasses out), so it is tested with
literal runs; :func:`plot` is the only part that writes, with matplotlib's object API (Agg, no
pyplot state) imported only when drawing. The detection itself is detect.py's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterable, Mapping

from perfwatch import stats
from perfwatch.errors import UserError
from perfwatch.figures import plain_text
from perfwatch.paths import safe_name
from perfwatch.regress import detect
from perfwatch.results import RunRecord
from perfwatch.thresholds import Thresholds, parse_thresholds

DEFAULT_PLOT_DIR = Path("reports/history")
_MAX_TICK_LABELS = 40


@dataclass(frozen=True)
class RunPoint:
    """One run of one benchmark; ``samples`` is empty when it failed or timed out there."""

    run_id: str
    created: str
    commit: str | None
    status: str
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return stats.median(self.samples)

    @property
    def label(self) -> str:
        """What names the run on a plot: the short commit, else the run id."""
        return self.commit[:7] if self.commit else self.run_id


@dataclass(frozen=True)
class Series:
    """A benchmark across the runs that include it, oldest first (unit and direction of the latest)."""

    name: str
    unit: str
    higher_is_better: bool
    points: tuple[RunPoint, ...]

    @property
    def measured(self) -> int:
        """Runs with samples: the ones a step can be found in."""
        return sum(1 for p in self.points if p.samples)


@dataclass(frozen=True)
class Step:
    """A change point: ``index`` is the first run after it; ``change`` = after/before - 1, as measured."""

    index: int
    run_id: str
    commit: str | None
    before: float
    after: float
    change: float
    p_value: float
    worse: bool  # direction-aware: slower, bigger, or less throughput

    @property
    def direction(self) -> str:
        return "worse" if self.worse else "better"


@dataclass(frozen=True)
class History:
    """A series and its steps; ``note`` says why no step could be looked for (too few runs)."""

    series: Series
    steps: tuple[Step, ...]
    note: str | None = None


def matches(name: str, pattern: str | None) -> bool:
    """A benchmark name or an fnmatch glob; None selects everything."""
    return pattern is None or name == pattern or fnmatchcase(name, pattern)


def build_series(runs: Iterable[RunRecord], pattern: str | None = None) -> list[Series]:
    """Per-benchmark series over ``runs`` (in the order given), benchmarks in first-seen order."""
    points: dict[str, list[RunPoint]] = {}
    latest = {}
    for run in runs:
        for bench in run.benchmarks:
            if not matches(bench.name, pattern):
                continue
            points.setdefault(bench.name, []).append(RunPoint(
                run_id=run.run_id, created=run.created, commit=run.env.get("git_commit"), status=bench.status,
                samples=tuple(bench.samples) if bench.ok else ()))
            latest[bench.name] = bench
    return [Series(name, latest[name].unit, latest[name].higher_is_better, tuple(runs_of))
            for name, runs_of in points.items()]


@functools.cache
def fewest_runs() -> int:
    """The shortest history in which detect.change_points finds even a clean step (13 with its
    defaults): in fewer runs its permutation test cannot reach alpha, whatever the numbers."""
    runs = 2 * detect.DEFAULT_MIN_SIZE  # min_size runs on each side of a step
    while not detect.change_points([0.0] * (runs // 2) + [1.0] * (runs - runs // 2)):
        runs += 1
    return runs


def find_steps(series: Series, min_change: float) -> History:
    """Change points of ``series`` (detect.change_points), without steps under ``min_change``."""
    if series.measured < fewest_runs():
        return History(series, (), f"{series.measured} runs with results; "
                                   f"need at least {fewest_runs()} to find a change")
    history = [p.samples or None for p in series.points]
    points = detect.drop_small_steps(history, detect.change_points(history), min_change)
    steps = []
    for point in points:
        run = series.points[point.index]
        steps.append(Step(index=point.index, run_id=run.run_id, commit=run.commit, before=point.before,
                          after=point.after, change=point.change, p_value=point.p_value,
                          worse=(point.change > 0) != series.higher_is_better))
    return History(series, tuple(steps))


def analyze(
    runs: Iterable[RunRecord], pattern: str | None = None, thresholds: Thresholds | Mapping[str, object] | None = None
) -> list[History]:
    """Every matching benchmark's history; steps smaller than its regression threshold are dropped."""
    limits = thresholds if isinstance(thresholds, Thresholds) else parse_thresholds(thresholds)
    return [find_steps(series, limits.for_name(series.name)) for series in build_series(runs, pattern)]


def load_histories(runs: list[RunRecord], pattern: str | None, source: str,
                   thresholds: Thresholds | Mapping[str, object] | None = None) -> list[History]:
    """:func:`analyze`, with a one-line error when there is nothing to analyze."""
    if not runs:
        raise UserError(f"{source}: no stored runs; run `perfwatch run` first (or name another store)", setting="results_dir")
    histories = analyze(runs, pattern, thresholds)
    if not histories:
        raise UserError(f"no benchmark matches {pattern!r} in the {len(runs)} runs of {source}; "
                        "`perfwatch show` lists the names")
    return histories


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def to_json(history: History, plot_path: Path | None = None) -> dict[str, Any]:
    """A history as plain JSON data (nan and infinities as null)."""
    series = history.series
    return {
        "name": series.name,
        "unit": series.unit,
        "higher_is_better": series.higher_is_better,
        "runs": len(series.points),
        "measured_runs": series.measured,
        "note": history.note,
        "plot": str(plot_path) if plot_path else None,
        "steps": [{"index": s.index, "run_id": s.run_id, "commit": s.commit, "before": s.before, "after": s.after,
                   "change": _number(s.change), "direction": s.direction, "p_value": s.p_value}
                  for s in history.steps],
        "series": [{"run_id": p.run_id, "created": p.created, "commit": p.commit, "status": p.status,
                    "median": _number(p.median), "samples": len(p.samples)} for p in series.points],
    }


def plot_name(benchmark: str) -> str:
    """A file name for a benchmark: its characters outside [A-Za-z0-9._-] become underscores."""
    return safe_name(benchmark) + ".png"


@plain_text
def plot(history: History, directory: Path) -> Path:
    """A PNG of per-run medians with interquartile bars, the steps and each segment's median."""
    from matplotlib.figure import Figure

    series = history.series
    xs = list(range(len(series.points)))
    measured = [(x, p) for x, p in zip(xs, series.points) if p.samples]
    fig = Figure(figsize=(max(6.0, min(16.0, 0.25 * len(xs) + 3)), 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    medians = [p.median for _, p in measured]
    below = [m - stats.quantile(p.samples, 0.25) for m, (_, p) in zip(medians, measured)]
    above = [stats.quantile(p.samples, 0.75) - m for m, (_, p) in zip(medians, measured)]
    ax.errorbar([x for x, _ in measured], medians, yerr=[below, above], fmt="o", ms=4, capsize=2,
                color="#1f77b4", label="run median (bars: IQR)")
    failed = [x for x, p in zip(xs, series.points) if not p.samples]
    if failed:  # along the bottom edge, whatever the scale
        ax.plot(failed, [0.02] * len(failed), "x", color="#d62728", transform=ax.get_xaxis_transform(),
                label="failed run")
    bounds = [0, *(s.index for s in history.steps), len(xs)]
    for start, end in zip(bounds, bounds[1:]):
        level = stats.median([p.median for p in series.points[start:end] if p.samples])
        if math.isfinite(level):
            ax.hlines(level, start - 0.4, end - 0.6, colors="#ff7f0e",
                      label="segment median" if start == 0 else None)
    for step in history.steps:
        ax.axvline(step.index - 0.5, color="#d62728" if step.worse else "#2ca02c", linestyle="--",
                   label=f"step {step.change:+.1%} ({step.direction}) at {series.points[step.index].label}")

    every = max(1, math.ceil(len(xs) / _MAX_TICK_LABELS))
    ax.set_xticks(xs[::every], [p.label for p in series.points][::every], rotation=90, fontsize=7)
    ax.set_ylabel(series.unit + (" (higher is better)" if series.higher_is_better else ""))
    ax.set_title(series.name + (f" · {history.note}" if history.note else ""), fontsize=10)
    ax.legend(fontsize=7, loc="best")
    path = directory / plot_name(series.name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    except OSError as exc:
        raise UserError(f"{directory}: cannot write plots ({exc.strerror}); choose a writable plot directory",
                        setting="plot_dir") from None
    return path
