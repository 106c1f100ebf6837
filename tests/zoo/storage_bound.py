"""Zoo: slow storage behind two DataLoader workers.

Injected bottleneck: one small file per sample (the "files" format, like a folder of
JPEGs) on storage with 4 ms latency per file, as on a network filesystem or a
FUSE-mounted bucket. The latency is emulated by sleeping before each read (a warm
local page cache cannot be made slow reliably), so, as with real remote storage,
the workers spend their time blocked, not on the CPU. Two workers fetch 32 files per
batch each: about 64 ms of latency per batch against a few ms of compute.

Ground truth: data_loading, caused by storage (workers mostly idle on the CPU while
the training thread waits for batches; the fixes are more workers to overlap the
latency and a packed format such as memory-mapped .npy or Parquet).
"""

import time

import torch
from common import parse_args, train

from perfwatch.pipelines.datasets import DatasetSpec, FilesDataset, materialize
from perfwatch.pipelines.loader import build_loader
from perfwatch.pipelines.models import build_model

EXPECTED = "data_loading"
FILE_LATENCY_S = 0.004


class RemoteFilesDataset(FilesDataset):
    """The files format on high-latency storage."""

    def record(self, index):
        time.sleep(FILE_LATENCY_S)
        return super().record(index)


if __name__ == "__main__":
    args = parse_args(__doc__, steps=120)
    spec = DatasetSpec(num_samples=2048)
    dataset = RemoteFilesDataset(spec, materialize(spec, "files"))
    loader = build_loader(dataset, batch_size=32, num_workers=2, shuffle=True, persistent_workers=True)
    model = build_model("mlp", in_features=3 * 32 * 32, hidden=128).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters())
    train(loader, model, optimizer, args)
