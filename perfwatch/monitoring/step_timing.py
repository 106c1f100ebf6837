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
from pathlib import Path
from typing import Any

from perfwatch.channel import INJECTED_SOURCE, publish_timer
from perfwatch.store import write_atomic

log = logging.getLogger(__name__)

STEP_DIR_ENV = "PERFWATCH_STEP_DIR"  # set by `perfwatch monitor`: where the launched tree publishes its steps
STEP_BUCKETS_ENV = "PERFWATCH_STEP_BUCKETS"  # the parent's histogram bounds, comma-separated
ENABLE_ENV = "PERFWATCH_STEP_TIMING"  # "1", set with the hooks; "0" turns the timing off (the overhead baseline)
MONITOR_PUBLISH_EVERY_S = 1.0

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
    optimizers in one iteration are one step). Time inside ``optimizer.step()`` (an LBFGS
    closure included) is the optimizer phase; the rest is left to py-spy's attribution.
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

    def install(self, torch: Any) -> None:
        import torch.optim.optimizer as optim
        from torch.utils import data

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
            return it

        loader_class.__iter__ = __iter__

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

    # -------------------------------------------------------------- steps

    def _start(self) -> bool:
        """Create the StepTimer on the first event; step aside when the script uses perfwatch itself."""
        if self.timer is not None:
            return True
        if "perfwatch.instrument" in sys.modules:  # the script times itself (StepTimer, perfwatch.monitor())
            self.off = True
            return False
        from perfwatch.instrument import StepTimer, _batch_size

        self.batch_size = _batch_size  # as StepTimer.iter() counts a batch's samples
        self.timer = StepTimer()  # under `perfwatch profile` it publishes itself, as any StepTimer
        publish_timer(self.timer, source=INJECTED_SOURCE)  # ... marked as perfwatch's own timing
        if self.directory:  # under `perfwatch monitor`
            raw = os.environ.get(STEP_BUCKETS_ENV, "")
            self.bounds = tuple(float(b) for b in raw.split(",") if b)
            self.buckets = [0] * (len(self.bounds) + 1)
            self.path = Path(self.directory) / f"steptimer-{os.getpid()}-injected.json"
            self.timer.add_listener(self._observe)
            atexit.register(_guarded, self._publish)
        atexit.register(_guarded, self._finish)  # registered last, so it runs first: the open step counts
        return True

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
        self.timer._step_samples += self.batch_size(batch)

    def _before_optimizer(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.off or threading.get_ident() != self.main or self.optimizing is not None:
            return
        if not _guarded(self._open_for_optimizer, optimizer):
            self.off = True

    def _open_for_optimizer(self, optimizer: Any) -> bool:
        if not self._start():
            return False
        if self.scope is None or (self.stepped and id(optimizer) == self.lead):
            self._next_step()
        self.optimizing = self.timer.phase("optimizer")
        self.optimizing.__enter__()
        return True

    def _after_optimizer(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.optimizing is None or threading.get_ident() != self.main:
            return
        self.optimizing.__exit__(None, None, None)
        self.optimizing = None
        self.stepped = True
        if self.lead is None:
            self.lead = id(optimizer)

    def _observe(self, record: Any) -> None:
        """The StepTimer listener under ``monitor``: count the step, publish at most every second."""
        self.buckets[bisect_left(self.bounds, record.wall)] += 1
        self.last_step_unix = now = time.time()
        if now >= self.due:
            self.due = now + MONITOR_PUBLISH_EVERY_S
            self._publish()

    def _publish(self) -> None:
        summary = {**self.timer.summary(), "source": INJECTED_SOURCE, "bucket_bounds": list(self.bounds),
                   "buckets": list(self.buckets), "last_step_unix": self.last_step_unix}
        write_atomic(self.path, json.dumps(summary))

    def _finish(self) -> None:
        """At exit: complete the step in progress if an optimizer step ended it."""
        if self.scope is not None and self.stepped and not self.off:
            self.scope.__exit__(None, None, None)
            self.scope = None


def read_published(directory: Path) -> list[dict[str, Any]]:
    """The summaries the launched tree published into ``directory`` (one per timing process)."""
    found = []
    for path in sorted(directory.glob("steptimer-*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # being replaced, or gone
            continue
    return found
