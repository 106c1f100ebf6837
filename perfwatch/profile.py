"""``perfwatch profile``: run an unmodified training command under the Collector and py-spy, and diagnose it.

Nothing in the command changes. While it runs:

* the Collector samples the host and the command's process tree (DataLoader workers
  are role ``worker``) every 0.2 s;
* ``py-spy record --idle --subprocesses`` samples every thread of every Python process
  in the tree at ``rate`` Hz, *including threads that are blocked*. That makes each
  thread's samples a uniform clock: a phase's share of the training thread's samples
  is its share of wall time. ``--gil`` would keep only the samples of the thread that
  holds the GIL, and a training thread blocked on the DataLoader queue or on a file
  read releases the GIL: the very waits we look for would vanish. So ``--gil`` runs as a
  second, cheaper pass over the launched process (``rate / 10``, one thread per sample):
  the share of a phase's wall time in which the training thread held the GIL tells
  CPU-bound Python work (transforms: GIL held) from blocking (storage, queues: GIL
  released), and other threads holding it shows GIL contention. (When the training
  runs in a child of the launched process, e.g. under ``bash run.sh``, there is no
  GIL evidence.)

Both passes run ``--nonblocking``: py-spy reads the stacks without stopping the process.
Stopping it (py-spy's default) cost the zoo's transform-bound loop 13% at 100 Hz, not
stopping it 3%; the price is an occasional torn stack, which moves a sample or two
between phases and does not bias the shares.

The training thread is the main interpreter thread (thread id = process id) of the
process whose stacks show the training step (forward/backward/optimizer frames): the
launched process itself for ``python train.py``, a child for ``bash run.sh``. Its
samples are attributed to phases by ``FRAME_RULES`` (outermost matching frame wins, so
a Module used as a transform inside a Dataset counts as data loading) and, for the
innermost line when it calls a C function py-spy cannot see (``.item()``, ``.to()``),
by ``LINE_RULES`` on its source line. Interpreter start-up and imports are left out.

Where the script already times its loop with a StepTimer, its exact phase totals win:
``perfwatch profile`` sets ``PERFWATCH_PROFILE_DIR`` and ``publish_timer`` (called by
the StepTimer when that variable is set) writes ``summary()`` there.
"""

from __future__ import annotations

import atexit
import itertools
import json
import linecache
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from . import diagnose as dx
from .collector import Collector, Snapshot
from .env import fingerprint
from .errors import UserError
from .instrument import PROFILE_DIR_ENV
from .launch import ForwardedSignals, exit_code, launch
from .store import write_atomic

log = logging.getLogger(__name__)

TORCH_PROFILER_ENV = "PERFWATCH_TORCH_PROFILER_SECONDS"
REPORT_FORMAT_VERSION = 1
DEFAULT_RATE = 100  # py-spy's own default
GIL_RATE_DIVISOR = 10
COLLECTOR_INTERVAL_S = 0.2
PUBLISH_EVERY_S = 10.0
STOP_GRACE_S = 10.0  # each of SIGINT and SIGTERM gets this long before the next signal
PYSPY_EXIT_WAIT_S = 5.0  # py-spy notices the command's exit within a sample; then it writes its file
PYSPY_ATTACH_RETRIES = 3  # the interpreter may not be up yet right after exec
BUSY_THREAD_SHARE = 0.10  # a thread using >= 10% of a core over the window counts as a compute thread
TORCH_PROFILER_DEFAULT_S = 30.0  # without --duration, torch.profiler records this long
TORCH_PROFILE_WAIT_S = 60.0  # after --duration, how long the report waits for the command's torch profile


# ---------------------------------------------------------------- StepTimer channel

_timer_serial = itertools.count()
# id(timer) -> its file. Safe as a key: the atexit hook keeps every published timer alive, so no id is reused.
_published: dict[int, Path] = {}


