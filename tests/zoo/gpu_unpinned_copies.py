"""Zoo (GPU): large batches copied from pageable host memory, synchronously.

Injected bottleneck: 224x224 image batches (38 MB each) live in ordinary (unpinned)
host memory and are copied with a blocking ``.to("cuda")`` every step, while a tiny
model's step takes well under a millisecond on the GPU. The batches are pre-made, so
no DataLoader work hides the copies.

Ground truth: host_to_device (the fix: pin_memory=True and .to(device, non_blocking=True),
or uint8 batches normalized on the GPU). Skipped without CUDA.
"""

import torch
from common import parse_args, train

EXPECTED = "host_to_device"
REQUIRES_CUDA = True

if __name__ == "__main__":
    args = parse_args(__doc__, steps=300)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, 3, 224, 224, generator=generator), torch.randint(0, 10, (64,), generator=generator))
               for _ in range(4)]
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 8 * 8, 10)).to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train(batches, model, optimizer, args)
