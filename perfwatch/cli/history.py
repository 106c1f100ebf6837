"""``perfwatch history``: steps (change points) in each benchmark's stored runs per machine, commit by
commit, as a table, JSON and plots."""

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
@click.option("--machine", help="Only this machine's runs: a machine id, a prefix of one, or a host name.")
@click.option("--branch", help="Only the runs made on this branch.")
@click.option("--since", metavar="DATE|COMMIT",
              help="Only commits since a date (YYYY-MM-DD, UTC) or since a commit (its commit time).")
@click.option("--plot-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where a PNG per benchmark (and machine) goes (default: reports/history).")
@click.option("--json", "as_json", is_flag=True, help="Print the histories and their steps as JSON.")
@click.pass_context
def history(ctx: click.Context, bench: str | None, results_dir: Path | None, machine: str | None,
            branch: str | None, since: str | None, plot_dir: Path | None, as_json: bool) -> None:
    """Find steps in the history of BENCH (a name or a glob; default: every benchmark).

    One series per benchmark and machine, one point per commit (the runs of a commit pool
    their samples), in git order when run in the repository that holds the commits, else by
    commit time; runs made outside git come last. Each step names the first run after it, the
    last commit before it and the first after, the medians before and after, the change and its
    p-value; steps smaller than the benchmark's regression threshold are left out. For each
    slowdown it prints the `perfwatch bisect` command line that finds the commit between the two.
    """
    from perfwatch.regress import history as history_lib  # numpy loads only for this command

    plot_dir = plot_dir or history_lib.DEFAULT_PLOT_DIR
    store = store_of(ctx, results_dir)
    here = Path.cwd()
    which = history_lib.run_filter(store, machine, branch, since, repo=here)
    runs = list(store.select(which))
    positions = history_lib.git_positions(runs, here)
    histories = history_lib.load_histories(runs, bench, str(store.root), config_of(ctx).thresholds, positions, which)
    order = history_lib.order_name(runs, positions)
    plots = history_lib.plots(histories, plot_dir)
    if as_json:
        filters = {"machine": which.machine, "branch": which.branch, "since": which.since}
        click.echo(json.dumps({"results_dir": str(store.root), "plot_dir": str(plot_dir), "order": order,
                               "filters": filters,
                               "benchmarks": [history_lib.to_json(h, p) for h, p in zip(histories, plots)]},
                              indent=1, allow_nan=False))
        return
    several = history_lib.several_machines(histories)
    judged = [h for h in histories if h.note is None]
    if judged:
        out.print(steps_table(judged, order))
    commands = dict.fromkeys(c for h in judged for s in h.steps if (c := history_lib.bisect_command(h.series, s, True)))
    for command in commands:  # one per step, whichever machines saw it
        out.print(f"to find the commit: {escape(command)}", soft_wrap=True)
    for h in histories:
        where = f" on {h.series.machine_label}" if several else ""
        for note in (h.note, h.series.left_out):
            if note is not None:
                out.print(f"{escape(h.series.name)}{escape(where)}: {escape(note)}", soft_wrap=True)
    out.print(f"plots: {escape(str(plot_dir))}/", soft_wrap=True)


def steps_table(histories: list[History], order: str) -> Table:
    """One row per step; a benchmark (on a machine) without a step gets one row saying so."""
    table = Table(title=f"steps in stored runs, by {order}", title_justify="left")
    for column in ("benchmark", "machine", "points", "first run after the step", "between commits", "before",
                   "after", "change", "p"):
        table.add_column(column, justify="right" if column in ("points", "before", "after", "change", "p") else "left",
                         overflow="fold")
    for h in histories:
        series = h.series
        where = escape(series.machine_label)
        if not h.steps:
            table.add_row(escape(series.name), where, str(series.measured), "[dim]no step[/]", "", "", "", "", "")
        for step in h.steps:
            style = "red" if step.worse else "green"
            commits = f"{(step.commit_before or '-')[:10]}..{(step.commit or '-')[:10]}"
            table.add_row(escape(series.name), where, str(series.measured), step.run_id, commits,
                          format_value(step.before, series.unit), format_value(step.after, series.unit),
                          f"[{style}]{step.change:+.1%} {step.direction}[/]", f"{step.p_value:.2g}")
    return table