def publish_timer(timer: Any, directory: str | os.PathLike | None = None, every: float = PUBLISH_EVERY_S,
                  clock: Callable[[], float] = time.monotonic) -> Path | None:
    """Let ``perfwatch profile`` use ``timer``'s exact phase totals instead of estimating them from stacks.

    Writes ``timer.summary()`` as JSON into ``directory`` (default ``$PERFWATCH_PROFILE_DIR``;
    when neither is set this does nothing and returns None) at interpreter exit and, from a
    step listener that reads the clock once per step, at most every ``every`` seconds, so a
    run stopped by ``--duration`` still leaves recent totals. Returns the file it writes.
    A StepTimer calls this itself when ``$PERFWATCH_PROFILE_DIR`` is set; another call for
    the same timer returns the same file, so its steps are never counted twice.
    """
    if id(timer) in _published:  # the StepTimer publishes itself under `perfwatch profile`: never count it twice
        return _published[id(timer)]
    directory = directory if directory is not None else os.environ.get(PROFILE_DIR_ENV)
    if not directory:
        return None
    path = _published[id(timer)] = Path(directory) / f"steptimer-{os.getpid()}-{next(_timer_serial)}.json"
    due = [clock() + every]

    def write() -> None:
        try:
            write_atomic(path, json.dumps(timer.summary()))
        except Exception:  # the training must go on whatever happens to the profile directory
            log.debug("perfwatch: could not publish StepTimer totals to %s", path, exc_info=True)

    def on_step(record: Any) -> None:
        if clock() >= due[0]:
            due[0] = clock() + every
            write()

    timer.add_listener(on_step)
    atexit.register(write)
    return path


def read_timer_summaries(directory: Path, pid: int | None) -> dict[str, Any] | None:
    """The published StepTimer summaries of ``pid`` (of every process when none of ``pid``'s
    exist), summed: steps, samples, wall and per-phase totals."""
    paths = sorted(directory.glob("steptimer-*.json"))
    own = [p for p in paths if p.name.startswith(f"steptimer-{pid}-")]
    summaries = []
    for path in own or paths:
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if not summaries:
        return None
    totals: Counter[str] = Counter()
    for summary in summaries:
        totals.update(summary.get("totals", {}))
    return {"timers": len(summaries), "steps": sum(s.get("steps", 0) for s in summaries),
            "samples": sum(s.get("samples", 0) for s in summaries), "wall": sum(s.get("wall", 0.0) for s in summaries),
            "totals": dict(totals), "device": summaries[0].get("device"), "mode": summaries[0].get("mode")}


# ---------------------------------------------------------------- py-spy's collapsed stacks


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Stack:
    """One line of py-spy's raw output: ``count`` samples of one thread with these frames."""

    pid: int | None  # the sampled process (None without --subprocesses)
    tid: int
    thread: str
    frames: tuple[Frame, ...]  # outermost first
    count: int


_PROCESS = re.compile(r'process (\d+):".*?";(?=process \d+:"|thread \()')
_THREAD = re.compile(r"thread \((0x[0-9a-fA-F]+|\d+)\)(?:: ([^;]*))?")
_FRAME = re.compile(r"(.*) \((.+):(\d+)\)$")


def _frame(text: str) -> Frame:
    match = _FRAME.match(text)
    return Frame(match[1], match[2], int(match[3])) if match else Frame(text, "", 0)


def parse_collapsed(text: str) -> list[Stack]:
    """Parse ``py-spy record --format raw --threads [--subprocesses]`` output.

    A line is ``[process PID:"CMD";]... thread (TID): NAME;frame;frame COUNT``: ancestor
    processes first, the sampled one last; frames are ``function (file:line)``.
    """
    stacks = []
    for line in text.splitlines():
        body, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        pid, position = None, 0
        while (process := _PROCESS.match(body, position)) is not None:
            pid, position = int(process[1]), process.end()
        thread = _THREAD.match(body, position)
        if thread is None:
            continue
        rest = body[thread.end():].lstrip(";")
        frames = tuple(_frame(part) for part in rest.split(";")) if rest else ()
        stacks.append(Stack(pid, int(thread[1], 0), thread[2] or "", frames, int(count)))
    return stacks


