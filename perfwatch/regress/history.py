"""A benchmark's history on one machine, commit by commit, its steps (change points), and a plot of it.

A series is one benchmark on one machine (runs of two machines are never compared), one point
per commit: every run of that commit pools its raw samples into the point. Points follow the
commits: git's topological order when the repository at hand holds every commit
(:func:`git_positions`), else the commits' times; a run of an older document without a commit
time stands in its creation time, and runs made outside git (no commit) come last, each a point
of its own, by creation time. Building series and finding steps is pure (runs in, dataclasses
out), so it is tested with literal runs; the git and store look-ups and :func:`plot` are the I/O.
The detection itself is detect.py's. Each step of a slowdown names the `perfwatch bisect` command line
that finds the commit between its two measured commits (:func:`bisect_command`).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from perfwatch import stats
from perfwatch.config import SIZES
from perfwatch.env import commit_time, git_output
from perfwatch.errors import UserError
from perfwatch.figures import new_figure, plain_text
from perfwatch.paths import safe_name
from perfwatch.regress import detect
from perfwatch.regress.compare import same_version
from perfwatch.results import BenchResult, RunRecord
from perfwatch.store.base import RunFilter, RunStore, machine_of
from perfwatch.thresholds import Thresholds, parse_thresholds

DEFAULT_PLOT_DIR = Path("reports/history")
_MAX_TICK_LABELS = 40
_HASH = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_HEX_PREFIX = re.compile(r"[0-9a-fA-F]{4,64}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ].*)?")


@dataclass(frozen=True)
class RunPoint:
    """One commit of one benchmark: the runs of it (oldest first) and all their samples, pooled; a
    run without a commit is a point alone. ``samples`` is empty when every run failed there."""

    run_ids: tuple[str, ...]
    created: str  # of the first run
    commit: str | None
    commit_time: str | None
    status: str  # ok when any run has samples, else the latest run's
    samples: tuple[float, ...]

    @property
    def run_id(self) -> str:
        return self.run_ids[0]

    @property
    def median(self) -> float:
        return stats.median(self.samples)

    @property
    def label(self) -> str:
        """What names the point on a plot: the short commit (and how many runs it pools), else the run id."""
        if not self.commit:
            return self.run_id
        return self.commit[:7] + (f" ×{len(self.run_ids)}" if len(self.run_ids) > 1 else "")


@dataclass(frozen=True)
class Series:
    """A benchmark on one machine, oldest commit first (unit and direction of the latest run)."""

    name: str
    machine: str  # machine_id (an older document's host)
    host: str | None
    unit: str
    higher_is_better: bool
    points: tuple[RunPoint, ...]
    suite: str | None = None  # the suite size of the latest run, if it names one
    version: str | None = None  # the benchmark's version in the latest run (results.BenchResult.version)
    dirty_runs: int = 0  # runs of uncommitted changes, left out: their code is in no commit
    other_versions: int = 0  # runs of another version of the benchmark, left out: a new version, a new history

    @property
    def left_out(self) -> str | None:
        """The runs left out of the series, in words; None when none was."""
        parts = [f"{self.dirty_runs} run(s) of uncommitted changes" if self.dirty_runs else "",
                 f"{self.other_versions} of an earlier version of the benchmark (asv's `version`, or its code)"
                 if self.other_versions else ""]
        return " and ".join(p for p in parts if p) + " left out" if any(parts) else None

    @property
    def measured(self) -> int:
        """Points with samples: the ones a step can be found in."""
        return sum(1 for p in self.points if p.samples)

    @property
    def runs(self) -> int:
        return sum(len(p.run_ids) for p in self.points)

    @property
    def machine_label(self) -> str:
        return f"{self.host} ({self.machine})" if self.host and self.host != self.machine else self.machine


@dataclass(frozen=True)
class Step:
    """A change point: ``index`` is the first point after it, ``commit`` its commit and ``commit_before``
    that of the last point with samples before it; ``change`` = after/before - 1, as measured."""

    index: int
    run_id: str
    commit: str | None
    commit_before: str | None
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
    """A series and its steps; ``note`` says why no step could be looked for (too few points)."""

    series: Series
    steps: tuple[Step, ...]
    note: str | None = None


def matches(name: str, pattern: str | None) -> bool:
    """A benchmark name or an fnmatch glob; None selects everything."""
    return pattern is None or name == pattern or fnmatchcase(name, pattern)


# ---------------------------------------------------------------- which runs, in which order (I/O)


def git_positions(runs: Iterable[RunRecord], repo: Path | None) -> dict[str, int] | None:
    """Each commit of ``runs`` -> its place in ``git rev-list --topo-order`` (parents first) of the
    repository at ``repo``; None when there is none there, or it lacks one of the commits (a shallow
    clone, runs of a fork): then the commit times order the points."""
    commits = sorted({run.env["git_commit"] for run in runs if run.env.get("git_commit")})
    if repo is None or not commits or not all(_HASH.fullmatch(c) for c in commits):
        return None
    listed = git_output(repo, "rev-list", "--topo-order", "--reverse", "--stdin", stdin="\n".join(commits) + "\n")
    if listed is None:
        return None
    return {commit: i for i, commit in enumerate(listed.split())}


def order_name(runs: Iterable[RunRecord], positions: Mapping[str, int] | None) -> str:
    """How the points of ``runs`` are ordered, as the output says it."""
    if positions:
        return "git order"
    return "commit time" if any(run.env.get("git_commit") for run in runs) else "creation time"


def since_time(value: str, store: RunStore, repo: Path | None) -> str:
    """``--since`` as a UTC time: a date (midnight UTC) or an ISO 8601 time, else a commit: a ref that
    the repository at ``repo`` knows, or a stored commit (a unique prefix of one), for its commit time."""
    if _DATE.fullmatch(value):
        try:
            moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)  # 3.10: no Z
        except ValueError:
            raise UserError(f"--since {value!r}: not a date; write YYYY-MM-DD or YYYY-MM-DDTHH:MM[+HH:MM]") from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).isoformat(timespec="seconds")
    known = commit_time(repo, value) if repo is not None else None
    if known is None and _HEX_PREFIX.fullmatch(value):
        stored = store.commit_times(value.lower())
        if len(stored) > 1:
            raise UserError(f"--since {value!r}: ambiguous, {len(stored)} stored commits start so; "
                            "give more characters")
        known = next(iter(stored.values()), None)
        if stored and known is None:
            raise UserError(f"--since {value!r}: the runs of that commit do not record its time "
                            "(an older perfwatch stored them); give a date, or run where the repository has it")
    if known is None:
        raise UserError(f"--since {value!r}: neither a date (YYYY-MM-DD) nor a commit that the repository "
                        f"here or {store.root} knows")
    return known


def machine_list(machines: Mapping[str, str | None]) -> str:
    return ", ".join(f"{machine} ({host})" if host and host != machine else machine
                     for machine, host in sorted(machines.items()))


def run_filter(store: RunStore, machine: str | None = None, branch: str | None = None, since: str | None = None,
               repo: Path | None = None) -> RunFilter:
    """The filters of `perfwatch history`, checked: a machine the store has no run of and a ``since``
    that is neither a date nor a known commit are one-line errors."""
    which = RunFilter(machine=machine, branch=branch, since=since_time(since, store, repo) if since else None)
    if machine is not None:
        machines = store.machines()
        if not any(which.machine_matches(m, host) for m, host in machines.items()):
            has = f"its runs are from {machine_list(machines)}" if machines else "it holds no runs"
            raise UserError(f"--machine {machine!r}: no machine in {store.root} matches; {has} "
                            "(give a machine id, a prefix of one, or a host name)")
    return which


# ---------------------------------------------------------------- pure: series and steps


def pool(runs: list[tuple[RunRecord, BenchResult]]) -> RunPoint:
    """One point from the runs of one commit (or one run without a commit), oldest first."""
    runs = sorted(runs, key=lambda r: r[0].created)
    ok = [bench for _, bench in runs if bench.ok]
    first = runs[0][0]
    return RunPoint(run_ids=tuple(run.run_id for run, _ in runs), created=first.created,
                    commit=first.env.get("git_commit"),
                    commit_time=next((t for run, _ in runs if (t := run.env.get("git_commit_time"))), None),
                    status="ok" if ok else runs[-1][1].status,
                    samples=tuple(sample for bench in ok for sample in bench.samples))


def commit_order(point: RunPoint, positions: Mapping[str, int] | None = None) -> tuple:
    """Sort key: committed points by git position (when known) or commit time (the creation time where an
    older document has none), then points without a commit by creation time."""
    if point.commit is None:
        return (1, point.created, "")
    if positions:
        return (0, positions[point.commit], point.created)
    return (0, point.commit_time or point.created, point.created)


def build_series(runs: Iterable[RunRecord], pattern: str | None = None,
                 positions: Mapping[str, int] | None = None) -> list[Series]:
    """A series per benchmark and machine over ``runs``, in commit order (:func:`commit_order`;
    ``positions`` from :func:`git_positions`); benchmarks in first-seen order, each one's machines by id.
    Runs of a dirty tree are left out (their code is in no commit, so pooling them with the commit's
    would mix two codes), and so are results of another version than the latest run's (asv's rule:
    a new version starts a new history; a result stored without a version matches any)."""
    found: dict[tuple[str, str], list[tuple[RunRecord, BenchResult]]] = {}
    dirty: Counter[tuple[str, str]] = Counter()
    seen: dict[tuple[str, str], BenchResult] = {}  # the latest result, dirty or not: the unit of a dirty-only series
    suites: dict[tuple[str, str], str] = {}
    hosts: dict[str, str | None] = {}
    names: dict[str, int] = {}
    for run in runs:
        machine = machine_of(run.env)
        hosts.setdefault(machine, run.env.get("host"))
        for bench in run.benchmarks:
            if not matches(bench.name, pattern):
                continue
            names.setdefault(bench.name, len(names))
            key = (bench.name, machine)
            seen[key] = bench
            suites[key] = run.suite
            if run.env.get("git_dirty") and run.env.get("git_commit"):
                dirty[key] += 1
            else:
                found.setdefault(key, []).append((run, bench))
    order = functools.partial(commit_order, positions=positions)
    series = []
    for name, machine in sorted(seen, key=lambda k: (names[k[0]], k[1])):
        runs_of_key = found.get((name, machine), [])
        latest = runs_of_key[-1][1] if runs_of_key else seen[name, machine]
        kept = [(run, bench) for run, bench in runs_of_key if same_version(bench, latest)]
        by_commit: dict[str, list[tuple[RunRecord, BenchResult]]] = {}
        for run, bench in kept:
            by_commit.setdefault(run.env.get("git_commit") or run.run_id, []).append((run, bench))
        points = sorted((pool(runs_of) for runs_of in by_commit.values()), key=order)
        suite = suites[name, machine] if suites[name, machine] in SIZES else None
        series.append(Series(name, machine, hosts[machine], latest.unit, latest.higher_is_better, tuple(points),
                             suite, latest.version, dirty[name, machine], len(runs_of_key) - len(kept)))
    return series


@functools.cache
def fewest_runs() -> int:
    """The shortest history in which detect.change_points finds even a clean step (13 with its
    defaults): in fewer runs its permutation test cannot reach alpha, whatever the numbers."""
    runs = 2 * detect.DEFAULT_MIN_SIZE  # min_size runs on each side of a step
    while not detect.change_points([0.0] * (runs // 2) + [1.0] * (runs - runs // 2)):
        runs += 1
    return runs


def find_steps(series: Series, min_change: float) -> History:
    """Change points of ``series`` (detect.change_points over its points), without steps under ``min_change``."""
    if series.measured < fewest_runs():
        what = "runs" if series.runs == len(series.points) else "commits"
        return History(series, (), f"{series.measured} {what} with results; "
                                   f"need at least {fewest_runs()} to find a change")
    medians = [p.median for p in series.points]  # once for both calls; nan where a point has no samples
    points = detect.drop_small_steps(medians, detect.change_points(medians), min_change)
    steps = []
    for point in points:
        first = series.points[point.index]
        last = next((p for p in reversed(series.points[:point.index]) if p.samples), None)
        steps.append(Step(index=point.index, run_id=first.run_id, commit=first.commit,
                          commit_before=last.commit if last else None, before=point.before,
                          after=point.after, change=point.change, p_value=point.p_value,
                          worse=(point.change > 0) != series.higher_is_better))
    return History(series, tuple(steps))


def analyze(
    runs: Iterable[RunRecord], pattern: str | None = None, thresholds: Thresholds | Mapping[str, object] | None = None,
    positions: Mapping[str, int] | None = None,
) -> list[History]:
    """Every matching benchmark's history on each machine; steps smaller than its regression threshold are dropped."""
    limits = thresholds if isinstance(thresholds, Thresholds) else parse_thresholds(thresholds)
    return [find_steps(series, limits.for_name(series.name)) for series in build_series(runs, pattern, positions)]


