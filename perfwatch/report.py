"""HTML and Markdown reports with matplotlib figures, for a ``perfwatch profile`` and for a stored benchmark run.

The figures and the content of each report; pages.py renders them as ``report.md`` and a
self-contained ``report.html``, flamegraph.py draws the flame graph. Figures use
matplotlib's object API (``Figure`` with the Agg renderer, no pyplot state), imported only
when a report is drawn.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import stats
from .baseline import DEFAULT_BASELINE, Comparison, load_baseline, machine_differences
from .ci_report import change_text, median_text, p_text, summary_line
from .compare import Verdict, compare_runs
from .display import env_line, format_value
from .flamegraph import PHASE_COLOURS, flame_graph_svg, short_path
from .pages import Block, Document, Figure, Heading, Item, Items, Table, Text, write_pages
from .profile import parse_collapsed, prepare_out_dir
from .results import BenchResult, RunRecord
from .thresholds import Thresholds

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure as MplFigure

FIGURE_DPI = 100
CATEGORY_COLOURS = {"data_loading": "#d62728", "host_to_device": "#ff7f0e", "compute": "#0b3d91", "other": "#9a9a9a"}
VERDICT_COLOURS = {"regressed": "#d62728", "improved": "#2ca02c", "unchanged": "#1f77b4", "too-noisy": "#ff7f0e"}
ROW_CLASS = {"failed": "bad", "timeout": "bad", "regressed": "bad", "improved": "good", "too-noisy": "warn"}


# ---------------------------------------------------------------- figures


def _new_figure(width: float, height: float) -> MplFigure:
    import matplotlib.figure  # loads only to draw

    return matplotlib.figure.Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")


def _save(fig: MplFigure, out: Path, name: str, caption: str) -> Figure:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    (out / name).write_bytes(buffer.getvalue())
    return Figure(name, caption, buffer.getvalue())


def _percent(axis: Axis) -> None:
    """Ratios 0..1 on ``axis`` read as percentages."""
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0))


# ---------------------------------------------------------------- the profile report


def read_collector_rows(path: Path) -> list[dict[str, Any]]:
    """``collector.jsonl`` of a profile directory; a line that does not parse is skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _rate(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(times, per-second rate) of a cumulative counter; a drop (a process left the tree) is a gap."""
    times, rates = [], []
    for before, after in zip(rows, rows[1:]):
        dt = after["t"] - before["t"]
        if dt <= 0 or before.get(key) is None or after.get(key) is None:
            continue
        delta = after[key] - before[key]
        times.append(after["t"] - rows[0]["t"])
        rates.append(delta / dt if delta >= 0 else math.nan)
    return times, rates


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _breakdown_figure(report: dict[str, Any], out: Path) -> Figure | None:
    phases = {k: v for k, v in report["phases"].items() if v > 0}
    shares = {k: v for k, v in report["bottleneck"]["shares"].items() if v > 0}
    if not phases:
        return None
    fig = _new_figure(10, 2.6)
    ax = fig.add_subplot()
    bars = (("phases", phases, PHASE_COLOURS), ("categories", shares, CATEGORY_COLOURS))
    for y, (_, values, colours) in enumerate(reversed(bars)):
        left = 0.0
        for name, share in values.items():
            ax.barh(y, share, left=left, color=colours.get(name, "#9a9a9a"), edgecolor="white",
                    label=name if name not in ax.get_legend_handles_labels()[1] else None)
            if share >= 0.04:
                ax.text(left + share / 2, y, f"{share:.0%}", ha="center", va="center", color="white", fontsize=9)
            left += share
    ax.set_yticks(range(len(bars)), [name for name, *_ in reversed(bars)])
    ax.set_xlim(0, 1)
    _percent(ax.xaxis)
    ax.set_xlabel(f"share of the training thread's wall time (from {report['bottleneck']['source']})")
    fig.legend(loc="outside lower center", ncols=6, fontsize=8, frameon=False)
    return _save(fig, out, "breakdown.png", "Step-time breakdown: where the training thread's wall time goes, "
                 "by phase and by bottleneck category")


def _throughput(report: dict[str, Any]) -> tuple[float, str] | None:
    timer = report.get("steptimer")
    if not timer or not timer.get("wall"):
        return None
    if timer.get("samples"):
        return timer["samples"] / timer["wall"], "samples/s"
    return (timer["steps"] / timer["wall"], "steps/s") if timer.get("steps") else None


def _timeline_figure(report: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> Figure:
    throughput = _throughput(report)
    fig = _new_figure(10, 4.4 if throughput else 3.4)
    axes = fig.subplots(2 if throughput else 1, 1, sharex=True, squeeze=False,
                        height_ratios=[3, 1] if throughput else None)[:, 0]
    ax = axes[0]
    t = [row["t"] - rows[0]["t"] for row in rows]
    ax.plot(t, [_nan(row.get("cpu_busy")) for row in rows], label="host CPU busy")  # GPUs: the next colours
    gpus = max((len(row.get("gpu_util") or []) for row in rows), default=0)
    for index in range(gpus):
        ax.plot(t, [_nan((row.get("gpu_util") or [None] * gpus)[index]) for row in rows],
                label=f"GPU {index} utilization")
    ax.set_ylim(0, 1.05)
    _percent(ax.yaxis)
    ax.set_ylabel("utilization")
    ax.legend(loc="lower right", fontsize=8)
    if throughput:
        value, unit = throughput
        axes[1].axhline(value, color="#9467bd", linestyle="--", label=f"StepTimer mean: {value:.4g} {unit}")
        axes[1].set_ylim(0, value * 1.25)
        axes[1].set_ylabel(unit)
        axes[1].legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("seconds since sampling began")
    caption = "CPU and GPU utilization over the run (Collector)" + (
        "; throughput is the StepTimer's mean over its steps (it publishes totals, not a time series)"
        if throughput else "; no StepTimer in the script, so no throughput")
    return _save(fig, out, "timeline.png", caption)


def _workers_figure(report: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> Figure:
    fig = _new_figure(10, 3.4)
    ax = fig.add_subplot()
    ax.plot(*_rate(rows, "main_cpu"), label="training process (main)", color="#1f77b4")
    ax.plot(*_rate(rows, "worker_cpu"), label="DataLoader workers (all)", color="#d62728")
    cores = report["measurements"]["resources"].get("cores")
    if cores:
        ax.axhline(cores, color="#555", linestyle=":", label=f"{cores} cores")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("CPU (cores)")
    ax.set_xlabel("seconds since sampling began")
    workers = ax.twinx()
    workers.step([row["t"] - rows[0]["t"] for row in rows], [row.get("workers", 0) for row in rows],
                 where="post", color="#ff7f0e", alpha=0.6, label="workers alive")
    workers.set_ylabel("workers alive")
    workers.set_ylim(bottom=0, top=max(1, max(row.get("workers", 0) for row in rows)) + 0.5)
    workers.yaxis.get_major_locator().set_params(integer=True)
    fig.legend(loc="outside lower center", fontsize=8, ncols=4, frameon=False)  # both axes' lines
    return _save(fig, out, "workers.png", "Worker CPU: the training process against its DataLoader workers")


def _flame_figure(out: Path) -> Figure | None:
    try:
        stacks = parse_collapsed((out / "pyspy-wall.txt").read_text(errors="replace"))
    except OSError:
        return None
    if not stacks:
        return None
    svg = flame_graph_svg(stacks, "py-spy: every thread of the process tree, idle time included").encode()
    (out / "flamegraph.svg").write_bytes(svg)
    return Figure("flamegraph.svg", "Flame graph of py-spy's wall-clock samples (hover a frame for its name and "
                  "share; colours: phase of a known frame, as in the breakdown)", svg)


def draw_profile_figures(report: dict[str, Any], out: Path) -> list[Figure]:
    """Draw the profile report's figures into ``out`` from ``report`` and the raw samples beside it
    (``collector.jsonl``, ``pyspy-wall.txt``); a figure without data is left out."""
    rows = read_collector_rows(out / "collector.jsonl")
    figures = [_breakdown_figure(report, out)]
    if len(rows) >= 2:
        figures += [_timeline_figure(report, rows, out), _workers_figure(report, rows, out)]
    figures.append(_flame_figure(out))
    return [figure for figure in figures if figure is not None]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _evidence_text(evidence: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in evidence.items())


def _gain_text(gain: dict[str, Any]) -> str:
    bound = gain.get("speedup_at_most")
    return f"at most {bound:.2f}x" if bound else "unbounded by the shares"


def profile_document(report: dict[str, Any], figures: Sequence[Figure]) -> Document:
    """The profile report: the verdict and what to do first, then the evidence behind it."""
    by_name = {figure.name: figure for figure in figures}
    b, run = report["bottleneck"], report["run"]
    unit = "steps" if b["source"] == "steptimer" else "samples"
    blocks: list[Block] = [Text(
        f"(confidence {b['confidence']:.2f}, from {b['source']}, {b['samples']} {unit}); profiled "
        f"{run['seconds']:.1f} s, ended by {run['ended_by']}, exit code {run.get('exit_code')}.",
        lead=f"Primary bottleneck: {b['primary']}", highlight=True)]
    if not b["shares"]:
        blocks.append(Text(f"No phase shares: {b['basis']}."))
    findings = [Item(f["title"], tag=f.get("id", ""), note=f["severity"],
                     details=(("evidence", _evidence_text(f["evidence"])),)) for f in report["findings"]]
    recommendations = [
        Item(rec["title"], tag=rec["id"], note="expected gain: " + _gain_text(rec["expected_gain"]),
             details=(("evidence", rec["evidence"]), ("why this bound", rec["expected_gain"].get("reasoning", ""))))
        for rec in report["recommendations"]]
    blocks += [Heading("Findings"), Items(findings) if findings else Text("none"),
               Heading("Recommendations"), Items(recommendations, ordered=True) if recommendations else Text("none")]
    blocks.append(Heading("Step-time breakdown"))
    if b["shares"]:
        largest_first = sorted(b["shares"].items(), key=lambda kv: -kv[1])
        blocks.append(Table(("category", "share of wall time"),
                            [(name, f"{share:.1%}") for name, share in largest_first], numeric=frozenset({1})))
        blocks.append(Text("Phases: " + ", ".join(f"{k} {v:.1%}" for k, v in report["phases"].items() if v >= 0.005)))
    blocks += [by_name["breakdown.png"]] if "breakdown.png" in by_name else [Text("No breakdown: " + b["basis"] + ".")]
    blocks.append(Heading("Timeline"))
    blocks += ([by_name["timeline.png"], Heading("Worker CPU"), by_name["workers.png"]] if "timeline.png" in by_name
               else [Text("The Collector took fewer than two samples: the run was too short to draw.")])
    blocks += _pyspy_blocks(report, by_name.get("flamegraph.svg"))
    blocks += _torch_profiler_blocks(report.get("torch_profiler"))
    r = report["measurements"]["resources"]
    blocks += [Heading("Resources (Collector)"), Items([
        Item(f"cores {r['cores']}, host CPU busy {_pct(r['host_busy_ratio'])}, iowait {_pct(r['host_iowait_ratio'])}"),
        Item(f"training process {_num(r['main_cpu_cores'])} cores; {r['workers_max']} workers using "
             f"{_num(r['worker_cpu_cores'])} cores"),
        Item(f"memory available at least {_pct(r['memory_available_ratio_min'])}; GPU utilization "
             f"{_pct(r['gpu_utilization_mean'])}")]),
        Text(", ".join(report["artifacts"]), lead="Artifacts:")]
    return Document("perfwatch profile: " + " ".join(report["command"]), blocks)


def _function_table(functions: list[dict[str, Any]], phases: bool) -> Table:
    columns = ("function", "file", "self", "total") + (("phase",) if phases else ())
    rows = [(f["function"], short_path(f["file"]), f"{f['self_share']:.1%}", f"{f['total_share']:.1%}")
            + ((f.get("phase", ""),) if phases else ()) for f in functions]
    return Table(columns, rows, numeric=frozenset({2, 3}), code=frozenset({0}))


def _pyspy_blocks(report: dict[str, Any], flame: Figure | None) -> list[Block]:
    pyspy = report["pyspy"]
    blocks: list[Block] = [Heading("Where the training thread spends its time (py-spy)")]
    if not pyspy["top_functions"]:
        return blocks + [Text(f"py-spy: {pyspy['status']}.")]
    blocks.append(_function_table(pyspy["top_functions"], phases=True))
    if pyspy["worker_top_functions"]:
        blocks += [Text("DataLoader workers:"), _function_table(pyspy["worker_top_functions"], phases=False)]
    if flame is not None:
        blocks += [Heading("Flame graph"), flame]
    return blocks


def _torch_profiler_blocks(torch_profile: dict[str, Any] | None) -> list[Block]:
    if not torch_profile or not torch_profile.get("ops"):
        return []
    rows = [(op["name"], str(op["count"]), f"{op['self_cpu_us'] / 1e3:.2f}", f"{op['cpu_us'] / 1e3:.2f}",
             f"{op.get('self_device_us', 0) / 1e3:.2f}") for op in torch_profile["ops"]]
    return [Heading("Top operators (torch.profiler)"),
            Text(f"over the first {torch_profile.get('seconds', 0):.1f} s of the command"),
            Table(("operator", "calls", "self CPU ms", "CPU ms", "self device ms"), rows,
                  numeric=frozenset({1, 2, 3, 4}), code=frozenset({0}))]


def write_profile_pages(report: dict[str, Any], figures: Sequence[Figure], out: Path) -> None:
    """``report.md`` and ``report.html`` of a profile directory, with ``draw_profile_figures``' figures."""
    write_pages(profile_document(report, figures), out)


# ---------------------------------------------------------------- the benchmark-run report


def find_baseline(path: Path | None, default: Path = DEFAULT_BASELINE) -> tuple[RunRecord, Path] | None:
    """(the baseline run, its file): ``path``, else ``default`` when that exists, else None.
    A missing or corrupt file given as ``path`` is a UserError."""
    if path is None and not default.is_file():
        return None
    path = path or default
    return load_baseline(path), path


def default_out(run: RunRecord) -> Path:
    return Path("reports") / f"run-{run.run_id}"


def _family(name: str) -> str:
    return name.split("(", 1)[0]


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


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
    fig = _new_figure(10, 1.2 + 0.32 * len(measured))
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
    _percent(ax.xaxis)
    ax.set_xlabel("sample relative to the benchmark's median")
    return _save(fig, out, "distributions.png", "Distribution of every sample of each benchmark, relative to its "
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
        fig = _new_figure(min(5.0 * len(swept), 15.0), 3.6)
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
        figures.append(_save(fig, out, f"params-{_slug(family)}.png",
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
    fig = _new_figure(10, 1.4 + 0.32 * len(judged))
    ax = fig.add_subplot()
    positions = list(range(len(judged), 0, -1))
    for y, v in zip(positions, judged):
        ax.barh(y, 2 * v.threshold, left=-v.threshold, height=0.8, color="#eeeeee", zorder=0)
        ax.errorbar(v.change, y, xerr=[[v.change - v.ci_low], [v.ci_high - v.change]], fmt="o", capsize=3,
                    color=VERDICT_COLOURS.get(v.verdict, "#555"))
    ax.axvline(0, color="#555", linewidth=0.8)
    ax.set_yticks(positions, [v.name for v in judged], fontsize=7)
    _percent(ax.xaxis)
    ax.set_xlabel("change against the baseline (+ is worse)")
    return _save(fig, out, "comparison.png", "Change of each benchmark against the baseline with its confidence "
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
