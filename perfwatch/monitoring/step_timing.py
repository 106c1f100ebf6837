"""Zero-code step timing: exact steps, step time and data wait of a script that uses no StepTimer.

``perfwatch monitor`` and ``perfwatch profile`` put a sitecustomize (``install_child_hooks``)
first on the command's PYTHONPATH. In the command's Python process it calls
``step_timing_child_hook``, which waits for the script's own ``import torch`` (a
``sys.meta_path`` finder; torch is never imported early) and then times, on the main
thread only, the DataLoader iterators' ``__next__`` (data wait) and every optimizer step
(torch's global optimizer step hooks: the optimizer phase, and step boundaries) with a
StepTimer. Under ``profile`` that StepTimer publishes itself, as any does (the profile
channel); under ``monitor`` its summary, with step-time bucket counts, goes every second
into ``$PERFWATCH_STEP_DIR``, for the parent to export as ``perfwatch_train_*``
(``metrics.PublishedTraining``). Any failure steps aside with one warning.

Both also carry what only the training process knows (``channel.injected_facts``): which
phases were timed exactly, the PIDs of the worker processes its DataLoader iterators started
(``_MultiProcessingDataLoaderIter._workers``: ``profile`` counts only those as workers), and
the dtype and device of the parameters the optimizer steps (whether bf16 autocast can help),
and, under DDP, the rank's collective timing (``collective.Injected``: the comm hook that
``perfwatch.monitor(model=...)`` installs, put on the script's first DistributedDataParallel
model): its work and wait totals with its rank and host, which ``monitor`` exports per rank
(``collective_metrics.PublishedCollective``).

For ``perfwatch profile --try`` the same hook also sets DataLoader arguments (``$PERFWATCH_LOADER_KNOBS``,
JSON) in every DataLoader the script constructs, through the constructor, and notes when the run is
past its warm-up (``$PERFWATCH_STEP_MARK_AFTER`` seconds after the first step: ``mark_steps`` and
``mark_unix`` in the published summary), so that steps/s can be measured exactly from there on.

This module runs inside the user's process: it imports nothing heavy.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from bisect import bisect_left
from collections import Counter
from pathlib import Path
from typing import Any

from perfwatch.channel import INJECTED_SOURCE, publish_now, publish_timer
from perfwatch.monitoring.collective import Injected
from perfwatch.store import write_atomic

log = logging.getLogger(__name__)

STEP_DIR_ENV = "PERFWATCH_STEP_DIR"  # set by `perfwatch monitor`: where the launched tree publishes its steps
STEP_BUCKETS_ENV = "PERFWATCH_STEP_BUCKETS"  # the parent's histogram bounds, comma-separated
ENABLE_ENV = "PERFWATCH_STEP_TIMING"  # "1", set with the hooks; "0" turns the timing off (the overhead baseline)
MONITOR_PUBLISH_EVERY_S = 1.0
KNOBS_ENV = "PERFWATCH_LOADER_KNOBS"  # JSON: DataLoader arguments to set in every DataLoader (`profile --try`)
MARK_AFTER_ENV = "PERFWATCH_STEP_MARK_AFTER"  # seconds after the first step to note the steps done (warm-up)
LOADER_KNOBS = ("num_workers", "pin_memory", "prefetch_factor", "persistent_workers")
_NEED_WORKERS = ("prefetch_factor", "persistent_workers")  # DataLoader refuses them with num_workers=0

_HOOK = """\
# Written by perfwatch: time the training steps of this command (and start torch.profiler
# when `perfwatch profile --torch-profiler` asked), then hand over to the environment's own
# sitecustomize, if any.
import os, sys
try:
    from perfwatch.monitoring.step_timing import step_timing_child_hook
except ImportError:
    pass
else:
    step_timing_child_hook()
if os.environ.get("PERFWATCH_TORCH_PROFILER_SECONDS"):
    try:
        from perfwatch.profile.torch_hook import torch_profiler_child_hook
    except ImportError:
        pass
    else:
        torch_profiler_child_hook()
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_this = sys.modules.pop("sitecustomize")
try:
    import sitecustomize  # noqa: F401
except ImportError:
    pass
finally:
    sys.modules["sitecustomize"] = _this  # the import that runs this file expects to find it
