"""``perfwatch profile``: run an unmodified training command under the Collector and py-spy, and diagnose it.

Nothing in the command changes. While it runs:

* the Collector samples the host and the command's process tree, process by process,
  every 0.2 s (which of them are the training process's DataLoader workers is decided
  afterwards, from the best evidence: ``profile.workers``);
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
stopping it 3%. The price is torn stacks, and they are not neutral: on Python-heavy loading
the stacks' data-loading share came out at 0.31-0.43 s of 0.52-0.60 s of measured wait, with
35-50 sampling errors a run (issue #15; blocking mode got 0.55-0.59 s). So the data wait, the
optimizer step and the step count come from the injected exact timing wherever it ran, the
stacks only split the rest of the step, and their disagreement with the exact timing on the
phases both measured lowers the confidence (``diagnose.confidence``).

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

Under torchrun each rank's injected timing also times its gradient all-reduces; the report
then holds a row per rank and the straggler verdict (``profile.ranks``).

The report keeps the command line with every URL in it redacted (``perfwatch.urls.redact``):
a ``--push http://user:password@host`` or a ``?token=`` is the user's secret, not the report's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from perfwatch.channel import PROFILE_DIR_ENV, read_timer_summaries
from perfwatch.env import fingerprint
from perfwatch.errors import UserError
from perfwatch.launch import CommandTree, ForwardedSignals, adopting_orphans, describe, exit_code, launch
from perfwatch.monitoring.collector import Collector, ProcessStats
from perfwatch.monitoring.step_timing import read_published
from perfwatch.pages import prepare_out_dir
from perfwatch.profile import diagnose as dx
from perfwatch.profile.attribution import attribute
from perfwatch.profile.page import write_report
from perfwatch.profile.pyspy import (
    DEFAULT_RATE,
    STOP_GRACE_S,
    PySpyRecorder,
    find_pyspy,
    install_dirs,
    may_trace,
    missing_warning,
)
from perfwatch.profile.ranks import ranks_section
from perfwatch.profile.rows import busy_threads, collector_row, intra_op_threads, thread_cpu, with_roles
from perfwatch.profile.torch_hook import TORCH_PROFILER_DEFAULT_S, install_hook
from perfwatch.profile.trial import TRY_SECONDS, try_top
from perfwatch.profile.workers import dataloader_workers
from perfwatch.store import write_atomic
from perfwatch.urls import redact

log = logging.getLogger(__name__)

REPORT_FORMAT_VERSION = 1
GIL_RATE_DIVISOR = 10
COLLECTOR_INTERVAL_S = 0.2
PYSPY_EXIT_WAIT_S = 5.0  # py-spy notices the command's exit within a sample; then it writes its file
PYSPY_ATTACH_RETRIES = 3  # the interpreter may not be up yet right after exec
TORCH_PROFILE_WAIT_S = 60.0  # after --duration, how long the report waits for the command's torch profile
LEFT_RUNNING_SETTLE_S = 1.0  # after the command exits, how long its children get to exit before a warning


# ---------------------------------------------------------------- running the command


@dataclass(frozen=True)
class ProfileOptions:
    """How ``run_profile`` samples. ``out`` None: reports/profile-<local time>. ``duration``
    None: until the command exits, else finite seconds > 0; after ``duration`` the command keeps
    running (``keep_running``) or is stopped with every process it started. ``try_pairs`` > 0: after the
    report, try its top DataLoader recommendation in that many pairs of ``try_seconds`` windows
    (``profile.trial``)."""

    out: Path | None = None
    duration: float | None = None
    keep_running: bool = True
    pyspy: bool = True
    rate: int = DEFAULT_RATE
    torch_profiler: bool = False
    interval: float = COLLECTOR_INTERVAL_S
    stop_grace: float = STOP_GRACE_S
    try_pairs: int = 0
    try_seconds: float = TRY_SECONDS

    def __post_init__(self) -> None:
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise UserError(f"sampling duration {self.duration:g}: give a finite number of seconds greater than 0",
                            setting="duration")
        if not (math.isfinite(self.try_seconds) and self.try_seconds > 0):
            raise UserError(f"--try window {self.try_seconds:g} s: give a finite number of seconds greater than 0",
                            setting="try_seconds")
        if self.try_pairs < 0:
            raise UserError(f"--try pairs {self.try_pairs}: give 1 or more", setting="try_pairs")

    @property
    def gil_rate(self) -> int:
        return max(1, self.rate // GIL_RATE_DIVISOR)


@dataclass(frozen=True)
class ProfileResult:
    report: dict[str, Any]
    out: Path
    exit_code: int


def check_command(command: Sequence[str]) -> None:
    """UserError unless ``command`` names an executable (checked before anything starts)."""
    if not command:
        raise UserError("no command to profile; usage: perfwatch profile [OPTIONS] -- python train.py ...")
    if shutil.which(command[0]) is None:
        raise UserError(f"command not found: {command[0]}")


def _command_env(out: Path, options: ProfileOptions) -> dict[str, str]:
    """The command's environment: where StepTimers publish, the zero-code step timing (exact
    steps and data wait of a script without a StepTimer) and the torch.profiler hook if asked."""
    from perfwatch.monitoring.step_timing import STEP_DIR_ENV, install_child_hooks

    timers = out / "steptimer"
    timers.mkdir(exist_ok=True)
    env = {**os.environ, PROFILE_DIR_ENV: str(timers)}
    env.pop(STEP_DIR_ENV, None)  # a profile inside `perfwatch monitor` publishes here, not to the monitor
    if options.torch_profiler:
        install_hook(out / ".hooks", env, options.duration or TORCH_PROFILER_DEFAULT_S)
    else:
        install_child_hooks(out / ".hooks", env)
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
        self.processes: dict[int, ProcessStats] = {}  # each process of the tree, as last seen
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
                self.processes.update((member.pid, member) for member in snapshot.tree.members)
            self._last_seq = max(self._last_seq, snapshot.seq)
        now = time.monotonic()
        if now >= self._next_threads:
            self.thread_cpu = thread_cpu(self.pid) or self.thread_cpu
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
                status = _attach_failed(sampler.wall, sampler.gil, child)
                if status != "ok":
                    say(pyspy_warning(status, child.pid))
            time.sleep(min(options.interval, 0.2))
    finally:
        sampler.stop(PYSPY_EXIT_WAIT_S if child.poll() is not None else 0)
    return sampler, reason, status


def run_profile(command: Sequence[str], options: ProfileOptions,
                say: Callable[[str], None] = log.info) -> ProfileResult:
    """Launch ``command`` (stdin, stdout and stderr pass through), profile it and write
    ``report.json``, ``report.md`` and ``report.html`` (with figures) into ``options.out``.

    Returns the report and the command's exit code (128 + N when signal N ended it), also when
    perfwatch stopped it at ``duration``: SIGINT came first, so a script that handles
    KeyboardInterrupt exits with its own code, one that does not with 130. What the command leaves
    running when it exits by itself (a daemon) is named in a warning and left running: only
    ``keep_running=False`` stops it, with the command, at ``duration``. UserError, before anything
    starts, for a command that does not exist or an output directory that is not writable.
    Call from the main thread (it forwards SIGINT/SIGTERM to the command).
    """
    check_command(command)
    out = prepare_out_dir(Path(options.out or Path("reports") / time.strftime("profile-%Y%m%d-%H%M%S")))
    searched = install_dirs()
    pyspy = find_pyspy(searched) if options.pyspy else None
    warning = missing_warning(searched) if options.pyspy and pyspy is None else None
    if warning:
        say(warning)
    env = _command_env(out, options)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with ForwardedSignals() as signals, adopting_orphans():
        signals.child = child = launch(command, env)
        tree = CommandTree(child)
        try:  # whatever fails in here, the command is the user's: it runs to its end
            sampler, reason, pyspy_status = _sample(child, out, options, pyspy, say)
            warning = warning or pyspy_warning(pyspy_status, child.pid)
            stopped = False
            if reason == "duration":
                if options.torch_profiler:
                    _await(out / "torch-profile.json", child, TORCH_PROFILE_WAIT_S)
                if options.keep_running:
                    say(f"sampled {options.duration:g} s; writing the report while the command keeps running")
                else:
                    say(f"sampled {options.duration:g} s; stopping the command and every process it started")
                    tree.stop(options.stop_grace, say)
                    stopped = True
            _tidy(out)
            code_now = None if child.returncode is None else exit_code(child.returncode)
            report = build_report(command, created, sampler, reason, pyspy_status, options, env, out,
                                  code_now if not stopped else None)
            report["run"].update(exit_code=code_now, stopped_by_perfwatch=stopped)
            report["pyspy"].update(executable=pyspy, warning=warning)
            write_report(report, out)
            b = report["bottleneck"]
            verdict = (f"unknown: {b['basis']}" if b["primary"] == "unknown"
                       else f"{b['primary']}, confidence {b['confidence']:.2f}")
            say(f"report: {out / 'report.html'}  (primary bottleneck: {verdict})")
            if "ranks" in report:
                say(f"ranks: {report['ranks']['straggler']['says']}")
        finally:
            code = exit_code(child.wait())
        left = tree.settle(LEFT_RUNNING_SETTLE_S)
        if left:  # the user's command meant them to outlive it (a daemon): named, not stopped
            them = "them" if len(left) > 1 else "it"
            say(f"the command exited but left {len(left)} process{'es' if len(left) > 1 else ''} running: "
                f"{describe(left)}; perfwatch leaves {them} be (kill {' '.join(str(p.pid) for p in left)} "
                f"to stop {them})")
    if options.try_pairs and signals.received is None:  # after the command and what it left: nothing shares the CPU
        try_top(command, report, out, options.try_pairs, options.try_seconds, options.stop_grace, say)
        report["artifacts"] = _artifacts(out)
        write_report(report, out)
    return ProfileResult(report, out, code)


def _await(path: Path, child: subprocess.Popen, timeout: float) -> None:
    """Wait until ``path`` exists, the command exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not path.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def _attach_failed(wall: PySpyRecorder, gil: PySpyRecorder | None, child: subprocess.Popen) -> str:
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
        return "permission denied"
    return "failed: " + (wall.error() or "no reason given")


