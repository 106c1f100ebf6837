"""StepTimer: per-step phase timings that users put into their own training loops.

A step is split into exclusive phases (``PHASES``). ``data_wait`` and every phase on
the CPU are timed with ``time.perf_counter``. On CUDA the GPU phases are timed with
CUDA events recorded on the current stream and resolved lazily with ``query()`` when
later steps complete, so the user's loop is never synchronized (``sync=True`` trades
that for an exact partition of host wall time). See docs/instrument.md.

The hot path (``phase()`` enter/exit) is a handful of list operations and one clock
read: no allocation, no dict churn, no torch import on CPU.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from perfwatch.channel import PROFILE_DIR_ENV
from perfwatch.stats import quantile

logger = logging.getLogger(__name__)

PHASES = ("data_wait", "h2d", "forward", "backward", "optimizer", "other")
GPU_PHASES = ("h2d", "forward", "backward", "optimizer")

_DATA_WAIT = PHASES.index("data_wait")
_OTHER = PHASES.index("other")  # also the bottom of the phase stack: time no phase covers
_N_MEASURED = len(PHASES) - 1  # every phase but "other", which is derived
_IS_GPU = tuple(name in GPU_PHASES for name in PHASES)
_ZEROS = (0.0,) * len(PHASES)
_EXHAUSTED = object()  # what next() returns at the loader's end


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One completed step.

    ``start`` is on the timer's clock (``time.perf_counter`` unless another was
    given): good for ordering and gaps, not a calendar time. ``phases`` has every
    name in ``PHASES``; in CUDA events mode the GPU phases are GPU time.
    """

    index: int
    start: float
    wall: float
    phases: dict[str, float]
    samples: int


class _Phase:
    """Reusable context manager for one phase: ``phase()`` hands out the same object
    every time, so entering a phase allocates nothing."""

    __slots__ = ("_timer", "_index")

    def __init__(self, timer: StepTimer, index: int) -> None:
        self._timer = timer
        self._index = index

    def __enter__(self) -> None:
        self._timer._enter(self._index)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._timer._exit()


class _StepScope:
    """Context manager of ``step()``: it ends only the step it began, so a step
    started elsewhere in between (misuse) is never ended twice."""

    __slots__ = ("_timer", "_samples", "_serial")

    def __init__(self, timer: StepTimer, samples: int) -> None:
        self._timer = timer
        self._samples = samples
        self._serial = -1

    def __enter__(self) -> None:
        self._serial = self._timer._begin_step()
        self._timer._step_samples = self._samples

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._timer._end_step_if(self._serial)


@dataclass(slots=True)
class _Pending:
    """A completed step whose CUDA events may still be in flight; ``host`` holds the
    host-clock phase times, the fallback should CUDA timing fail."""

    index: int
    start: float
    wall: float
    host: list[float]
    samples: int
    segments: list[tuple[int, Any, Any]]
    events: list[Any]


class _CudaTiming:
    """The GPU half of a StepTimer.

    Events mode: one event per phase boundary that opens or closes a GPU phase,
    recorded on the current stream; a GPU phase's time is the sum of its
    (start event, end event) segments. Sync mode: the device is synchronized at
    those boundaries instead, and the host clock is exact.
    """

    __slots__ = ("_torch", "_index", "sync", "_pool", "_events", "_segments", "_open")

    def __init__(self, torch: Any, index: int | None, sync: bool) -> None:
        self._torch = torch
        self._index = index
        self.sync = sync
        self._pool: list[Any] = []  # recycled events: no allocation in steady state
        self._events: list[Any] = []
        self._segments: list[tuple[int, Any, Any]] = []
        self._open: Any = None

    def mark(self, closing: int, opening: int) -> None:
        """A boundary inside a step, called before the host clock is read."""
        if not (_IS_GPU[closing] or _IS_GPU[opening]):
            return
        cuda = self._torch.cuda
        if self.sync:
            cuda.synchronize(self._index)
            return
        event = self._pool.pop() if self._pool else cuda.Event(enable_timing=True)
        event.record(cuda.current_stream(self._index))
        self._events.append(event)
        if _IS_GPU[closing] and self._open is not None:
            self._segments.append((closing, self._open, event))
        self._open = event if _IS_GPU[opening] else None

    def take(self) -> tuple[list[tuple[int, Any, Any]], list[Any]]:
        """The finished step's segments and events; the next step starts empty."""
        taken = self._segments, self._events
        self._segments, self._events, self._open = [], [], None
        return taken

    @staticmethod
    def ready(events: list[Any]) -> bool:
        return all(event.query() for event in events)

    @staticmethod
    def wait(events: list[Any]) -> None:
        for event in events:
            event.synchronize()

    @staticmethod
    def gpu_seconds(segments: list[tuple[int, Any, Any]]) -> list[float]:
        seconds = [0.0] * _N_MEASURED
        for index, start, end in segments:
            seconds[index] += start.elapsed_time(end) / 1000.0
        return seconds

    def recycle(self, events: list[Any]) -> None:
        self._pool.extend(events)


