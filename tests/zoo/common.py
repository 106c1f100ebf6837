"""What the bottleneck-zoo scripts share: their command line, the plain training loop, the result line.

Each zoo script is an ordinary, uninstrumented training script with one bottleneck
injected on purpose; its module docstring says which and why, and its ``EXPECTED``
constant is the primary bottleneck ``perfwatch profile`` should report (read by
scripts/profile_accuracy.py without importing the script). The loop is the one a user
writes, so py-spy sees the usual torch frames: DataLoader ``__next__``, ``Module``
calls, ``backward``, ``Optimizer.step``.

The last line a script prints is ``zoo-result {json}`` with its own throughput,
timed from the first ``next()`` on the loader to the end of the last step, which is
what the overhead measurement compares with and without the profiler. With
``--report-every S`` it also prints ``zoo-tick {json}`` lines (steps done in the last
~S seconds, and when), so a profiler switched on and off around one long run can be
compared window by window.

Scripts run one intra-op thread by default. On the 2-core reference machine, two
OpenMP threads plus anything else running (DataLoader workers, another process, the
profiler itself) hit the spin-barrier trap: a 3 ms MLP step was measured at 196 ms.
The zoo is about each script's injected bottleneck, not about that one.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

RESULT_PREFIX = "zoo-result "
TICK_PREFIX = "zoo-tick "


def parse_args(description: str, steps: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: see the module docstring)")
    parser.add_argument("--report-every", type=float, metavar="SECONDS",
                        help="also print the throughput of every such interval")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def train(
    loader,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    args: argparse.Namespace,
    after_step: Callable[[int, torch.Tensor], None] | None = None,
) -> None:
    """The plain loop: ``args.steps`` batches (epoch after epoch) to ``args.device``, forward,
    backward, step. ``after_step(step, loss)`` is where a script injects per-step extra work."""
    steps, device, report_every = args.steps, args.device, args.report_every
    model.train()
    done = 0
    start = tick = time.perf_counter()
    tick_steps = 0
    while done < steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if after_step is not None:
                after_step(done, loss)
            done += 1
            if report_every is not None and (now := time.perf_counter()) - tick >= report_every:
                print(TICK_PREFIX + json.dumps({"end": time.time(), "steps": done - tick_steps,
                                                "seconds": now - tick}), flush=True)
                tick, tick_steps = now, done
            if done == steps:
                break
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(RESULT_PREFIX + json.dumps({"steps": done, "seconds": seconds, "steps_per_second": done / seconds}),
          flush=True)
