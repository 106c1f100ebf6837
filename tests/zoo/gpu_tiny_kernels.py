"""Zoo (GPU): kernels too small to keep the GPU busy.

Injected bottleneck: a narrow MLP at batch size 8, so each of the step's ~30 kernels
runs for microseconds and the GPU idles between launches while the host runs Python
and the dispatcher.

Ground truth: compute (launch-bound forward/backward/optimizer on the host), with a
``gpu_underused`` finding (utilization under 50%) recommending a larger batch; CUDA
graphs or torch.compile would also help. Skipped without CUDA.
"""

import torch
from common import parse_args, train

from perfwatch.pipelines.models import build_model

EXPECTED = "compute"
REQUIRES_CUDA = True

if __name__ == "__main__":
    args = parse_args(__doc__, steps=4000)
    model = build_model("mlp", in_features=64, hidden=64, depth=4).to(args.device)
    generator = torch.Generator().manual_seed(0)
    batches = [tuple(t.to(args.device) for t in model.example_batch(8, generator)) for _ in range(4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train(batches, model, optimizer, args)
