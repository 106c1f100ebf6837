"""Terminal rendering of runs with rich: value formatting, results table, environment line, and the
console that shows every string as text."""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from perfwatch import stats
from perfwatch.results import RunRecord

# What a terminal acts on instead of showing: the C0 controls but newline and tab, DEL and the C1 controls
# (ESC and CSI start sequences that clear the screen, retitle the window, forge a link), the bidi overrides
# (text that reads otherwise than it is), and lone surrogates (no UTF-8 for them: a raw byte or a crash).
INERT = {c: ascii(chr(c))[1:-1] for c in (*range(0x20), *range(0x7f, 0xa0), *range(0x202a, 0x202f),
                                          *range(0x2066, 0x206a), *range(0xd800, 0xe000)) if chr(c) not in "\n\t"}
TIME_SCALES = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))
BYTE_SCALES = ((1024.0**3, "GiB"), (1024.0**2, "MiB"), (1024.0, "KiB"), (1.0, "B"))


def format_value(value: float, unit: str) -> str:
    """A human-sized number: seconds and bytes get scaled units, others 4 significant digits."""
    if value is None or math.isnan(value):
        return "-"
    if unit == "seconds":
        scale, suffix = next(((s, u) for s, u in TIME_SCALES if abs(value) >= s), TIME_SCALES[-1])
        return f"{value / scale:.4g} {suffix}"
    if unit == "bytes":
        scale, suffix = next(((s, u) for s, u in BYTE_SCALES if abs(value) >= s), BYTE_SCALES[-1])
        return f"{value / scale:.4g} {suffix}"
    return f"{value:.4g} {unit}" if unit != "unitless" else f"{value:.4g}"


def format_spread(values: list[float]) -> str:
    s = stats.spread(values)
    if math.isnan(s):
        return "-"
    text = f"±{s * 100:.1f}%"
    return f"[yellow]{text} noisy[/]" if stats.is_noisy(values) else text


STATUS_STYLE = {"ok": "green", "failed": "bold red", "timeout": "bold red", "skipped": "dim"}


def results_table(run: RunRecord) -> Table:
    """One row per benchmark: status, median, spread (IQR/median), samples, or the error."""
    table = Table(title=escape(f"run {run.run_id} · suite {run.suite or '?'}"), title_justify="left")
    table.add_column("benchmark", overflow="fold")
    table.add_column("status")
    table.add_column("median", justify="right")
    table.add_column("spread", justify="right")
    table.add_column("n", justify="right")
    for b in run.benchmarks:
        style = STATUS_STYLE.get(b.status, "")
        arrow = " ↑" if b.higher_is_better else ""
        if b.samples:
            table.add_row(escape(b.name), f"[{style}]{escape(b.status)}[/]",
                          escape(format_value(stats.median(b.samples), b.unit)) + arrow,
                          format_spread(b.samples), str(len(b.samples)))
        else:
            table.add_row(escape(b.name), f"[{style}]{escape(b.status)}[/]", f"[{style}]{escape(b.error or '')}[/]",
                          "", "0")
    return table


def env_line(env: dict) -> str:
    gpu = env.get("gpu") or {}
    commit = (env.get("git_commit") or "no git")[:10] + ("+dirty" if env.get("git_dirty") else "")
    parts = [
        env.get("host", "?"),
        f"{env.get('cpu', '?')} ×{env.get('cpu_cores_logical', '?')}",
        f"GPU {gpu['model']} ×{gpu['count']}" if gpu else "no GPU",
        f"torch {env.get('torch')}",
        f"Python {env.get('python')}",
        commit,
    ]
    return " · ".join(parts)


def visible(text: str) -> str:
    """``text`` with what a terminal would act on written out as Python escapes (``\\x1b``, ``\\udcff``)."""
    return text.translate(INERT)


class TerminalConsole(Console):
    """A rich console on which every string is shown as text: the callers escape markup, this escapes
    the characters a terminal acts on (INERT), whichever names, units, errors or paths they hold."""

    def render_str(self, text: str, **kwargs):
        return super().render_str(visible(text), **kwargs)