def pyspy_warning(status: str, pid: int) -> str | None:
    """What the console says when py-spy gives up on the command (``status`` from ``_attach_failed``),
    and the report first, as it does for a missing py-spy: the diagnosis below it has no stacks."""
    collector_only = "the diagnosis is collector-only and less reliable (no stacks, so no phase shares)"
    if status == "permission denied":
        return (f"py-spy cannot attach to pid {pid}: permission denied (ptrace needs the same user and a dumpable "
                f"process, or CAP_SYS_PTRACE; see kernel.yama.ptrace_scope): {collector_only}")
    if status.startswith("failed: "):
        return f"py-spy stopped ({status.removeprefix('failed: ')}): {collector_only}"
    return None


def build_report(command: Sequence[str], created: str, sampler: Sampler, reason: str, pyspy_status: str,
                 options: ProfileOptions, env: dict[str, str], out: Path,
                 command_exit: int | None = None) -> dict[str, Any]:
    """Gather what was measured into ``Measurements``, diagnose, and assemble the report document.
    ``command_exit``: the command's exit code when it ended by itself before the report."""
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
    timer = None
    if (out / "steptimer").is_dir():
        timer = read_timer_summaries(out / "steptimer", attribution.training_pid if attribution else None)
    training_pid = _training_pid(attribution, timer, launched_pid)
    workers, workers_source = dataloader_workers(
        training_pid, sampler.processes, timer.get("dataloader_worker_pids") if timer else None,
        attribution.worker_pids if attribution else None)
    busy = busy_threads(sampler.thread_cpu, sampler.seconds) if training_pid == launched_pid else None
    threads, threads_source = intra_op_threads(env, busy)
    rows = with_roles(sampler.rows, training_pid, workers)
    resources = dx.summarize(rows, cores)
    machine = fingerprint()
    model = (timer or {}).get("model")
    measurements = dx.Measurements(
        resources=resources, stacks=attribution.evidence if attribution else None, steptimer=timer,
        intra_op_threads=threads, intra_op_threads_source=threads_source,
        uses_gpu=any(row.get("gpu_process_memory") for row in rows),
        model=dx.ModelFacts(**{k: model.get(k) for k in ("dtype", "device", "cuda_capability", "optimizer")})
        if model else None,
        cpu_bf16=tuple(machine.get("cpu_bf16") or ()), exit_code=command_exit, workers_source=workers_source,
    )
    diagnosis = dx.diagnose(measurements)
    with open(out / "collector.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    torch_profile = _read_json(out / "torch-profile.json")
    ranks = ranks_section(read_published(out / "steptimer")) if timer else None
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "kind": "perfwatch-profile",
        "created": created,
        "command": redacted_command(command),
        "run": {"seconds": round(sampler.seconds, 3), "ended_by": reason, "launched_pid": launched_pid,
                "training_pid": training_pid},
        **diagnosis,
        **({"ranks": ranks} if ranks else {}),  # a torchrun job whose ranks timed their all-reduces
        "measurements": {"resources": asdict(resources), "intra_op_threads": threads,
                         "intra_op_threads_source": threads_source,
                         "dataloader_workers": {"pids": list(workers), "identified_by": workers_source},
                         "model": asdict(measurements.model) if measurements.model else None,
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
        "env": machine,
        "artifacts": _artifacts(out),
    }


def _artifacts(out: Path) -> list[str]:
    """What the report directory holds for the reader: its files, and its folders (the --try windows) as "name/"."""
    return sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if not p.name.startswith("."))


