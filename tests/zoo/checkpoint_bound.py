"""Zoo: a checkpoint saved and a log line written after every step.

Injected bottleneck: ``torch.save`` of the model and optimizer state (about 26 MB:
an MLP with 3.2 M parameters and SGD's momentum) after every step, plus a JSON log
line, while the step itself takes a few ms.

Ground truth: other (checkpointing, outside the data, copy and compute phases; the
fix is to checkpoint every N steps or in the background).
"""

import json
import os
import tempfile

import torch
from common import parse_args, train

from perfwatch.pipelines.datasets import DatasetSpec, open_dataset
from perfwatch.pipelines.loader import build_loader
from perfwatch.pipelines.models import build_model

EXPECTED = "other"

if __name__ == "__main__":
    args = parse_args(__doc__, steps=150)
    dataset = open_dataset(DatasetSpec(num_samples=1024))
    loader = build_loader(dataset, batch_size=32, num_workers=0, shuffle=True)
    model = build_model("mlp", in_features=3 * 32 * 32, hidden=1024, depth=1).to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    with tempfile.TemporaryDirectory(prefix="zoo-checkpoint-") as directory:
        path = os.path.join(directory, "last.pt")
        log = open(os.path.join(directory, "train.log"), "w")

        def checkpoint(step: int, loss: torch.Tensor) -> None:
            torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
            log.write(json.dumps({"step": step, "loss": loss.item()}) + "\n")
            log.flush()

        train(loader, model, optimizer, args, after_step=checkpoint)
        log.close()