def batch_size(batch: Any) -> int:
    """The samples in ``batch`` as ``StepTimer.iter()`` counts them (also for perfwatch's injected
    timing): dim 0 of the first tensor-like (anything with a non-empty ``.shape``), depth-first
    through tuples, lists and mapping values, 4 levels deep; 0 when there is none."""
    return _first_dim(batch, 0)


def _first_dim(batch: Any, depth: int) -> int:
    shape = getattr(batch, "shape", None)
    if shape is not None and not isinstance(batch, type):
        return int(shape[0]) if len(shape) else 0
    if depth > 3:
        return 0
    if isinstance(batch, Mapping):
        batch = batch.values()
    elif not isinstance(batch, (tuple, list)):
        return 0
    for item in batch:
        size = _first_dim(item, depth + 1)
        if size:
            return size
    return 0


def _no_samples(batch: Any) -> int:
    return 0


def _parse_device(device: Any) -> tuple[str, int | None]:
    """("cpu" | "cuda" | "auto", cuda index or None), or ValueError for anything else."""
    text = str(device)
    kind, _, index = text.partition(":")
    if kind in ("cpu", "auto") and not index:
        return kind, None
    if kind == "cuda" and (not index or index.isdigit()):
        return kind, int(index) if index else None
    raise ValueError(f"StepTimer device must be 'cpu', 'cuda', 'cuda:N' or 'auto', not {text!r}")


