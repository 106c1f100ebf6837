"""Tuning commands: `perfwatch tune loader` searches DataLoader knobs within a time budget."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from .. import display, runner
from ..tune import REFERENCE_DATASETS, TuneResult, load_dataset, loader_call
from .app import cli, err, out

DATASETS_HELP = "; ".join(f"{name}: {ref.about}" for name, ref in REFERENCE_DATASETS.items())


@cli.group()
def tune() -> None:
    """Search for faster settings of a training pipeline."""


@tune.command("loader")
@click.option("--dataset", "ref", default="transforms", show_default=True, metavar="REF|MODULE:CALLABLE",
              help=f"A reference dataset ({DATASETS_HELP}), or MODULE:CALLABLE in the working directory "
                   "that returns a map-style torch Dataset.")
@click.option("--budget", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              metavar="SECONDS", help="Time to spend measuring (importing torch and the dataset come on top).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True,
              help="The dataset's natural batch size: the default config's, and where the batch search starts.")
@click.option("--shuffle", is_flag=True, help="Shuffle every epoch, as training does (torch's default: no).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (the table goes to stderr).")
def loader(ref: str, budget: float, batch_size: int, shuffle: bool, as_json: bool) -> None:
    """Find the fastest DataLoader settings for a dataset without measuring the whole grid.

    Searches num_workers, batch_size, prefetch_factor, persistent_workers and (with CUDA)
    pin_memory by coordinate ascent with short trials, then measures the finalists and the
    default config (torch's defaults at --batch-size) side by side. Throughput is samples/s
    over real epochs of a real DataLoader, worker restarts between epochs included.
    """
    from ..tune import tune_loader  # torch loads only for this command

    dataset = load_dataset(ref)
    warning = runner.busy_warning()
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    result = tune_loader(dataset, budget_s=budget, batch_size=batch_size, shuffle=shuffle, name=f"--dataset {ref}")
    console = err if as_json else out
    console.print(tried_table(result))
    console.print(summary(ref, result), soft_wrap=True)
    if as_json:
        click.echo(json.dumps({"dataset": ref, **result.to_dict()}, indent=1))


def tried_table(result: TuneResult) -> Table:
    """One row per config tried, best first: samples/s of its exploration trial and of the final rounds."""
    table = Table(title="configs tried (samples/s), best first", title_justify="left")
    for column in ("workers", "batch", "prefetch", "persistent", "pin", "explore", "final", "spread", ""):
        table.add_column(column, justify="right")
    for row in result.rows():
        finals = row["final_samples"]
        table.add_row(
            str(row["num_workers"]), str(row["batch_size"]), str(row["prefetch_factor"] or "-"),
            "yes" if row["persistent_workers"] else "no", "yes" if row["pin_memory"] else "no",
            escape(row["error"]) if row["error"] else f"{row['explore_samples_per_s']:,.0f}",
            f"{row['final_samples_per_s']:,.0f}" if finals else "", display.format_spread(finals) if finals else "",
            "best" if row["best"] else "default" if row["default"] else "",
        )
    return table


def summary(ref: str, result: TuneResult) -> str:
    window = (f"measured epochs of its first {result.epoch_samples} of {result.dataset_samples} samples"
              if result.epoch_samples < result.dataset_samples else f"epochs of all {result.dataset_samples} samples")
    best, default = (f"{value:,.0f} samples/s" for value in (result.best_samples_per_s, result.default_samples_per_s))
    lines = [
        f"best: {loader_call(result.best)}",
        f"  {best}, speedup {result.speedup:.2f}x over the default {loader_call(result.default)} ({default})"
        if result.best != result.default else f"  {best}, speedup 1.00x: the default config is the fastest found",
        f"{escape(ref)}: {result.configs_tried} of {result.grid_size} configs tried in {result.seconds:.1f} s of a "
        f"{result.budget_s:.0f} s budget; {window}",
    ]
    if result.budget_exhausted:
        lines.append("[yellow]the budget ended the search before it converged; a larger --budget may find more[/]")
    return "\n".join(lines)
