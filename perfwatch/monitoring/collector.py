"""Samples the host, a watched process tree and the GPUs into immutable snapshots.

A daemon thread does all the reading at a fixed interval, so the process hosting the
collector (often the training process itself) pays only for taking a reference to
the latest snapshot. Values are in base units: seconds, bytes, ratios in 0..1.
Fields ending in ``_total`` are cumulative counters (never decrease while the
collector runs), the others gauges. The exporter turns snapshots into Prometheus
metrics; the profiler reads them for its diagnosis.

What node_exporter and dcgm-exporter cannot say, and this can: how much CPU, memory
and IO the training process spends in its DataLoader workers (role ``worker``)
versus itself (role ``main``). The roles are the watched PID and all its descendants;
``TreeSnapshot.members`` has each process apart (with its parent and command line) for a
reader that knows better which of them are DataLoader workers (``perfwatch profile``,
where the training process may itself be a child, of ``bash -c "gen.py && train.py"``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from perfwatch.errors import WatchedProcessNotFound
from perfwatch.gpu import GpuSample, GpuSampler

log = logging.getLogger(__name__)

CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
PSI_RESOURCES = ("cpu", "memory", "io")

# node_exporter's default --collector.diskstats.device-exclude: partitions (their
# disk is counted already), loop, ram and floppy devices.
SKIPPED_DISKS = re.compile(r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$")
SKIPPED_INTERFACES = frozenset({"lo"})

ERROR_LOG_PERIOD_S = 60.0  # a failing reader logs at most once a minute after its first failure
SAMPLER_NICENESS = 10  # the sampler thread yields the CPU to training threads
# A child caught between fork and exec still shows its parent's command line: read it on the
# first two samples of a process (an exec follows a fork within milliseconds), then keep it.
CMDLINE_READS = 2


# ---------------------------------------------------------------- snapshots


@dataclass(frozen=True, slots=True)
class CpuModes:
    """CPU time by mode: seconds (cumulative) or, for ``*_ratio`` fields, shares of an interval."""

    user: float
    nice: float
    system: float
    idle: float
    iowait: float
    irq: float
    softirq: float
    steal: float

    @classmethod
    def of(cls, times) -> CpuModes:
        return cls(*(getattr(times, mode) for mode in CPU_MODES))

    def share_since(self, earlier: CpuModes) -> CpuModes | None:
        """Each mode's share of the time elapsed since ``earlier``; None if no time passed."""
        deltas = [max(getattr(self, m) - getattr(earlier, m), 0.0) for m in CPU_MODES]
        elapsed = sum(deltas)
        return CpuModes(*(d / elapsed for d in deltas)) if elapsed > 0 else None


@dataclass(frozen=True, slots=True)
class MemoryStats:
    total_bytes: int
    available_bytes: int
    used_bytes: int
    cached_bytes: int
    buffers_bytes: int
    swap_total_bytes: int
    swap_used_bytes: int
    swap_in_bytes_total: int
    swap_out_bytes_total: int


@dataclass(frozen=True, slots=True)
class DiskStats:
    device: str
    read_bytes_total: int
    write_bytes_total: int
    reads_total: int
    writes_total: int
    busy_seconds_total: float


@dataclass(frozen=True, slots=True)
class NetStats:
    interface: str
    receive_bytes_total: int
    transmit_bytes_total: int
    receive_packets_total: int
    transmit_packets_total: int


@dataclass(frozen=True, slots=True)
class Pressure:
    """Pressure stall information of one resource; ``full_*`` None where the kernel has no full line."""

    resource: str
    some_avg10_ratio: float
    some_stall_seconds_total: float
    full_avg10_ratio: float | None
    full_stall_seconds_total: float | None


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """The machine. ``*_ratio`` CPU fields are shares of the time since the previous sample
    (None on the first sample, and for a core whose clock did not tick since)."""

    cpu_seconds_total: CpuModes
    cpu_ratio: CpuModes | None
    per_core_seconds_total: tuple[CpuModes, ...]
    per_core_ratio: tuple[CpuModes | None, ...] | None
    load1: float
    load5: float
    load15: float
    memory: MemoryStats
    disks: tuple[DiskStats, ...]
    networks: tuple[NetStats, ...]
    pressure: tuple[Pressure, ...]  # empty where the kernel has no PSI


