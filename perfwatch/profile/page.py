"""The profile report: its figures (matplotlib, imported only to draw) and its document,
rendered by pages.py as ``report.md`` and a self-contained ``report.html``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from perfwatch.figures import new_figure, percent_axis, save_figure
from perfwatch.pages import Block, Document, Figure, Heading, Item, Items, Table, Text, write_pages
from perfwatch.profile.flamegraph import PHASE_COLOURS, flame_graph_svg, short_path
from perfwatch.profile.stacks import parse_collapsed
from perfwatch.store import write_atomic

CATEGORY_COLOURS = {"data_loading": "#d62728", "host_to_device": "#ff7f0e", "compute": "#0b3d91", "other": "#9a9a9a"}


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
    for before, after in pairwise(rows):
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
    fig = new_figure(10, 2.6)
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
    percent_axis(ax.xaxis)
    ax.set_xlabel(f"share of the training thread's wall time (from {report['bottleneck']['source']})")
    fig.legend(loc="outside lower center", ncols=6, fontsize=8, frameon=False)
    return save_figure(fig, out, "breakdown.png", "Step-time breakdown: where the training thread's wall time goes, "
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
    fig = new_figure(10, 4.4 if throughput else 3.4)
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
    percent_axis(ax.yaxis)
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
    return save_figure(fig, out, "timeline.png", caption)


def _workers_figure(report: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> Figure:
    fig = new_figure(10, 3.4)
    ax = fig.add_subplot()
    ax.plot(*_rate(rows, "main_cpu"), label="training process (main)", color="#1f77b4")
    ax.plot(*_rate(rows, "worker_cpu"), label="DataLoader workers", color="#d62728")
    ax.plot(*_rate(rows, "other_cpu"), label="the command's other processes", color="#9a9a9a")
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
    return save_figure(fig, out, "workers.png", "Worker CPU: the training process against its DataLoader workers")


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
    warning = report["pyspy"].get("warning")  # first: it says how far to trust the verdict below
    blocks: list[Block] = [Text(warning, lead="Warning:", highlight=True)] if warning else []
    evidence = (f"{b['basis']}" if b["primary"] == "unknown"
                else f"(confidence {b['confidence']:.2f}, from {b['source']}, {b['samples']} {unit})")
    blocks.append(Text(
        f"{evidence}; profiled {run['seconds']:.1f} s, ended by {run['ended_by']}, exit code {run.get('exit_code')}.",
        lead=f"Primary bottleneck: {b['primary']}", highlight=True))
    if not b["shares"] and b["primary"] != "unknown":
        blocks.append(Text(f"No phase shares: {b['basis']}."))
    findings = [Item(f["title"], tag=f.get("id", ""), note=f["severity"],
                     details=(("evidence", _evidence_text(f["evidence"])),)) for f in report["findings"]]
    recommendations = [
        Item(rec["title"], tag=rec["id"], note="expected gain: " + _gain_text(rec["expected_gain"]),
             details=(("evidence", rec["evidence"]), ("why this bound", rec["expected_gain"].get("reasoning", ""))))
        for rec in report["recommendations"]]
    blocks += [Heading("Findings"), Items(findings) if findings else Text("none"),
               Heading("Recommendations"), Items(recommendations, ordered=True) if recommendations else Text("none")]
    blocks += _try_blocks(report.get("try"))
    blocks += _ranks_blocks(report.get("ranks"))
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
    identified = report["measurements"].get("dataloader_workers") or {}
    blocks += [Heading("Resources (Collector)"), Items([
        Item(f"cores {r['cores']}, host CPU busy {_pct(r['host_busy_ratio'])}, iowait {_pct(r['host_iowait_ratio'])}"),
        Item(f"training process {_num(r['main_cpu_cores'])} cores; {r['workers_max']} DataLoader workers using "
             f"{_num(r['worker_cpu_cores'])} cores (identified by {identified.get('identified_by', 'n/a')}); "
             f"the command's other processes {_num(r.get('other_cpu_cores'))} cores"),
        Item(f"memory available at least {_pct(r['memory_available_ratio_min'])}; GPU utilization "
             f"{_pct(r['gpu_utilization_mean'])}")]),
        Text(", ".join(report["artifacts"]), lead="Artifacts:")]
    return Document("perfwatch profile: " + " ".join(report["command"]), blocks)


def _try_blocks(tried: dict[str, Any] | None) -> list[Block]:
    """What ``--try`` measured: its verdict, then each window's exact rate."""
    if tried is None:
        return []
    blocks: list[Block] = [Heading("Tried (--try)")]
    if tried["recommendation"] is None:
        return blocks + [Text(f"Nothing to try: {tried['reason']}.")]
    blocks.append(Text(tried["says"] + ".", lead=f"{tried['recommendation']}:", highlight=True))
    rows = [(str(i), w["side"], "-" if w["steps_per_second"] is None else f"{w['steps_per_second']:.3g}",
             str(w["steps"]), f"{w['seconds']:.1f}", w["note"]) for i, w in enumerate(tried["windows"], 1)]
    return blocks + [Table(("window", "settings", "steps/s", "steps", "seconds", "note"), rows,
                           numeric=frozenset({0, 2, 3, 4}))]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3g}"


def _ranks_blocks(ranks: dict[str, Any] | None) -> list[Block]:
    """A torchrun job's ranks (``profile.ranks``): the straggler verdict, then a row per rank."""
    if ranks is None:
        return []
    phases = ranks["phases"]
    rows = [(r["rank"], r["host"], str(r["steps"]), _ms(r["work_seconds_per_step"]), _ms(r["wait_seconds_per_step"]),
             *(_ms(r["phase_seconds_per_step"].get(p)) for p in phases),
             "-" if r["straggler_score"] is None else f"{r['straggler_score']:+.0%}") for r in ranks["rows"]]
    columns = ("rank", "host", "steps", "work ms/step", "wait ms/step", *(f"{p} ms/step" for p in phases),
               "straggler score")
    return [Heading("Ranks (torchrun)"), Text(ranks["straggler"]["says"] + ".", lead="Straggler:", highlight=True),
            Table(columns, rows, numeric=frozenset(range(2, len(columns)))),
            Text(f"Over {ranks['window']}. Work: what a rank does between two gradient all-reduces; wait: its time "
                 "in one; a phase's time leaves out the all-reduce wait. Score: work per step over the median "
                 "rank's, minus 1.")]


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


def write_report(report: dict[str, Any], out: Path) -> None:
    """``report.json`` first, so the diagnosis is on disk whatever happens while drawing; then
    the figures, ``report.md`` and ``report.html``, and ``report.json`` again with
    the figures in its artifacts. Each file is written atomically."""
    report["artifacts"] = sorted(set(report["artifacts"]) | {"report.json", "report.md", "report.html"})
    write_atomic(out / "report.json", json.dumps(report, indent=1))
    figures = draw_profile_figures(report, out)
    report["artifacts"] = sorted(set(report["artifacts"]) | {figure.name for figure in figures})
    write_atomic(out / "report.json", json.dumps(report, indent=1))
    write_profile_pages(report, figures, out)
