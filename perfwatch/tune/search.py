"""DataLoader knob search: num_workers, batch size, prefetch, persistence and pinning within a budget.

Why not the grid. The five knobs multiply to ~150 configs on 2 cores (~300 on 16), and an
honest measurement of one config costs seconds (workers start, an epoch warms up). The
surface has structure that a search can use instead:

- num_workers matters most, and along doubling steps it is unimodal: throughput rises
  until the cores or the storage saturate, then falls from oversubscription and the
  per-batch cost of moving tensors between processes.
- batch size amortizes per-batch costs (collation, inter-process transfer, Python
  overhead); along doubling steps it is unimodal too.
- prefetch_factor and persistent_workers refine a loader with workers (they do not exist
  without them), and pin_memory matters only where batches are copied to a GPU.

So the search is coordinate ascent over doubling axes, most important knob first
(workers, batch size, prefetch, persistence, pinning). Each line search walks up from the
current value while throughput improves by more than ``MIN_GAIN``, and walks down only if
the walk up found nothing; it stops after two steps in a row that do not improve (one is
forgiven: num_workers=1 only moves the loading from the main process to one worker, a
plateau next to 0 before 2 workers add a core, and noise fakes plateaus too). Workers are
switched on persistent: persistence only removes the restart between epochs, so workers
are judged at their best, and the persistent_workers axis then checks whether it is
needed (had they started without it, a short epoch's restarts could sink them). A second
round revisits every axis from the new point, because workers and batch size interact
(a larger batch cuts the per-batch transfer cost, which can make workers pay off); the
search ends when a round moves nothing. Measured configs are cached.

Short measurements (one epoch per config) steer the search. Then, as in successive
halving, the ``finalists`` best configs and the default config are measured again with
longer trials, interleaved in rounds so that drift on a shared machine hits them alike;
the winner and its speedup over the default come from these rounds.

Budget: every trial reports the wall time it cost, and a trial starts only while its
estimated cost fits: exploration within ``EXPLORE_SHARE`` of the budget, the final rounds
within the rest. The default config is always measured. The strategy (:func:`search`)
takes the measurement as a function, so it is tested with literal throughput surfaces;
:func:`perfwatch.tune.measure.tune_loader` measures real DataLoaders
(:class:`~perfwatch.tune.measure.EpochBench`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from itertools import product
from typing import TYPE_CHECKING, Any, Callable

from perfwatch import stats
from perfwatch.errors import UserError

if TYPE_CHECKING:  # torch loads only when a loader is tuned, not with the CLI

    from perfwatch.pipelines.loader import LoaderKnobs

# Improvement a step must bring to count: below it, a difference is measurement noise.
MIN_GAIN = 0.03
# Steps in a row that may fail to improve before a line search stops (plateaus, noise).
PATIENCE = 1
# Share of the budget the exploration may spend; the final rounds get the rest.
EXPLORE_SHARE = 0.55
# Coordinate-ascent rounds at most (the search usually converges in two).
MAX_ROUNDS = 3
# Measured epochs of an exploration trial (after its warm-up epoch).
EXPLORE_EPOCHS = 1
# Batch sizes tried: natural x 2**k for k in this range.
BATCH_STEPS = range(-2, 4)
# Configs whose batches in flight would take more than this share of the available memory are skipped.
MEMORY_SHARE = 0.25
TORCH_DEFAULT_PREFETCH = 2
AXES = ("num_workers", "batch_size", "prefetch_factor", "persistent_workers", "pin_memory")


# --- What the search explores --------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """The values each knob may take, in increasing order, and the memory a config may hold.

    Worker-only knobs (prefetch_factor, persistent_workers) apply only with workers, which
    start at torch's default prefetch_factor.
    """

    num_workers: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    prefetch_factors: tuple[int, ...] = (1, 2, 4, 8)
    persistent_workers: tuple[bool, ...] = (False, True)
    pin_memory: tuple[bool, ...] = (False,)
    bytes_per_sample: int = 0
    memory_limit_bytes: float = math.inf

    def __post_init__(self) -> None:
        if TORCH_DEFAULT_PREFETCH not in self.prefetch_factors:
            raise ValueError(f"prefetch_factors must include torch's default {TORCH_DEFAULT_PREFETCH}")

    @classmethod
    def for_machine(cls, batch_size: int, window: int, bytes_per_sample: int, *, cores: int | None = None,
                    available_bytes: float | None = None, cuda: bool = False) -> SearchSpace:
        """Workers doubling up to twice the usable cores; batch sizes around the natural one with at
        least 4 batches per epoch window; pinning only with CUDA; a quarter of free memory for batches."""
        import psutil

        cores = cores or len(os.sched_getaffinity(0))
        workers = (0,) + tuple(2**k for k in range(int(math.log2(2 * cores)) + 1))
        batches = {batch_size} | {batch_size * 2**k if k >= 0 else batch_size // 2**-k for k in BATCH_STEPS}
        largest = max(batch_size, window // 4)
        available = psutil.virtual_memory().available if available_bytes is None else available_bytes
        return cls(num_workers=workers, batch_sizes=tuple(sorted(b for b in batches if 1 <= b <= largest)),
                   pin_memory=(False, True) if cuda else (False,), bytes_per_sample=bytes_per_sample,
                   memory_limit_bytes=available * MEMORY_SHARE)

    def values(self, axis: str, knobs: LoaderKnobs) -> tuple:
        """The values ``axis`` may take from ``knobs``; none for worker-only knobs without workers."""
        if axis in ("prefetch_factor", "persistent_workers") and knobs.num_workers == 0:
            return ()
        return {"num_workers": self.num_workers, "batch_size": self.batch_sizes,
                "prefetch_factor": self.prefetch_factors, "persistent_workers": self.persistent_workers,
                "pin_memory": self.pin_memory}[axis]

    def moved(self, knobs: LoaderKnobs, axis: str, value: Any) -> LoaderKnobs:
        """``knobs`` with ``axis`` set to ``value``. Workers switched on start persistent where the
        space allows it: persistence only removes the restart between epochs, so workers are judged
        at their best, and the persistent_workers axis then checks whether it is needed."""
        changes: dict[str, Any] = {axis: value}
        if axis == "num_workers" and value == 0:
            changes.update(prefetch_factor=None, persistent_workers=False)
        elif axis == "num_workers" and knobs.num_workers == 0:
            changes.update(persistent_workers=max(self.persistent_workers))
        return normalized(replace(knobs, **changes))

    def allows(self, knobs: LoaderKnobs) -> bool:
        """Whether the batches ``knobs`` holds at once (prefetched per worker, plus one) fit in memory."""
        in_flight = knobs.num_workers * (knobs.prefetch_factor or 0) + 1
        return in_flight * knobs.batch_size * self.bytes_per_sample <= self.memory_limit_bytes

    def contains(self, knobs: LoaderKnobs) -> bool:
        return knobs == normalized(knobs) and self.allows(knobs) and all(
            getattr(knobs, axis) in values for axis in AXES if (values := self.values(axis, knobs)))

    def grid(self) -> list[LoaderKnobs]:
        """Every config of the space: what a full grid sweep measures."""
        from perfwatch.pipelines.loader import LoaderKnobs

        configs = [LoaderKnobs(batch_size=b, pin_memory=p) for b, p in product(self.batch_sizes, self.pin_memory)]
        configs += [
            LoaderKnobs(num_workers=w, batch_size=b, prefetch_factor=f, persistent_workers=s, pin_memory=p)
            for w, b, f, s, p in product([w for w in self.num_workers if w], self.batch_sizes,
                                         self.prefetch_factors, self.persistent_workers, self.pin_memory)
        ]
        return [k for k in configs if self.allows(k)]


def normalized(knobs: LoaderKnobs) -> LoaderKnobs:
    """One spelling per DataLoader behaviour: with workers, torch's default prefetch_factor written out."""
    if knobs.num_workers and knobs.prefetch_factor is None:
        return replace(knobs, prefetch_factor=TORCH_DEFAULT_PREFETCH)
    return knobs