@dataclass(frozen=True, slots=True)
class RoleStats:
    """One role of the watched tree: ``main`` (the watched PID) or ``worker`` (all its descendants).

    Counters include members that exited since watching began, so they stay monotonic
    while DataLoader workers come and go; gauges cover the live members (``pids``).
    ``uss_bytes``/``pss_bytes`` are the last low-rate measurement (None when off).
    """

    role: str
    pids: tuple[int, ...]
    cpu_seconds_total: float  # user + system
    rss_bytes: int
    uss_bytes: int | None
    pss_bytes: int | None
    threads: int
    io_read_bytes_total: int
    io_write_bytes_total: int
    voluntary_context_switches_total: int
    involuntary_context_switches_total: int

    @property
    def count(self) -> int:
        return len(self.pids)


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """One live process of the watched tree: its place in it and its own counters."""

    pid: int
    ppid: int
    cmdline: tuple[str, ...]  # () where it could not be read
    cpu_seconds_total: float
    io_read_bytes_total: int
    rss_bytes: int
    threads: int
    involuntary_context_switches_total: int
    # how long its main thread was runnable but waiting for a CPU (/proc/<pid>/schedstat): with its CPU time,
    # what it would have used on a free core; the rest of the wall time it was blocked (IO, a queue, a sleep)
    run_delay_seconds_total: float = 0.0


@dataclass(frozen=True, slots=True)
class TreeSnapshot:
    pid: int
    alive: bool  # False once the watched PID has exited (or is a zombie)
    main: RoleStats
    workers: RoleStats
    access_denied_total: int  # reads refused (io counters, USS), left out of the sums
    members: tuple[ProcessStats, ...] = ()  # the live processes one by one, by pid


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything sampled at one instant. A part that failed to read is None (host, tree) or empty."""

    seq: int  # 1, 2, ... in sampling order
    time: float  # when sampling began, on the collector's clock (time.monotonic by default)
    sample_cpu_seconds: float  # CPU the sampler thread spent producing this snapshot
    errors_total: int  # failed reads since start
    host: HostSnapshot | None
    tree: TreeSnapshot | None  # None when no PID is watched
    gpus: tuple[GpuSample, ...]


# ---------------------------------------------------------------- host


def parse_pressure(resource: str, text: str) -> Pressure:
    """One /proc/pressure/<resource> file: percent averages become ratios, microseconds seconds."""
    lines = {}
    for line in text.splitlines():
        kind, *pairs = line.split()
        values = dict(pair.split("=", 1) for pair in pairs)
        lines[kind] = (float(values["avg10"]) / 100, int(values["total"]) / 1e6)
    some, full = lines["some"], lines.get("full")
    return Pressure(resource, *some, *(full or (None, None)))


def read_pressure(proc_root: Path = Path("/proc")) -> tuple[Pressure, ...]:
    """PSI of cpu, memory and io; empty where the kernel has none (before 4.20, or booted psi=0)."""
    found = []
    for resource in PSI_RESOURCES:
        try:
            text = (proc_root / "pressure" / resource).read_text()
        except OSError:  # missing file, or EOPNOTSUPP with psi=0
            continue
        found.append(parse_pressure(resource, text))
    return tuple(found)


def read_host(proc_root: Path = Path("/proc"), previous: HostSnapshot | None = None) -> HostSnapshot:
    """The machine now; CPU shares are computed against ``previous``.

    psutil reads the live /proc; ``proc_root`` serves the files read here directly.
    """
    cpu = CpuModes.of(psutil.cpu_times())
    cores = tuple(CpuModes.of(times) for times in psutil.cpu_times(percpu=True))
    same_cores = previous is not None and len(previous.per_core_seconds_total) == len(cores)
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    disks = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
    nics = psutil.net_io_counters(pernic=True, nowrap=True) or {}
    return HostSnapshot(
        cpu_seconds_total=cpu,
        cpu_ratio=cpu.share_since(previous.cpu_seconds_total) if previous else None,
        per_core_seconds_total=cores,
        per_core_ratio=(
            tuple(core.share_since(before) for core, before in zip(cores, previous.per_core_seconds_total))
            if same_cores
            else None
        ),
        load1=(load := os.getloadavg())[0],
        load5=load[1],
        load15=load[2],
        memory=MemoryStats(
            total_bytes=vm.total,
            available_bytes=vm.available,
            used_bytes=vm.used,
            cached_bytes=vm.cached,
            buffers_bytes=vm.buffers,
            swap_total_bytes=swap.total,
            swap_used_bytes=swap.used,
            swap_in_bytes_total=swap.sin,
            swap_out_bytes_total=swap.sout,
        ),
        disks=tuple(
            DiskStats(name, d.read_bytes, d.write_bytes, d.read_count, d.write_count, d.busy_time / 1000)
            for name, d in sorted(disks.items())
            if not SKIPPED_DISKS.match(name)
        ),
        networks=tuple(
            NetStats(name, n.bytes_recv, n.bytes_sent, n.packets_recv, n.packets_sent)
            for name, n in sorted(nics.items())
            if name not in SKIPPED_INTERFACES
        ),
        pressure=read_pressure(proc_root),
    )


# ---------------------------------------------------------------- process tree


@dataclass(frozen=True, slots=True)
class _Counters:
    """The cumulative per-process readings, summed over a role."""

    cpu_seconds: float = 0.0
    read_bytes: int = 0
    write_bytes: int = 0
    voluntary: int = 0
    involuntary: int = 0

    def __add__(self, other: _Counters) -> _Counters:
        return _Counters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class _Member:
    """A process of the tree with its latest readings."""

    def __init__(self, process: psutil.Process, role: str) -> None:
        self.process = process
        self.role = role
        self.counters = _Counters()
        self.rss = self.threads = 0
        self.uss: int | None = None
        self.pss: int | None = None
        self.ppid = 0
        self.cmdline: tuple[str, ...] = ()
        self.reads = 0  # samples taken of it
        self.run_delay = 0.0

    def stats(self) -> ProcessStats:
        c = self.counters
        return ProcessStats(self.process.pid, self.ppid, self.cmdline, c.cpu_seconds, c.read_bytes, self.rss,
                            self.threads, c.involuntary, self.run_delay)


def _run_delay(pid: int, last: float) -> float:
    """Seconds the process's main thread has waited on a run queue (the 2nd field of /proc/<pid>/schedstat,
    in ns); ``last`` where the file cannot be read (a kernel without schedstat, the process gone)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return last


