"""``perfwatch history``: steps (change points) in each benchmark's stored runs, as a table, JSON and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from perfwatch.cli.app import cli, config_of, out, results_dir_option, store_of
from perfwatch.display import format_value

if TYPE_CHECKING:
    from perfwatch.regress.history import History


@cli.command()
@click.argument("bench", required=False, metavar="[BENCH]")
@results_dir_option
@click.option("--plot-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where a PNG per benchmark goes (default: reports/history).")
@click.option("--json", "as_json", is_flag=True, help="Print the histories and their steps as JSON.")
@click.pass_context
def history(ctx: click.Context, bench: str | None, results_dir: Path | None, plot_dir: Path | None,
            as_json: bool) -> None:
    """Find steps in the history of BENCH (a name or a glob; default: every benchmark).

    Every stored run counts, oldest first. Each step names the first run and commit after
    it, the medians before and after, the change and its p-value; steps smaller than the
    benchmark's regression threshold are left out.
    """
    from perfwatch.regress import history as history_lib  # numpy loads only for this command

    plot_dir = plot_dir or history_lib.DEFAULT_PLOT_DIR
    store = store_of(ctx, results_dir)
    histories = history_lib.load_histories(list(store.runs()), bench, str(store.root), config_of(ctx).thresholds)
    plots = [history_lib.plot(h, plot_dir) for h in histories]
    if as_json:
        click.echo(json.dumps({"results_dir": str(store.root), "plot_dir": str(plot_dir),
                               "benchmarks": [history_lib.to_json(h, p) for h, p in zip(histories, plots)]},
                              indent=1, allow_nan=False))
        return
    judged = [h for h in histories if h.note is None]
    if judged:
        out.print(steps_table(judged))
    for h in histories:
        if h.note is not None:
            out.print(f"{escape(h.series.name)}: {escape(h.note)}", soft_wrap=True)
    out.print(f"plots: {escape(str(plot_dir))}/", soft_wrap=True)


def steps_table(histories: list[History]) -> Table:
    """One row per step; a benchmark without a step gets one row saying so."""
    table = Table(title="steps in stored runs", title_justify="left")
    for column in ("benchmark", "runs", "first run after the step", "commit", "before", "after", "change", "p"):
        table.add_column(column, justify="right" if column in ("runs", "before", "after", "change", "p") else "left",
                         overflow="fold")
    for h in histories:
        series = h.series
        if not h.steps:
            table.add_row(escape(series.name), str(series.measured), "[dim]no step[/]", "", "", "", "", "")
        for step in h.steps:
            style = "red" if step.worse else "green"
            table.add_row(escape(series.name), str(series.measured), step.run_id, (step.commit or "-")[:10],
                          format_value(step.before, series.unit), format_value(step.after, series.unit),
                          f"[{style}]{step.change:+.1%} {step.direction}[/]", f"{step.p_value:.2g}")
    return table
