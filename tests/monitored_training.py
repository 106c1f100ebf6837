"""A small training loop under ``perfwatch.monitor``, as a user would write it.

The integration tests run it as a process of its own, alone or as each rank of a
torchrun job (DDP; gloo on the CPU, nccl on GPUs), so the exporter serves from a real
training process with real DataLoader workers. It trains until ``--seconds`` have
passed, then prints one JSON line: the Unix time of its last step (an instant at
which the tests know training was running) and the steps it counted.

    python tests/monitored_training.py --port 9400 --seconds 10
    torchrun --standalone --nproc_per_node 2 tests/monitored_training.py --port 9400
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from perfwatch.monitoring.session import monitor
from perfwatch.pipelines.datasets import DatasetSpec, MemoryDataset
from perfwatch.pipelines.loader import LoaderKnobs, build_loader
from perfwatch.pipelines.models import build_model

SAMPLE_SHAPE = (3, 16, 16)


def forever(loader: Iterable) -> Iterator:
    """Epoch after epoch: the run ends on time, not at an epoch's end."""
    while True:
        yield from loader


def time_is_up(deadline: float, distributed: bool) -> bool:
    """Whether to stop; under DDP every rank stops at the same step, or the others
    would wait forever in their next all-reduce."""
    done = torch.tensor([float(time.monotonic() >= deadline)])
    if distributed:
        dist.all_reduce(done, op=dist.ReduceOp.MAX)
    return bool(done.item())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="monitor port (rank r serves on port + LOCAL_RANK)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to train")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--push", default=None, help="Pushgateway URL")
    parser.add_argument("--push-interval", type=float, default=1.0)
    args = parser.parse_args(argv)

    distributed = "WORLD_SIZE" in os.environ
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if distributed:
        if cuda:
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(1)  # two ranks on two cores
        dist.init_process_group("nccl" if cuda else "gloo")

    # transform_cost makes each sample cost real CPU in the workers: data_wait is not zero.
    spec = DatasetSpec(num_samples=512, sample_shape=SAMPLE_SHAPE, transform_cost=2)
    loader = build_loader(MemoryDataset(spec), LoaderKnobs(
        batch_size=32, num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=cuda))
    model = build_model("mlp", in_features=SAMPLE_SHAPE[0] * SAMPLE_SHAPE[1] * SAMPLE_SHAPE[2], hidden=256).to(device)
    if distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    deadline = time.monotonic() + args.seconds
    last_step = None
    with monitor(port=args.port, interval=0.5, push=args.push, push_interval=args.push_interval) as mon:
        timer = mon.timer
        for inputs, targets in timer.iter(forever(loader)):
            with timer.phase("h2d"):
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with timer.phase("forward"):
                loss = F.cross_entropy(model(inputs), targets)
            with timer.phase("backward"):
                loss.backward()
            with timer.phase("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            mon.log(loss=loss, lr=optimizer.param_groups[0]["lr"])
            last_step = time.time()
            if time_is_up(deadline, distributed):
                break
        timer.flush()
        steps = timer.steps
    if distributed:
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"last_step": last_step, "steps": steps, "port": mon.port}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