def load_histories(runs: list[RunRecord], pattern: str | None, source: str,
                   thresholds: Thresholds | Mapping[str, object] | None = None,
                   positions: Mapping[str, int] | None = None, which: RunFilter | None = None) -> list[History]:
    """:func:`analyze`, with a one-line error when there is nothing to analyze (``which`` let no run through)."""
    if not runs and which is not None and which != RunFilter():
        raise UserError(f"{source}: no stored run {which.describe()}; `perfwatch runs` lists the runs")
    if not runs:
        raise UserError(f"{source}: no stored runs; run `perfwatch run` first (or name another store)", setting="results_dir")
    histories = analyze(runs, pattern, thresholds, positions)
    if not histories:
        raise UserError(f"no benchmark matches {pattern!r} in the {len(runs)} runs of {source}; "
                        "`perfwatch show` lists the names")
    return histories


def bisect_command(series: Series, step: Step, abbreviate: bool = False) -> str | None:
    """The `perfwatch bisect` command line that finds the commit of a slowdown between the step's two commits
    (``abbreviate``: 10-character hashes), in the series' suite size; None for a speed-up (bisect looks
    for slowdowns) or where a side has no commit."""
    if not (step.worse and step.commit and step.commit_before):
        return None
    width = 10 if abbreviate else None
    words = ["perfwatch", "bisect", series.name, "--good", step.commit_before[:width], "--bad", step.commit[:width]]
    return shlex.join(words + (["--suite", series.suite] if series.suite else []))


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def to_json(history: History, plot_path: Path | None = None) -> dict[str, Any]:
    """A history as plain JSON data (nan and infinities as null); ``runs`` counts runs, ``points`` commits."""
    series = history.series
    return {
        "name": series.name,
        "machine": series.machine,
        "host": series.host,
        "unit": series.unit,
        "higher_is_better": series.higher_is_better,
        "runs": series.runs,
        "points": len(series.points),
        "measured_points": series.measured,
        "version": series.version,
        "left_out": {"dirty_runs": series.dirty_runs, "other_versions": series.other_versions},
        "note": history.note,
        "plot": str(plot_path) if plot_path else None,
        "steps": [{"index": s.index, "run_id": s.run_id, "commit": s.commit, "commit_before": s.commit_before,
                   "before": s.before, "after": s.after, "change": _number(s.change), "direction": s.direction,
                   "p_value": s.p_value, "bisect": bisect_command(series, s)}
                  for s in history.steps],
        "series": [{"commit": p.commit, "commit_time": p.commit_time, "run_id": p.run_id, "run_ids": list(p.run_ids),
                    "created": p.created, "status": p.status, "median": _number(p.median), "samples": len(p.samples)}
                   for p in series.points],
    }