# ---------------------------------------------------------------- attribution

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
LINE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("sync", re.compile(r"\.(item|cpu|tolist|numpy)\(\)|\.synchronize\(")),
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
    for frame in frames:
        phase = frame_phase(frame)
        if phase is not None:
            return phase
    text = source_line(frames[-1].file, frames[-1].line)
    for phase, pattern in LINE_RULES:
        if pattern.search(text):
            return phase
    return "other"


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


def top_functions(stacks: list[Stack], limit: int = 15, classify=None) -> list[dict[str, Any]]:
    """Functions by self samples (innermost frame), with their inclusive share."""
    total = sum(s.count for s in stacks)
    own: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    phase_of: dict[tuple[str, str], Counter[str]] = {}
    for stack in stacks:
        if not stack.frames:
            continue
        leaf = (stack.frames[-1].function, stack.frames[-1].file)
        own[leaf] += stack.count
        for key in {(f.function, f.file) for f in stack.frames}:
            inclusive[key] += stack.count
        if classify is not None:
            phase_of.setdefault(leaf, Counter())[classify(stack)] += stack.count
    rows = []
    for (function, file), samples in own.most_common(limit):
        row = {"function": function, "file": file, "self_share": round(samples / total, 4),
               "total_share": round(inclusive[(function, file)] / total, 4)}
        if classify is not None:
            row["phase"] = phase_of[(function, file)].most_common(1)[0][0]
        rows.append(row)
    return rows


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


# ---------------------------------------------------------------- the Collector's rows


def collector_row(snapshot: Snapshot) -> dict[str, Any]:
    """The numbers of one snapshot that the diagnosis and later plots use, as plain JSON."""
    row: dict[str, Any] = {"t": round(snapshot.time, 3)}
    host = snapshot.host
    if host is not None:
        ratio = host.cpu_ratio
        memory = host.memory
        row.update(
            cpu_busy=None if ratio is None else max(0.0, 1.0 - ratio.idle - ratio.iowait - ratio.steal),
            cpu_iowait=None if ratio is None else ratio.iowait,
            load1=host.load1,
            mem_total=memory.total_bytes,
            mem_available=memory.available_bytes,
            swap_used=memory.swap_used_bytes,
            swap_io=memory.swap_in_bytes_total + memory.swap_out_bytes_total,
            disk_read=sum(d.read_bytes_total for d in host.disks),
        )
    tree = snapshot.tree
    if tree is not None:
        row.update(
            main_cpu=tree.main.cpu_seconds_total,
            main_threads=tree.main.threads,
            main_rss=tree.main.rss_bytes,
            main_involuntary=tree.main.involuntary_context_switches_total,
            main_read=tree.main.io_read_bytes_total,
            workers=tree.workers.count,
            worker_cpu=tree.workers.cpu_seconds_total,
            worker_read=tree.workers.io_read_bytes_total,
            worker_rss=tree.workers.rss_bytes,
        )
    if snapshot.gpus:
        # NVML sees every GPU of the host; the tree's own memory on them says whether it uses one.
        row["gpu_util"] = [g.utilization_ratio for g in snapshot.gpus]
        row["gpu_process_memory"] = sum(used for g in snapshot.gpus for _, used in g.process_memory_bytes)
    return row


def busy_threads(thread_cpu: dict[int, float], seconds: float) -> int | None:
    """Threads that used at least ``BUSY_THREAD_SHARE`` of a core over ``seconds``: the
    process's compute threads (intra-op pool and main), whatever the script set."""
    if seconds <= 0 or not thread_cpu:
        return None
    return max(1, sum(1 for cpu in thread_cpu.values() if cpu / seconds >= BUSY_THREAD_SHARE))


def intra_op_threads(env: dict[str, str], busy: int | None) -> tuple[int | None, str]:
    """(intra-op threads, where the number comes from): the command's OMP_NUM_THREADS, else
    the training process's busy threads as measured."""
    value = env.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value), "OMP_NUM_THREADS"
    return (busy, "busy threads of the training process") if busy else (None, "unknown")


