"""The collector against real processes: a torch DataLoader tree, processes that exit,
and real /proc (plus literal PSI files under a temporary proc_root)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers import TREE_CHILD

from perfwatch.errors import UserError
from perfwatch.monitoring.collector import Collector, parse_pressure, read_pressure

WORKERS = 3
NOBODY = 65534

# A training-like process: a DataLoader whose workers burn CPU, consumed forever.
LOADER_CHILD = textwrap.dedent(
    """
    import sys, torch
    from torch.utils.data import DataLoader, Dataset

    class Burn(Dataset):
        def __len__(self):
            return 10**9
        def __getitem__(self, i):
            return torch.tensor(sum(range(20_000)) + i)

    loader = DataLoader(Burn(), batch_size=8, num_workers=int(sys.argv[1]))
    for n, batch in enumerate(loader):
        if n == 0:
            print("ready", flush=True)
    """
)



def spawn(source: str, *args: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", source, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def stop(process: subprocess.Popen) -> None:
    for member in psutil.Process(process.pid).children(recursive=True) if process.poll() is None else ():
        member.kill()
    process.kill()
    process.wait()


def wait_for(collector: Collector, condition, timeout: float = 10.0):
    """The first snapshot satisfying ``condition``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = collector.latest()
        if snapshot is not None and condition(snapshot):
            return snapshot
        time.sleep(0.02)
    raise AssertionError(f"no snapshot satisfied the condition within {timeout} s; latest: {collector.latest()}")


@pytest.fixture(scope="module")
def loader_process():
    process = spawn(LOADER_CHILD, str(WORKERS))
    yield process
    stop(process)


def test_dataloader_tree_roles_and_growth(loader_process):
    expected_workers = {p.pid for p in psutil.Process(loader_process.pid).children(recursive=True)}
    assert len(expected_workers) == WORKERS
    with Collector(loader_process.pid, interval=0.1) as collector:
        first = wait_for(collector, lambda s: s.tree.workers.count == WORKERS)
        later = wait_for(collector, lambda s: s.seq >= first.seq + 5)
    tree = later.tree
    assert tree.alive and tree.pid == loader_process.pid
    assert tree.main.pids == (loader_process.pid,) and set(tree.workers.pids) == expected_workers
    assert tree.workers.cpu_seconds_total > first.tree.workers.cpu_seconds_total
    assert tree.main.cpu_seconds_total >= first.tree.main.cpu_seconds_total > 0
    for role in (tree.main, tree.workers):
        assert role.rss_bytes > 0 and role.threads >= role.count
        assert role.voluntary_context_switches_total + role.involuntary_context_switches_total > 0
        assert role.uss_bytes is None  # off unless asked for
    assert later.errors_total == 0 and tree.access_denied_total == 0
    assert 0 < later.sample_cpu_seconds < 1


def test_uss_and_pss_when_asked(loader_process):
    with Collector(loader_process.pid, interval=0.1, uss_interval=0.0) as collector:
        snapshot = wait_for(collector, lambda s: s.tree.workers.uss_bytes is not None)
    workers = snapshot.tree.workers
    assert 0 < workers.uss_bytes <= workers.pss_bytes <= workers.rss_bytes


def test_host_readings(loader_process):
    with Collector(interval=0.1) as collector:
        snapshot = wait_for(collector, lambda s: s.seq >= 2)
    host = snapshot.host
    assert snapshot.tree is None
    assert sum(getattr(host.cpu_ratio, mode) for mode in ("user", "nice", "system", "idle", "iowait", "irq",
                                                          "softirq", "steal")) == pytest.approx(1.0)
    assert host.cpu_ratio.user + host.cpu_ratio.system > 0  # the loader tree is burning CPU
    assert len(host.per_core_seconds_total) == len(host.per_core_ratio) == psutil.cpu_count()
    assert host.memory.total_bytes == psutil.virtual_memory().total
    assert 0 < host.memory.available_bytes <= host.memory.total_bytes
    assert host.load1 >= 0
    assert "lo" not in {n.interface for n in host.networks}
    assert not any(d.device.startswith(("loop", "ram")) for d in host.disks)


def test_watched_process_exit_is_reported_and_sampling_goes_on(caplog):
    process = spawn(TREE_CHILD)
    exits = []

    def on_exit(pid):
        exits.append(pid)
        raise RuntimeError("a broken callback must not stop the sampler")

    try:
        with Collector(process.pid, interval=0.05, on_exit=on_exit) as collector:
            alive = wait_for(collector, lambda s: s.tree.workers.count == 2)
            process.stdin.close()  # the child exits and stays a zombie: not reaped until below
            gone = wait_for(collector, lambda s: not s.tree.alive)
            after = wait_for(collector, lambda s: s.seq >= gone.seq + 3)
    finally:
        stop(process)
    assert alive.tree.alive and exits == [process.pid]
    assert after.tree.main.count == after.tree.workers.count == 0
    assert after.tree.main.cpu_seconds_total >= alive.tree.main.cpu_seconds_total  # counters stay monotonic
    assert after.host is not None and after.errors_total == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "on_exit" in warnings[0].getMessage()


def watch_unprivileged(pid: int, results) -> None:
    """In a forked child: watch ``pid`` as a user who may not read its IO counters or USS."""
    if os.geteuid() == 0:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("perfwatch").addHandler(handler)
    with Collector(pid, interval=0.05, uss_interval=0.0) as collector:
        snapshot = wait_for(collector, lambda s: s.seq >= 3)
    tree = snapshot.tree
    results.put((tree.access_denied_total, tree.workers.count, tree.workers.cpu_seconds_total, snapshot.errors_total,
                 warnings))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to watch as another user")