def loader_call(knobs: LoaderKnobs) -> str:
    """``knobs`` as the DataLoader call a user writes: only what differs from torch's defaults."""
    args = [f"batch_size={knobs.batch_size}"]
    if knobs.num_workers:
        args.append(f"num_workers={knobs.num_workers}")
        if knobs.prefetch_factor not in (None, TORCH_DEFAULT_PREFETCH):
            args.append(f"prefetch_factor={knobs.prefetch_factor}")
        if knobs.persistent_workers:
            args.append("persistent_workers=True")
    if knobs.pin_memory:
        args.append("pin_memory=True")
    return f"DataLoader(dataset, {', '.join(args)})"


# --- Results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One measurement of a config: samples/s of each measured epoch, and its whole wall time
    (loader construction, worker start-up, warm-up and shutdown included)."""

    knobs: LoaderKnobs
    samples_per_s: tuple[float, ...]
    seconds: float
    phase: str = "explore"  # "explore" (steers the search) or "final" (picks the winner)
    error: str | None = None

    @property
    def throughput(self) -> float:
        return stats.median(self.samples_per_s) if self.samples_per_s and not self.error else 0.0


Measure = Callable[["LoaderKnobs", int], Trial]  # (config, measured epochs) -> Trial


@dataclass(frozen=True)
class TuneResult:
    """The best config found, the default's throughput beside it, and every trial in order."""

    best: LoaderKnobs
    best_samples_per_s: float
    default: LoaderKnobs
    default_samples_per_s: float
    trials: tuple[Trial, ...]
    seconds: float  # measurement time spent
    budget_s: float
    space: SearchSpace
    budget_exhausted: bool  # the budget ended the exploration before it converged
    epoch_samples: int | None = None  # samples per measured epoch (the window), set by tune_loader
    dataset_samples: int | None = None

    @property
    def configs_tried(self) -> int:
        return len({trial.knobs for trial in self.trials})

    @property
    def grid_size(self) -> int:
        return len(self.space.grid())

    @property
    def speedup(self) -> float:
        return self.best_samples_per_s / self.default_samples_per_s if self.default_samples_per_s else math.inf

    def rows(self) -> list[dict[str, Any]]:
        """One row per config tried, best first: its exploration throughput and final rounds."""
        by_config: dict[LoaderKnobs, list[Trial]] = {}
        for trial in self.trials:
            by_config.setdefault(trial.knobs, []).append(trial)
        rows = []
        for knobs, trials in by_config.items():
            explored = next((t for t in trials if t.phase == "explore"), None)
            finals = [s for t in trials if t.phase == "final" for s in t.samples_per_s]
            rows.append({
                **knob_fields(knobs),
                "explore_samples_per_s": explored.throughput if explored else None,
                "final_samples_per_s": stats.median(finals) if finals else None,
                "final_spread": stats.spread(finals) if finals else None,
                "final_samples": finals,
                "best": knobs == self.best,
                "default": knobs == self.default,
                "error": next((t.error for t in trials if t.error), None),
            })
        return sorted(rows, key=lambda r: (r["final_samples_per_s"] is not None,
                                           r["final_samples_per_s"] or r["explore_samples_per_s"] or 0.0),
                      reverse=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "best": {**knob_fields(self.best), "samples_per_s": self.best_samples_per_s,
                     "dataloader": loader_call(self.best)},
            "default": {**knob_fields(self.default), "samples_per_s": self.default_samples_per_s},
            "speedup": self.speedup,
            "seconds": self.seconds,
            "budget_s": self.budget_s,
            "budget_exhausted": self.budget_exhausted,
            "configs_tried": self.configs_tried,
            "grid_size": self.grid_size,
            "epoch_samples": self.epoch_samples,
            "dataset_samples": self.dataset_samples,
            "tried": self.rows(),
        }