# ---------------------------------------------------------------- running the command


@dataclass(frozen=True)
class ProfileOptions:
    """How ``run_profile`` samples. ``out`` None: reports/profile-<local time>. ``duration``
    None: until the command exits; after ``duration`` the command keeps running
    (``keep_running``) or is stopped."""

    out: Path | None = None
    duration: float | None = None
    keep_running: bool = True
    pyspy: bool = True
    rate: int = DEFAULT_RATE
    torch_profiler: bool = False
    interval: float = COLLECTOR_INTERVAL_S
    stop_grace: float = STOP_GRACE_S

    @property
    def gil_rate(self) -> int:
        return max(1, self.rate // GIL_RATE_DIVISOR)


@dataclass(frozen=True)
class ProfileResult:
    report: dict[str, Any]
    out: Path
    exit_code: int


def prepare_out_dir(out: Path) -> Path:
    """Create ``out`` and prove it writable before anything is launched (UserError if not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".perfwatch-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"output directory {out} is not writable: {exc.strerror or exc}; "
                        "choose another with --out") from None
    return out


def check_command(command: Sequence[str]) -> None:
    """UserError unless ``command`` names an executable (checked before anything starts)."""
    if not command:
        raise UserError("no command to profile; usage: perfwatch profile [OPTIONS] -- python train.py ...")
    if shutil.which(command[0]) is None:
        raise UserError(f"command not found: {command[0]}")


class PySpyRecorder:
    """One ``py-spy record`` process writing collapsed stacks of ``pid`` (of its whole tree
    with ``--subprocesses``) to ``output``; its complaints go to ``output``.log.

    It runs in its own session, so a Ctrl-C in the terminal reaches the command, not
    py-spy; ``stop()`` sends it SIGINT, on which it writes its file.
    """

    def __init__(self, executable: str, pid: int, output: Path, rate: int, flags: Sequence[str]) -> None:
        self.output = output
        self.errors = output.with_suffix(".log")
        self._argv = [executable, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                      "--output", str(output), "--threads", "--full-filenames", "--nonblocking", *flags]
        self.attempts = 0
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.attempts += 1
        with open(self.errors, "w") as errors:
            self.process = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=errors, start_new_session=True,
                                            env={**os.environ, "RUST_BACKTRACE": "0"})

    def exited(self) -> bool:
        return self.process.poll() is not None

    def error(self) -> str:
        """py-spy's first error line, with the OS error that caused it when it gave one."""
        try:
            text = self.errors.read_text(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        first = next((line.removeprefix("Error: ") for line in lines if line.startswith("Error")),
                     lines[-1] if lines else "")
        cause = next((line.split(": ", 1)[-1] for line in lines if "os error" in line), "")
        return f"{first} ({cause})" if cause and cause not in first else first

    def stop(self, wait: float) -> None:
        """Let py-spy finish on its own for ``wait`` s (it stops when the command exits), then SIGINT, then kill."""
        for step in (None, signal.SIGINT, signal.SIGKILL):
            if step is not None and self.process.poll() is None:
                self.process.send_signal(step)
            try:
                self.process.wait(wait if step is None else STOP_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                continue

    def stacks(self) -> list[Stack]:
        try:
            return parse_collapsed(self.output.read_text(errors="replace"))
        except OSError:
            return []


def may_trace(pid: int) -> bool:
    """Whether this process may read ``pid``'s memory, as py-spy must. Opening /proc/PID/mem
    passes the kernel's ptrace access check (same user and dumpable, or CAP_SYS_PTRACE, and
    Yama's ptrace_scope) that process_vm_readv applies. With --subprocesses py-spy reports
    a denied attach only as "no python processes found"."""
    try:
        os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))
        return True
    except PermissionError:
        return False
    except OSError:
        return True  # gone, or no /proc: not a permission problem


def _thread_cpu(pid: int) -> dict[int, float]:
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
    except (psutil.Error, OSError):
        return {}


_HOOK = """\
# Written by `perfwatch profile --torch-profiler`: start torch.profiler in the profiled
# command, then hand over to the environment's own sitecustomize, if any.
import os, sys
try:
    from perfwatch.profile import torch_profiler_child_hook
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


def _stop_command(child: subprocess.Popen, grace: float, say: Callable[[str], None]) -> None:
    """SIGINT (a clean KeyboardInterrupt), then SIGTERM, then SIGKILL, ``grace`` s apart."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if child.poll() is not None:
            return
        if signum != signal.SIGINT:
            say(f"the command did not stop within {grace:g} s; sending {signal.Signals(signum).name}")
        child.send_signal(signum)
        try:
            child.wait(grace)
        except subprocess.TimeoutExpired:
            continue


def _command_env(out: Path, options: ProfileOptions) -> dict[str, str]:
    """The command's environment: where StepTimers publish, and the torch.profiler hook if asked."""
    timers = out / "steptimer"
    timers.mkdir(exist_ok=True)
    env = {**os.environ, PROFILE_DIR_ENV: str(timers)}
    if options.torch_profiler:
        hooks = out / ".hooks"
        hooks.mkdir(exist_ok=True)
        (hooks / "sitecustomize.py").write_text(_HOOK)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH")]))
        env[TORCH_PROFILER_ENV] = str(options.duration or TORCH_PROFILER_DEFAULT_S)
    return env


class Sampler:
    """What ``perfwatch profile`` runs beside a process: the Collector and the two py-spy passes.

    Call ``poll()`` every ~0.2 s (it moves new snapshots into ``rows`` and re-reads the
    process's per-thread CPU once a second) and ``stop()`` at the end, after which py-spy
    has written its files. ``pyspy`` is the py-spy executable, None for none.
    """

    def __init__(self, pid: int, out: Path, options: ProfileOptions, pyspy: str | None) -> None:
        self.pid = pid
        self.rows: list[dict[str, Any]] = []
        self.thread_cpu: dict[int, float] = {}  # CPU seconds of each thread of ``pid``
        self.seconds = 0.0
        self.started = time.monotonic()
        self._collector = Collector(pid, interval=options.interval, history=max(64, int(5 / options.interval)))
        self._collector.start()
        self.wall = self.gil = None
        if pyspy:
            self.wall = PySpyRecorder(pyspy, pid, out / "pyspy-wall.txt", options.rate, ["--idle", "--subprocesses"])
            self.gil = PySpyRecorder(pyspy, pid, out / "pyspy-gil.txt", options.gil_rate, ["--gil"])
        self._last_seq = 0
        self._next_threads = self.started

    def poll(self) -> None:
        for snapshot in self._collector.history():
            if snapshot.seq > self._last_seq and snapshot.tree is not None and snapshot.tree.alive:
                self.rows.append(collector_row(snapshot))
            self._last_seq = max(self._last_seq, snapshot.seq)
        now = time.monotonic()
        if now >= self._next_threads:
            self.thread_cpu = _thread_cpu(self.pid) or self.thread_cpu
            self._next_threads = now + 1.0

    def stop(self, pyspy_wait: float) -> None:
        """Stop sampling; py-spy gets ``pyspy_wait`` s to finish by itself (it does once the process exits)."""
        self._collector.stop()
        self.seconds = time.monotonic() - self.started
        for recorder in (self.wall, self.gil):
            if recorder is not None:
                recorder.stop(pyspy_wait)


def _sample(child: subprocess.Popen, out: Path, options: ProfileOptions, pyspy: str | None,
            say: Callable[[str], None]) -> tuple[Sampler, str, str]:
    """Sample ``child`` until it exits or ``options.duration`` passes: (the stopped sampler,
    "exited" or "duration", py-spy's status)."""
    sampler = Sampler(child.pid, out, options, pyspy)
    status = "ok" if pyspy else ("not installed" if options.pyspy else "disabled")
    reason = "exited"
    try:
        while True:
            sampler.poll()
            if child.poll() is not None:
                break
            if options.duration is not None and time.monotonic() - sampler.started >= options.duration:
                reason = "duration"
                break
            if sampler.wall is not None and status == "ok" and sampler.wall.exited() and child.poll() is None:
                status = _attach_failed(sampler.wall, sampler.gil, child, say)
            time.sleep(min(options.interval, 0.2))
    finally:
        sampler.stop(PYSPY_EXIT_WAIT_S if child.poll() is not None else 0)
    return sampler, reason, status


def run_profile(command: Sequence[str], options: ProfileOptions,
                say: Callable[[str], None] = log.info) -> ProfileResult:
    """Launch ``command`` (stdin, stdout and stderr pass through), profile it and write
    ``report.json``, ``report.md`` and ``report.html`` (with figures) into ``options.out``.

    Returns the report and the exit code: the command's own (128 + N when killed by
    signal N), or 0 when perfwatch stopped it at ``duration``. UserError, before anything
    starts, for a command that does not exist or an output directory that is not writable.
    Call from the main thread (it forwards SIGINT/SIGTERM to the command).
    """
    check_command(command)
    out = prepare_out_dir(Path(options.out or Path("reports") / time.strftime("profile-%Y%m%d-%H%M%S")))
    pyspy = shutil.which("py-spy") if options.pyspy else None
    if options.pyspy and pyspy is None:
        say("py-spy is not installed (pip install py-spy); continuing with a collector-only diagnosis")
    env = _command_env(out, options)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with ForwardedSignals() as signals:
        signals.child = child = launch(command, env)
        try:  # whatever fails in here, the command is the user's: it runs to its end
            sampler, reason, pyspy_status = _sample(child, out, options, pyspy, say)
            stopped = False
            if reason == "duration":
                if options.torch_profiler:
                    _await(out / "torch-profile.json", child, TORCH_PROFILE_WAIT_S)
                if options.keep_running:
                    say(f"sampled {options.duration:g} s; writing the report while the command keeps running")
                else:
                    say(f"sampled {options.duration:g} s; stopping the command")
                    _stop_command(child, options.stop_grace, say)
                    stopped = True
            _tidy(out)
            report = build_report(command, created, sampler, reason, pyspy_status, options, env, out)
            report["run"].update(exit_code=None if child.returncode is None else exit_code(child.returncode),
                                 stopped_by_perfwatch=stopped)
            write_report(report, out)
            say(f"report: {out / 'report.html'}  (primary bottleneck: {report['bottleneck']['primary']}, "
                f"confidence {report['bottleneck']['confidence']:.2f})")
        finally:
            code = exit_code(child.wait())
    return ProfileResult(report, out, 0 if stopped else code)


def _await(path: Path, child: subprocess.Popen, timeout: float) -> None:
    """Wait until ``path`` exists, the command exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not path.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def _attach_failed(wall: PySpyRecorder, gil: PySpyRecorder | None, child: subprocess.Popen, say: Callable[[str], None]) -> str:
    """py-spy exited while the command runs: give up at once when it may not trace the command,
    else retry a few times (the interpreter may not be up yet). Returns the new py-spy status."""
    permitted = may_trace(child.pid)
    if permitted and wall.attempts < PYSPY_ATTACH_RETRIES:
        time.sleep(0.5)
        wall.start()
        if gil is not None and gil.exited():
            gil.start()
        return "ok"
    if gil is not None:
        gil.stop(0)
    if not permitted:
        say(f"py-spy cannot attach to pid {child.pid}: permission denied (ptrace needs the same user and a "
            "dumpable process, or CAP_SYS_PTRACE; see kernel.yama.ptrace_scope); continuing with a "
            "collector-only diagnosis")
        return "permission denied"
    say(f"py-spy stopped: {wall.error() or 'no reason given'}; continuing with a collector-only diagnosis")
    return "failed: " + (wall.error() or "unknown")


def build_report(command: Sequence[str], created: str, sampler: Sampler, reason: str, pyspy_status: str,
                 options: ProfileOptions, env: dict[str, str], out: Path) -> dict[str, Any]:
    """Gather what was measured into ``Measurements``, diagnose, and assemble the report document."""
    launched_pid = sampler.pid
    try:
        cores = len(os.sched_getaffinity(launched_pid))
    except OSError:
        cores = os.cpu_count() or 1
    attribution = None
    if sampler.wall is not None and pyspy_status == "ok":
        attribution = attribute(sampler.wall.stacks(), sampler.gil.stacks() if sampler.gil else [],
                                launched_pid, options.rate, options.gil_rate)
        if attribution is None:
            pyspy_status = "no samples of a Python main thread"
    training_pid = attribution.training_pid if attribution else launched_pid
    timer = read_timer_summaries(out / "steptimer", training_pid) if (out / "steptimer").is_dir() else None
    busy = busy_threads(sampler.thread_cpu, sampler.seconds) if training_pid == launched_pid else None
    threads, threads_source = intra_op_threads(env, busy)
    rows = sampler.rows
    resources = dx.summarize(rows, cores)
    measurements = dx.Measurements(
        resources=resources, stacks=attribution.evidence if attribution else None, steptimer=timer,
        intra_op_threads=threads, intra_op_threads_source=threads_source,
        uses_gpu=any(row.get("gpu_process_memory") for row in rows),
    )
    diagnosis = dx.diagnose(measurements)
    with open(out / "collector.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    torch_profile = _read_json(out / "torch-profile.json")
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "kind": "perfwatch-profile",
        "created": created,
        "command": list(command),
        "run": {"seconds": round(sampler.seconds, 3), "ended_by": reason, "launched_pid": launched_pid,
                "training_pid": training_pid},
        **diagnosis,
        "measurements": {"resources": asdict(resources), "intra_op_threads": threads,
                         "intra_op_threads_source": threads_source,
                         "stacks": asdict(attribution.evidence) if attribution else None},
        "pyspy": {
            "status": pyspy_status, "rate": options.rate, "gil_rate": options.gil_rate,
            "flags": "record --nonblocking --threads, with --idle --subprocesses (wall) and with --gil (GIL)",
            "samples_total": attribution.samples_total if attribution else 0,
            "training_thread_samples": (attribution.evidence.total + attribution.evidence.startup) if attribution else 0,
            "worker_pids": list(attribution.worker_pids) if attribution else [],
            "python_threads": attribution.python_threads if attribution else None,
            "top_functions": attribution.top_functions if attribution else [],
            "worker_top_functions": attribution.worker_top_functions if attribution else [],
        },
        "steptimer": timer,
        "torch_profiler": torch_profile,
        "env": fingerprint(),
        "artifacts": sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")),
    }


def _tidy(out: Path) -> None:
    """Remove what the reader does not need: the hook, empty py-spy logs, an empty steptimer/."""
    shutil.rmtree(out / ".hooks", ignore_errors=True)
    for log_file in out.glob("pyspy-*.log"):
        if log_file.stat().st_size == 0:
            log_file.unlink()
    timers = out / "steptimer"
    if timers.is_dir() and not any(timers.iterdir()):
        timers.rmdir()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- report.json, report.md, report.html


def write_report(report: dict[str, Any], out: Path) -> None:
    """``report.json`` first, so the diagnosis is on disk whatever happens while drawing; then
    the figures, ``report.md`` and ``report.html`` (report.py), and ``report.json`` again with
    the figures in its artifacts. Each file is written atomically."""
    from .report import draw_profile_figures, write_profile_pages  # report.py reads this module's stacks

    report["artifacts"] = sorted(set(report["artifacts"]) | {"report.json", "report.md", "report.html"})
    write_atomic(out / "report.json", json.dumps(report, indent=1))
    figures = draw_profile_figures(report, out)
    report["artifacts"] = sorted(set(report["artifacts"]) | {figure.name for figure in figures})
    write_atomic(out / "report.json", json.dumps(report, indent=1))
    write_profile_pages(report, figures, out)
