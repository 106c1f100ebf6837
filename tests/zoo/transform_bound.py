"""Zoo: slow per-sample transforms run inline (``num_workers=0``).

Injected bottleneck: every sample gets 16 decode/augment-like numpy passes (about
1 ms per sample here, 32 ms per batch) in ``__getitem__``, and with no DataLoader
workers they run on the training thread, while the small MLP's step takes a few ms.

Ground truth: data_loading (the main thread spends most of its wall time inside the
DataLoader's ``__next__``; the fix is worker processes).
"""

import torch
from common import parse_args, train

from perfwatch.pipelines.datasets import DatasetSpec, open_dataset
from perfwatch.pipelines.loader import build_loader
from perfwatch.pipelines.models import build_model

EXPECTED = "data_loading"

if __name__ == "__main__":
    args = parse_args(__doc__, steps=250)
    dataset = open_dataset(DatasetSpec(num_samples=2048, transform_cost=16))
    loader = build_loader(dataset, batch_size=32, num_workers=0, shuffle=True)
    model = build_model("mlp", in_features=3 * 32 * 32, hidden=128).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters())
    train(loader, model, optimizer, args)
