"""Real measurement of DataLoader configs for the search: epochs of a real DataLoader over
the user's dataset (torch loads here, and only here).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

from perfwatch.errors import UserError, one_line
from perfwatch.tune.search import SearchSpace, Trial, TuneResult, search

if TYPE_CHECKING:  # torch loads only when a loader is tuned, not with the CLI
    import torch
    from torch.utils.data import DataLoader, Dataset

    from perfwatch.pipelines.loader import LoaderKnobs


# The epoch window is what the default config reads in budget / EPOCHS_PER_BUDGET seconds:
# the search measures ~20 configs for 2 epochs and the finals ~4 configs for up to 5 x 3 epochs.
EPOCHS_PER_BUDGET = 80


# Share of the budget (within 0.2 to 2 s) that reads the default config to size the epoch window.
CALIBRATION_SHARE = 0.03


@dataclass
class EpochBench:
    """Measures a config as a training loop meets it: ``for epoch ...: for batch in loader``.

    Each trial builds a real DataLoader over the first ``window`` samples of ``dataset`` and
    iterates it for one warm-up epoch (the first worker start-up, imports, cold caches) and
    then ``epochs`` measured epochs. A measured epoch runs from the previous epoch's last
    batch to its own last one, so it includes what recurs every epoch: shutting down and
    restarting non-persistent workers, or resetting persistent ones, and refilling the
    prefetch queue. Where the window is shorter than a real epoch, that restart weighs more
    than in training, which favours persistent_workers=True: a bias that costs only the
    memory of idle workers between epochs. (Extrapolating a long epoch from a short one's
    steady rate was tried and rejected: with a few batches per worker, the batches arrive
    in bursts and the rate is fiction.) With a ``device``, batches are copied to it
    (``non_blocking``) and synchronized at the end of each epoch, so that pin_memory is
    measured where it matters.
    """

    dataset: Dataset
    window: int
    shuffle: bool = False
    device: torch.device | None = None
    clock: Callable[[], float] = time.perf_counter

    def __call__(self, knobs: LoaderKnobs, epochs: int) -> Trial:
        from torch.utils.data import Subset

        from perfwatch.pipelines.loader import build_loader

        started = self.clock()
        data = self.dataset if self.window >= len(self.dataset) else Subset(self.dataset, range(self.window))
        try:
            with warnings.catch_warnings():  # more workers than cores is tried on purpose
                warnings.filterwarnings("ignore", message="This DataLoader will create")
                loader = build_loader(data, knobs, shuffle=self.shuffle)
                last = self._epoch_end(loader)
                rates = []
                for _ in range(epochs):
                    end = self._epoch_end(loader)
                    rates.append(len(data) / (end - last))
                    last = end
                del loader  # persistent workers stop here, within the trial's time
        except Exception as exc:  # a config can fail (shared memory, open files): it is reported, not fatal
            return Trial(knobs, (), self.clock() - started, error=one_line(exc))
        return Trial(knobs, tuple(rates), self.clock() - started)

    def _epoch_end(self, loader: DataLoader) -> float:
        """Iterate one epoch; the time it ended (workers shut down if not persistent, device caught up)."""
        for batch in loader:
            if self.device is not None:
                _to_device(batch, self.device)  # the copy is the work; the batch is not used
        if self.device is not None:
            import torch

            torch.cuda.synchronize(self.device)
        return self.clock()


def _to_device(batch: Any, device: torch.device) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [_to_device(item, device) for item in batch]
    return batch


def calibrate(dataset: Dataset, batch_size: int, seconds: float, shuffle: bool = False,
              clock: Callable[[], float] = time.perf_counter) -> tuple[float, int]:
    """(samples/s, bytes per sample) of the default config, read for about ``seconds``. The rate
    counts the second half only: the first pays for imports and cold caches, several times slower."""
    from perfwatch.pipelines.loader import batch_size_and_bytes, build_loader

    loader = build_loader(dataset, batch_size=batch_size, shuffle=shuffle)
    started = clock()
    samples, nbytes = 0, 0
    warm: tuple[float, int] | None = None  # (time, samples) when the first half ended
    for batch in loader:
        batch_samples, batch_bytes = batch_size_and_bytes(batch)
        samples += batch_samples or min(batch_size, len(dataset) - samples)
        nbytes += batch_bytes
        now = clock()
        if now - started >= seconds:
            break
        if warm is None and now - started >= seconds / 2:
            warm = (now, samples)
    if warm is None or warm[1] == samples:  # the epoch ended within the first half
        warm = (started, 0)
    return (samples - warm[1]) / max(clock() - warm[0], 1e-9), nbytes // max(samples, 1)


def tune_loader(dataset: Dataset, *, budget_s: float, batch_size: int = 64, shuffle: bool = False,
                name: str = "the dataset", space: SearchSpace | None = None,
                clock: Callable[[], float] = time.perf_counter) -> TuneResult:
    """The fastest DataLoader config for ``dataset`` found in about ``budget_s`` seconds.

    The default config is torch's defaults with ``batch_size`` (the dataset's natural batch
    size): no workers, no pinning. ``space`` defaults to :meth:`SearchSpace.for_machine`.
    """
    import torch

    from perfwatch.pipelines.loader import LoaderKnobs

    if budget_s <= 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s}")
    if len(dataset) == 0:
        raise UserError(f"{name} is empty: nothing to load")
    started = clock()
    try:
        rate, bytes_per_sample = calibrate(dataset, batch_size, min(max(budget_s * CALIBRATION_SHARE, 0.2), 2.0),
                                           shuffle, clock)
    except Exception as exc:
        raise UserError(f"{name}: loading it with DataLoader(dataset, batch_size={batch_size}) failed: "
                        f"{one_line(exc)}") from exc
    window = min(len(dataset), max(8 * batch_size, int(rate * budget_s / EPOCHS_PER_BUDGET)))
    cuda = torch.cuda.is_available()
    space = space or SearchSpace.for_machine(batch_size, window, bytes_per_sample, cuda=cuda)
    bench = EpochBench(dataset, window, shuffle, torch.device("cuda") if cuda else None, clock)
    calibration_s = clock() - started
    result = search(bench, space, max(budget_s - calibration_s, 0.0), LoaderKnobs(batch_size=batch_size))
    return replace(result, seconds=result.seconds + calibration_s, budget_s=budget_s, epoch_samples=window,
                   dataset_samples=len(dataset))