class _ProcessTree:
    """The watched PID and its descendants, read cheaply enough to do every second.

    Descendants come from the kernel's per-thread children lists (reading only the
    tree, not every PID on the machine); psutil.Process objects are kept between
    samples, so a sample costs a handful of /proc reads per process.
    """

    def __init__(self, pid: int, proc_root: Path, clock: Callable[[], float], uss_interval: float | None) -> None:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            raise WatchedProcessNotFound(f"no process with pid {pid} to watch") from None
        self.pid = pid
        self._proc_root = str(proc_root)
        self._children_lists = os.path.exists(f"{proc_root}/{pid}/task/{pid}/children")
        self._clock = clock
        self._uss_interval = uss_interval
        self._next_uss = clock()
        self._members = {pid: _Member(root, "main")}
        self._retired = {"main": _Counters(), "worker": _Counters()}
        self._alive = True
        self._access_denied = 0

    def sample(self) -> TreeSnapshot:
        if self._alive:
            self._discover()
            measure_uss = self._uss_interval is not None and self._clock() >= self._next_uss
            for member in list(self._members.values()):
                self._read(member, measure_uss)
            if measure_uss:
                self._next_uss = self._clock() + self._uss_interval
            self._alive = self.pid in self._members
            if not self._alive:  # orphaned workers are no longer this tree's
                for pid in list(self._members):
                    self._retire(pid)
        return TreeSnapshot(
            self.pid, self._alive, self._role("main"), self._role("worker"), self._access_denied,
            tuple(m.stats() for _, m in sorted(self._members.items())),
        )

    def _discover(self) -> None:
        """Track new descendants, retire the members that are no longer in the tree."""
        current = set(self._descendants())
        for pid in current - self._members.keys():
            try:
                self._members[pid] = _Member(psutil.Process(pid), "worker")
            except psutil.NoSuchProcess:
                pass  # came and went between two reads
        for pid in self._members.keys() - current - {self.pid}:
            self._retire(pid)

    def _descendants(self) -> list[int]:
        if not self._children_lists:  # kernel without CONFIG_PROC_CHILDREN: psutil scans all of /proc
            try:
                return [child.pid for child in self._members[self.pid].process.children(recursive=True)]
            except psutil.NoSuchProcess:
                return []
        found, stack = [], [self.pid]
        while stack:
            children = self._children_of(stack.pop())
            found += children
            stack += children
        return found

    def _children_of(self, pid: int) -> list[int]:
        """Children of every thread of ``pid`` (a child belongs to the thread that forked it)."""
        task = f"{self._proc_root}/{pid}/task"
        try:
            threads = os.listdir(task)
        except FileNotFoundError:  # the process just ended
            return []
        children: list[int] = []
        for tid in threads:
            try:
                with open(f"{task}/{tid}/children", "rb") as f:
                    children += map(int, f.read().split())
            except (FileNotFoundError, ProcessLookupError):  # the thread just ended
                pass
        return children

    def _read(self, member: _Member, measure_uss: bool) -> None:
        process = member.process
        try:
            with process.oneshot():
                if process.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(process.pid)
                cpu = process.cpu_times()
                memory = process.memory_info()
                switches = process.num_ctx_switches()
                member.threads = process.num_threads()
                member.ppid = process.ppid()
                read_bytes, write_bytes = self._io_bytes(process, member)
            if member.reads < CMDLINE_READS:
                member.cmdline = self._cmdline(process)
        except psutil.NoSuchProcess:
            self._retire(process.pid)
            return
        except psutil.AccessDenied:  # hidepid=, another user's process: keep its last readings
            self._denied("stats", process.pid)
            return
        counters = _Counters(cpu.user + cpu.system, read_bytes, write_bytes, switches.voluntary, switches.involuntary)
        # Members are kept by PID between samples; a PID reused by a new child of the
        # tree shows as CPU time going backwards: bank the old process's counters.
        if counters.cpu_seconds < member.counters.cpu_seconds:
            self._retired[member.role] += member.counters
        member.counters = counters
        member.rss = memory.rss
        member.run_delay = _run_delay(process.pid, member.run_delay)
        member.reads += 1
        if measure_uss:
            self._measure_uss(member)

    @staticmethod
    def _cmdline(process: psutil.Process) -> tuple[str, ...]:
        try:
            return tuple(process.cmdline())
        except psutil.AccessDenied:
            return ()

    def _io_bytes(self, process: psutil.Process, member: _Member) -> tuple[int, int]:
        try:
            io = process.io_counters()
            return io.read_bytes, io.write_bytes
        except psutil.AccessDenied:
            self._denied("io counters", process.pid)
            return member.counters.read_bytes, member.counters.write_bytes

    def _measure_uss(self, member: _Member) -> None:
        """USS/PSS walk the page tables (milliseconds per process): only every ``uss_interval``."""
        try:
            full = member.process.memory_full_info()
            member.uss, member.pss = full.uss, full.pss
        except psutil.AccessDenied:
            self._denied("USS", member.process.pid)
        except psutil.NoSuchProcess:
            self._retire(member.process.pid)

    def _denied(self, what: str, pid: int) -> None:
        if not self._access_denied:
            log.warning("access denied reading %s of pid %d; such readings are left out and counted", what, pid)
        self._access_denied += 1

    def _retire(self, pid: int) -> None:
        member = self._members.pop(pid)
        self._retired[member.role] += member.counters

    def _role(self, role: str) -> RoleStats:
        members = sorted((m for m in self._members.values() if m.role == role), key=lambda m: m.process.pid)
        total = self._retired[role]
        for member in members:
            total += member.counters
        uss = [m.uss for m in members if m.uss is not None]
        pss = [m.pss for m in members if m.pss is not None]
        return RoleStats(
            role=role,
            pids=tuple(m.process.pid for m in members),
            cpu_seconds_total=total.cpu_seconds,
            rss_bytes=sum(m.rss for m in members),
            uss_bytes=sum(uss) if uss else None,
            pss_bytes=sum(pss) if pss else None,
            threads=sum(m.threads for m in members),
            io_read_bytes_total=total.read_bytes,
            io_write_bytes_total=total.write_bytes,
            voluntary_context_switches_total=total.voluntary,
            involuntary_context_switches_total=total.involuntary,
        )


