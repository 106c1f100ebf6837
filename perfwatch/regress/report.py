"""``perfwatch report RUN``: the HTML and Markdown report of a stored benchmark run.

Its figures (sample distributions, each metric against each numeric parameter, the
comparison with the baseline) and its document; pages.py renders them as ``report.md`` and
a self-contained ``report.html``. The profile report is profile/page.py's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfwatch import stats
from perfwatch.display import env_line, format_value
from perfwatch.figures import new_figure, percent_axis, plain_text, save_figure
from perfwatch.pages import Block, Document, Figure, Heading, Table, Text, prepare_out_dir, write_pages
from perfwatch.paths import safe_name
from perfwatch.regress.baseline import DEFAULT_BASELINE, load_baseline
from perfwatch.regress.ci_report import change_text, median_text, p_text, summary_line
from perfwatch.regress.compare import Comparison, Verdict, compare_runs, machine_differences
from perfwatch.results import BenchResult, RunRecord
from perfwatch.thresholds import Thresholds

if TYPE_CHECKING:
    pass

VERDICT_COLOURS = {"regressed": "#d62728", "improved": "#2ca02c", "unchanged": "#1f77b4", "too-noisy": "#ff7f0e"}
ROW_CLASS = {"failed": "bad", "timeout": "bad", "regressed": "bad", "improved": "good", "too-noisy": "warn"}


# ---------------------------------------------------------------- figures


# ---------------------------------------------------------------- the profile report


# ---------------------------------------------------------------- the benchmark-run report


def find_baseline(path: Path | None, default: Path = DEFAULT_BASELINE) -> tuple[RunRecord, Path] | None:
    """(the baseline run, its file): ``path``, else ``default`` when that exists, else None.
    A missing or corrupt file given as ``path`` is a UserError."""
    if path is None and not default.is_file():
        return None
    path = path or default
    return load_baseline(path), path


def default_out(run: RunRecord) -> Path:
    return Path("reports") / f"run-{safe_name(run.run_id)}"


def _family(name: str) -> str:
    return name.split("(", 1)[0]


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _benchmark_table(run: RunRecord) -> Table:
    rows, classes = [], []
    for b in run.benchmarks:
        median = format_value(stats.median(b.samples), b.unit) if b.samples else "-"
        spread = stats.spread(b.samples) if b.samples else math.nan
        spread_text = "-" if math.isnan(spread) else f"±{spread:.1%}" + (" noisy" if stats.is_noisy(b.samples) else "")
        rows.append((b.name, b.status, median + (" ↑" if b.higher_is_better else ""), spread_text,
                     str(len(b.samples)), b.unit, b.error or ""))
        classes.append(ROW_CLASS.get(b.status, ""))
    return Table(("benchmark", "status", "median", "spread (IQR/median)", "n", "unit", "error"), rows,
                 numeric=frozenset({2, 3, 4}), code=frozenset({0}), row_classes=tuple(classes))


def _distribution_figure(measured: list[BenchResult], out: Path) -> Figure:
    """Each benchmark's samples relative to its own median, so every unit shares one axis."""
    fig = new_figure(10, 1.2 + 0.32 * len(measured))
    ax = fig.add_subplot()
    positions = list(range(len(measured), 0, -1))
    for y, b in zip(positions, measured):
        median = stats.median(b.samples)
        values = [s / median - 1 if median else 0.0 for s in b.samples]
        low, high = stats.quantile(values, 0.25), stats.quantile(values, 0.75)
        ax.barh(y, high - low, left=low, height=0.6, color="#dbe8f5", edgecolor="#1f77b4", zorder=1)
        jitter = [y + ((i * 0.618) % 1 - 0.5) * 0.4 for i in range(len(values))]  # spread evenly, not randomly
        ax.scatter(values, jitter, s=7, color="#1f77b4", alpha=0.6, zorder=3)
    ax.set_yticks(positions, [b.name for b in measured], fontsize=7)
    ax.axvline(0, color="#555", linewidth=0.8)
    percent_axis(ax.xaxis)
    ax.set_xlabel("sample relative to the benchmark's median")
    return save_figure(fig, out, "distributions.png", "Distribution of every sample of each benchmark, relative to its "
                 "median (box: quartiles)")


def _parameter_figures(measured: list[BenchResult], out: Path) -> list[Figure]:
    """For each benchmark family (name without parameters) with a numeric parameter that takes
    several values: the median (quartiles as error bars) against it, one line per combination of
    the other parameters. For the loader suite: throughput against num_workers and batch_size."""
    families: dict[str, list[BenchResult]] = {}
    for b in measured:
        families.setdefault(_family(b.name), []).append(b)
    figures = []
    for family, members in families.items():
        swept = [p for p in members[0].params
                 if all(_numeric(m.params.get(p)) for m in members) and len({m.params[p] for m in members}) > 1]
        if not swept:
            continue
        fig = new_figure(min(5.0 * len(swept), 15.0), 3.6)
        for ax, param in zip(fig.subplots(1, len(swept), squeeze=False)[0], swept):
            series: dict[str, list[BenchResult]] = {}
            for m in members:
                key = ", ".join(f"{k}={v}" for k, v in m.params.items() if k != param) or family
                series.setdefault(key, []).append(m)
            for key, points in series.items():
                points.sort(key=lambda m: m.params[param])
                medians = [stats.median(m.samples) for m in points]
                low = [med - stats.quantile(m.samples, 0.25) for med, m in zip(medians, points)]
                high = [stats.quantile(m.samples, 0.75) - med for med, m in zip(medians, points)]
                ax.errorbar([m.params[param] for m in points], medians, yerr=[low, high], marker="o", capsize=3,
                            label=key)
            values = sorted({m.params[param] for m in members})
            if values[0] > 0 and values[-1] / values[0] >= 8:  # batch sizes 16, 64, 256: evenly spaced
                ax.set_xscale("log", base=2)
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
            ax.set_xlabel(param)
            ax.set_ylabel(members[0].unit + (" (higher is better)" if members[0].higher_is_better else ""))
            ax.set_ylim(bottom=0)
            if len(series) > 1:
                ax.legend(fontsize=7)
        fig.suptitle(family, fontsize=10)
        name = safe_name(family.replace(".", "-").replace("_", "-"), "-")
        figures.append(save_figure(fig, out, f"params-{name}.png",
                             f"{family}: median (quartiles as error bars) against {', '.join(swept)}"))
    return figures