"""


def install_child_hooks(directory: Path, env: dict[str, str]) -> None:
    """Put the child hooks' sitecustomize into ``directory``, first on ``env``'s PYTHONPATH, step timing on."""
    env[ENABLE_ENV] = "1"
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_text(_HOOK)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), env.get("PYTHONPATH")]))


def step_timing_child_hook() -> None:
    """In the command's process: time its steps once the script imports torch (see the module docstring)."""
    if os.environ.get(ENABLE_ENV) != "1":
        return
    directory = os.environ.get(STEP_DIR_ENV)
    if "torch" in sys.modules:  # imported before site ran (unusual): patch now
        _guarded(_StepTiming(directory).install, sys.modules["torch"])
    else:
        sys.meta_path.insert(0, _AfterTorchImport(directory))


def _guarded(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:
        log.warning("perfwatch: zero-code step timing failed and is off for this process; training goes on",
                    exc_info=True)
        return None


def _noted(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` for a fact the timing can do without (the workers' pids, the model's dtype): a
    failure leaves the fact out, not the timing."""
    try:
        return fn(*args)
    except Exception:
        log.debug("perfwatch: zero-code step timing could not note %s", getattr(fn, "__name__", fn), exc_info=True)
        return None


class _AfterTorchImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``torch`` is imported it wraps torch's loader so that the
    step timing is installed right after torch has finished importing."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "torch":
            return None
        sys.meta_path.remove(self)  # once: the find_spec below must not come back here
        spec = importlib.util.find_spec("torch")
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module
        directory = self.directory

        def exec_module(module: Any) -> None:
            original(module)
            _guarded(_StepTiming(directory).install, module)

        loader.exec_module = exec_module
        return spec


class _StepTiming:
    """The injected StepTimer and the hooks that drive it, on the main thread only.

    A step begins at the first ``__next__`` after an optimizer step (so gradient
    accumulation's several batches are one step, and data wait sums them) or, in a loop
    without a DataLoader, when the optimizer that stepped first steps again (so several
    optimizers in one iteration are one step). Time inside ``optimizer.step()`` is the
    optimizer phase, but for a step given a closure (LBFGS: forward and backward run inside
    it), which is left untimed like the rest, for py-spy's attribution.
    """

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.main = threading.main_thread().ident
        self.timer: Any = None
        self.scope: Any = None
        self.stepped = False  # an optimizer step completed in the open step
        self.lead: int | None = None  # id of the optimizer that stepped first
        self.off = False
        self.optimizing: Any = None  # the optimizer phase entered by a pre-hook
        self.bounds: tuple[float, ...] = ()
        self.buckets: list[int] = []
        self.last_step_unix: float | None = None
        self.due = 0.0  # when the next step publishes
        self.path: Path | None = None
        self.batch_size: Any = None
        self.stepping: Any = None  # the optimizer whose step() is running
        self.loader_batches = 0  # batches timed through a DataLoader's __next__
        self.optimizer_steps = 0
        self.closure_steps = 0  # optimizer steps given a closure (not timed as the optimizer phase)
        self.worker_pids: set[int] = set()
        self.model: dict[str, Any] | None = None
        self.knobs = _loader_knobs()
        self.knobbed = 0  # DataLoaders constructed with ``knobs``
        raw_mark = os.environ.get(MARK_AFTER_ENV)
        self.mark_after = float(raw_mark) if raw_mark else None
        self.first_unix: float | None = None
        self.mark: tuple[int, float] | None = None  # (steps, unix time) at the end of the warm-up
        self.collective = Injected(self._times_itself)

    def install(self, torch: Any) -> None:
        import torch.optim.optimizer as optim
        from torch.utils import data

        self.collective.install(torch)  # steps aside by itself: the step timing goes on without it
        if self.knobs:
            self._set_knobs(data.DataLoader)
        self._patch_loader(data.DataLoader)
        optim.register_optimizer_step_pre_hook(self._before_optimizer)
        optim.register_optimizer_step_post_hook(self._after_optimizer)

    def _patch_loader(self, loader_class: type) -> None:
        """Wrap ``DataLoader.__iter__`` so that the class of each iterator it returns gets a
        timed ``__next__`` (once per class; the iterator itself is the one torch made)."""
        original_iter = loader_class.__iter__
        patched: set[type] = set()
        timing = self

        def __iter__(loader: Any) -> Any:
            it = original_iter(loader)
            cls = type(it)
            if cls not in patched:
                patched.add(cls)
                _guarded(timing._patch_next, cls)
            _noted(timing._note_workers, it)
            return it

        loader_class.__iter__ = __iter__

    def _set_knobs(self, loader_class: type) -> None:
        """Wrap ``DataLoader.__init__`` so that every DataLoader (subclasses calling it too) is built
        with ``knobs`` in place of the script's own arguments; a call that does not bind is left to fail
        as it would."""
        import inspect

        original_init = loader_class.__init__
        signature = inspect.signature(original_init)
        timing = self

        def __init__(loader: Any, *args: Any, **kwargs: Any) -> None:
            bound = _noted(with_knobs, signature, (loader, *args), kwargs, timing.knobs)
            if bound is None:
                return original_init(loader, *args, **kwargs)
            timing.knobbed += 1
            return original_init(*bound.args, **bound.kwargs)

        loader_class.__init__ = __init__

    def _patch_next(self, cls: type) -> None:
        original_next = cls.__next__
        timing = self

        def __next__(it: Any) -> Any:
            if timing.off or threading.get_ident() != timing.main:
                return original_next(it)
            if not _guarded(timing._begin_batch):
                timing.off = True
                return original_next(it)
            with timing.timer.phase("data_wait"):
                batch = original_next(it)
            _guarded(timing._count, batch)
            return batch

        cls.__next__ = __next__

    def _note_workers(self, it: Any) -> None:
        """Remember the pids of the worker processes of a DataLoader iterator (torch keeps them in
        ``_workers``; a new epoch without persistent workers starts new ones) and publish them."""
        pids = {worker.pid for worker in getattr(it, "_workers", ()) if getattr(worker, "pid", None)}
        if pids - self.worker_pids:
            self.worker_pids |= pids
            if self.timer is not None:
                self._republish()

    def facts(self) -> dict[str, Any]:
        """What the published summaries carry besides the totals (read by ``channel.injected_facts``)."""
        exact = (["data_wait"] if self.loader_batches else []) + (
            ["optimizer"] if self.optimizer_steps and not self.closure_steps else [])
        facts = {"exact_phases": exact, "dataloader_worker_pids": sorted(self.worker_pids),
                 "closure_steps": self.closure_steps, "model": self.model or None,
                 "rank": self.collective.rank}  # torchrun's RANK (None outside torchrun): whose steps these are
        if self.knobs:
            facts["loader_knobs"] = {"knobs": self.knobs, "loaders": self.knobbed}
        if self.mark is not None:
            facts.update(mark_steps=self.mark[0], mark_unix=self.mark[1])
        facts.update(self.collective.facts())
        return facts

    def _republish(self) -> None:
        publish_now(self.timer)
        if self.path is not None:
            self._publish()

    # -------------------------------------------------------------- steps

    def _start(self) -> bool:
        """Create the StepTimer on the first event; step aside when the script uses perfwatch itself."""
        if self.timer is not None:
            return True
        if self._times_itself():
            self.off = True
            return False
        from perfwatch.instrument import StepTimer, batch_size

        self.batch_size = batch_size  # as StepTimer.iter() counts a batch's samples
        self.timer = StepTimer()  # under `perfwatch profile` it publishes itself, as any StepTimer
        publish_timer(self.timer, source=INJECTED_SOURCE, extra=self.facts)  # ... marked as perfwatch's own
        if self.directory:  # under `perfwatch monitor`
            raw = os.environ.get(STEP_BUCKETS_ENV, "")
            self.bounds = tuple(float(b) for b in raw.split(",") if b)
            self.buckets = [0] * (len(self.bounds) + 1)
            self.path = Path(self.directory) / f"steptimer-{os.getpid()}-injected.json"
            self.timer.add_listener(self._observe)
            atexit.register(_guarded, self._publish)
        atexit.register(_guarded, self._finish)  # registered last, so it runs first: the open step counts
        if self.worker_pids:  # known before the first batch: say so now, not 10 s from now
            self._republish()
        return True

    def _times_itself(self) -> bool:
        """The script uses perfwatch itself (StepTimer, perfwatch.monitor()), before this timing started."""
        return self.timer is None and "perfwatch.instrument" in sys.modules

    def _begin_batch(self) -> bool:
        if not self._start():
            return False
        if self.scope is None or self.stepped:
            self._next_step()
        return True

    def _next_step(self) -> None:
        if self.scope is not None:
            self.scope.__exit__(None, None, None)
        self.scope = self.timer.step()
        self.scope.__enter__()
        self.stepped = False

    def _count(self, batch: Any) -> None:
        self.loader_batches += 1
        self.timer._step_samples += self.batch_size(batch)

    def _before_optimizer(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.off or threading.get_ident() != self.main or self.stepping is not None:
            return
        if not _guarded(self._open_for_optimizer, optimizer, args, kwargs):
            self.off = True

    def _open_for_optimizer(self, optimizer: Any, args: Any, kwargs: Any) -> bool:
        if not self._start():
            return False
        if self.scope is None or (self.stepped and id(optimizer) == self.lead):
            self._next_step()
        if self.model is None:
            self.model = _noted(model_facts, optimizer) or {}
        self.stepping = optimizer
        if callable(args[1] if len(args) > 1 else kwargs.get("closure")):  # args: (optimizer, closure?)
            self.closure_steps += 1  # forward and backward run inside this step: not the optimizer's time
        else:
            self.optimizing = self.timer.phase("optimizer")
            self.optimizing.__enter__()
        return True

    def _after_optimizer(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.stepping is not optimizer or threading.get_ident() != self.main:
            return
        if self.optimizing is not None:
            self.optimizing.__exit__(None, None, None)
            self.optimizing = None
        self.stepping = None
        self.optimizer_steps += 1
        self.stepped = True
        if self.lead is None:
            self.lead = id(optimizer)

    def _observe(self, record: Any) -> None:
        """The StepTimer listener under ``monitor``: count the step, publish at most every second."""
        self.buckets[bisect_left(self.bounds, record.wall)] += 1
        self.last_step_unix = now = time.time()
        if self.mark_after is not None and self.mark is None:
            self.first_unix = self.first_unix or now
            if now - self.first_unix >= self.mark_after:
                self.mark = (self.timer.steps, now)
        if now >= self.due:
            self.due = now + MONITOR_PUBLISH_EVERY_S
            self._publish()

    def _publish(self) -> None:
        summary = {**self.timer.summary(), "source": INJECTED_SOURCE, **self.facts(),
                   "bucket_bounds": list(self.bounds), "buckets": list(self.buckets),
                   "last_step_unix": self.last_step_unix}
        write_atomic(self.path, json.dumps(summary))

    def _finish(self) -> None:
        """At exit: complete the step in progress if an optimizer step ended it, and wait for the
        steps whose CUDA events are still in flight (the GPU is behind the host: without the
        wait the last steps would be missing from the totals published next)."""
        if self.off:
            return
        if self.scope is not None and self.stepped:
            self.scope.__exit__(None, None, None)
            self.scope = None
        self.timer.flush()


def _loader_knobs() -> dict[str, Any]:
    """The DataLoader arguments ``$PERFWATCH_LOADER_KNOBS`` asks for (``LOADER_KNOBS`` only); {} for none."""
    raw = os.environ.get(KNOBS_ENV)
    if not raw:
        return {}
    try:
        knobs = json.loads(raw)
    except ValueError:
        knobs = None
    if not isinstance(knobs, dict):
        log.warning("perfwatch: %s is not a JSON object of DataLoader arguments; no knobs set", KNOBS_ENV)
        return {}
    return {name: value for name, value in knobs.items() if name in LOADER_KNOBS}


def with_knobs(signature: Any, args: tuple[Any, ...], kwargs: dict[str, Any], knobs: dict[str, Any]) -> Any:
    """The DataLoader constructor's arguments bound from ``args``/``kwargs``, with ``knobs`` in place of
    the script's; prefetching and persistent workers dropped where the result has no workers."""
    bound = signature.bind(*args, **kwargs)
    bound.arguments.update(knobs)
    if not bound.arguments.get("num_workers"):
        for name in _NEED_WORKERS:
            bound.arguments.pop(name, None)
    return bound


def model_facts(optimizer: Any) -> dict[str, Any]:
    """The dtype and device of most of the parameters ``optimizer`` steps (by element count), the
    GPU's compute capability when they are on CUDA, and the optimizer's class."""
    dtypes: Counter[str] = Counter()
    devices: Counter[Any] = Counter()
    for group in optimizer.param_groups:
        for param in group["params"]:
            dtypes[str(param.dtype).removeprefix("torch.")] += param.numel()
            devices[param.device] += param.numel()
    device = devices.most_common(1)[0][0] if devices else None
    capability = None
    if device is not None and device.type == "cuda":
        import torch

        capability = "{}.{}".format(*torch.cuda.get_device_capability(device))
    return {"dtype": dtypes.most_common(1)[0][0] if dtypes else None,
            "device": device.type if device is not None else None, "cuda_capability": capability,
            "optimizer": type(optimizer).__name__}


def read_published(directory: Path) -> list[dict[str, Any]]:
    """The summaries the launched tree published into ``directory`` (one per timing process)."""
    found = []
    for path in sorted(directory.glob("steptimer-*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # being replaced, or gone
            continue
    return found
