"""Per-rank collective timing under DDP: how long a rank works before each gradient all-reduce,
and how long it then waits for it.

Every rank waits for the slowest at the all-reduce, so step times come out equal on all ranks
and hide a straggler; the split does not: the straggler works longest and waits least.
``install(model)`` registers a DDP communication hook that runs DDP's own default all-reduce
(``allreduce_hook``, public API; DDP documents that it computes what no hook computes) and
notes two instants per step:

- *ready*: the rank hands its last gradient bucket to the all-reduce (its backward is done);
- *done*: the step's last all-reduce has completed.

``work`` = ready minus the previous step's done: all the rank does between two all-reduces
(data wait, forward, backward, optimizer); ``wait`` = done minus ready. The first step after
installing only sets the origin.

The done instant is taken in a ``then`` callback chained to the all-reduce's future, whose
result DDP waits for: so it is taken before DDP goes on (a done-callback may run after the
next step began) and it hands the all-reduce's result through unchanged. On CPU (gloo) a
future completes on the host when its all-reduce has: the instants are host clock readings.
On CUDA a future completes on the host as soon as its work is enqueued, so the instants are
CUDA events: recorded in the hook on the gradients' stream, and in the ``then`` callback,
which runs on streams that wait for the all-reduce; they are resolved with ``query()`` at
later steps, never synchronized.

DDP keeps a comm hook for the model's lifetime: after ``stop()`` it only forwards. A failure
in the accounting steps aside with one warning; the all-reduce itself is never touched.

``Injected`` is the zero-code side (``perfwatch monitor -- torchrun ...``, ``perfwatch profile``;
driven by monitoring.step_timing): it wraps DDP's constructor so that the first DDP model the
script runs a forward of gets the hook, and reports its totals with the rank and host;
``PERFWATCH_COLLECTIVE_TIMING=0`` in the command's environment leaves every model unhooked
(the rest of the step timing goes on: the baseline the hook's overhead is measured against).

This module runs in the training process and imports torch only in ``install``.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ENABLE_ENV = "PERFWATCH_COLLECTIVE_TIMING"  # "0": Injected hooks no model
MAX_PENDING = 64  # CUDA steps whose events may wait for the GPU; beyond, the oldest is dropped, never waited for

# Models this process already hooked: DDP takes one hook per model, so a later monitor() reuses it.
_HOOKED: weakref.WeakKeyDictionary[Any, CollectiveTiming] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class CollectiveTotals:
    """Cumulative since installing: steps counted, and their work and wait in seconds."""

    steps: int
    work_seconds: float
    wait_seconds: float


class _CudaMarks:
    """The CUDA half: a (ready, done) pair of events per step, resolved once the GPU passed them."""

    def __init__(self, torch: Any) -> None:
        self._cuda = torch.cuda
        self._pool: list[Any] = []  # recycled events: no allocation in steady state
        self._ready: Any = None
        self._pending: deque[tuple[Any, Any]] = deque()
        self._origin: Any = None  # the last resolved step's done event

    def _event(self, device: Any) -> Any:
        event = self._pool.pop() if self._pool else self._cuda.Event(enable_timing=True)
        event.record(self._cuda.current_stream(device))
        return event

    def ready(self, device: Any) -> None:
        self._ready = self._event(device)

    def done(self, device: Any) -> None:
        if self._ready is not None:
            self._pending.append((self._ready, self._event(device)))
            self._ready = None
        while len(self._pending) > MAX_PENDING:  # the GPU is far behind: forget, never wait
            self._recycle(*self._pending.popleft())
            self._recycle(self._origin)
            self._origin = None

    def resolved(self) -> list[tuple[float | None, float]]:
        """(work or None for the first, wait) in seconds of the steps the GPU has passed, in order."""
        steps = []
        while self._pending and self._pending[0][1].query():
            ready, done = self._pending.popleft()
            work = self._origin.elapsed_time(ready) / 1000.0 if self._origin is not None else None
            steps.append((work, ready.elapsed_time(done) / 1000.0))
            self._recycle(self._origin, ready)
            self._origin = done
        return steps

    def reset(self) -> None:
        """Forget the steps in flight and the origin: the next step starts afresh."""
        for pair in self._pending:
            self._recycle(*pair)
        self._pending.clear()
        self._recycle(self._ready, self._origin)
        self._ready = self._origin = None

    def _recycle(self, *events: Any) -> None:
        self._pool.extend(event for event in events if event is not None)


class CollectiveTiming:
    """The comm hook (``hook``) and its per-step accounting (``totals``); see the module docstring.

    The hook runs in autograd's threads, the ``then`` callbacks in the process group's: one lock
    guards the state. ``allreduce`` is DDP's default hook, given by ``install``.
    """

    def __init__(self, allreduce: Callable[[Any, Any], Any], clock: Callable[[], float] = time.perf_counter) -> None:
        self._allreduce = allreduce
        self._clock = clock
        self._lock = threading.Lock()
        self._counting = True
        self._failed = False
        self._steps, self._work, self._wait = 0, 0.0, 0.0
        self._outstanding = 0  # host mode: the step's all-reduces not yet completed
        self._ready: float | None = None
        self._done: float | None = None
        self._origin: float | None = None  # the previous step's done
        self._cuda: _CudaMarks | None = None
        self.mode: str | None = None  # "host" or "cuda events", from the first bucket

    def hook(self, state: Any, bucket):  # no annotations on bucket and return: DDP checks them against its own
        """The DDP comm hook: DDP's default all-reduce, timed (DDP requires the name ``bucket``)."""
        if not self._counting:
            return self._allreduce(state, bucket)
        done = None
        try:
            done = self._launching(bucket)
        except Exception as exc:  # noqa: BLE001 - whatever fails here must not reach the training
            self._step_aside(exc)
        future = self._allreduce(state, bucket)
        return future.then(done) if done is not None else future

    def totals(self) -> CollectiveTotals:
        with self._lock:
            return CollectiveTotals(self._steps, self._work, self._wait)

    def stop(self) -> None:
        """Stop counting; the hook forwards to the all-reduce alone."""
        self._counting = False

    def restart(self) -> None:
        """Count again (a later monitor() on the same model); the next step sets a new origin."""
        with self._lock:
            self._outstanding, self._ready, self._done, self._origin = 0, None, None, None
            if self._cuda is not None:
                self._cuda.reset()
        self._counting = not self._failed

    # ------------------------------------------------------------ accounting

    def _launching(self, bucket: Any) -> Callable[[Any], None] | None:
        """Note a bucket about to be all-reduced; the ``then`` callback for its future, if any."""
        buffer = bucket.buffer()
        if self.mode is None:
            self.mode = "cuda events" if buffer.is_cuda else "host"
            if buffer.is_cuda:
                import torch  # already loaded: the model is on CUDA

                self._cuda = _CudaMarks(torch)
        last = bucket.is_last()
        if self._cuda is not None:
            if not last:  # one stream runs a group's all-reduces in order: the last one's end is the step's
                return None
            with self._lock:
                self._cuda.ready(buffer.device)
                self._count_resolved()
            device = buffer.device

            def cuda_then(future: Any) -> Any:
                self._guarded(self._cuda_done, device)
                return future.value()

            return cuda_then
        now = self._clock()
        with self._lock:
            self._outstanding += 1
            if last:
                self._ready = now
        return self._host_then

    def _host_then(self, future: Any) -> Any:
        self._guarded(self._host_done)
        return future.value()  # the all-reduced bucket, or the all-reduce's own error, as DDP would see it

    def _host_done(self) -> None:
        now = self._clock()
        with self._lock:
            if not self._counting or self._outstanding == 0:
                return
            self._outstanding -= 1
            if self._done is None or now > self._done:
                self._done = now
            if self._outstanding or self._ready is None:
                return
            ready, done = self._ready, self._done
            self._ready = self._done = None
            if self._origin is not None:
                self._add(ready - self._origin, done - ready)
            self._origin = done

    def _cuda_done(self, device: Any) -> None:
        with self._lock:
            if self._counting and self._cuda is not None:
                self._cuda.done(device)

    def _count_resolved(self) -> None:
        for work, wait in self._cuda.resolved():
            if work is not None:
                self._add(work, wait)

    def _add(self, work: float, wait: float) -> None:
        self._steps += 1
        self._work += max(work, 0.0)
        self._wait += max(wait, 0.0)

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a ``then`` callback's accounting; it must never fail the future DDP waits for."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - it would be lost in the process group's thread
            self._step_aside(exc)

    def _step_aside(self, exc: Exception) -> None:
        if self._failed:
            return
        self._failed = True
        self._counting = False
        log.warning("perfwatch: collective timing failed (%r); it is off from now on, the training goes on", exc)