def plot_name(benchmark: str, machine: str | None = None) -> str:
    """A file name for a benchmark (and a machine): characters outside [A-Za-z0-9._-] become underscores."""
    return safe_name(benchmark) + (f".{safe_name(machine)}" if machine else "") + ".png"


def several_machines(histories: Iterable[History]) -> bool:
    """Whether the histories span more than one machine: then names and messages say which."""
    return len({h.series.machine for h in histories}) > 1


def plots(histories: list[History], directory: Path) -> list[Path]:
    """A PNG per history, named by its benchmark, and by its machine too when there are several."""
    several = several_machines(histories)
    return [plot(h, directory / plot_name(h.series.name, h.series.machine if several else None)) for h in histories]


@plain_text
def plot(history: History, path: Path) -> Path:
    """A PNG of per-commit medians with interquartile bars, the steps and each segment's median."""
    series = history.series
    xs = list(range(len(series.points)))
    measured = [(x, p) for x, p in zip(xs, series.points) if p.samples]
    fig = new_figure(max(6.0, min(16.0, 0.25 * len(xs) + 3)), 4.0)
    ax = fig.add_subplot()
    medians = [p.median for _, p in measured]
    below = [m - stats.quantile(p.samples, 0.25) for m, (_, p) in zip(medians, measured)]
    above = [stats.quantile(p.samples, 0.75) - m for m, (_, p) in zip(medians, measured)]
    ax.errorbar([x for x, _ in measured], medians, yerr=[below, above], fmt="o", ms=4, capsize=2,
                color="#1f77b4", label="median of the commit's runs (bars: IQR)")
    failed = [x for x, p in zip(xs, series.points) if not p.samples]
    if failed:  # along the bottom edge, whatever the scale
        ax.plot(failed, [0.02] * len(failed), "x", color="#d62728", transform=ax.get_xaxis_transform(),
                label="failed run")
    bounds = [0, *(s.index for s in history.steps), len(xs)]
    for start, end in itertools.pairwise(bounds):
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
    ax.set_title(f"{series.name} on {series.machine_label}" + (f"\n{history.note}" if history.note else ""),
                 fontsize=10)
    ax.legend(fontsize=7, loc="best")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot write plots ({exc.strerror}); choose a writable plot directory",
                        setting="plot_dir") from None
    return path
