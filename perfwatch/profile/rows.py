"""The Collector's snapshots as plain JSON rows for the diagnosis and the figures, and the
training process's compute threads."""

from __future__ import annotations

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


def thread_cpu(pid: int) -> dict[int, float]:
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
    except (psutil.Error, OSError):
        return {}