def comm_hook_of(model: Any) -> str | None:
    """The name of the comm hook ``model`` already has (Python or built-in), None for none.
    DDP notes it in its logging data; a DDP without that method is judged at registration."""
    logging_data = getattr(model, "_get_ddp_logging_data", None)
    if logging_data is None:
        return None
    try:
        return logging_data().get("comm_hook") or None
    except (RuntimeError, AttributeError, TypeError):
        return None


def install(model: Any, clock: Callable[[], float] = time.perf_counter) -> CollectiveTiming | None:
    """Time the gradient all-reduces of ``model``, a DistributedDataParallel module; None where it cannot be.

    Not DDP: one info line. A comm hook of the user's own: kept, one warning that collective
    timing is unavailable. A model hooked before in this process: its timing counts again.
    """
    import sys

    torch = sys.modules.get("torch")  # a model from torch means torch is loaded; never load it here for nothing
    ddp = torch.nn.parallel.DistributedDataParallel if torch is not None else None
    if ddp is None or not isinstance(model, ddp):
        log.info("perfwatch: collective timing needs a DistributedDataParallel model, not a %s; none here",
                 type(model).__name__)
        return None
    hooked = _HOOKED.get(model)
    if hooked is not None:
        hooked.restart()
        return hooked
    own = comm_hook_of(model)
    if own is not None:
        _keep_theirs(own)
        return None
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    timing = CollectiveTiming(allreduce_hook, clock)
    try:
        model.register_comm_hook(getattr(model, "process_group", None), timing.hook)
    except RuntimeError as exc:  # the reducer takes one hook: one we could not see was there
        _keep_theirs(str(exc))
        return None
    _HOOKED[model] = timing
    return timing