def _comparison_table(comparison: Comparison) -> Table:
    rows = [(v.name, v.verdict, change_text(v), p_text(v), median_text(v.baseline_median, v),
             median_text(v.candidate_median, v), v.reason) for v in comparison.verdicts]
    return Table(("benchmark", "verdict", "change (+ is worse) [CI]", "p", "baseline median", "median", "reason"),
                 rows, numeric=frozenset({2, 3, 4, 5}), code=frozenset({0}),
                 row_classes=tuple(ROW_CLASS.get(v.verdict, "") for v in comparison.verdicts))


def _comparison_figure(verdicts: list[Verdict], out: Path) -> Figure | None:
    judged = [v for v in verdicts if not math.isnan(v.change)]
    if not judged:
        return None
    fig = new_figure(10, 1.4 + 0.32 * len(judged))
    ax = fig.add_subplot()
    positions = list(range(len(judged), 0, -1))
    for y, v in zip(positions, judged):
        ax.barh(y, 2 * v.threshold, left=-v.threshold, height=0.8, color="#eeeeee", zorder=0)
        ax.errorbar(v.change, y, xerr=[[v.change - v.ci_low], [v.ci_high - v.change]], fmt="o", capsize=3,
                    color=VERDICT_COLOURS.get(v.verdict, "#555"))
    ax.axvline(0, color="#555", linewidth=0.8)
    ax.set_yticks(positions, [v.name for v in judged], fontsize=7)
    percent_axis(ax.xaxis)
    ax.set_xlabel("change against the baseline (+ is worse)")
    return save_figure(fig, out, "comparison.png", "Change of each benchmark against the baseline with its confidence "
                 "interval; grey: ± its threshold; colour: verdict (red regressed, green improved, blue unchanged, "
                 "orange too noisy)")


def run_document(run: RunRecord, figures: Sequence[Figure], comparison: Comparison | None,
                 baseline_file: Path | None = None) -> Document:
    """The run report: against the baseline first (when there is one), then every benchmark and its figures."""
    by_name = {figure.name: figure for figure in figures}
    blocks: list[Block] = []
    if comparison is not None:
        blocks.append(Text(f"{summary_line(comparison)} (baseline {comparison.baseline.run_id}, {baseline_file})",
                           lead="Against the baseline:", highlight=True))
        if comparison.differences:
            blocks.append(Text("; ".join(comparison.differences) + ": timings from different machines are not "
                               "comparable; save a baseline on this machine", lead="Different machines:",
                               highlight=True))
    blocks += [Text(f"suite {run.suite or '?'}, created {run.created}, {len(run.benchmarks)} benchmarks, "
                    f"{len(run.failed)} failed"), Text(env_line(run.env), lead="Machine:"),
               Heading("Benchmarks"), _benchmark_table(run)]
    if "distributions.png" in by_name:
        blocks += [Heading("Distributions"), by_name["distributions.png"]]
    swept = [figure for figure in figures if figure.name.startswith("params-")]
    if swept:
        blocks += [Heading("Against parameters"), *swept]
    if comparison is not None:
        blocks += [Heading("Comparison with the baseline"), _comparison_table(comparison)]
        blocks += [by_name["comparison.png"]] if "comparison.png" in by_name else []
    return Document(f"perfwatch run {run.run_id}", blocks)


@plain_text
def write_run_report(run: RunRecord, out: Path, baseline: tuple[RunRecord, Path] | None = None,
                     thresholds: Thresholds | None = None) -> Path:
    """``report.html``, ``report.md`` and figures for a stored benchmark run in ``out``, compared
    with ``baseline`` (a run and its file, see ``find_baseline``) under ``thresholds`` when
    given. Returns the HTML page's path."""
    out = prepare_out_dir(out)
    measured = [b for b in run.benchmarks if b.ok and b.samples]
    figures = ([_distribution_figure(measured, out)] if measured else []) + _parameter_figures(measured, out)
    comparison = None
    if baseline is not None:
        comparison = Comparison(baseline[0], run, compare_runs(baseline[0], run, thresholds),
                                machine_differences(baseline[0].env, run.env))
        figures += filter(None, [_comparison_figure(comparison.verdicts, out)])
    write_pages(run_document(run, figures, comparison, baseline[1] if baseline else None), out)
    return out / "report.html"
