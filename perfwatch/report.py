"""HTML and Markdown reports with matplotlib figures, for a ``perfwatch profile`` and for a stored benchmark run.

A report is built once as a list of blocks (headings, text, tables, lists, figures) and
rendered twice, so both files always say the same thing:

* ``report.md``, with the figures as PNG/SVG files next to it;
* ``report.html``, self-contained: CSS inline, figures embedded as ``data:`` URIs and the
  flame graph as inline SVG, a Content-Security-Policy that allows no URL at all, so it
  opens from disk anywhere. An image that fails to decode is marked on the page.

Every string from outside (command lines, function names, file paths, evidence, benchmark
names) is escaped by the renderers, never by the code that builds the blocks. Figures use
matplotlib's object API (``Figure`` with the Agg renderer, no pyplot state), imported
only when a report is drawn.
"""

from __future__ import annotations

import base64
import colorsys
import hashlib
import html
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from . import stats
from .baseline import DEFAULT_BASELINE, Comparison, load_baseline, machine_differences
from .ci_report import change_text, median_text, p_text, summary_line
from .compare import Verdict, compare_runs
from .display import env_line, format_value
from .profile import Stack, frame_phase, parse_collapsed, prepare_out_dir
from .results import BenchResult, RunRecord
from .store import write_atomic
from .thresholds import Thresholds

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure as MplFigure

FIGURE_DPI = 100
FLAME_WIDTH = 1200
FLAME_ROW = 16
FLAME_MIN_SHARE = 0.001  # frames narrower than 0.1% of all samples are left out, as flamegraph.pl does
FLAME_CHAR_PX = 6.6  # average glyph width of the 11px font, to cut labels that do not fit
PHASE_COLOURS = {
    "data_loading": "#d62728", "host_to_device": "#ff7f0e", "forward": "#1f77b4", "backward": "#3b8fd1",
    "optimizer": "#17becf", "sync": "#9467bd", "checkpoint": "#8c564b", "logging": "#bcbd22", "other": "#9a9a9a",
}
CATEGORY_COLOURS = {"data_loading": "#d62728", "host_to_device": "#ff7f0e", "compute": "#0b3d91", "other": "#9a9a9a"}
VERDICT_COLOURS = {"regressed": "#d62728", "improved": "#2ca02c", "unchanged": "#1f77b4", "too-noisy": "#ff7f0e"}
ROW_CLASS = {"failed": "bad", "timeout": "bad", "regressed": "bad", "improved": "good", "too-noisy": "warn"}


# ---------------------------------------------------------------- the document model


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    """A paragraph: ``lead`` in bold, then ``text``; ``highlight`` sets it apart (the verdict of the report)."""

    text: str
    lead: str = ""
    highlight: bool = False


@dataclass(frozen=True)
class Table:
    """Cells are plain strings; ``numeric`` columns align right, ``code`` columns are code;
    ``row_classes`` (HTML only) colours rows such as failures and regressions."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    numeric: frozenset[int] = frozenset()
    code: frozenset[int] = frozenset()
    row_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Item:
    title: str
    tag: str = ""  # an identifier shown as code (a recommendation's id)
    note: str = ""
    details: tuple[tuple[str, str], ...] = ()  # (label, text)


@dataclass(frozen=True)
class Items:
    items: list[Item]
    ordered: bool = False


@dataclass(frozen=True)
class Figure:
    """A figure file next to the report: ``data`` is its content, PNG or SVG (by ``name``)."""

    name: str
    caption: str
    data: bytes

    @property
    def svg(self) -> bool:
        return self.name.endswith(".svg")


Block = Union[Heading, Text, Table, Items, Figure]


@dataclass(frozen=True)
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)


# ---------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"[\\`*\[\]<>|&~$]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def md_escape(text: str) -> str:
    """Plain text for Markdown: punctuation that would start markup or raw HTML is backslash-escaped
    (an underscore inside a word is left alone: it never starts emphasis)."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m[0], " ".join(str(text).split()))