def knob_fields(knobs: LoaderKnobs) -> dict[str, Any]:
    return {axis: getattr(knobs, axis) for axis in AXES}


# --- The strategy ---------------------------------------------------------------------------


class _BudgetSpent(Exception):
    """The next exploration trial would not fit in the budget."""


@dataclass
class _Search:
    measure: Measure
    space: SearchSpace
    budget_s: float
    trials: list[Trial] = field(default_factory=list)
    explored: dict[LoaderKnobs, Trial] = field(default_factory=dict)
    spent: float = 0.0
    epoch_cost: float = 0.0  # the largest cost per epoch seen (warm-up epoch included)

    def run(self, knobs: LoaderKnobs, epochs: int, phase: str) -> Trial:
        trial = replace(self.measure(knobs, epochs), phase=phase)
        self.trials.append(trial)
        self.spent += trial.seconds
        self.epoch_cost = max(self.epoch_cost, trial.seconds / (epochs + 1))
        return trial

    def explore(self, knobs: LoaderKnobs) -> float:
        """Throughput of ``knobs`` from a short trial, cached."""
        if knobs not in self.explored:
            if self.spent + (EXPLORE_EPOCHS + 1) * self.epoch_cost > self.budget_s * EXPLORE_SHARE:
                raise _BudgetSpent
            self.explored[knobs] = self.run(knobs, EXPLORE_EPOCHS, "explore")
        return self.explored[knobs].throughput

    def line_search(self, knobs: LoaderKnobs, throughput: float, axis: str) -> tuple[LoaderKnobs, float]:
        """Walk ``axis`` up from ``knobs`` until more than ``PATIENCE`` steps in a row do not improve;
        if the walk up found nothing, walk down the same way."""
        values = self.space.values(axis, knobs)
        if len(values) < 2:
            return knobs, throughput
        start = values.index(getattr(knobs, axis))
        for step in (1, -1):
            position, moved, misses = start + step, False, 0
            while 0 <= position < len(values) and misses <= PATIENCE:
                candidate = self.space.moved(knobs, axis, values[position])
                if not self.space.allows(candidate):
                    break
                candidate_throughput = self.explore(candidate)
                if candidate_throughput > throughput * (1 + MIN_GAIN):
                    knobs, throughput, moved, misses = candidate, candidate_throughput, True, 0
                else:
                    misses += 1
                position += step
            if moved:
                break
        return knobs, throughput

    def coordinate_ascent(self, start: LoaderKnobs) -> bool:
        """Rounds of line searches over every axis from ``start`` (explored already) until a round
        moves nothing or ``MAX_ROUNDS`` ran; True if the budget ran out first."""
        knobs, throughput = start, self.explore(start)
        try:
            for _ in range(MAX_ROUNDS):
                before = knobs
                for axis in AXES:
                    knobs, throughput = self.line_search(knobs, throughput, axis)
                if knobs == before:
                    break
        except _BudgetSpent:
            return True
        return False

    def finals(self, candidates: list[LoaderKnobs], rounds: int, epochs: int) -> dict[LoaderKnobs, list[float]]:
        """Interleaved rounds of longer trials (order reversed every other round), each started only
        if its estimated cost fits in what is left of the budget."""
        samples: dict[LoaderKnobs, list[float]] = {k: [] for k in candidates}
        for number in range(rounds):
            estimate = sum(self.explored[k].seconds / (EXPLORE_EPOCHS + 1) * (epochs + 1) for k in candidates)
            if self.spent + estimate > self.budget_s:
                break
            for knobs in candidates if number % 2 == 0 else candidates[::-1]:
                trial = self.run(knobs, epochs, "final")
                samples[knobs].extend(trial.samples_per_s if not trial.error else [0.0])
        return samples


