"""Attribution of the training thread's stack samples to phases.

``FRAME_RULES`` and ``LINE_RULES`` are where a contributor teaches perfwatch a new library:
the outermost frame a rule knows decides the phase of a sample (so a Module used as a
transform inside a Dataset counts as data loading); for the innermost line when it calls a
C function py-spy cannot see (``.item()``, ``.to()``), ``LINE_RULES`` match its source text.
One exception: an optimizer step that calls back into the script's code (the closure of
``LBFGS.step(closure)``, which runs forward and backward) is the optimizer's only outside
that code; inside it the same rules decide, as they do in the loop body.
"""

from __future__ import annotations

import linecache
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from perfwatch.profile import diagnose as dx
from perfwatch.profile.stacks import Frame, Stack, top_functions

# (phase, path fragment, function names or None for any function in that file).
_IMPORTS = "<frozen importlib"


FRAME_RULES: tuple[tuple[str, str, frozenset[str] | None], ...] = (
    ("data_loading", "/torch/utils/data/", None),
    ("data_loading", "/torchdata/", None),
    ("backward", "/torch/_tensor.py", frozenset({"Tensor.backward"})),
    ("backward", "/torch/autograd/__init__.py", frozenset({"backward", "grad"})),
    ("backward", "/torch/autograd/graph.py", frozenset({"_engine_run_backward"})),
    ("optimizer", "/torch/optim/", None),
    ("host_to_device", "/torch/nn/modules/module.py", frozenset({"Module.to", "Module.cuda"})),
    ("forward", "/torch/nn/modules/module.py", frozenset({"Module._call_impl", "Module._wrapped_call_impl"})),
    ("forward", "/torch/nn/functional.py", None),
    ("sync", "/torch/cuda/__init__.py", frozenset({"synchronize"})),
    ("sync", "/torch/cuda/streams.py", frozenset({"Stream.synchronize", "Event.synchronize"})),
    ("checkpoint", "/torch/serialization.py", None),
    ("checkpoint", "/safetensors/", None),
    ("logging", "/logging/", None),
    ("logging", "/torch/utils/tensorboard/", None),
    ("logging", "/tensorboardX/", None),
    ("logging", "/wandb/", None),
    ("logging", "/mlflow/", None),
)


# The innermost Python line when the thread is inside a C function, which has no frame.
# ``.to("cpu")`` is a copy to the host, which waits for the device like ``.cpu()``: sync, not
# host-to-device. A cast to another dtype or memory format (``.to(torch.bfloat16)``,
# ``.to(dtype=...)``, ``.half()``) copies within the memory the tensor is already in: copy.
# (On a run without a GPU, diagnose calls every host-memory copy "copy".)
_DTYPES = r"(float|half|bfloat|double|int|uint|long|short|bool|complex|qint|quint|cfloat|cdouble)\w*"
LINE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("sync", re.compile(r"\.(item|cpu|tolist|numpy)\(\)|\.synchronize\(|\.to\(\s*(torch\.device\(\s*)?[\"']cpu[\"']")),
    ("copy", re.compile(rf"\.to\(\s*(torch\.{_DTYPES}\s*[,)]|(dtype|memory_format)\s*=)"
                        r"|\.(half|float|double|bfloat16|long|int|bool)\(\)|\.contiguous\(")),
    ("host_to_device", re.compile(r"\.(to|cuda|copy_)\(")),
    ("logging", re.compile(r"\bprint\(")),
)


_WORKER_LOOP = "_worker_loop"


_FETCH = "/torch/utils/data/_utils/fetch.py"


_COLLATE = "/torch/utils/data/_utils/collate.py"


_WORKER_STARTUP = frozenset({"_MultiProcessingDataLoaderIter.__init__", "_MultiProcessingDataLoaderIter._shutdown_workers",
                             "_MultiProcessingDataLoaderIter.__del__"})


_WAITING_FOR_WORKERS = frozenset({"_MultiProcessingDataLoaderIter._next_data", "_MultiProcessingDataLoaderIter._get_data",
                                  "_MultiProcessingDataLoaderIter._try_get_data"})


_TRAINING_PHASES = ("forward", "backward", "optimizer")


