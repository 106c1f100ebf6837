"""Zoo: a healthy loop, with the input pipeline well ahead of a compute-bound step.

Nothing injected: one persistent DataLoader worker applies a light transform (about
0.07 ms per sample, 5 ms per batch) in parallel with a CNN step of about 80 ms
(batch 64).

Ground truth: compute. A healthy training loop is compute-bound: the input pipeline
keeps up (data wait well under 5% of the step) and the time goes where it should,
into forward, backward and the optimizer. The report should say so and may still
suggest compute-side knobs (bf16 autocast, channels_last, torch.compile).
"""

import torch
from common import parse_args, train

from perfwatch.pipelines.datasets import DatasetSpec, open_dataset
from perfwatch.pipelines.loader import build_loader
from perfwatch.pipelines.models import build_model

EXPECTED = "compute"

if __name__ == "__main__":
    args = parse_args(__doc__, steps=100)
    dataset = open_dataset(DatasetSpec(num_samples=4096, transform_cost=1))
    loader = build_loader(dataset, batch_size=64, num_workers=1, shuffle=True, persistent_workers=True,
                          pin_memory=True)
    model = build_model("cnn").to(args.device)
    optimizer = torch.optim.AdamW(model.parameters())
    train(loader, model, optimizer, args)
