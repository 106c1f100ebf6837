"""The reference training step, instrumented with StepTimer, and what it achieves.

A :class:`TrainingBenchmark` trains a reference model on a fixed pool of synthetic
batches, so a step's time depends on the model, the device and the knobs only. Every
step runs inside a StepTimer (h2d, forward, backward, optimizer phases); on CUDA each
step ends with a synchronize, so step times are device time, not launch time.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from itertools import cycle, islice
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from perfwatch.instrument import StepTimer
from perfwatch.pipelines import flops
from perfwatch.pipelines.models import MODEL_NAMES, build_model

DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """One training-step configuration. ``batch_size=None`` takes the model's default;
    ``amp`` is bf16 autocast; ``channels_last`` applies to the CNN only."""

    model: str = "mlp"
    batch_size: int | None = None
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    channels_last: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    seed: int = 0
    pool_size: int = 4  # distinct synthetic batches, cycled

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if self.channels_last and self.model != "cnn":
            raise ValueError("channels_last applies to the cnn model only")


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available; ``cuda`` is the current CUDA device (LOCAL_RANK's under DDP)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but CUDA is not available; use 'auto' or 'cpu'")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def matmul_precision(model: nn.Module, amp: bool, device: torch.device) -> str:
    """The precision most of the model's FLOPs run in, to pick the peak for MFU."""
    if amp:
        return "bf16"
    if device.type != "cuda":
        return "fp32"
    has_convs = any(isinstance(m, CONVOLUTIONS) for m in model.modules())
    tf32 = torch.backends.cudnn.allow_tf32 if has_convs else torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 else "fp32"


@dataclass(frozen=True)
class TrainRun:
    """What ``run(steps)`` measured. Seconds are StepTimer walls; memory is CUDA-only."""

    steps: int
    samples: int
    seconds: float
    step_seconds: tuple[float, ...]
    phase_seconds: dict[str, float]
    loss: float  # of the last step
    peak_memory_bytes: int | None

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


class TrainingBenchmark:
    """Model, optimizer and batch pool for one :class:`TrainConfig`; ``run(n)`` times n steps.

    ``wrap`` wraps the model once it is on its device (DistributedDataParallel).
    FLOPs are counted on first use of ``flops_per_step`` (FlopCounterMode's first use
    costs ~2 s of imports, which step-time benchmarks need not pay).
    """

    def __init__(self, config: TrainConfig = TrainConfig(), wrap: Callable[[nn.Module], nn.Module] | None = None):
        self.config = config
        self.device = resolve_device(config.device)
        model = build_model(config.model, seed=config.seed)
        self.batch_size = config.batch_size or model.default_batch_size
        self._memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        model.to(self.device, memory_format=self._memory_format)
        generator = torch.Generator().manual_seed(config.seed)
        pin = self.device.type == "cuda"
        self._pool = [
            tuple(t.pin_memory() if pin else t for t in model.example_batch(self.batch_size, generator))
            for _ in range(config.pool_size)
        ]
        self.eager_model = model
        self.precision = matmul_precision(model, config.amp, self.device)
        device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        self.peak_flops = flops.peak_flops(device_name, self.precision)
        self.optimizer = self._build_optimizer(model)
        self.model = wrap(model) if wrap else model
        if config.compile:
            self.model = torch.compile(self.model)

    @functools.cached_property
    def flops_per_step(self) -> int:
        """FLOPs of one forward + backward, counted once on a copy of the eager model
        (the copy keeps the real model's gradients, statistics and DDP hooks untouched)."""
        model = copy.deepcopy(self.eager_model)
        return flops.count_flops(lambda: self._loss(model, *self._on_device(*self._pool[0])).backward())

    def flops_per_second(self, run: TrainRun) -> float:
        """Achieved FLOP/s of ``run``."""
        return self.flops_per_step * run.steps / run.seconds if run.seconds > 0 else 0.0

    def mfu(self, run: TrainRun) -> float | None:
        """Model FLOP utilization of ``run``; None where the device's peak is unknown (CPU)."""
        return flops.mfu(self.flops_per_second(run), self.peak_flops)

    def _build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=self.config.lr, momentum=0.9)
        return torch.optim.AdamW(model.parameters(), lr=self.config.lr)

    def _on_device(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = inputs.to(self.device, non_blocking=True)
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=self._memory_format)
        return inputs, targets.to(self.device, non_blocking=True)

    def _loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp):
            return F.cross_entropy(model(inputs), targets)

    def run(self, steps: int) -> TrainRun:
        """Run ``steps`` training steps, each timed by a fresh StepTimer's phases."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        timer = StepTimer(device=str(self.device), history=steps)
        for inputs, targets in timer.iter(islice(cycle(self._pool), steps)):
            with timer.phase("h2d"):
                inputs, targets = self._on_device(inputs, targets)
            with timer.phase("forward"):
                loss = self._loss(self.model, inputs, targets)
            with timer.phase("backward"):
                loss.backward()
            with timer.phase("optimizer"):
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(self.device)  # the step's wall is its device time
        timer.flush()
        return TrainRun(
            steps=timer.steps,
            samples=timer.samples,
            seconds=timer.wall,
            step_seconds=tuple(record.wall for record in timer.records),
            phase_seconds=timer.totals,
            loss=float(loss.detach()),
            peak_memory_bytes=torch.cuda.max_memory_allocated(self.device) if cuda else None,
        )
