"""DataLoader construction from knobs, and measurements of what a loader delivers.

Throughput is counted from the tensors actually delivered (samples and bytes), and
latencies on ``time.perf_counter``, so the numbers hold for any map-style dataset.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class LoaderKnobs:
    """The DataLoader settings worth tuning.

    ``prefetch_factor`` (None: torch's default) and ``persistent_workers`` need
    ``num_workers > 0``. ``pin_memory`` is honoured only where CUDA exists: pinning
    without a GPU buys nothing, and torch would warn.
    """

    batch_size: int = 64
    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int | None = None
    persistent_workers: bool = False
    shuffle: bool = False
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.num_workers == 0 and (self.prefetch_factor is not None or self.persistent_workers):
            raise ValueError("prefetch_factor and persistent_workers need num_workers > 0")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {self.prefetch_factor}")


def build_loader(dataset: Dataset, knobs: LoaderKnobs | None = None, seed: int = 0, **overrides: Any) -> DataLoader:
    """A DataLoader over ``dataset`` with ``knobs`` (fields may be overridden by keyword).

    ``seed`` fixes the shuffle order, so two runs read the same sequence.
    """
    knobs = replace(knobs or LoaderKnobs(), **overrides)
    worker_options: dict[str, Any] = {}
    if knobs.num_workers > 0:
        worker_options = {"persistent_workers": knobs.persistent_workers}
        if knobs.prefetch_factor is not None:
            worker_options["prefetch_factor"] = knobs.prefetch_factor
    return DataLoader(
        dataset,
        batch_size=knobs.batch_size,
        shuffle=knobs.shuffle,
        drop_last=knobs.drop_last,
        num_workers=knobs.num_workers,
        pin_memory=knobs.pin_memory and torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed) if knobs.shuffle else None,
        **worker_options,
    )


def batch_size_and_bytes(batch: Any) -> tuple[int, int]:
    """(samples, bytes) of a batch: dim 0 of its first tensor, and the bytes of all its tensors."""
    if isinstance(batch, torch.Tensor):
        return (batch.shape[0] if batch.dim() else 1), batch.numel() * batch.element_size()
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if not isinstance(batch, (tuple, list)):
        return 0, 0
    samples, nbytes = 0, 0
    for item in batch:
        item_samples, item_bytes = batch_size_and_bytes(item)
        samples = samples or item_samples
        nbytes += item_bytes
    return samples, nbytes


@dataclass(frozen=True)
class EpochStats:
    """One pass over a loader. ``batch_seconds[0]`` includes creating the iterator
    (starting workers), as does ``first_batch_seconds``."""

    samples: int
    bytes: int
    seconds: float
    first_batch_seconds: float
    batch_seconds: tuple[float, ...]

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


def measure_epoch(
    loader: DataLoader, max_batches: int | None = None, clock: Callable[[], float] = time.perf_counter
) -> EpochStats:
    """Iterate ``loader`` once (or ``max_batches`` batches) and time every batch."""
    latencies: list[float] = []
    samples = nbytes = 0
    last = clock()
    for batch in loader:
        now = clock()
        latencies.append(now - last)
        batch_samples, batch_bytes = batch_size_and_bytes(batch)
        samples += batch_samples
        nbytes += batch_bytes
        if max_batches is not None and len(latencies) >= max_batches:
            break
        last = clock()  # the bookkeeping above is not the loader's time
    if not latencies:
        raise ValueError("the loader yielded no batches; is the dataset empty?")
    return EpochStats(samples, nbytes, sum(latencies), latencies[0], tuple(latencies))


def measure_first_batch(loader: DataLoader, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds from creating an iterator (starting workers) to holding the first batch."""
    start = clock()
    iterator = iter(loader)
    next(iterator)
    seconds = clock() - start
    del iterator  # shuts non-persistent workers down
    return seconds


class EndlessBatches:
    """Batches from ``loader`` forever: a new epoch starts when one is exhausted.

    For latency benchmarks that take one batch per call; an epoch boundary (and the
    worker restart it may cost) lands in the call that crosses it, as in training.
    """

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self._iterator: Iterator[Any] = iter(loader)

    def __iter__(self) -> EndlessBatches:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
            return next(self._iterator)
