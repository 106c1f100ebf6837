"""Regression commands: save and show the baseline, compare two runs, and `ci` (run, compare, report, alert)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from perfwatch import display, stats
from perfwatch.bench import runner
from perfwatch.bench.suite import Benchmark
from perfwatch.cli.app import cli, config_of, err, out, paths_argument, prepare_store, results_dir_option, store_of
from perfwatch.config import SIZES, URL_SCHEMES, AlertSinks
from perfwatch.env import fingerprint
from perfwatch.errors import UserError
from perfwatch.regress import ci_report
from perfwatch.regress.alerts import send_alerts
from perfwatch.regress.baseline import DEFAULT_BASELINE, describe_run, load_baseline, load_reference, save_baseline
from perfwatch.regress.compare import Comparison, compare_against, machine_differences, mismatch_error
from perfwatch.regress.recent_runs import FEWEST_RUNS, judge_against_recent, recent_runs
from perfwatch.results import BenchResult, RunRecord
from perfwatch.store.base import RunStore
from perfwatch.thresholds import ThresholdError, Thresholds, parse_thresholds
from perfwatch.urls import redact

VERDICT_STYLE = {"regressed": "bold red", "improved": "green", "unchanged": "", "too-noisy": "yellow",
                 "new": "cyan", "missing": "magenta", "failed": "bold red", "insufficient": "yellow"}

allow_mismatch_option = click.option(
    "--allow-machine-mismatch", is_flag=True,
    help="Compare even when the runs come from different machines (CPU, cores, memory, GPU or torch differ).")
threshold_option = click.option(
    "--threshold", "threshold_specs", multiple=True, metavar="PATTERN=VALUE",
    help="Regression threshold for benchmarks matching the glob, e.g. 'loader.*=5%'; repeatable; "
         "overrides the thresholds table in config (default 3%).")


def thresholds_of(ctx: click.Context, specs: tuple[str, ...]) -> Thresholds:
    """Config thresholds with the --threshold rules in front, so a command-line rule always wins."""
    configured = config_of(ctx).thresholds
    table = {}
    for spec in specs:
        pattern, sep, value = spec.partition("=")
        if not sep:
            raise UserError(f"--threshold {spec!r}: write PATTERN=VALUE, e.g. 'loader.*=5%'")
        table[pattern.strip()] = value
    try:
        given = parse_thresholds(table)
    except ThresholdError as exc:
        raise UserError(f"--threshold: {exc}") from None
    return Thresholds(rules=given.rules + configured.rules, default=configured.default)


def warn(text: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)


def verdicts_table(comparison: Comparison) -> Table:
    """One row per benchmark: medians, direction-normalised change with its CI, p, verdict and why."""
    title = f"baseline {comparison.baseline_text} → candidate {comparison.candidate.run_id} · {comparison.mode}"
    table = Table(title=escape(title),
                  title_justify="left", caption=escape("change: + is worse, [confidence interval]"),
                  caption_justify="left")
    table.add_column("benchmark", overflow="fold")
    table.add_column("baseline", justify="right")
    table.add_column("candidate", justify="right")
    table.add_column("change", justify="right")
    table.add_column("p", justify="right")
    table.add_column("verdict")
    table.add_column("reason", overflow="fold")
    for v in comparison.verdicts:
        style = VERDICT_STYLE[v.verdict]
        table.add_row(escape(v.name), escape(ci_report.median_text(v.baseline_median, v)),
                      escape(ci_report.median_text(v.candidate_median, v)), ci_report.change_text(v), ci_report.p_text(v),
                      f"[{style}]{v.verdict}[/]" if style else v.verdict, escape(v.reason))
    return table


def print_comparison(comparison: Comparison) -> None:
    """The machine differences, loudly, on stderr; the table and a summary line on stdout."""
    warn_incomparable(comparison)
    out.print(verdicts_table(comparison))
    out.print(ci_report.summary_line(comparison))


def warn_incomparable(comparison: Comparison) -> None:
    """Say loudly what makes the two runs less comparable: their machines, or their suite sizes."""
    if comparison.differences:
        warn("comparing runs from different machines: " + "; ".join(comparison.differences)
             + "; timings may differ for that reason alone")
    if comparison.mode == "unpaired":
        for label, run in (("baseline", comparison.baseline), ("candidate", comparison.candidate)):
            busy = busy_at_start(run)
            if busy:
                warn(f"the {label} run began on a busy machine ({busy}): unpaired, its verdicts may be the "
                     "machine's drift; `perfwatch ci --against REF` measures both sides interleaved")
    if comparison.mode == "history":
        busy = busy_at_start(comparison.candidate)
        if busy:
            warn(f"the run began on a busy machine ({busy}): the history gate expects the dedicated runner's quiet")
        if len(comparison.history or ()) < FEWEST_RUNS:
            warn(f"history mode: {len(comparison.history or ())} earlier run(s) of this machine on this branch and "
                 f"suite in the store; benchmarks are judged from {FEWEST_RUNS} on, and this run adds one")
    before, after = comparison.baseline.suite, comparison.candidate.suite
    if before and after and before != after:
        warn(f"the baseline is a {before} run and the candidate a {after} run: "
             "benchmarks or parameters that only one size has are reported as new or missing")
    note = ci_report.single_process_note(comparison)
    if note:
        err.print(f"[dim]note:[/] {escape(note)}", soft_wrap=True)


def busy_at_start(run: RunRecord) -> str | None:
    """How busy the machine was when ``run`` began, if other work loaded it (from its fingerprint); else None."""
    load, cores = (run.env.get("load_average") or [None])[0], run.env.get("cpu_cores_logical")
    if load is None or not cores or load < runner.BUSY_LOAD_PER_CORE * cores:
        return None
    return f"load {load:.1f} on {cores} cores"


def finish(comparison: Comparison) -> None:
    """Exit 3 if a benchmark failed, 1 on a confirmed regression (after everything was reported)."""
    error = comparison.outcome_error()
    if error:
        raise error


# --- baseline ------------------------------------------------------------------------------------

@cli.group()
def baseline() -> None:
    """The baseline: a stored run saved to a file (perfwatch-baseline.json) you commit.

    `perfwatch compare` and `perfwatch ci` judge new runs against it. It keeps the
    environment fingerprint, so a comparison from another machine is refused unless
    --allow-machine-mismatch.
    """


@baseline.command("save")
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option("--to", "path", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_BASELINE,
              show_default=True, help="Baseline file to write (replaced if it exists).")
@results_dir_option
@click.pass_context
def baseline_save(ctx: click.Context, run_ref: str | None, path: Path, results_dir: Path | None) -> None:
    """Save a stored run as the baseline: RUN is a run id (or prefix), a results file, or `latest` (default)."""
    run = store_of(ctx, results_dir).load(run_ref)
    if run.failed:
        warn(f"{len(run.failed)} benchmark(s) failed in this run; they cannot be judged until a baseline has them")
    replaced = save_baseline(run, path)
    out.print(f"saved {escape(describe_run(run))} to {escape(str(path))}"
              + (f"; replaced {escape(replaced)}" if replaced else ""))
    out.print(f"[dim]commit it (git add {escape(str(path))}) so CI compares against it[/]")


@baseline.command("show")
@click.argument("path", metavar="[FILE]", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_BASELINE)
def baseline_show(path: Path) -> None:
    """Show a baseline file (default: perfwatch-baseline.json)."""
    run = load_baseline(path)
    out.print(display.results_table(run))
    out.print(f"[dim]{escape(display.env_line(run.env))}[/]")
    out.print(f"baseline {escape(str(path))}, saved from run {escape(run.run_id)} created {escape(run.created)}")


# --- compare -------------------------------------------------------------------------------------

@cli.command()
@click.argument("baseline_ref", metavar="[BASELINE]", required=False)
@click.argument("candidate_ref", metavar="[CANDIDATE]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print the comparison as Markdown on stdout.")
@allow_mismatch_option
@threshold_option
@results_dir_option
@click.pass_context
def compare(ctx: click.Context, baseline_ref: str | None, candidate_ref: str | None, as_json: bool,
            as_markdown: bool, allow_machine_mismatch: bool, threshold_specs: tuple[str, ...],
            results_dir: Path | None) -> None:
    """Judge CANDIDATE against BASELINE, benchmark by benchmark.

    BASELINE defaults to perfwatch-baseline.json, CANDIDATE to the latest stored run;
    each may be a results file, a stored run id (or prefix) or `latest`. A benchmark
    regressed only if its change is over the threshold and statistically significant;
    a noisy one is reported as too-noisy. Exits 1 on a regression, 3 if a benchmark
    failed in the candidate (that wins: the results are incomplete), else 0.
    """
    if as_json and as_markdown:
        raise UserError("--json and --markdown: choose one output format")
    thresholds = thresholds_of(ctx, threshold_specs)
    store = store_of(ctx, results_dir)
    comparison = compare_against(load_reference(baseline_ref, store), store.load(candidate_ref), thresholds,
                                 allow_machine_mismatch=allow_machine_mismatch)
    if as_json or as_markdown:
        warn_incomparable(comparison)
        click.echo(ci_report.json_text(comparison) if as_json else ci_report.markdown(comparison), nl=as_json)
    else:
        print_comparison(comparison)
    finish(comparison)


# --- ci ------------------------------------------------------------------------------------------

def url_option(name: str, what: str):
    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None and not value.startswith(URL_SCHEMES):
            raise click.BadParameter(f"{redact(value)!r} must be an http:// or https:// URL")
        return value

    return click.option(f"--{name}", metavar="URL", envvar=f"PERFWATCH_{name.upper()}", show_envvar=True,
                        callback=check, help=f"{what} (overrides alerts.{name} in config).")


def warn_if_busy() -> None:
    busy = runner.busy_warning()
    if busy:
        warn(busy)


def print_progress(event: str, bench: Benchmark, result: BenchResult | None) -> None:
    """One line per finished benchmark: readable in a CI log, where a progress bar is not."""
    if event != "done" or result is None:
        return
    if result.ok:
        median = display.format_value(stats.median(result.samples), result.unit)
        err.print(f"[green]✓[/] {escape(bench.name)}: {median} ({len(result.samples)} samples)", soft_wrap=True)
    else:
        err.print(f"[red]✗[/] {escape(bench.name)}: {escape(result.status)}: {escape(result.error or '')}",
                  soft_wrap=True)


@cli.command()
@paths_argument
@click.option("--against", "ref", metavar="REF",
              help="Paired mode: run git REF (in a worktree) and the working tree interleaved, A B B A ..., "
                   "in rounds of fresh processes, and compare round by round. Cancels the drift of shared "
                   "runners; a process's own offset becomes spread between rounds.")
@click.option("--history", "against_history", is_flag=True,
              help="History mode, for a dedicated runner: judge each benchmark's median against this machine's "
                   "recent runs in the store (same branch and suite, committed code), by the spread between "
                   "runs, which a test inside one run cannot see. Judges from 5 earlier runs on.")
@click.option("--history-runs", type=click.IntRange(5, 1000), default=10, show_default=True, metavar="N",
              help="History mode: how many recent runs to judge against.")
@click.option("--history-branch", metavar="BRANCH",
              help="History mode: judge against this branch's runs (default: the checkout's branch).")
@click.option("--perturb-env/--no-perturb-env", default=True, show_default=True,
              help="Paired mode: give each round's workers an environment of another size (PERFWATCH_ENV_PAD), "
                   "so memory-layout effects vary between rounds instead of favouring one side.")
@click.option("--baseline", "baseline_path", type=click.Path(path_type=Path, dir_okay=False),
              default=DEFAULT_BASELINE, show_default=True, help="Baseline file to compare against without --against.")
@click.option("--suite", "size", type=click.Choice(SIZES), default="ci", show_default=True, help="Suite size.")
@click.option("--filter", "pattern", metavar="REGEX", help="Run only benchmarks whose name matches REGEX.")
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where report.md, junit.xml and report.json go (default: reports/ci-<run id>).")
@url_option("webhook", "POST a JSON alert (Slack-compatible `text`) to this URL")
@url_option("alertmanager", "Send alerts to this Prometheus Alertmanager (v2 API)")
@url_option("pushgateway", "Push this run's metrics to this Prometheus Pushgateway")
@allow_mismatch_option
@threshold_option
@results_dir_option
@click.pass_context
def ci(ctx: click.Context, paths: tuple[Path, ...], ref: str | None, against_history: bool, history_runs: int,
       history_branch: str | None, perturb_env: bool, baseline_path: Path, size: str,
       pattern: str | None, report_dir: Path | None, webhook: str | None, alertmanager: str | None,
       pushgateway: str | None, allow_machine_mismatch: bool, threshold_specs: tuple[str, ...],
       results_dir: Path | None) -> None:
    """Run the ci suite, compare it, write reports and send alerts.

    Three modes: --against REF (paired, for shared and hosted runners), --history (this
    machine's recent runs in the store, for a dedicated runner), or else the baseline file
    (unpaired). The run is stored; report.md, junit.xml and report.json go to --report-dir,
    and the Markdown is appended to $GITHUB_STEP_SUMMARY when that is set. A failed alert
    delivery is a warning and changes nothing else.

    Exit codes: 1 a confirmed regression, 3 a benchmark failed (wins over 1: the
    results are incomplete), 2 bad input, 0 otherwise.
    """
    given = [name for name, value in (("--against", ref is not None), ("--history", against_history),
                                      ("--baseline", ctx.get_parameter_source("baseline_path")
                                       is click.core.ParameterSource.COMMANDLINE)) if value]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)}: choose one way to compare (a git ref, the store's history "
                        "or a baseline file)")
    for name in ("history_runs", "history_branch"):
        if not against_history and ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
            raise UserError(f"--{name.replace('_', '-')} belongs to history mode: add --history")
    config = config_of(ctx)
    thresholds = thresholds_of(ctx, threshold_specs)
    store = store_of(ctx, results_dir)
    if against_history:
        history = recent_runs(store, fingerprint(), size, history_runs, history_branch)  # a store error shows now
    elif ref is None:
        baseline_run = load_baseline(baseline_path)
        differences = machine_differences(baseline_run.env, fingerprint())
        if differences and not allow_machine_mismatch:
            raise mismatch_error(differences)  # before a 15-minute suite, not after
    prepare_store(store, results_dir)
    runner.check_writable(report_dir or Path("reports"), what="reports", setting="report_dir")
    if ref is None:
        candidate = run_here(list(paths) or runner.default_paths(config.paths), size, pattern, store)
    else:
        from perfwatch.bench.paired import run_against

        warn_if_busy()  # both sides share the load, but it still widens their spread
        baseline_run, candidate = run_against(ref, size, pattern=pattern, paths=tuple(paths) or config.paths,
                                              progress=print_progress, perturb_env=perturb_env)
    err.print(f"stored {escape(str(store.save(candidate)))}")
    if against_history:
        comparison = judge_against_recent(history, candidate, thresholds)
    else:
        comparison = compare_against(baseline_run, candidate, thresholds, paired=ref is not None,
                                     allow_machine_mismatch=allow_machine_mismatch)
    print_comparison(comparison)
    publish(comparison, report_dir or Path("reports") / f"ci-{candidate.run_id}")
    sinks = replace(config.alerts, webhook=webhook or config.alerts.webhook,
                    alertmanager=alertmanager or config.alerts.alertmanager,
                    pushgateway=pushgateway or config.alerts.pushgateway)
    if sinks != AlertSinks():
        send(sinks, comparison)
    finish(comparison)


def run_here(suite_paths: list[Path], size: str, pattern: str | None, store: RunStore) -> RunRecord:
    """Run the suite in this tree, one progress line per benchmark; each result is journaled as it comes."""
    benchmarks = runner.select(runner.discover(suite_paths, size), size, pattern)
    if not benchmarks:
        raise runner.nothing_selected(size, suite_paths, pattern)
    warn_if_busy()
    return runner.run_suite(benchmarks, size, progress=print_progress, store=store)


def publish(comparison: Comparison, report_dir: Path) -> None:
    """Write the three reports, and the Markdown to the GitHub Actions job summary when there is one."""
    written = ci_report.write_reports(report_dir, comparison)
    out.print("reports: " + ", ".join(escape(str(p)) for p in written.values()))
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        try:
            ci_report.append_step_summary(Path(summary_file), comparison)
        except OSError as exc:
            warn(f"GITHUB_STEP_SUMMARY {summary_file}: cannot append the report ({exc.strerror})")


def send(sinks: AlertSinks, comparison: Comparison) -> None:
    """Deliver alerts; a failed delivery is one warning line and changes no verdict, report or exit code."""
    deliveries = send_alerts(sinks, comparison.candidate, comparison.verdicts,
                             report_url=ci_report.github_run_url(os.environ))
    for delivery in deliveries:
        if delivery.ok:
            err.print(f"{escape(delivery.sink)} {escape(delivery.target)}: {escape(delivery.detail)}", soft_wrap=True)
        else:
            warn(f"the {delivery.sink} alert failed: {delivery.detail}; the verdict and the reports are unaffected")