def md_code(text: str) -> str:
    """A code span that holds any text, backticks included."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_cell(text: str, code: bool) -> str:
    return md_code(text).replace("|", "\\|") if code else md_escape(text)


def to_markdown(doc: Document) -> str:
    lines = [f"# {md_escape(doc.title)}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + md_escape(block.text), ""]
        elif isinstance(block, Text):
            lead = f"**{md_escape(block.lead)}**" if block.lead else ""
            lines += [(lead + (" " if lead and block.text else "") + md_escape(block.text)), ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(md_escape(c) for c in block.columns) + " |")
            rule = ("---:" if i in block.numeric else "---" for i in range(len(block.columns)))
            lines.append("|" + "|".join(rule) + "|")
            lines += ["| " + " | ".join(_md_cell(cell, i in block.code) for i, cell in enumerate(row)) + " |"
                      for row in block.rows]
            lines.append("")
        elif isinstance(block, Items):
            for n, item in enumerate(block.items, 1):
                head = f"{n}." if block.ordered else "-"
                tag = f" ({md_code(item.tag)})" if item.tag else ""
                note = f" — {md_escape(item.note)}" if item.note else ""
                lines.append(f"{head} **{md_escape(item.title)}**{tag}{note}")
                lines += [f"   - {md_escape(label)}: {md_escape(text)}" for label, text in item.details]
            lines.append("")
        else:
            lines += [f"![{md_escape(block.caption)}]({block.name})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- HTML

# Marks a figure whose image did not decode: visible to the reader (CSS below) and to tests.
_ON_IMAGE_ERROR = "this.parentNode.dataset.failed='1'"
_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-hashes' 'sha256-"
        + base64.b64encode(hashlib.sha256(_ON_IMAGE_ERROR.encode()).digest()).decode() + "'")
_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;margin:0;background:#fafafa}
main{max-width:1240px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:1.5em;overflow-wrap:anywhere}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
.summary{font-size:1.15em;background:#fff4e5;border-left:5px solid #ff7f0e;padding:10px 14px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f2f2f2}
td.num{text-align:right;white-space:nowrap}tr.bad td{background:#fde8e8}tr.good td{background:#e8f6e8}
tr.warn td{background:#fff6e0}code{font:.92em ui-monospace,Menlo,Consolas,monospace;overflow-wrap:anywhere}
li{margin:6px 0}li ul{margin:2px 0}.label{color:#555}.tag{color:#555}
figure{margin:12px 0 20px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figure .flame svg{width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
figure[data-failed]::after{content:"image failed to load";display:block;color:#b00;font-weight:bold}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _class(css: str) -> str:
    return f' class="{css}"' if css else ""


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_esc(block.text)}</h{block.level}>"
    if isinstance(block, Text):
        lead = f"<strong>{_esc(block.lead)}</strong> " if block.lead else ""
        return f"<p{_class('summary' if block.highlight else '')}>{lead}{_esc(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_esc(c)}</th>" for c in block.columns)
        body = []
        for r, row in enumerate(block.rows):
            css = block.row_classes[r] if r < len(block.row_classes) else ""
            cells = "".join(
                f"<td{_class('num' if i in block.numeric else '')}>"
                + (f"<code>{_esc(cell)}</code>" if i in block.code and cell else _esc(cell)) + "</td>"
                for i, cell in enumerate(row))
            body.append(f"<tr{_class(css)}>{cells}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    if isinstance(block, Items):
        tag = "ol" if block.ordered else "ul"
        items = []
        for item in block.items:
            details = "".join(f"<li><span class=\"label\">{_esc(label)}:</span> {_esc(text)}</li>"
                              for label, text in item.details)
            items.append(f"<li><strong>{_esc(item.title)}</strong>"
                         + (f" <code class=\"tag\">{_esc(item.tag)}</code>" if item.tag else "")
                         + (f" — {_esc(item.note)}" if item.note else "")
                         + (f"<ul>{details}</ul>" if details else "") + "</li>")
        return f"<{tag}>{''.join(items)}</{tag}>"
    caption = f"<figcaption>{_esc(block.caption)}</figcaption>"
    if block.svg:  # inline, so that its tooltips work; our own SVG, its strings escaped when drawn
        return f"<figure><div class=\"flame\">{block.data.decode()}</div>{caption}</figure>"
    source = "data:image/png;base64," + base64.b64encode(block.data).decode()
    return (f"<figure><img src=\"{source}\" alt=\"{_esc(block.caption)}\" "
            f"onerror=\"{_ON_IMAGE_ERROR}\">{caption}</figure>")


def to_html(doc: Document) -> str:
    body = "\n".join(_html_block(block) for block in doc.blocks)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(doc.title)}</title><style>{_CSS}</style></head>\n"
            f"<body><main>\n<h1>{_esc(doc.title)}</h1>\n{body}\n</main></body></html>\n")


def write_pages(doc: Document, out: Path) -> None:
    """``report.md`` and ``report.html`` in ``out``, each written atomically."""
    write_atomic(out / "report.md", to_markdown(doc))
    write_atomic(out / "report.html", to_html(doc))


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


# ---------------------------------------------------------------- flame graph


@dataclass
class _Node:
    name: str
    phase: str | None = None
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)

    def child(self, name: str, phase: str | None = None) -> _Node:
        if name not in self.children:
            self.children[name] = _Node(name, phase)
        return self.children[name]


def _frame_colour(node: _Node) -> str:
    """Frames a phase rule knows take the phase's colour; the rest flamegraph.pl's warm hues, by name."""
    if node.phase is not None:
        return PHASE_COLOURS[node.phase]
    digest = hashlib.md5(node.name.encode()).digest()
    red, green, blue = colorsys.hls_to_rgb(0.02 + digest[0] / 255 * 0.1, 0.6 + digest[1] / 255 * 0.15, 0.85)
    return f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}"


def flame_graph_svg(stacks: Sequence[Stack], title: str, width: int = FLAME_WIDTH) -> str:
    """A flame graph of py-spy's collapsed stacks as standalone SVG, drawn top-down (an icicle,
    so the widest frames come first on a page): a box per frame as wide as its samples, a
    tooltip (``<title>``) with the full name and share. The levels under the root are the
    process and the thread; frames of one function in one file merge whatever their line."""
    root = _Node("all")
    for stack in stacks:
        levels = ([(f"process {stack.pid}", None)] if stack.pid is not None else []) + [
            (f"thread {stack.thread or stack.tid} ({stack.tid})", None)]
        levels += [(f"{frame.function} ({short_path(frame.file)})", frame_phase(frame)) for frame in stack.frames]
        node = root
        node.count += stack.count
        for name, phase in levels:
            node = node.child(name, phase)
            node.count += stack.count
    total = max(root.count, 1)
    boxes: list[tuple[int, float, float, _Node]] = []  # depth, x, width, node

    def place(node: _Node, depth: int, x: float) -> None:
        boxes.append((depth, x, node.count / total * width, node))
        for child in sorted(node.children.values(), key=lambda n: n.name):
            if child.count / total >= FLAME_MIN_SHARE:
                place(child, depth + 1, x)
            x += child.count / total * width

    place(root, 0, 0.0)
    depth = max(d for d, *_ in boxes) + 1
    top = 28
    height = top + depth * FLAME_ROW + 4
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="Verdana,sans-serif" font-size="11">',
             f'<text x="{width / 2:.0f}" y="17" text-anchor="middle" font-size="14">{_esc(title)}</text>']
    for level, x, w, node in boxes:
        y = top + level * FLAME_ROW
        share = node.count / total
        fits = int((w - 6) / FLAME_CHAR_PX)
        label = node.name if len(node.name) <= fits else node.name[:fits - 2] + ".."
        tooltip = f"{node.name} — {node.count} samples ({share:.1%})"
        tooltip += f", phase {node.phase}" if node.phase else ""
        text = f'<text x="{x + 3:.1f}" y="{y + 12}">{_esc(label)}</text>' if w >= 3 * FLAME_CHAR_PX + 6 else ""
        parts.append(f'<g><title>{_esc(tooltip)}</title><rect x="{x:.1f}" y="{y}" width="{max(w - 0.5, 0.5):.1f}" '
                     f'height="{FLAME_ROW - 1}" fill="{_frame_colour(node)}" rx="2"/>{text}</g>')
    parts.append("</svg>")
    return "\n".join(parts)


_LIBRARY = re.compile(r".*/(?:site-packages|dist-packages|lib/python3\.\d+)/")


def short_path(path: str) -> str:
    """A library file from its package (torch/optim/adam.py), the user's relative to the working directory."""
    library = _LIBRARY.match(path)
    if library:
        return path[library.end():]
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return path if relative.startswith("..") else relative


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