def search(measure: Measure, space: SearchSpace, budget_s: float, start: LoaderKnobs, *, finalists: int = 3,
           final_rounds: int = 5, final_epochs: int = 2) -> TuneResult:
    """Search ``space`` from ``start`` (the default config) within ``budget_s`` seconds of trials.

    ``measure(knobs, epochs)`` measures one config; see the module docstring for the strategy.
    The default config is measured whatever the budget (0 measures nothing else).
    """
    if budget_s < 0:
        raise ValueError(f"budget_s must be >= 0, got {budget_s}")
    start = normalized(start)
    if not space.contains(start):
        raise ValueError(f"the default config {start} is not in the search space")
    state = _Search(measure, space, budget_s)
    state.explore(start)
    if state.explored[start].error:
        raise UserError(f"the default config {loader_call(start)} failed: {state.explored[start].error}")
    budget_exhausted = state.coordinate_ascent(start)
    ranked = sorted((t for t in state.explored.values() if not t.error), key=lambda t: t.throughput, reverse=True)
    candidates = [t.knobs for t in ranked[:finalists]]
    candidates += [start] if start not in candidates else []
    final = state.finals(candidates, final_rounds, final_epochs)
    if all(final.values()):
        throughput = {k: stats.median(v) for k, v in final.items()}
    else:  # no final round fitted: the exploration's numbers are all there is
        throughput = {k: state.explored[k].throughput for k in candidates}
    best = max(candidates, key=throughput.__getitem__)
    return TuneResult(best=best, best_samples_per_s=throughput[best], default=start,
                      default_samples_per_s=throughput[start], trials=tuple(state.trials), seconds=state.spent,
                      budget_s=budget_s, space=space, budget_exhausted=budget_exhausted)
