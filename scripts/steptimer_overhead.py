"""Overhead of StepTimer on the reference CPU MLP training step (an evaluation, not a test).

Plain and instrumented blocks of training steps run interleaved in one process
(A B, B A, A B, ...), so drift in the machine (frequency, other processes) hits
both sides of a pair alike; the overhead is the median of the per-pair ratios
instrumented / plain. A microbenchmark of an empty phase and an empty step gives
the fixed cost per call, a cross-check that does not depend on the step time.

    python scripts/steptimer_overhead.py [--pairs 40] [--block 20] [--batch-size 64] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from perfwatch.env import cpu_model
from perfwatch.instrument import StepTimer
from perfwatch.pipelines.models import build_model
from perfwatch.stats import iqr, median, quantile

DEVICE = torch.device("cpu")


# The two loops below are deliberate twins: the plain one is what a user runs today,
# the other the same work with the timer's phases around it.
def plain_block(model, opt, batches) -> None:
    for x, y in batches:
        x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()


def timed_block(model, opt, batches, timer: StepTimer) -> None:
    for x, y in timer.iter(batches):
        with timer.phase("h2d"):
            x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
        with timer.phase("forward"):
            loss = F.cross_entropy(model(x), y)
        with timer.phase("backward"):
            loss.backward()
        with timer.phase("optimizer"):
            opt.step()
            opt.zero_grad()


def seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def paired_ratios(model, opt, batches, timer: StepTimer, pairs: int, warmup: int) -> tuple[list, list]:
    """Per-pair instrumented/plain ratios and plain per-step times; the order within
    a pair alternates so neither side always runs first."""
    ratios, plain_steps = [], []
    for i in range(warmup + pairs):
        if i % 2:
            timed = seconds(timed_block, model, opt, batches, timer)
            plain = seconds(plain_block, model, opt, batches)
        else:
            plain = seconds(plain_block, model, opt, batches)
            timed = seconds(timed_block, model, opt, batches, timer)
        if i >= warmup:
            ratios.append(timed / plain)
            plain_steps.append(plain / len(batches))
    return ratios, plain_steps


def call_costs(n: int = 200_000, repeats: int = 7) -> tuple[float, float]:
    """Median cost in seconds of one empty ``with timer.phase(...)`` inside a step,
    and of one empty step of ``timer.iter``, each net of the bare loop."""

    def empty_loop():
        for _ in range(n):
            pass

    def phases():
        with timer.step():
            for _ in range(n):
                with timer.phase("forward"):
                    pass

    def steps():
        for _ in timer.iter(range(n)):
            pass

    timer = StepTimer(device="cpu")
    bare = median([seconds(empty_loop) for _ in range(repeats)])
    phase_cost = median([seconds(phases) for _ in range(repeats)]) - bare
    step_cost = median([seconds(steps) for _ in range(repeats)]) - bare
    return phase_cost / n, step_cost / n


def bootstrap_ci(values: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median."""
    rng = np.random.default_rng(seed)
    draws = rng.choice(np.asarray(values), size=(resamples, len(values)), replace=True)
    medians = np.median(draws, axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=40, help="measured A/B pairs (default 40)")
    parser.add_argument("--block", type=int, default=20, help="training steps per block (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="pairs run first and discarded (default 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the model's own")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model("mlp")
    batch_size = args.batch_size or model.default_batch_size
    generator = torch.Generator().manual_seed(0)
    batches = [model.example_batch(batch_size, generator) for _ in range(args.block)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    timer = StepTimer(device="cpu")

    ratios, plain_steps = paired_ratios(model, opt, batches, timer, args.pairs, args.warmup)
    phase_cost, step_cost = call_costs()
    ratio, (lo, hi) = median(ratios), bootstrap_ci(ratios)
    step_time = median(plain_steps)
    predicted = (step_cost + 4 * phase_cost) / step_time
    measured_steps = 2 * args.pairs * args.block
    machine = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"

    print(f"machine:                 {machine}")
    print(f"workload:                build_model('mlp'), batch {batch_size}, SGD; data_wait + 4 phases per step")
    print(f"steps:                   {args.pairs} pairs x {args.block} steps per side "
          f"({measured_steps} measured steps, {args.warmup} warm-up pairs)")
    print(f"median plain step:       {step_time * 1e3:.3f} ms")
    print(f"median paired ratio:     {ratio:.4f}  (overhead {100 * (ratio - 1):+.2f}%)")
    print(f"IQR of ratios:           {iqr(ratios):.4f}  "
          f"(q25 {quantile(ratios, 0.25):.4f}, q75 {quantile(ratios, 0.75):.4f})")
    print(f"bootstrap 95% CI:        [{lo:.4f}, {hi:.4f}]")
    print(f"cost per phase call:     {phase_cost * 1e6:.2f} us (empty `with timer.phase(...)`)")
    print(f"cost per step (iter):    {step_cost * 1e6:.2f} us (empty step of timer.iter)")
    print(f"predicted overhead:      {100 * predicted:.3f}% of the step (1 step + 4 phase calls)")
    print()
    print("| benchmark | machine | steps | median step | median paired ratio | IQR of ratios "
          "| 95% CI (bootstrap) | per phase call | per step |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| StepTimer overhead, CPU MLP (batch {batch_size}) | {machine} | {measured_steps} "
          f"| {step_time * 1e3:.2f} ms | {ratio:.4f} ({100 * (ratio - 1):+.2f}%) | {iqr(ratios):.4f} "
          f"| [{lo:.4f}, {hi:.4f}] | {phase_cost * 1e6:.2f} us | {step_cost * 1e6:.2f} us |")


if __name__ == "__main__":
    main()
