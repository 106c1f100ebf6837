"""Overhead of the zero-code step timing on a small CPU training loop (an evaluation, not a test).

The same unmodified script (a DataLoader over in-memory tensors, an MLP, SGD) runs in
fresh processes under the child hooks exactly as ``perfwatch monitor`` launches it
(publishing every second into a scratch directory), with the timing on (B) or off (A,
``PERFWATCH_STEP_TIMING=0``: the same sitecustomize, nothing patched), interleaved
A B, B A, A B, ... Each process reports the median of its blocks' mean step times;
the overhead is the median of the per-pair ratios B / A, with their spread. ``--micro``
runs, the same way, a loop of nothing but ``next()`` on a DataLoader and ``opt.step()`` on
one parameter: the difference of the medians is the hook path's fixed cost per step.

    python scripts/step_timing_overhead.py [--pairs 10] [--steps 3000] [--batch-size 64] [--width 256] [--micro]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from perfwatch.env import cpu_model
from perfwatch.monitoring.metrics import STEP_BUCKETS
from perfwatch.monitoring.step_timing import ENABLE_ENV, STEP_BUCKETS_ENV, STEP_DIR_ENV, install_child_hooks
from perfwatch.stats import iqr, median

LOOP = textwrap.dedent("""\
    import statistics, sys, time
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    steps, batch, width = map(int, sys.argv[1:4])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(batch * 100, 64), torch.randint(0, 10, (batch * 100,)))
    loader = DataLoader(data, batch_size=batch, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    blocks, done, start = [], 0, None
    while done < steps:
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            done += 1
            if done == 200:  # warm-up over
                start, since = time.perf_counter(), done
            elif start is not None and done % 200 == 0:
                now = time.perf_counter()
                blocks.append((now - start) / (done - since))
                start, since = now, done
            if done >= steps:
                break
    print(statistics.median(blocks))
""")


MICRO = textwrap.dedent("""\
    import sys, time
    import torch
    from torch.utils.data import DataLoader

    steps = int(sys.argv[1])
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    it = iter(DataLoader(list(range(steps + 1)), batch_size=None))
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
        opt.step()
    print((time.perf_counter() - start) / steps)
""")


def step_time(script: Path, scratch: Path, timed: bool, args: argparse.Namespace) -> float:
    env = dict(os.environ)
    install_child_hooks(scratch / "hooks", env)
    (scratch / "steps").mkdir(exist_ok=True)
    env.update({STEP_DIR_ENV: str(scratch / "steps"), STEP_BUCKETS_ENV: ",".join(map(str, STEP_BUCKETS)),
                ENABLE_ENV: "1" if timed else "0"})
    done = subprocess.run([sys.executable, str(script), str(args.steps), str(args.batch_size), str(args.width)],
                          env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--micro", action="store_true", help="time the hook path alone (its fixed cost per step)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        script = scratch / "loop.py"
        script.write_text(MICRO if args.micro else LOOP)
        plain, timed, ratios = [], [], []
        for pair in range(args.pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            got = {side: step_time(script, scratch, side, args) for side in order}
            plain.append(got[False])
            timed.append(got[True])
            ratios.append(got[True] / got[False])
        published = sorted((scratch / "steps").glob("steptimer-*.json"))
    load = os.getloadavg()
    print(f"cpu: {cpu_model()}; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{args.pairs} pairs, {args.steps} steps each, batch {args.batch_size}, width {args.width}, 1 thread; "
          f"{len(published)} timed processes published")
    print(f"step, timing off: median {median(plain) * 1e6:.0f} us (IQR {iqr(plain) * 1e6:.0f})")
    print(f"step, timing on:  median {median(timed) * 1e6:.0f} us (IQR {iqr(timed) * 1e6:.0f})")
    print(f"difference of the medians: {(median(timed) - median(plain)) * 1e6:.1f} us per step")
    print(f"ratio on/off: median {median(ratios):.4f}, IQR {iqr(ratios):.4f}, "
          f"min {min(ratios):.4f}, max {max(ratios):.4f}")


if __name__ == "__main__":
    main()
