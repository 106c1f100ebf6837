"""DistributedDataParallel throughput: the reference training step on ranks launched by torchrun.

Each call launches a fresh torchrun (about 10 s on two CPU cores), too slow for the
quick suite; ``repeat = 3`` keeps ci to three launches per combination.
"""

import torch
import torch.distributed

from perfwatch.bench.suite import by_size
from perfwatch.pipelines.ddp import run_ddp
from perfwatch.pipelines.models import MODEL_NAMES

# perfwatch: set up once per process and time the steady state, even under this repository's
# asv.conf.json, where each call would otherwise get fresh state (asv_runner >= 0.3; README).
fresh_setup = False


class DataParallel:
    """Global samples/s of ``ranks`` data-parallel ranks (gloo on CPU, nccl on CUDA)."""

    sizes = ("ci", "full")
    repeat = 3
    warmup_time = 0  # a launch is a cold start by nature; no discarded call
    timeout = 300
    param_names = ["model", "ranks"]
    params = by_size(quick=[["mlp"], [2]], full=[list(MODEL_NAMES), [1, 2]])

    def setup(self, model, ranks):
        if not torch.distributed.is_available():
            raise NotImplementedError("this torch build has no torch.distributed")
        if 0 < torch.cuda.device_count() < ranks:
            raise NotImplementedError(f"{ranks} ranks need {ranks} GPUs on this GPU machine")

    def track_samples_per_s(self, model, ranks):
        return run_ddp(nproc=ranks, model=model, steps=20, timeout=120)["global_samples_per_s"]

    track_samples_per_s.unit = "samples/s"
    track_samples_per_s.higher_is_better = True
