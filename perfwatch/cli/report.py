"""Reports: `perfwatch report RUN` renders a stored benchmark run as HTML and Markdown with figures."""

from __future__ import annotations

from pathlib import Path

import click

from perfwatch.cli import app
from perfwatch.cli.app import cli, config_of, results_dir_option, store_of


@cli.command("report")
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Directory for report.html, report.md and the figures (default: reports/run-<run id>).")
@click.option("--baseline", type=click.Path(path_type=Path, dir_okay=False),
              help="A results document to compare with (default: ./perfwatch-baseline.json when it exists).")
@results_dir_option
@click.pass_context
def report_command(ctx: click.Context, run_ref: str | None, out: Path | None, baseline: Path | None,
                   results_dir: Path | None) -> None:
    """Write an HTML and Markdown report of a stored run: RUN is a run id (or prefix), a results
    file, or `latest` (default).

    It has every benchmark's median and spread, the distribution of its samples, each
    benchmark family's metric against its numeric parameters (loader throughput against
    num_workers and batch_size), and the comparison with the baseline.
    """
    from perfwatch.regress.report import (  # matplotlib loads only for this command
        default_out,
        find_baseline,
        write_run_report,
    )

    record = store_of(ctx, results_dir).load(run_ref)
    reference = find_baseline(baseline)
    page = write_run_report(record, out or default_out(record), reference, config_of(ctx).thresholds)
    app.out.print(f"report: {page}" + (f" (compared with {reference[1]})" if reference else ""), soft_wrap=True,
              markup=False)
