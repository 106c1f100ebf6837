"""Data-parallel training throughput: the reference training step under DDP and torchrun.

Run by torchrun (``python -m perfwatch.pipelines.ddp --steps 20 --out r.json``), each
rank trains the same model on its own synthetic batches: gloo on CPU, nccl on CUDA
with LOCAL_RANK picking the GPU. Rank 0 writes the result as JSON. :func:`run_ddp`
launches the whole thing as one subprocess, for benchmarks and tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from perfwatch.pipelines.models import MODEL_NAMES
from perfwatch.pipelines.train import DEVICES, TrainConfig, TrainingBenchmark

# The directory holding the perfwatch package: ranks must import this same perfwatch.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perfwatch.pipelines.ddp", description="DDP training throughput; run under torchrun."
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--model", choices=MODEL_NAMES, default="mlp")
    parser.add_argument("--batch-size", type=int, default=None, help="per rank (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", choices=DEVICES, default="auto",
        help="auto: CUDA (nccl) when every local rank gets a GPU, else CPU (gloo)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON result file, written by rank 0")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if "WORLD_SIZE" not in os.environ:
        parser.error("run under torchrun, which sets WORLD_SIZE, RANK and LOCAL_RANK")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    return args


def use_cuda(device: str, local_ranks: int) -> bool:
    """Whether ranks train on CUDA: asked for, or ``auto`` with a GPU for every local rank."""
    if device == "auto":
        return torch.cuda.is_available() and torch.cuda.device_count() >= local_ranks
    return device == "cuda"


def train(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """This rank's part: warm-up, then timed steps; returns rank 0's view of the run."""
    world_size, rank = dist.get_world_size(), dist.get_rank()
    device_ids = [torch.cuda.current_device()] if cuda else None
    # seed + rank: each rank draws its own batches; DDP broadcasts rank 0's weights.
    config = TrainConfig(
        model=args.model, batch_size=args.batch_size, device="cuda" if cuda else "cpu", seed=args.seed + rank
    )
    bench = TrainingBenchmark(config, wrap=lambda model: DistributedDataParallel(model, device_ids=device_ids))
    if args.warmup:
        bench.run(args.warmup)
    dist.barrier()
    run = bench.run(args.steps)
    return {
        "world_size": world_size,
        "backend": dist.get_backend(),
        "device": str(bench.device),
        "threads_per_rank": torch.get_num_threads(),
        "model": args.model,
        "batch_size_per_rank": bench.batch_size,
        "steps": run.steps,
        "global_samples_per_s": world_size * run.samples / run.seconds,
        "step_seconds": list(run.step_seconds),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    cuda = use_cuda(args.device, local_ranks)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    elif local_ranks >= (os.cpu_count() or 1):
        torch.set_num_threads(1)  # this machine's ranks would otherwise fight over its cores
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        result = train(args, cuda)
        if dist.get_rank() == 0 and args.out is not None:
            tmp = args.out.with_name(args.out.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            os.replace(tmp, args.out)
    finally:
        dist.destroy_process_group()
    return 0


# A rank's exception ("[rank0]: ValueError: ...") or argparse's "prog: error: ...".
_ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[\w.]+(?:Error|Exception)|\S.*?: error): .*)$")


def _failure_line(stderr: str) -> str:
    """The root cause of a failed torchrun: the first error line of a rank (torchrun's
    own ChildFailedError summary comes last and says nothing), else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        match = _ERROR_LINE.match(line)
        if match and "ChildFailedError" not in line:
            return match.group(1)
    return lines[-1] if lines else "no output on stderr"


def _stop(proc: subprocess.Popen) -> None:
    """Stop torchrun and its ranks. The ranks run in sessions of their own, so only
    torchrun can reach them: SIGTERM first, which it forwards; SIGKILL if it lingers."""
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def run_ddp(
    nproc: int = 2,
    steps: int = 20,
    warmup: int = 3,
    model: str = "mlp",
    batch_size: int | None = None,
    device: str = "auto",
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Launch ``nproc`` ranks with torchrun on this machine and return rank 0's result.

    Raises RuntimeError with a one-line reason when the run fails or exceeds ``timeout``
    seconds (then torchrun and its ranks are stopped).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_PARENT), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with tempfile.TemporaryDirectory(prefix="perfwatch-ddp-") as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "perfwatch.pipelines.ddp", "--steps", str(steps), "--warmup", str(warmup),
            "--model", model, "--device", device, "--out", str(out),
        ]
        if batch_size is not None:
            command += ["--batch-size", str(batch_size)]
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, start_new_session=True,
        )
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise RuntimeError(f"DDP run with {nproc} ranks timed out after {timeout:g} s") from None
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"DDP run failed (exit {proc.returncode}): {_failure_line(stderr)}")
        return json.loads(out.read_text())


if __name__ == "__main__":
    sys.exit(main())