def _training_pid(attribution: Any, timer: dict[str, Any] | None, launched: int) -> int:
    """The process that trains: the one whose stacks show the training step, else the one process
    that timed steps (a child of ``bash -c ...`` without py-spy), else the launched one."""
    if attribution is not None and attribution.training_pid is not None:
        return attribution.training_pid
    timed = timer.get("pids") if timer else None
    return timed[0] if timed and len(timed) == 1 else launched


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redacted_command(command: Sequence[str]) -> list[str]:
    """``command`` as the report may keep it: each URL in an argument through ``urls.redact``."""
    return [_redacted(arg) for arg in command]


def _redacted(text: str) -> str:
    return _URL.sub(lambda match: redact(match[0]), text)


def _tidy(out: Path) -> None:
    """Remove what the reader does not need: the hook, empty py-spy logs, an empty steptimer/; redact
    the URLs in the command lines py-spy's raw stacks name their processes by."""
    shutil.rmtree(out / ".hooks", ignore_errors=True)
    for log_file in out.glob("pyspy-*.log"):
        if log_file.stat().st_size == 0:
            log_file.unlink()
    for stacks in out.glob("pyspy-*.txt"):
        text = stacks.read_text(errors="replace")
        if _URL.search(text):
            write_atomic(stacks, _redacted(text))
    timers = out / "steptimer"
    if timers.is_dir() and not any(timers.iterdir()):
        timers.rmdir()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


