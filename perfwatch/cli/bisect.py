"""`perfwatch bisect`: find the commit that made a benchmark slower, with paired measurements at every step."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from perfwatch.bench import runner
from perfwatch.cli.app import cli, config_of, err, out, paths_argument
from perfwatch.cli.regress import threshold_option, thresholds_of, warn_if_busy
from perfwatch.config import SIZES
from perfwatch.errors import BenchmarkFailed
from perfwatch.regress.bisect_report import headline, json_text, progress_line, write_report
from perfwatch.regress.bisect_run import prepare, run_bisection


@cli.command("bisect")
@click.argument("bench")
@paths_argument
@click.option("--good", required=True, metavar="REF", help="The last commit known to be fast (branch, tag or hash).")
@click.option("--bad", default="HEAD", show_default=True, metavar="REF",
              help="A commit known to be slow; GOOD must be on its first-parent history.")
@click.option("--suite", "size", type=click.Choice(SIZES), default="ci", show_default=True,
              help="Suite size: its sampling budget (and rounds) is what each paired measurement spends.")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop before a step that would end past this many seconds; the report names the range left.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many steps.")
@click.option("--perturb-env/--no-perturb-env", default=True, show_default=True,
              help="Give each round's workers an environment of another size, as `ci --against` does.")
@click.option("--json", "as_json", is_flag=True, help="Print the bisection as a JSON document on stdout.")
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where report.md, report.html and report.json go (default: reports/bisect-<GOOD>-<BAD>).")
@threshold_option
@click.pass_context
def bisect_command(ctx: click.Context, bench: str, paths: tuple[Path, ...], good: str, bad: str, size: str,
                   budget: float | None, max_steps: int | None, perturb_env: bool, as_json: bool,
                   report_dir: Path | None, threshold_specs: tuple[str, ...]) -> None:
    """Find the commit between GOOD and BAD that made BENCH (a name, or a glob naming one) slower.

    It first confirms the regression, GOOD against BAD, paired as `ci --against` measures;
    then bisects the first-parent commits between them, comparing each midpoint with both
    ends. A too-noisy half is measured again with more rounds rather than guessed; a commit
    whose suite does not import or whose benchmark fails is skipped (the result then names
    the range it could not split); a regression in both halves is reported as two. Only
    temporary worktrees are checked out: the working tree is never touched.

    Exit codes: 0 when the search ran, whatever it found (the last line and the JSON's
    `outcome` say: culprit, several, range, unresolved, unfinished, unconfirmed or no-regression),
    3 when the benchmark cannot be measured at GOOD or BAD, 2 bad input.
    """
    thresholds = thresholds_of(ctx, threshold_specs)
    runner.check_writable(report_dir or Path("reports"), what="reports", setting="report_dir")
    target = prepare(bench, good, bad, size, paths=paths or config_of(ctx).paths, thresholds=thresholds)
    warn_if_busy()
    with runner.terminate_as_interrupt():  # kill -TERM removes the worktrees as Ctrl-C does
        run = run_bisection(target, max_steps=max_steps, budget_s=budget, perturb_env=perturb_env,
                            progress=lambda event: err.print(escape(progress_line(event, target)), soft_wrap=True))
    first, last = target.commits[0], target.commits[-1]
    written = write_report(run, report_dir or Path("reports") / f"bisect-{first.short}-{last.short}")
    if as_json:
        click.echo(json_text(run))
    else:
        out.print(escape(headline(run)), soft_wrap=True)
    err.print("report: " + escape(", ".join(str(p) for p in written.values())), soft_wrap=True)
    if run.result.outcome == "failed":
        raise BenchmarkFailed(headline(run))
