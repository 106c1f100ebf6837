"""Zoo: a compute-heavy model fed trivially cheap data.

Injected bottleneck: a small CNN (about 40 ms per step on one core at batch 32) on
in-memory samples with no transforms, so fetching and collating a batch costs about
a millisecond on the training thread.

Ground truth: compute (forward + backward + optimizer take nearly all the wall time).
"""

import torch
from common import parse_args, train

from perfwatch.pipelines.datasets import DatasetSpec, open_dataset
from perfwatch.pipelines.loader import build_loader
from perfwatch.pipelines.models import build_model

EXPECTED = "compute"

if __name__ == "__main__":
    args = parse_args(__doc__, steps=200)
    dataset = open_dataset(DatasetSpec(num_samples=1024))
    loader = build_loader(dataset, batch_size=32, num_workers=0, shuffle=True)
    model = build_model("cnn").to(args.device)
    optimizer = torch.optim.AdamW(model.parameters())
    train(loader, model, optimizer, args)