_TORCH = "/torch/"


MIN_GIL_PHASE_SAMPLES = 20  # below this many wall samples a phase's GIL share means little


def frame_phase(frame: Frame) -> str | None:
    for phase, fragment, functions in FRAME_RULES:
        if fragment in frame.file and (functions is None or frame.function in functions):
            return phase
    return None


def stack_phase(frames: Sequence[Frame], source_line: Callable[[str, int], str] = linecache.getline) -> str:
    """The phase of one stack of the training thread: the outermost frame a rule knows decides.

    One-time costs are ``startup`` and left out of the shares: imports anywhere in the
    stack (a first ``optimizer.step()`` imports torch._dynamo), no Python frame at all
    (the interpreter starting), and stacks that do not start in the main module
    (atexit handlers and finalizers at shut-down)."""
    if (not frames or any(frame.file.startswith(_IMPORTS) for frame in frames)
            or (frames[0].function != "<module>" and not frames[0].file.endswith("runpy.py"))):
        return "startup"
    return _phase_of(frames, source_line)


def _phase_of(frames: Sequence[Frame], source_line: Callable[[str, int], str]) -> str:
    for index, frame in enumerate(frames):
        phase = frame_phase(frame)
        if phase == "optimizer":
            closure = _called_back(frames[index + 1:])
            return _phase_of(closure, source_line) if closure else phase
        if phase is not None:
            return phase
    text = source_line(frames[-1].file, frames[-1].line)
    for phase, pattern in LINE_RULES:
        if pattern.search(text):
            return phase
    return "other"


def _called_back(frames: Sequence[Frame]) -> Sequence[Frame]:
    """The frames from the first one outside torch on (code the optimizer called back: a closure),
    or () when the optimizer's step runs torch's code only."""
    for index, frame in enumerate(frames):
        if _TORCH not in frame.file:
            return frames[index:]
    return ()


def data_detail(frames: Sequence[Frame]) -> str:
    """What a data-loading sample of the training thread was doing."""
    functions = {f.function for f in frames}
    if functions & _WORKER_STARTUP:
        return "worker_startup"
    if any(f.file.endswith(_COLLATE) for f in frames):
        return "collate"
    if any(f.file.endswith(_FETCH) for f in frames):
        return "inline_fetch"
    if functions & _WAITING_FOR_WORKERS:
        return "waiting_for_workers"
    return "other"


def worker_state(frames: Sequence[Frame]) -> str:
    if any(f.file.endswith(_FETCH) for f in frames):
        return "fetch"
    if any(f.function == "Queue.get" for f in frames):
        return "waiting_for_indices"
    return "other"


def _compiled(frame: Frame) -> bool:
    """A frame of a torch.compile'd call: dynamo's wrapper, AOTAutograd's runtime or inductor's."""
    return ("compile_wrapper" in frame.function or frame.function.startswith("OptimizedModule.")
            or "/torch/_inductor/" in frame.file or "/torch/_functorch/_aot_autograd/" in frame.file)


def _is_worker(stacks: list[Stack]) -> bool:
    return any(f.function == _WORKER_LOOP for s in stacks for f in s.frames)


def _main_thread(stack: Stack) -> bool:
    return stack.tid == stack.pid if stack.pid is not None else stack.thread == "MainThread"


@dataclass(frozen=True)
class Attribution:
    """The stack evidence for ``diagnose`` plus what the report shows about py-spy's view."""

    evidence: dx.StackEvidence
    training_pid: int | None
    worker_pids: tuple[int, ...]
    python_threads: int
    samples_total: int
    top_functions: list[dict[str, Any]] = field(default_factory=list)
    worker_top_functions: list[dict[str, Any]] = field(default_factory=list)


def _by_process(stacks: list[Stack]) -> dict[int | None, list[Stack]]:
    processes: dict[int | None, list[Stack]] = {}
    for stack in stacks:
        processes.setdefault(stack.pid, []).append(stack)
    return processes


