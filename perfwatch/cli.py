"""The ``perfwatch`` command line: parse, call a public function, print.

Only this module turns errors into messages and exit codes (DESIGN.md): 0 ok,
1 confirmed regression, 2 usage or input error, 3 a benchmark failed. A
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler
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

from . import display, runner
from .config import Config, load_config
from .errors import BenchmarkFailed, PerfwatchError, UserError
from .results import BenchResult
from .store import Store
from .suite import SIZES, Benchmark

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="perfwatch")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Profiling and continuous benchmarking for PyTorch training pipelines."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
    )
    ctx.obj = {"debug": debug, "config": load_config()}


def config_of(ctx: click.Context) -> Config:
    return ctx.obj["config"]


def store_of(ctx: click.Context, results_dir: Path | None) -> Store:
    return Store(results_dir or config_of(ctx).results_dir)


paths_argument = click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
results_dir_option = click.option(
    "--results-dir", type=click.Path(path_type=Path, file_okay=False),
    help="Where runs are stored (default: .perfwatch/results or results_dir in config).",
)


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
    timeout; every raw sample is kept. Exits 3 if any benchmark failed.
    """
    config = config_of(ctx)
    size = size or config.suite
    store = store_of(ctx, results_dir)
    suite_paths = list(paths) or runner.default_paths(config.paths)
    benchmarks = runner.select(runner.discover(suite_paths, size), size, pattern)
    if not benchmarks:
        where = ", ".join(map(str, suite_paths))
        raise UserError(f"no benchmarks in the {size} suite of {where}"
                        + (f" match --filter {pattern!r}" if pattern else "") + "; `perfwatch list` shows them")

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
        record = runner.run_suite(benchmarks, size, progress=on_progress, debug_log=debug_log)

    path = store.save(record)
    table_console.print(display.results_table(record))
    table_console.print(f"[dim]{escape(display.env_line(record.env))}[/]")
    table_console.print(f"stored {path}")
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
        table.add_row(b.name, b.kind, unit, ",".join(s for s in SIZES if s in b.sizes))
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
    table = Table(title=str(store.root), title_justify="left")
    for column in ("run", "created", "suite", "commit", "benchmarks", "failed"):
        table.add_column(column)
    for record in store.runs():
        commit = (record.env.get("git_commit") or "-")[:10] + ("+dirty" if record.env.get("git_dirty") else "")
        table.add_row(record.run_id, record.created, record.suite, commit,
                      str(len(record.benchmarks)), str(len(record.failed)))
    out.print(table)


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--port", type=click.IntRange(0, 65535), default=9400, show_default=True,
              help="Port to serve /metrics on.")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the metrics to the network).")
@click.option("--interval", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Seconds between samples.")
@click.option("--push", metavar="URL", help="Also push to this Pushgateway every 15 s and on exit.")
@click.option("--pid", type=int, help="Watch this running process and its descendants.")
@click.option("--uss-interval", type=click.FloatRange(0), metavar="SECONDS",
              help="Also measure unique memory (USS/PSS) this often; it costs ms per process.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def monitor(port: int, bind: str, interval: float, push: str | None, pid: int | None,
            uss_interval: float | None, command: tuple[str, ...]) -> None:
    """Serve live metrics for Prometheus: the host, and a training process if given.

    `perfwatch monitor -- python train.py ...` launches the command (its input and
    output pass through, SIGINT/SIGTERM are forwarded) and exits with its exit code.
    With --pid, stops once that process exits. With neither, serves the host until
    Ctrl-C.
    """
    from .monitoring import serve  # prometheus_client loads only for this command

    code = serve(port=port, bind=bind, interval=interval, push=push, pid=pid, command=command,
                 uss_interval=uss_interval, say=lambda line: click.echo(f"perfwatch: {line}", err=True))
    if code:  # the launched command's own code; click would swallow Exit in main()'s non-standalone mode
        sys.exit(code)


@cli.command("profile", context_settings={"allow_interspersed_args": False})
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Directory for report.json, report.md and the raw samples (default: reports/profile-<time>).")
@click.option("--duration", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Stop sampling after this long (default: when the command exits).")
@click.option("--keep-running/--stop-at-duration", default=True, show_default=True,
              help="After --duration, let the command run on, or stop it (SIGINT, SIGTERM, SIGKILL).")
@click.option("--no-pyspy", is_flag=True, help="Do not sample stacks with py-spy (collector-only diagnosis).")
@click.option("--torch-profiler", is_flag=True,
              help="Also run torch.profiler in the command (for --duration, default 30 s) and keep its top ops.")
@click.option("--rate", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="py-spy samples per second.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def profile_command(out: Path | None, duration: float | None, keep_running: bool, no_pyspy: bool,
                    torch_profiler: bool, rate: int, command: tuple[str, ...]) -> None:
    """Find the bottleneck of a training command: `perfwatch profile -- python train.py ...`.

    Runs the command unmodified (its input and output pass through) under the collector and
    py-spy, then writes report.json and report.md: the primary bottleneck (data loading,
    host-to-device copies, compute or other), its evidence and the knobs to turn. Exits
    with the command's exit code.
    """
    from .profile import ProfileOptions, run_profile

    options = ProfileOptions(out=out, duration=duration, keep_running=keep_running, pyspy=not no_pyspy,
                             rate=rate, torch_profiler=torch_profiler)
    result = run_profile(command, options, say=lambda line: click.echo(f"perfwatch: {line}", err=True))
    if result.exit_code:
        sys.exit(result.exit_code)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map every outcome to an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        cli.main(args=argv, prog_name="perfwatch", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.ClickException as exc:  # unknown option, bad choice: click's own usage message
        exc.show(file=sys.stderr)
        return 2
    except click.exceptions.Abort:
        err.print("perfwatch: interrupted")
        return 130
    except PerfwatchError as exc:
        if debug:
            traceback.print_exc()
        prefix = "perfwatch: error: " if exc.exit_code == 2 else "perfwatch: "
        click.echo(prefix + str(exc), err=True)
        return exc.exit_code
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"perfwatch: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                   err=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
