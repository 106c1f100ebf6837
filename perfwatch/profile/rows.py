"""The Collector's snapshots as plain JSON rows for the diagnosis and the figures, and the
training process's compute threads.

A row keeps each process of the command apart (``procs``); once the profile knows which process
trains and which are its DataLoader workers (``profile.workers``), ``with_roles`` adds the sums
the rules and figures read: ``main_*`` (the training process), ``worker_*`` (its workers) and
``other_cpu`` (the command's other processes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psutil

from perfwatch.monitoring.collector import Snapshot

BUSY_THREAD_SHARE = 0.10  # a thread using >= 10% of a core over the window counts as a compute thread


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
        row["procs"] = {m.pid: [m.cpu_seconds_total, m.io_read_bytes_total, m.rss_bytes, m.threads,
                                m.involuntary_context_switches_total, m.run_delay_seconds_total]
                        for m in tree.members}
    if snapshot.gpus:
        # NVML sees every GPU of the host; the tree's own memory on them says whether it uses one.
        row["gpu_util"] = [g.utilization_ratio for g in snapshot.gpus]
        row["gpu_process_memory"] = sum(used for g in snapshot.gpus for _, used in g.process_memory_bytes)
    return row


_CPU, _READ, _RSS, _THREADS, _INVOLUNTARY, _RUN_DELAY = range(6)  # the readings of a ``procs`` entry


class _Counters:
    """Each process's cumulative readings, kept after it exits; a pid reused by a new process (its
    CPU time goes backwards) banks the old one's."""

    def __init__(self) -> None:
        self.last: dict[int, list[float]] = {}
        self._banked: dict[int, list[float]] = {}

    def update(self, procs: dict[int, list[float]]) -> None:
        for pid, values in procs.items():
            before = self.last.get(pid)
            if before is not None and values[_CPU] < before[_CPU]:
                banked = self._banked.get(pid, [0.0] * len(before))
                self._banked[pid] = [b + v for b, v in zip(banked, before)]
            self.last[pid] = values

    def total(self, pid: int, field: int) -> float:
        return self.last[pid][field] + (self._banked[pid][field] if pid in self._banked else 0.0)

    def sum(self, pids: Iterable[int], field: int) -> float:
        return sum(self.total(pid, field) for pid in pids)


def with_roles(rows: list[dict[str, Any]], main: int, workers: Sequence[int]) -> list[dict[str, Any]]:
    """``rows`` with the sums of the training process ``main`` (None while it is not running), its
    DataLoader ``workers`` and the command's other processes, from each row's ``procs``. Counters stay
    cumulative: a process that exited keeps counting with its last readings, as the Collector's roles do."""
    workers = set(workers)
    counters = _Counters()
    out = []
    for row in rows:
        if "procs" not in row:
            out.append(row)
            continue
        procs = {int(pid): values for pid, values in row["procs"].items()}  # JSON keys are strings
        counters.update(procs)
        mine, seen = procs.get(main), counters.last.keys()
        alive = [pid for pid in procs if pid in workers]
        out.append({**row,
                    "main_cpu": counters.total(main, _CPU) if mine else None,
                    "main_read": counters.total(main, _READ) if mine else None,
                    "main_involuntary": counters.total(main, _INVOLUNTARY) if mine else None,
                    "main_run_delay": counters.total(main, _RUN_DELAY) if mine else None,
                    "main_threads": mine[_THREADS] if mine else None,
                    "main_rss": mine[_RSS] if mine else None,
                    "workers": len(alive),
                    "worker_cpu": counters.sum(seen & workers, _CPU),
                    "worker_read": counters.sum(seen & workers, _READ),
                    "worker_run_delay": counters.sum(seen & workers, _RUN_DELAY),
                    "worker_rss": sum(procs[pid][_RSS] for pid in alive),
                    "other_cpu": counters.sum(seen - workers - {main}, _CPU)})
    return out


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


def thread_cpu(pid: int) -> dict[int, float]:
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
    except (psutil.Error, OSError):
        return {}
