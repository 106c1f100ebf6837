"""Tuning commands: `perfwatch tune loader` searches DataLoader knobs within a time budget."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from perfwatch import display
from perfwatch.bench import runner
from perfwatch.cli.app import cli, err, out
from perfwatch.errors import UserError, one_line
from perfwatch.tune.search import TuneResult, loader_call

if TYPE_CHECKING:  # torch loads only when a loader is tuned
    from torch.utils.data import Dataset


@dataclass(frozen=True)
class Reference:
    """A reference dataset: a synthetic spec in one storage format, and its bottleneck."""

    format: str
    spec: Mapping[str, Any]
    about: str


REFERENCE_DATASETS: dict[str, Reference] = {
    "transforms": Reference("memory", {"num_samples": 2048, "transform_cost": 8},
                            "in memory, 8 numpy passes per sample: CPU-bound transforms"),
    "files": Reference("files", {"num_samples": 4096},
                       "one small file per sample: an open and a read per sample"),
    "npy": Reference("npy", {"num_samples": 4096}, "one memory-mapped .npy: cheap reads, per-batch costs"),
    "parquet": Reference("parquet", {"num_samples": 4096}, "Parquet row groups, decoded per process"),
}


def load_dataset(ref: str) -> Dataset:
    """The dataset ``ref`` names: a reference dataset, or ``module:callable`` imported from the
    working directory and called with no arguments."""
    if ref in REFERENCE_DATASETS:
        from perfwatch.pipelines.datasets import DatasetSpec, open_dataset

        reference = REFERENCE_DATASETS[ref]
        return open_dataset(DatasetSpec(**reference.spec), reference.format)
    module_name, _, attribute = ref.partition(":")
    if not (module_name and attribute):
        raise UserError(f"--dataset {ref!r}: unknown reference dataset; choose one of "
                        f"{', '.join(REFERENCE_DATASETS)}, or give MODULE:CALLABLE that returns a torch Dataset")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UserError(f"--dataset {ref}: importing {module_name!r} failed: {one_line(exc)} "
                        "(run from the directory that holds it)") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UserError(f"--dataset {ref}: module {module_name!r} has no callable {attribute!r}")
    try:
        dataset = factory()
    except Exception as exc:
        raise UserError(f"--dataset {ref}: calling {attribute}() failed: {one_line(exc)}") from exc
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise UserError(f"--dataset {ref}: {attribute}() returned a value of type {type(dataset).__name__}, "
                        "not a map-style torch Dataset (with __len__ and __getitem__)")
    return dataset


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
    from perfwatch.tune.measure import tune_loader  # torch loads only for this command

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
