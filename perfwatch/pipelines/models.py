"""Reference models: an MLP, a small CNN and a small Transformer encoder classifier.

They are sized so that one training step at the default batch size takes a few ms to
~50 ms on two CPU cores: big enough to exercise real kernels, small enough for CI.
Each model knows how to make an example batch, so benchmarks need no data pipeline.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn


class ReferenceModel(nn.Module):
    """A classifier that can produce a batch of its own inputs and integer targets."""

    default_batch_size = 64
    num_classes: int

    def example_inputs(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def example_batch(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Random ``(inputs, targets)`` on the CPU; ``generator`` makes them reproducible."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        inputs = self.example_inputs(batch_size, generator)
        targets = torch.randint(0, self.num_classes, (batch_size,), generator=generator)
        return inputs, targets


class MLP(ReferenceModel):
    """Flatten, then ``depth`` hidden Linear+ReLU layers: pure GEMM work."""

    def __init__(self, in_features: int = 1024, hidden: int = 1024, depth: int = 2, num_classes: int = 10):
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def example_inputs(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        return torch.randn(batch_size, self.in_features, generator=generator)


class SmallCNN(ReferenceModel):
    """Three conv blocks (conv, batch norm, ReLU, pool) and a linear head, for 32x32 images."""

    default_batch_size = 32

    def __init__(self, in_channels: int = 3, image_size: int = 32, width: int = 32, num_classes: int = 10):
        super().__init__()
        self.in_channels = in_channels
        self.image_size = image_size
        self.num_classes = num_classes
        blocks: list[nn.Module] = []
        channels = in_channels
        for out_channels in (width, 2 * width, 4 * width):
            blocks += [
                nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def example_inputs(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        shape = (batch_size, self.in_channels, self.image_size, self.image_size)
        return torch.randn(shape, generator=generator)


class TransformerClassifier(ReferenceModel):
    """Token embedding + learned positions, a ``TransformerEncoder``, mean pooling, a linear head."""

    default_batch_size = 32

    def __init__(
        self,
        vocab_size: int = 1000,
        seq_len: int = 32,
        d_model: int = 128,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 256,
        num_classes: int = 10,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.num_classes = num_classes
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        # dropout 0: training steps stay deterministic and comparable across runs.
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        hidden = self.encoder(self.embed(tokens) + self.position[: tokens.shape[1]])
        return self.head(hidden.mean(dim=1))

    def example_inputs(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        return torch.randint(0, self.vocab_size, (batch_size, self.seq_len), generator=generator)


MODELS: dict[str, type[ReferenceModel]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "transformer": TransformerClassifier,
}
MODEL_NAMES = tuple(MODELS)


def build_model(name: str, seed: int = 0, **overrides) -> ReferenceModel:
    """Build reference model ``name`` with weights initialised from ``seed``.

    ``overrides`` are constructor arguments (e.g. ``hidden=256``). The global RNG is
    left as it was, so building a model does not perturb the caller's randomness.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    cls = MODELS[name]
    try:
        inspect.signature(cls).bind(**overrides)
    except TypeError as exc:
        raise ValueError(f"bad option for model {name!r}: {exc}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**overrides)
