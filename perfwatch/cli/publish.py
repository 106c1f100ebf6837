"""``perfwatch publish``: the store's history as a static site (summary, a page per benchmark, regressions with
their Atom feed, machines) that opens from disk or any static host."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from perfwatch.cli.app import cli, config_of, err, results_dir_option, store_of
from perfwatch.cli.app import out as console


@cli.command()
@results_dir_option
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="The site's directory (default: reports/site); files perfwatch did not write are left alone.")
@click.option("--commit-url", metavar="TEMPLATE",
              help="Where a commit's page is, with {commit} for its hash, e.g. https://github.com/ORG/REPO/commit/{commit}.")
@click.option("--full", is_flag=True, help="Compute every page again instead of building on the last publish's cache.")
@click.option("--baseline", "baseline_path", type=click.Path(path_type=Path, dir_okay=False),
              help="A baseline file to set each latest commit against too (default: perfwatch-baseline.json when "
                   "there is one; see `perfwatch baseline save`).")
@click.pass_context
def publish(ctx: click.Context, results_dir: Path | None, out: Path | None, commit_url: str | None, full: bool,
            baseline_path: Path | None) -> None:
    """Write a static site of every benchmark's history in the store.

    A summary of every benchmark (latest value, its verdict against the previous commit and against the
    baseline file on the baseline's machine, change points, a sparkline), a page per benchmark with one series per machine and parameter combination, the
    regressions with an Atom feed (regressions.xml), and the machines. plotly.js is bundled: the site
    loads nothing from outside itself. Publishing again reads and computes only the benchmarks that new
    runs touched (the rest comes from the cache the last publish left in the site), and rewrites only
    the files that changed.
    """
    from perfwatch.publish import DEFAULT_SITE_DIR  # the site builder loads only for this command
    from perfwatch.publish import publish as publish_site
    from perfwatch.regress.baseline import DEFAULT_BASELINE, load_baseline

    out = out or DEFAULT_SITE_DIR
    store = store_of(ctx, results_dir)
    if baseline_path is None and DEFAULT_BASELINE.exists():
        baseline_path = DEFAULT_BASELINE
    baseline = load_baseline(baseline_path) if baseline_path else None
    done = publish_site(store, out, thresholds=config_of(ctx).thresholds, repo=Path.cwd(), commit_url=commit_url,
                        full=full, baseline=baseline)
    for note in done.data.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    for name in done.files.kept:
        err.print(f"[yellow]note:[/] {escape(str(out / name))} is no longer part of the site but was edited "
                  "since perfwatch wrote it; left in place", soft_wrap=True)
    files = done.files
    how = (f"{done.recomputed} recomputed, {done.reused} reused from the cache" if done.rebuilt is None
           else f"all computed: {escape(done.rebuilt)}")
    console.print(f"published {len(done.data.summary['rows'])} benchmark series ({done.recomputed + done.reused} "
                  f"pages: {how}) from {done.runs} runs of {escape(str(store.root))}: {len(files.written)} files "
                  f"written, {len(files.unchanged)} unchanged, {len(files.removed)} removed; open "
                  f"{escape(str(out / 'index.html'))}", soft_wrap=True)
