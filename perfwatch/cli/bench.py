"""Benchmark commands: run a suite, list its benchmarks, show and list stored runs."""

from __future__ import annotations

import json
from dataclasses import asdict
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
from perfwatch.bench import asvconf, runner
from perfwatch.bench.suite import Benchmark
from perfwatch.cli.app import cli, config_of, err, out, paths_argument, prepare_store, results_dir_option, store_of
from perfwatch.config import SIZES
from perfwatch.errors import BenchmarkFailed
from perfwatch.results import BenchResult


def suite_paths(ctx: click.Context, paths: tuple[Path, ...]) -> list[Path]:
    """The paths given, else perfwatch's configured ones, else the benchmark_dir of an asv project here,
    else ./suites or the reference suites."""
    return list(paths) or runner.default_paths(asvconf.configured_paths(config_of(ctx).paths, Path.cwd()))


def split_broken(benchmarks: list[Benchmark]) -> tuple[list[Benchmark], list[Benchmark]]:
    """(benchmarks, stand-ins of the suite modules that failed to import)."""
    return [b for b in benchmarks if not b.import_error], [b for b in benchmarks if b.import_error]


def not_imported(broken: list[Benchmark]) -> str:
    """``N suite file(s) failed to import and was/were skipped``."""
    several = len(broken) != 1
    return f"{len(broken)} suite file{'s' if several else ''} failed to import and {'were' if several else 'was'} skipped"


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
    """Run benchmark suites (default: the asv project's benchmark_dir, ./suites or the reference suites)
    and store the run.

    Each benchmark runs in its own process with warm-up, calibrated repeats and a
    timeout; every raw sample is kept. Exits 3 if any benchmark failed or a suite file
    failed to import (it is reported, recorded as failed, and the rest runs). A run stopped
    by Ctrl-C or SIGTERM stores the benchmarks it finished; one killed outright is
    cleaned up, its finished benchmarks stored, by the next run.
    """
    config = config_of(ctx)
    size = size or config.suite
    store = store_of(ctx, results_dir)
    prepare_store(store, results_dir)
    paths_run = suite_paths(ctx, paths)
    found, broken = split_broken(runner.discover(paths_run, size))
    benchmarks = runner.select(found, size, pattern)
    if not benchmarks:
        raise runner.nothing_selected(size, paths_run, pattern)
    benchmarks = broken + benchmarks  # a file that did not import fails the run whatever the filter

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
        failed_runs = len(record.failed) - len(broken)
        parts = [f"{failed_runs} of {len(record.benchmarks) - len(broken)} benchmarks failed"] if failed_runs else []
        if broken:
            parts.append(not_imported(broken))
        raise BenchmarkFailed(f"{'; '.join(parts)}; see the table above")


@cli.command("list")
@paths_argument
@click.option("--suite", "size", type=click.Choice(SIZES), default=None,
              help="List only the benchmarks of this suite size (default: all sizes).")
@click.option("--json", "as_json", is_flag=True,
              help="Print {benchmarks: [spec...], import_errors: [line...]} as JSON (names, versions, attributes).")
@click.pass_context
def list_benchmarks(ctx: click.Context, paths: tuple[Path, ...], size: str | None, as_json: bool) -> None:
    """List the benchmarks in suite files or directories, with their parameters.

    A suite file that fails to import is reported on stderr, one line each, and left out (exit 3).
    """
    benchmarks, broken = split_broken(runner.discover(suite_paths(ctx, paths), size or "full"))
    if size:
        benchmarks = runner.select(benchmarks, size)
    if as_json:
        click.echo(json.dumps({"benchmarks": [asdict(b) for b in benchmarks],
                               "import_errors": [b.import_error for b in broken]}, indent=2))
    else:
        print_listing(benchmarks, broken)
    if broken:
        raise BenchmarkFailed(not_imported(broken) + ("; see import_errors" if as_json else "; see the warnings above"))


def print_listing(benchmarks: list[Benchmark], broken: list[Benchmark]) -> None:
    """The table of benchmarks, after one warning line per suite file that failed to import."""
    for b in broken:
        err.print(f"[yellow]warning:[/] {escape(b.import_error or '')}; its benchmarks are left out", soft_wrap=True)
    pretty = any(b.pretty_name for b in benchmarks)
    table = Table()
    for column in ("benchmark", *(("pretty name",) if pretty else ()), "kind", "unit", "suites"):
        table.add_column(column, overflow="fold")
    for b in benchmarks:
        unit = b.unit + (" ↑" if b.higher_is_better else "")
        shown_pretty = (escape(b.pretty_name or ""),) if pretty else ()
        table.add_row(escape(b.name), *shown_pretty, b.kind, escape(unit), ",".join(s for s in SIZES if s in b.sizes))
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
    for run in store.summaries():  # a database counts in its query, without loading any sample
        commit = (run.commit or "-")[:10] + ("+dirty" if run.dirty else "")
        table.add_row(escape(run.run_id), escape(run.created), escape(run.suite or "?"), escape(commit),
                      str(run.benchmarks), str(run.failed))
    out.print(table)
