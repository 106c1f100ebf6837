"""CPU cost of a Collector sample next to a node_exporter scrape (an evaluation, not a test).

A child process runs perfwatch's reference DataLoader (4 workers by default, burning
CPU in transforms) and consumes batches forever. In the same run, a Collector watches
that tree while node_exporter (Debian ``prometheus-node-exporter``, started on a free
127.0.0.1 port with a temporary textfile directory) is scraped at the same pace.

Collector: CPU of the sampler thread per sample (``Snapshot.sample_cpu_seconds``,
from ``time.thread_time``). node_exporter: CPU of its whole process per scrape, read
from its process CPU clock (``clock_getcpuclockid``, nanoseconds) around each request;
"all-in" adds what it spends between scrapes (Go runtime, GC). The collector's number
excludes exposition (monitoring/metrics.py formats text later); node_exporter's includes it.

    python scripts/collector_cost.py [--samples 120] [--interval 0.25] [--workers 4]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from contextlib import contextmanager
from typing import Callable, Iterator

import psutil

from perfwatch.bench.runner import kill_tree
from perfwatch.env import cpu_model
from perfwatch.monitoring.collector import Collector
from perfwatch.stats import iqr, median

WORKLOAD = textwrap.dedent(
    """
    import sys
    from perfwatch.pipelines.datasets import DatasetSpec, open_dataset
    from perfwatch.pipelines.loader import EndlessBatches, build_loader

    dataset = open_dataset(DatasetSpec(num_samples=4096, transform_cost=4), "memory")
    batches = EndlessBatches(build_loader(dataset, num_workers=int(sys.argv[1]), batch_size=64))
    next(batches)
    print("ready", flush=True)
    for _ in batches:
        pass
    """
)
NODE_EXPORTER_NAMES = ("prometheus-node-exporter", "node_exporter")


def process_cpu_clock(pid: int) -> Callable[[], float]:
    """Seconds of CPU used so far by all threads of ``pid``, at nanosecond resolution."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    clock_id = ctypes.c_int()
    if libc.clock_getcpuclockid(pid, ctypes.byref(clock_id)) != 0:
        raise OSError(ctypes.get_errno(), f"no CPU clock for pid {pid}")
    return lambda: time.clock_gettime(clock_id.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def workload(workers: int) -> Iterator[subprocess.Popen]:
    child = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(workers)], stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            sys.exit("the DataLoader workload did not start")
        yield child
    finally:
        kill_tree(child.pid)
        child.wait()


@contextmanager
def node_exporter(binary: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """node_exporter with its default collectors on a free loopback port; stopped on exit."""
    with tempfile.TemporaryDirectory() as textfiles:
        address = f"127.0.0.1:{free_port()}"
        url = f"http://{address}/metrics"
        server = subprocess.Popen(
            [binary, f"--web.listen-address={address}", f"--collector.textfile.directory={textfiles}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2).read()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"node_exporter did not come up on {url}")
                    time.sleep(0.1)
            yield server, url
        finally:
            server.terminate()
            server.wait(10)


def scrape(url: str, cpu: Callable[[], float], count: int, interval: float) -> tuple[list[float], float, int]:
    """Per-scrape CPU seconds, all-in CPU per scrape, and the series count of the last scrape."""
    per_scrape = []
    start = cpu()
    for _ in range(count):
        before = cpu()
        body = urllib.request.urlopen(url, timeout=10).read()
        per_scrape.append(cpu() - before)
        time.sleep(interval)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return per_scrape, (cpu() - start) / count, series


def row(name: str, unit: str, values: list[float], all_in: float) -> str:
    ms = [v * 1e3 for v in values]
    return f"| {name} | {unit} | {median(ms):.2f} | {iqr(ms):.2f} | {all_in * 1e3:.2f} | {len(ms)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=120, help="collector samples and node_exporter scrapes")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples and between scrapes")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers in the watched tree")
    args = parser.parse_args()
    binary = next(filter(None, map(shutil.which, NODE_EXPORTER_NAMES)), None)

    rows = []
    with workload(args.workers) as child:
        collector = Collector(child.pid, interval=args.interval, history=args.samples + 1)
        with collector:
            if binary:
                with node_exporter(binary) as (server, url):
                    per_scrape, all_in, series = scrape(url, process_cpu_clock(server.pid), args.samples, args.interval)
            while collector.latest() is None or collector.latest().seq <= args.samples:
                time.sleep(args.interval)
        snapshots = collector.history()[1:]  # the first sample pays one-off set-up (NVML probe, caches)
        workers = snapshots[-1].tree.workers.count
        costs = [s.sample_cpu_seconds for s in snapshots]
        rows.append(row(f"perfwatch Collector: host + tree of 1 main + {workers} workers", "sample",
                        costs, sum(costs) / len(costs)))
    if binary:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        rows.append(row(f"{version.split(' (')[0]}, default collectors, {series} series", "scrape", per_scrape, all_in))

    print(f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, Linux {platform.release()}, "
          f"Python {platform.python_version()}, psutil {psutil.__version__}; "
          f"interval {args.interval} s, DataLoader workers busy in the background.\n")
    print("| What | Per | Median CPU (ms) | IQR (ms) | All-in mean (ms) | n |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    if not binary:
        print("\nnode_exporter not found: `apt-get install prometheus-node-exporter` for the comparison row.")


if __name__ == "__main__":
    main()