# ---------------------------------------------------------------- collector


class _RateLimitedErrors:
    """The first failure of each kind with its traceback, then one line a period: a broken
    reader must neither flood the log nor stop the sampler."""

    def __init__(self, clock: Callable[[], float], period: float = ERROR_LOG_PERIOD_S) -> None:
        self._clock = clock
        self._period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.total = 0

    def report(self, what: str) -> None:
        """Call from an ``except`` block."""
        self.total += 1
        now, last = self._clock(), self._last.get(what)
        if last is None:
            log.warning("sampling %s failed; going on", what, exc_info=True)
        elif now - last >= self._period:
            log.warning("sampling %s still failing (%d more times)", what, self._suppressed.pop(what, 0) + 1)
        else:
            self._suppressed[what] = self._suppressed.get(what, 0) + 1
            return
        self._last[what] = now


class Collector:
    """Samples on a daemon thread every ``interval`` seconds; keeps the latest ``history`` snapshots.

    ``pid``: the training process to watch with its descendants (None: host and GPUs only).
    ``uss_interval``: seconds between USS/PSS measurements (None: off; they cost
    milliseconds per process and briefly lock the watched process's memory map).
    ``on_exit(pid)``: called once, from the sampler thread, when the watched PID exits.
    ``proc_root``, ``clock``, ``nvml``: what lies outside the process, with real defaults.
    """

    def __init__(
        self,
        pid: int | None = None,
        *,
        interval: float = 1.0,
        history: int = 60,
        uss_interval: float | None = None,
        on_exit: Callable[[int], None] | None = None,
        proc_root: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
        nvml: ModuleType | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.interval = interval
        self._tree = _ProcessTree(pid, proc_root, clock, uss_interval) if pid is not None else None
        self._on_exit = on_exit
        self._proc_root = proc_root
        self._clock = clock
        self._nvml = nvml
        self._errors = _RateLimitedErrors(clock)
        self._history: deque[Snapshot] = deque(maxlen=history)
        self._history_lock = threading.Lock()
        self._latest: Snapshot | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._exit_reported = False

    @property
    def pid(self) -> int | None:
        return self._tree.pid if self._tree else None

    def start(self) -> Collector:
        if self._thread is not None:
            raise RuntimeError("collector already started")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="perfwatch-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sampling; returns once the thread has finished its current sample."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            if thread is not threading.current_thread():  # stop() may come from on_exit
                thread.join(timeout)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def latest(self) -> Snapshot | None:
        """The newest snapshot, without waiting (None before the first sample)."""
        return self._latest

    def history(self) -> tuple[Snapshot, ...]:
        """The retained snapshots, oldest first."""
        with self._history_lock:
            return tuple(self._history)

    def _run(self) -> None:
        try:
            # On Linux a thread id names this thread alone: training threads keep their priority.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SAMPLER_NICENESS)
        except OSError:
            pass
        gpus = self._guarded("gpu", GpuSampler.open, self._nvml)
        try:
            due = self._clock()
            while not self._stopping.is_set():
                self._publish(self._sample(gpus))
                due = max(due + self.interval, self._clock())
                self._stopping.wait(due - self._clock())
        finally:
            if gpus is not None:
                gpus.close()

    def _sample(self, gpus: GpuSampler | None) -> Snapshot:
        started, now = time.thread_time(), self._clock()
        previous = self._latest
        host = self._guarded("host", read_host, self._proc_root, previous.host if previous else None)
        tree = self._guarded("process tree", self._tree.sample) if self._tree else None
        if tree is not None and not tree.alive and not self._exit_reported:
            self._exit_reported = True
            log.info("watched process %d exited", tree.pid)
            if self._on_exit is not None:
                self._guarded("on_exit callback", self._on_exit, tree.pid)
        pids = tree.main.pids + tree.workers.pids if tree else ()
        gpu_samples = self._guarded("gpu", gpus.sample, pids) if gpus else ()
        return Snapshot(
            seq=previous.seq + 1 if previous else 1,
            time=now,
            sample_cpu_seconds=time.thread_time() - started,
            errors_total=self._errors.total,
            host=host,
            tree=tree,
            gpus=gpu_samples or (),
        )

    def _guarded(self, what: str, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except Exception:
            self._errors.report(what)
            return None

    def _publish(self, snapshot: Snapshot) -> None:
        with self._history_lock:
            self._history.append(snapshot)
        self._latest = snapshot