def _training_pid(processes: dict[int | None, list[Stack]], launched: int, classify) -> int | None:
    """The process whose main thread trains most (forward/backward/optimizer samples); ties go to the launched one."""
    def score(pid: int | None) -> tuple[int, bool]:
        trained = sum(s.count for s in processes[pid] if _main_thread(s) and classify(s) in _TRAINING_PHASES)
        return trained, pid in (launched, None)

    candidates = [pid for pid, stacks in processes.items() if not _is_worker(stacks)]
    return max(candidates, key=score) if candidates else None


def _gil_shares(gil: list[Stack], pid: int, phases: Counter[str], seconds: float, rate: float, gil_rate: float,
                classify: Callable[[Stack], str]) -> tuple[dict[str, float], float | None]:
    """(per phase: share of its wall time the training thread held the GIL, share of the
    sampled time other threads of the process held it); empty without a GIL pass."""
    if not gil:
        return {}, None
    held: Counter[str] = Counter()
    for stack in gil:
        if stack.tid == pid:
            held[classify(stack)] += stack.count
    shares = {phase: min(1.0, (held[phase] / gil_rate) / (count / rate))
              for phase, count in phases.items() if count >= MIN_GIL_PHASE_SAMPLES}
    others = sum(s.count for s in gil if s.tid != pid) / gil_rate
    return shares, (min(1.0, others / seconds) if seconds > 0 else None)


def attribute(wall: list[Stack], gil: list[Stack], launched_pid: int, rate: float, gil_rate: float,
              source_line: Callable[[str, int], str] = linecache.getline) -> Attribution | None:
    """Attribute the wall-pass samples of the training thread to phases; add the GIL pass's
    evidence. None when py-spy saw no training-process main thread."""
    phase_cache: dict[tuple[Frame, ...], str] = {}

    def classify(stack: Stack) -> str:
        if stack.frames not in phase_cache:
            phase_cache[stack.frames] = stack_phase(stack.frames, source_line)
        return phase_cache[stack.frames]

    processes = _by_process(wall)
    pid = _training_pid(processes, launched_pid, classify)
    main = [s for s in processes.get(pid, []) if _main_thread(s)]
    if not main:
        return None
    phases: Counter[str] = Counter()
    detail: Counter[str] = Counter()
    zero_grad = single_tensor = 0
    compiled = convolution = False
    for stack in main:
        phase = classify(stack)
        phases[phase] += stack.count
        functions = {f.function for f in stack.frames}
        if phase == "data_loading":
            detail[data_detail(stack.frames)] += stack.count
        elif phase == "optimizer":
            zero_grad += stack.count if "Optimizer.zero_grad" in functions else 0
            single_tensor += stack.count if any(f.startswith("_single_tensor_") for f in functions) else 0
        elif phase == "forward":
            compiled = compiled or any(_compiled(f) for f in stack.frames)
            convolution = convolution or any(f.startswith("Conv") and f.endswith(".forward") for f in functions)
    startup = phases.pop("startup", 0)
    worker_pids = tuple(sorted(p for p, stacks in processes.items() if p is not None and _is_worker(stacks)))
    worker_stacks = [s for p in worker_pids for s in processes[p] if _main_thread(s)]
    workers: Counter[str] = Counter()
    for stack in worker_stacks:
        workers[worker_state(stack.frames)] += stack.count
    # The GIL pass samples the launched process alone (no --subprocesses: py-spy rescans every
    # process on the machine 10 times a second for children, a cost worth paying once).
    gil, gil_others = _gil_shares(gil if pid == launched_pid else [], pid, phases,
                                  sum(s.count for s in main) / rate, rate, gil_rate, classify)
    evidence = dx.StackEvidence(
        rate=rate, phases={phase: phases.get(phase, 0) for phase in dx.PHASES}, startup=startup,
        data_detail=dict(detail), gil=gil, gil_other_threads=gil_others, workers=dict(workers),
        zero_grad=zero_grad, single_tensor_optimizer=single_tensor, compiled=compiled, convolution=convolution,
    )
    return Attribution(
        evidence=evidence,
        training_pid=pid,
        worker_pids=worker_pids,
        python_threads=len({s.tid for s in processes[pid]}),
        samples_total=sum(s.count for s in wall),
        top_functions=top_functions([s for s in main if classify(s) != "startup"], classify=classify),
        worker_top_functions=top_functions(worker_stacks, limit=10),
    )