def _keep_theirs(what: str) -> None:
    log.warning("perfwatch: the DDP model already has a communication hook (%s); keeping it, so collective "
                "timing (perfwatch_train_collective_wait_seconds_total and friends) is unavailable", what)


class Injected:
    """Collective timing for a script that does not ask for it: the hook goes on the first
    DistributedDataParallel model to run a forward, just before that forward.

    Not at construction: a script registers a comm hook of its own after constructing the model
    (DDP takes one, before training), and ours in its place would make that call raise. At the
    first forward the script's hook, if any, is there to be seen and kept (one warning). Only the
    first model is timed: two models' all-reduces (a GAN's) would split one step's work between
    them. ``times_itself()`` (the script uses perfwatch itself) leaves the timing to the script.
    The constructor runs untouched; anything else that fails steps aside with one warning.
    """

    def __init__(self, times_itself: Callable[[], bool]) -> None:
        self._times_itself = times_itself
        self.timing: CollectiveTiming | None = None
        self._decided = False
        self.rank = os.environ.get("RANK")
        self.host = socket.gethostname()

    def install(self, torch: Any) -> None:
        """Wrap ``DistributedDataParallel.__init__``, right after the script imported torch; nothing
        when ``$PERFWATCH_COLLECTIVE_TIMING`` is "0"."""
        if os.environ.get(ENABLE_ENV) != "0":
            self._guarded(self._wrap_constructor, torch)

    def _wrap_constructor(self, torch: Any) -> None:
        ddp = getattr(getattr(torch.nn, "parallel", None), "DistributedDataParallel", None)
        if ddp is None:  # a torch built without distributed: nothing to time
            return
        original = ddp.__init__
        injected = self

        @functools.wraps(original)  # inspect.signature(DistributedDataParallel) stays DDP's own
        def __init__(model: Any, *args: Any, **kwargs: Any) -> None:
            original(model, *args, **kwargs)
            if not injected._decided:
                injected._guarded(injected._watch, model)

        ddp.__init__ = __init__

    def _watch(self, model: Any) -> None:
        handle = None

        def first_forward(module: Any, args: Any) -> None:
            handle.remove()
            self._guarded(self._adopt, module)

        handle = model.register_forward_pre_hook(first_forward)

    def _adopt(self, model: Any) -> None:
        if self._decided:
            return
        self._decided = True
        if not self._times_itself():
            self.timing = install(model)  # a comm hook of the script's own: kept, one warning

    def _guarded(self, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except Exception:  # whatever fails here must not reach the training
            self._decided = True
            log.warning("perfwatch: collective timing failed and is off for this process; training goes on",
                        exc_info=True)

    def facts(self) -> dict[str, Any]:
        """What the published summaries carry: this rank's totals, its rank and host; {} when untimed."""
        if self.timing is None:
            return {}
        totals = self.timing.totals()
        return {"collective": {"rank": self.rank or "0", "host": self.host, "steps": totals.steps,
                               "work_seconds": totals.work_seconds, "wait_seconds": totals.wait_seconds}}
