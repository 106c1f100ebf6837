"""Zoo (GPU): ``loss.item()`` after every step.

Injected bottleneck: reading the loss back to the host each step synchronizes with the
GPU, so the host cannot queue the next step's kernels while the current ones run. A
CNN on pre-made batches keeps the GPU busy for a few ms per step.

Ground truth: compute (the time in ``.item()`` is the host waiting for device compute),
with a ``host_device_syncs`` finding recommending to read metrics every N steps. Skipped
without CUDA.
"""

import torch
from common import parse_args, train

from perfwatch.pipelines.models import build_model

EXPECTED = "compute"
REQUIRES_CUDA = True

if __name__ == "__main__":
    args = parse_args(__doc__, steps=1500)
    model = build_model("cnn", width=64).to(args.device)
    generator = torch.Generator().manual_seed(0)
    batches = [tuple(t.to(args.device) for t in model.example_batch(256, generator)) for _ in range(4)]
    optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
    losses = []
    train(batches, model, optimizer, args,
          after_step=lambda step, loss: losses.append(loss.item()))