def test_access_denied_is_counted_warned_once_and_sampling_goes_on(loader_process):
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    child = fork.Process(target=watch_unprivileged, args=(loader_process.pid, results))
    child.start()
    denied, workers, worker_cpu, errors, warnings = results.get(timeout=30)
    child.join()
    assert denied >= 3 * (1 + WORKERS) and workers == WORKERS and worker_cpu > 0 and errors == 0
    assert len(warnings) == 1 and "access denied" in warnings[0]


def test_nonexistent_pid_is_a_clear_error():
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    with pytest.raises(ProcessLookupError) as error:
        Collector(finished.pid)
    assert isinstance(error.value, UserError)
    assert str(error.value) == f"no process with pid {finished.pid} to watch"


def test_stop_is_prompt():
    collector = Collector(interval=1.0).start()
    wait_for(collector, lambda s: True)
    started = time.monotonic()
    collector.stop()
    assert time.monotonic() - started < 1.0
    seq = collector.latest().seq
    time.sleep(0.2)
    assert collector.latest().seq == seq


def test_memory_is_bounded_by_history():
    with Collector(interval=0.01, history=3) as collector:
        wait_for(collector, lambda s: s.seq >= 10)
    kept = collector.history()
    assert len(kept) == 3
    assert [s.seq for s in kept] == list(range(kept[-1].seq - 2, kept[-1].seq + 1))
    assert kept[-1] is collector.latest()


def test_bad_arguments():
    with pytest.raises(ValueError, match="interval"):
        Collector(interval=0)
    with pytest.raises(ValueError, match="history"):
        Collector(history=0)


# ---------------------------------------------------------------- PSI


def write_pressure(root: Path, files: dict[str, str]) -> Path:
    (root / "pressure").mkdir(parents=True)
    for resource, text in files.items():
        (root / "pressure" / resource).write_text(text)
    return root


def test_pressure_from_literal_files(tmp_path):
    root = write_pressure(
        tmp_path,
        {
            "cpu": "some avg10=3.56 avg60=3.16 avg300=1.88 total=12030366\n",  # kernels < 5.13: no full line
            "io": "some avg10=0.21 avg60=0.16 avg300=0.23 total=3426823\n"
                  "full avg10=0.20 avg60=0.14 avg300=0.21 total=3198651\n",
        },
    )
    cpu, io = read_pressure(root)
    assert (cpu.resource, cpu.some_avg10_ratio, cpu.some_stall_seconds_total) == ("cpu", 0.0356, 12.030366)
    assert (cpu.full_avg10_ratio, cpu.full_stall_seconds_total) == (None, None)
    assert (io.resource, io.full_avg10_ratio, io.full_stall_seconds_total) == ("io", 0.002, 3.198651)


@pytest.mark.skipif(not Path("/proc/pressure/cpu").exists(), reason="kernel without PSI")
def test_pressure_from_real_proc():
    pressure = {p.resource: p for p in read_pressure()}
    assert set(pressure) == {"cpu", "memory", "io"}
    for p in pressure.values():
        assert 0 <= p.some_avg10_ratio <= 1 and p.some_stall_seconds_total >= 0
        assert p.full_stall_seconds_total is None or p.full_stall_seconds_total <= p.some_stall_seconds_total


def test_proc_root_without_psi_or_children_lists(tmp_path):
    """An older kernel: no PSI fields (not an error), and the tree found by psutil's scan instead."""
    process = spawn(TREE_CHILD)
    try:
        with Collector(process.pid, interval=0.05, proc_root=tmp_path) as collector:
            snapshot = wait_for(collector, lambda s: s.tree.workers.count == 2)
    finally:
        stop(process)
    assert snapshot.host.pressure == () and snapshot.errors_total == 0


def test_malformed_pressure_is_logged_once_and_sampling_goes_on(tmp_path, caplog):
    root = write_pressure(tmp_path, {"cpu": "some avg10=garbage\n"})
    with pytest.raises(ValueError):
        parse_pressure("cpu", "some avg10=garbage total=1\n")
    with Collector(interval=0.01, proc_root=root) as collector:
        snapshot = wait_for(collector, lambda s: s.seq >= 5)
    assert snapshot.host is None and snapshot.errors_total >= 5
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "host" in warnings[0].getMessage() and warnings[0].exc_info


# Two busy loops pinned to one CPU: each runs about half the time and waits on the run queue the other half.
SHARING_ONE_CORE = textwrap.dedent("""\
    import os, sys, time
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if os.fork() == 0:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            pass
        os._exit(0)
    print("ready", flush=True)
    end = time.monotonic() + 30
    while time.monotonic() < end and sys.stdin.readable():
        pass
""")


def test_each_process_reports_how_long_it_waited_for_a_cpu():
    process = subprocess.Popen([sys.executable, "-c", SHARING_ONE_CORE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        with Collector(process.pid, interval=0.2) as collector:
            # a loaded machine may take longer than one interval for the first full sample of the tree
            start = wait_for(collector, lambda s: s.tree is not None and len(s.tree.members) == 2)
            first = {m.pid: m for m in start.tree.members}
            time.sleep(1.5)
            last = {m.pid: m for m in wait_for(collector, lambda s: s.seq > start.seq).tree.members}
        assert len(last) == 2  # the loop and its forked twin
        for pid, member in last.items():
            waited = member.run_delay_seconds_total - first[pid].run_delay_seconds_total
            ran = member.cpu_seconds_total - first[pid].cpu_seconds_total
            assert waited > 0.3 and ran < 1.2  # half the wall time each, give or take the rest of the machine
    finally:
        for child in psutil.Process(process.pid).children():
            child.kill()
        process.kill()
        process.wait()
