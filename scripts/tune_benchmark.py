"""The DataLoader tuner against a full grid sweep on reference datasets (an evaluation, not a test).

For each dataset:

1. ``tune_loader`` runs as ``perfwatch tune loader`` does, with ``--budget`` seconds; its wall
   time is the tuner's time.
2. The full grid over the tuner's own search space measures every config with the tuner's
   own measurement (``EpochBench`` over the same epoch window): one trial of a warm-up epoch
   and two measured epochs, the same trial as the tuner's final rounds. Its wall time is
   the grid's time.
3. Side by side: the default config, the grid's best and the tuner's best are measured again
   in ``--rounds`` interleaved rounds (the order rotates every round), so the ratio
   tuner/grid of each round comes from the same minutes of a shared, noisy machine. The
   fraction reached is the Hodges-Lehmann estimate of those paired ratios, with its 99%
   interval (``stats.paired_ratio``), not a ratio of numbers taken minutes apart.

Targets (issue 5): the tuner reaches >= 90% of the grid's best throughput in <= 1/3 of its time.

    python scripts/tune_benchmark.py [--datasets transforms,files] [--budget 60] [--rounds 8]
                                     [--out /tmp/tune_benchmark.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from perfwatch import stats
from perfwatch.cli.tune import REFERENCE_DATASETS, load_dataset
from perfwatch.env import cpu_model
from perfwatch.pipelines.loader import LoaderKnobs
from perfwatch.tune.measure import EpochBench, tune_loader
from perfwatch.tune.search import TuneResult, loader_call

GRID_EPOCHS = 2  # measured epochs per grid trial: the tuner's final trial


def log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def grid_sweep(bench: EpochBench, result: TuneResult) -> tuple[dict, float]:
    """samples/s (median of its epochs) of every config in the tuner's space, and the wall time."""
    started = time.perf_counter()
    grid = result.space.grid()
    throughput = {}
    for number, knobs in enumerate(grid, 1):
        trial = bench(knobs, GRID_EPOCHS)
        throughput[knobs] = trial.throughput
        log(f"  grid {number}/{len(grid)} {loader_call(knobs)}: "
            + (trial.error or f"{trial.throughput:,.0f} samples/s"))
    return throughput, time.perf_counter() - started


def side_by_side(bench: EpochBench, configs: dict[str, LoaderKnobs], rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds over ``configs`` (rotating the order): samples/s per config and round."""
    names = list(configs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(bench(configs[name], GRID_EPOCHS).throughput)
        log(f"  round {number + 1}/{rounds}: " + ", ".join(f"{n} {samples[n][-1]:,.0f}" for n in names))
    return samples


def evaluate(ref: str, budget: float, rounds: int) -> dict:
    dataset = load_dataset(ref)
    log(f"{ref}: tuning with a {budget:.0f} s budget")
    started = time.perf_counter()
    result = tune_loader(dataset, budget_s=budget)
    tuner_seconds = time.perf_counter() - started
    log(f"{ref}: tuner picked {loader_call(result.best)} ({result.best_samples_per_s:,.0f} samples/s, "
        f"{result.configs_tried} configs) in {tuner_seconds:.1f} s")
    bench = EpochBench(dataset, result.epoch_samples)
    grid, grid_seconds = grid_sweep(bench, result)
    grid_best = max(grid, key=grid.__getitem__)
    log(f"{ref}: grid best {loader_call(grid_best)} ({grid[grid_best]:,.0f} samples/s) in {grid_seconds:.1f} s")
    samples = side_by_side(bench, {"default": result.default, "grid": grid_best, "tuner": result.best}, rounds)
    return {
        "dataset": ref, "result": result, "tuner_seconds": tuner_seconds, "grid": grid,
        "grid_seconds": grid_seconds, "grid_best": grid_best, "samples": samples,
        "fraction": stats.paired_ratio(samples["grid"], samples["tuner"]),
        "speedup": stats.paired_ratio(samples["default"], samples["tuner"]),
    }


def cell(values: list[float]) -> str:
    return f"{stats.median(values):,.0f} ±{stats.spread(values) * 100:.0f}%"


def markdown(rows: list[dict], args: argparse.Namespace, seconds: float, load: tuple[tuple, tuple]) -> str:
    lines = [
        "| dataset | grid: configs, wall | tuner: configs, wall | tuner/grid wall | grid best | tuner best "
        "| grid best samples/s | tuner best samples/s | tuner/grid throughput (99% CI) | tuner/default |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        result, fraction, speedup = row["result"], row["fraction"], row["speedup"]
        wall_fraction = row["tuner_seconds"] / row["grid_seconds"]
        lines.append(
            f"| {row['dataset']} | {len(row['grid'])}, {row['grid_seconds']:.0f} s "
            f"| {result.configs_tried}, {row['tuner_seconds']:.0f} s | {wall_fraction:.2f} "
            f"| `{loader_call(row['grid_best'])}` | `{loader_call(result.best)}` "
            f"| {cell(row['samples']['grid'])} | {cell(row['samples']['tuner'])} "
            f"| {fraction.ratio:.2f} ({fraction.low:.2f}–{fraction.high:.2f}) | {speedup.ratio:.2f}x |"
        )
    lines += ["", "Side by side, samples/s per interleaved round (median ±IQR/median):", "",
              "| dataset | default | grid best | tuner best | grid's own number | tuner's own number | epoch window |",
              "|---|---|---|---|---|---|---|"]
    for row in rows:
        result = row["result"]
        lines.append(
            f"| {row['dataset']} | {cell(row['samples']['default'])} | {cell(row['samples']['grid'])} "
            f"| {cell(row['samples']['tuner'])} | {row['grid'][row['grid_best']]:,.0f} "
            f"| {result.best_samples_per_s:,.0f} | {result.epoch_samples} of {result.dataset_samples} samples |"
        )
    cores = len(os.sched_getaffinity(0))
    lines += [
        "",
        f"Machine: {cpu_model()}, {cores} cores, torch {torch.__version__}, Python {platform.python_version()}; "
        f"load average {load[0][0]:.1f} at the start and {load[1][0]:.1f} at the end (shared with other work). "
        f"Tuner budget {args.budget:.0f} s per dataset, {args.rounds} side-by-side rounds, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, whole script {seconds / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="transforms,files",
                        help=f"comma-separated reference datasets ({', '.join(REFERENCE_DATASETS)})")
    parser.add_argument("--budget", type=float, default=60.0, help="the tuner's budget per dataset, seconds")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved side-by-side rounds")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tune_benchmark.md"))
    args = parser.parse_args()
    started, load_start = time.perf_counter(), os.getloadavg()
    rows = [evaluate(ref, args.budget, args.rounds) for ref in args.datasets.split(",")]
    text = markdown(rows, args, time.perf_counter() - started, (load_start, os.getloadavg()))
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