class StepTimer:
    """Times the phases of each training step; see the module docstring and
    docs/instrument.md. Not thread-safe: one timer per training loop."""

    __slots__ = (
        "_clock", "_device", "_cuda_index", "_sync", "_cuda", "_device_name", "_max_pending",
        "_phase_scopes", "_stack", "_seg_start", "_acc", "_in_step", "_serial",
        "_step_start", "_step_samples", "_ended", "_steps", "_samples", "_wall",
        "_totals", "_records", "_listeners", "_pending", "_forced_syncs",
    )

    def __init__(
        self,
        device: Any = "auto",
        *,
        history: int = 1024,
        sync: bool = False,
        max_pending: int = 64,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``history``: how many recent StepRecords ``records`` keeps. ``sync``: on
        CUDA, synchronize at GPU phase boundaries instead of recording events.
        ``max_pending``: completed steps whose events may wait for the GPU before
        the oldest is waited for (and counted in ``forced_syncs``)."""
        if history < 1 or max_pending < 1:
            raise ValueError("StepTimer history and max_pending must be >= 1")
        self._device, self._cuda_index = _parse_device(device)
        self._clock = clock
        self._sync = sync
        self._max_pending = max_pending
        self._cuda: _CudaTiming | None = None
        self._device_name: str | None = None  # set when the device is resolved
        if self._device == "cuda":
            self._resolve_device()  # an explicit "cuda" without CUDA fails here, not mid-loop
        self._phase_scopes = {name: _Phase(self, i) for i, name in enumerate(PHASES[:_N_MEASURED])}
        self._stack = [_OTHER]
        self._seg_start = 0.0
        self._acc = list(_ZEROS)
        self._in_step = False
        self._serial = 0
        self._step_start = 0.0
        self._step_samples = 0
        self._ended = 0
        self._steps = 0
        self._samples = 0
        self._wall = 0.0
        self._totals = list(_ZEROS)
        self._records: deque[StepRecord] = deque(maxlen=history)
        self._listeners: tuple[Callable[[StepRecord], Any], ...] = ()
        self._pending: deque[_Pending] = deque()
        self._forced_syncs = 0
        if os.environ.get(PROFILE_DIR_ENV):
            self._publish_to_profile()

    def _publish_to_profile(self) -> None:
        """Under ``perfwatch profile``, hand it this timer's exact phase totals (no code change
        needed in the script); a failure here must never reach the training loop."""
        try:
            from perfwatch.channel import publish_timer  # only under `perfwatch profile`

            publish_timer(self)
        except Exception:
            logger.warning("perfwatch: could not publish StepTimer totals to `perfwatch profile`", exc_info=True)

    # ----------------------------------------------------------------- public API

    def iter(self, iterable: Iterable[Any], samples: Callable[[Any], int] | None = None) -> Iterator[Any]:
        """Yield the items of ``iterable``, one step each; the time in its ``next()``
        is ``data_wait``. ``samples(batch)`` overrides the inferred batch size."""
        return self._iterate(iter(iterable), samples or batch_size)

    def step(self, samples: int = 0) -> _StepScope:
        """A step for loops that do not use ``iter()``; ``samples`` is its batch size."""
        return _StepScope(self, samples)

    def phase(self, name: str) -> _Phase:
        """Context manager timing ``name``; an inner phase suspends the outer one.
        Outside a step it times nothing."""
        scope = self._phase_scopes.get(name)
        if scope is None:
            raise ValueError(f"unknown StepTimer phase {name!r}; use one of {PHASES[:_N_MEASURED]} "
                             "('other' is what no phase covers)")
        return scope

    def add_listener(self, fn: Callable[[StepRecord], Any]) -> None:
        """Call ``fn(record)`` once per completed step. A listener that raises is
        dropped with one warning; the training loop goes on."""
        self._listeners += (fn,)

    def remove_listener(self, fn: Callable[[StepRecord], Any]) -> None:
        self._listeners = tuple(f for f in self._listeners if f is not fn)

    def flush(self) -> None:
        """Wait for the pending CUDA events and complete their steps. The only call
        that blocks on the GPU in events mode; a no-op otherwise."""
        if self._pending:
            self._drain(block=True)

    @property
    def device(self) -> str | None:
        """"cpu" or "cuda[:N]" once resolved; None while "auto" awaits its first step."""
        return self._device_name

    @property
    def mode(self) -> str:
        """How phases are timed now: "host" (clock), "events" or "sync" (CUDA)."""
        if self._cuda is None:
            return "host"
        return "sync" if self._sync else "events"

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def wall(self) -> float:
        return self._wall

    @property
    def totals(self) -> dict[str, float]:
        return dict(zip(PHASES, self._totals))

    @property
    def data_wait_fraction(self) -> float:
        return self._totals[_DATA_WAIT] / self._wall if self._wall > 0 else 0.0

    @property
    def records(self) -> list[StepRecord]:
        return list(self._records)

    @property
    def pending(self) -> int:
        """Completed steps still waiting for their CUDA events."""
        return len(self._pending)

    @property
    def forced_syncs(self) -> int:
        """How often the pending queue overflowed and the oldest step was waited for."""
        return self._forced_syncs

    def summary(self) -> dict[str, Any]:
        """JSON-able totals; step-time percentiles cover the last ``history`` steps.
        Does not block: call ``flush()`` first to include steps still pending."""
        wall = self._wall
        walls = [record.wall for record in self._records]

        def percentile(q: float) -> float:
            return quantile(walls, q) if walls else 0.0

        return {
            "device": self._device_name,
            "mode": self.mode,
            "steps": self._steps,
            "samples": self._samples,
            "wall": wall,
            "samples_per_second": self._samples / wall if wall > 0 else 0.0,
            "totals": self.totals,
            "shares": {name: (t / wall if wall > 0 else 0.0) for name, t in zip(PHASES, self._totals)},
            "data_wait_fraction": self.data_wait_fraction,
            "step_time_median": percentile(0.5),
            "step_time_p90": percentile(0.9),
            "step_time_p99": percentile(0.99),
            "step_time_window": len(walls),
            "pending": len(self._pending),
            "forced_syncs": self._forced_syncs,
        }

    # ------------------------------------------------------------ phase stack

    def _enter(self, index: int) -> None:
        stack = self._stack
        top = stack[-1]
        if self._cuda is not None and self._in_step:
            self._mark(top, index)
        t = self._clock()
        self._acc[top] += t - self._seg_start
        self._seg_start = t
        stack.append(index)

    def _exit(self) -> None:
        stack = self._stack
        if len(stack) < 2:  # unbalanced exit: nothing to close, and never raise
            return
        closing = stack.pop()
        if self._cuda is not None and self._in_step:
            self._mark(closing, stack[-1])
        t = self._clock()
        self._acc[closing] += t - self._seg_start
        self._seg_start = t

    # ------------------------------------------------------------ steps

    def _iterate(self, it: Iterator[Any], count: Callable[[Any], int]) -> Iterator[Any]:
        """The generator behind ``iter()``: a step runs from one ``next()`` to the
        next, and the step in progress is completed on exhaustion, ``close()`` or
        ``break`` (the ``finally``)."""
        serial = -1
        try:
            while True:
                serial = self._begin_step()
                self._enter(_DATA_WAIT)
                try:
                    batch = next(it, _EXHAUSTED)
                finally:  # a loader that raises must not leave data_wait on the stack
                    self._exit()
                if batch is _EXHAUSTED:
                    self._abandon_step()
                    return
                try:
                    self._step_samples = int(count(batch))
                except Exception:
                    logger.warning("perfwatch StepTimer: could not count the samples of a batch; "
                                   "counting 0 for the rest of this loop", exc_info=True)
                    count = _no_samples
                yield batch
        finally:
            self._end_step_if(serial)

    def _begin_step(self) -> int:
        """Start a step (completing any step still open) and return its serial."""
        if self._device_name is None:
            self._resolve_device()
        t = self._end_step() if self._in_step else self._clock()
        self._serial += 1
        self._in_step = True
        self._step_start = self._seg_start = t
        self._step_samples = 0
        self._acc[:] = _ZEROS
        if self._cuda is not None:
            self._mark(_OTHER, self._stack[-1])  # a GPU phase left open across the boundary
        return self._serial

    def _end_step_if(self, serial: int) -> None:
        if self._in_step and self._serial == serial:
            self._end_step()

    def _end_step(self) -> float:
        """Complete the open step now (or queue it for its CUDA events); return the time."""
        top = self._stack[-1]
        if self._cuda is not None:
            self._mark(top, _OTHER)
        cuda = self._cuda  # None now if that mark failed
        t = self._clock()
        self._acc[top] += t - self._seg_start
        self._seg_start = t
        self._in_step = False
        index = self._ended
        self._ended += 1
        host = self._acc[:_N_MEASURED]
        wall = t - self._step_start
        if cuda is None or cuda.sync:
            self._complete(index, self._step_start, wall, host, self._step_samples)
        else:
            segments, events = cuda.take()
            self._pending.append(_Pending(index, self._step_start, wall, host, self._step_samples,
                                          segments, events))
            self._drain(block=False)
        return t

    def _abandon_step(self) -> None:
        """Drop the step opened for a ``next()`` that found the loader exhausted."""
        self._in_step = False
        if self._cuda is not None and not self._cuda.sync:
            self._cuda.recycle(self._cuda.take()[1])

    def _complete(self, index: int, start: float, wall: float, measured: list[float], samples: int) -> None:
        other = wall - sum(measured)
        measured.append(other if other > 0.0 else 0.0)
        totals = self._totals
        for i, seconds in enumerate(measured):
            totals[i] += seconds
        self._steps += 1
        self._samples += samples
        self._wall += wall
        record = StepRecord(index, start, wall, dict(zip(PHASES, measured)), samples)
        self._records.append(record)
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                self.remove_listener(listener)
                logger.warning("perfwatch StepTimer: listener %r raised and was removed; "
                               "training goes on", listener, exc_info=True)

    # ------------------------------------------------------------ CUDA

    def _resolve_device(self) -> None:
        """Pick the timing backend: explicit "cuda" (checked), or "auto" at the first
        step: CUDA only if the user's code already initialized it, so a CPU loop never
        imports torch or creates a CUDA context."""
        self._device_name = "cpu"
        if self._device == "cpu":
            return
        if self._device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("StepTimer(device='cuda') but torch.cuda.is_available() is False")
        else:
            torch = sys.modules.get("torch")
            if torch is None or not (torch.cuda.is_available() and torch.cuda.is_initialized()):
                return
        self._cuda = _CudaTiming(torch, self._cuda_index, self._sync)
        self._device_name = "cuda" if self._cuda_index is None else f"cuda:{self._cuda_index}"

    def _mark(self, closing: int, opening: int) -> None:
        try:
            self._cuda.mark(closing, opening)
        except Exception as exc:
            self._disable_cuda(exc)

    def _drain(self, block: bool) -> None:
        """Complete pending steps in order while their events are done; wait for the
        oldest when blocking or when the queue holds more than ``max_pending``."""
        cuda, pending = self._cuda, self._pending
        while pending:
            oldest = pending[0]
            try:
                if not cuda.ready(oldest.events):
                    if not block and len(pending) <= self._max_pending:
                        return
                    if not block:
                        self._forced_syncs += 1
                    cuda.wait(oldest.events)
                gpu = cuda.gpu_seconds(oldest.segments)
            except Exception as exc:
                self._disable_cuda(exc)
                return
            pending.popleft()
            cuda.recycle(oldest.events)
            for i in range(_N_MEASURED):
                if _IS_GPU[i]:
                    oldest.host[i] = gpu[i]
            self._complete(oldest.index, oldest.start, oldest.wall, oldest.host, oldest.samples)

    def _disable_cuda(self, exc: Exception) -> None:
        """CUDA timing failed (a capture, a device error): warn once, fall back to the
        host clock, and complete the pending steps with their host times."""
        logger.warning("perfwatch StepTimer: CUDA event timing failed (%r); timing on the host "
                       "clock from now on, GPU phases are no longer synchronized", exc)
        self._cuda = None
        while self._pending:
            p = self._pending.popleft()
            self._complete(p.index, p.start, p.wall, p.host, p.samples)
