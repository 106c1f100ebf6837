"""Benchmark commands: run a suite, list its benchmarks, show and list stored runs."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from perfwatch import display
from perfwatch.bench import runner
from perfwatch.bench.suite import Benchmark
from perfwatch.cli.app import cli, config_of, err, out, paths_argument, prepare_store, results_dir_option, store_of
from perfwatch.config import SIZES
from perfwatch.errors import BenchmarkFailed
from perfwatch.results import BenchResult


@cli.command()
@paths_argument
@click.option("--suite", "size", type=click.Choice(SIZES), default=None,
              help="Suite size: quick (<= 3 min), ci (<= 15 min) or full. Default: quick or config.")
@click.option("--filter", "pattern", metavar="REGEX", help="Run only benchmarks whose name matches REGEX.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored results document as JSON on stdout.")
@results_dir_option
@click.pass_context
def run(ctx: click.Context, paths: tuple[Path, ...], size: str | None, pattern: str | None,
        as_json: bool, results_dir: Path | None) -> None:
    """Run benchmark suites (default: ./suites or the reference suites) and store the run.

    Each benchmark runs in its own process with warm-up, calibrated repeats and a
    timeout; every raw sample is kept. Exits 3 if any benchmark failed. A run stopped
    by Ctrl-C or SIGTERM stores the benchmarks it finished; one killed outright is
    cleaned up, its finished benchmarks stored, by the next run.
    """
    config = config_of(ctx)
    size = size or config.suite
    store = store_of(ctx, results_dir)
    prepare_store(store, results_dir)
    suite_paths = list(paths) or runner.default_paths(config.paths)
    benchmarks = runner.select(runner.discover(suite_paths, size), size, pattern)
    if not benchmarks:
        raise runner.nothing_selected(size, suite_paths, pattern)

    warning = runner.busy_warning()
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    table_console = err if as_json else out
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task(f"{size} suite", total=len(benchmarks))

        def on_progress(event: str, bench: Benchmark, result: BenchResult | None) -> None:
            if event == "start":
                progress.update(task, description=escape(bench.name))
                return
            progress.advance(task)
            if result is not None and result.status in ("failed", "timeout"):
                progress.console.print(f"[red]✗[/] {escape(bench.name)}: {escape(result.error or result.status)}",
                                       soft_wrap=True)

        debug_log = (lambda text: progress.console.print(escape(text))) if ctx.obj["debug"] else None
        record = runner.run_suite(benchmarks, size, progress=on_progress, debug_log=debug_log, store=store)

    table_console.print(display.results_table(record))
    table_console.print(f"[dim]{escape(display.env_line(record.env))}[/]")
    table_console.print(f"stored {escape(str(store.save(record)))}")
    if as_json:
        click.echo(record.to_json())
    if record.failed:
        raise BenchmarkFailed(f"{len(record.failed)} of {len(record.benchmarks)} benchmarks failed; see the table above")


@cli.command("list")
@paths_argument
@click.option("--suite", "size", type=click.Choice(SIZES), default=None,
              help="List only the benchmarks of this suite size (default: all sizes).")
@click.pass_context
def list_benchmarks(ctx: click.Context, paths: tuple[Path, ...], size: str | None) -> None:
    """List the benchmarks in suite files or directories, with their parameters."""
    suite_paths = list(paths) or runner.default_paths(config_of(ctx).paths)
    benchmarks = runner.discover(suite_paths, size or "full")
    if size:
        benchmarks = runner.select(benchmarks, size)
    table = Table()
    for column in ("benchmark", "kind", "unit", "suites"):
        table.add_column(column, overflow="fold")
    for b in benchmarks:
        unit = b.unit + (" ↑" if b.higher_is_better else "")
        table.add_row(escape(b.name), b.kind, escape(unit), ",".join(s for s in SIZES if s in b.sizes))
    out.print(table)
    out.print(f"{len(benchmarks)} benchmarks")


@cli.command()
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the results document as JSON.")
@results_dir_option
@click.pass_context
def show(ctx: click.Context, run_ref: str | None, as_json: bool, results_dir: Path | None) -> None:
    """Show a stored run: RUN is a run id (or prefix), a results file, or `latest` (default)."""
    record = store_of(ctx, results_dir).load(run_ref)
    if as_json:
        click.echo(record.to_json())
        return
    out.print(display.results_table(record))
    out.print(f"[dim]{escape(display.env_line(record.env))}[/]")


@cli.command()
@results_dir_option
@click.pass_context
def runs(ctx: click.Context, results_dir: Path | None) -> None:
    """List the stored runs, oldest first."""
    store = store_of(ctx, results_dir)
    table = Table(title=escape(str(store.root)), title_justify="left")
    for column in ("run", "created", "suite", "commit", "benchmarks", "failed"):
        table.add_column(column)
    for record in store.runs():
        commit = (record.env.get("git_commit") or "-")[:10] + ("+dirty" if record.env.get("git_dirty") else "")
        table.add_row(escape(record.run_id), escape(record.created), escape(record.suite or "?"), escape(commit),
                      str(len(record.benchmarks)), str(len(record.failed)))
    out.print(table)
