"""``--torch-profiler``: a sitecustomize that starts torch.profiler inside the profiled command.

The hook is the child hooks' sitecustomize (perfwatch.monitoring.step_timing), put first on
the command's PYTHONPATH; when ``$PERFWATCH_TORCH_PROFILER_SECONDS`` is set it imports
:func:`torch_profiler_child_hook` from this module by its full name, so that name is a
contract with the child process.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path
from typing import Any

from perfwatch.channel import PROFILE_DIR_ENV
from perfwatch.monitoring.step_timing import install_child_hooks
from perfwatch.store import write_atomic

TORCH_PROFILER_ENV = "PERFWATCH_TORCH_PROFILER_SECONDS"


TORCH_PROFILER_DEFAULT_S = 30.0  # without --duration, torch.profiler records this long




def torch_profiler_child_hook() -> None:
    """Run torch.profiler in this process for ``$PERFWATCH_TORCH_PROFILER_SECONDS`` from its
    start (torch imported) and write ``torch-profile.json`` (top operators) and
    ``torch-trace.json`` (Chrome trace) next to ``$PERFWATCH_PROFILE_DIR``. Called from the
    sitecustomize that ``--torch-profiler`` puts on PYTHONPATH; the variable is removed so
    that only the first Python process profiles.

    The profiler stops at the first module call after that time (a global forward
    pre-hook, so on the training thread, as torch.profiler requires), or at exit.
    """
    seconds = float(os.environ.pop(TORCH_PROFILER_ENV, "0") or 0)
    out = os.environ.get(PROFILE_DIR_ENV)
    if seconds <= 0 or not out:
        return
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    profiler = profile(activities=activities)
    profiler.start()
    started = time.time()
    state: dict[str, Any] = {"done": False}

    def stop() -> None:
        if state["done"]:
            return
        state["done"] = True
        hook.remove()
        profiler.stop()
        directory = Path(out).parent
        ops = [{"name": e.key, "count": e.count, "self_cpu_us": e.self_cpu_time_total, "cpu_us": e.cpu_time_total,
                "self_device_us": getattr(e, "self_device_time_total", 0)}
               for e in sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)[:30]]
        profiler.export_chrome_trace(str(directory / "torch-trace.json"))
        write_atomic(directory / "torch-profile.json", json.dumps({"seconds": time.time() - started, "ops": ops}))

    def check(module: Any, args: Any) -> None:
        if time.time() - started >= seconds:
            stop()

    hook = torch.nn.modules.module.register_module_forward_pre_hook(check)
    atexit.register(stop)


def install_hook(directory: Path, env: dict[str, str], seconds: float) -> None:
    """Make the command that gets ``env`` run torch.profiler for its first ``seconds``: the hook
    goes into ``directory`` (removed with the profile's other scratch files) put first on PYTHONPATH."""
    install_child_hooks(directory, env)
    env[TORCH_PROFILER_ENV] = str(seconds)
