"""Latency of a /metrics scrape while a 4-worker DataLoader trains (an evaluation, not a test).

A child process trains perfwatch's reference CNN on batches from a DataLoader whose
workers burn CPU in transforms. Two ways of exporting are measured in turn:

* ``inprocess``: the loop runs inside ``perfwatch.monitor()``; scrapes are served by a
  thread of the training process, competing with it for the GIL;
* ``cli``: ``perfwatch monitor -- <the same training>`` serves from its own process;
* ``node_exporter``: for reference, node_exporter (Go, default collectors) scraped while
  the same training runs unmonitored: the floor this machine's scheduling sets.

Each scrape is one sequential HTTP GET from this process (connection set-up
included), timed on ``time.perf_counter``; the first ``--warmup`` are dropped.

    python scripts/scrape_latency.py [--scrapes 500] [--workers 4] [--pause 0] [--modes inprocess,cli,node_exporter]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator

from collector_cost import NODE_EXPORTER_NAMES, node_exporter  # a sibling script

from perfwatch.bench.runner import kill_tree
from perfwatch.env import cpu_model
from perfwatch.stats import quantile

# argv: workers, port (0: no monitor()), seconds to sleep per step (0: train flat out).
TRAINING = textwrap.dedent(
    """
    import contextlib, sys, time, torch
    import perfwatch
    from perfwatch.instrument import StepTimer
    from perfwatch.pipelines.datasets import DatasetSpec, open_dataset
    from perfwatch.pipelines.loader import EndlessBatches, build_loader
    from perfwatch.pipelines.models import build_model

    workers, port, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    torch.set_num_threads(1)
    dataset = open_dataset(DatasetSpec(num_samples=4096, transform_cost=2), "memory")
    batches = EndlessBatches(build_loader(dataset, num_workers=workers, batch_size=32))
    model = build_model("cnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scope = perfwatch.monitor(port=port) if port else contextlib.nullcontext()
    with scope as mon:
        timer = mon.timer if port else StepTimer()
        for n, (x, y) in enumerate(timer.iter(batches)):
            with timer.phase("forward"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            with timer.phase("backward"):
                loss.backward()
            with timer.phase("optimizer"):
                optimizer.step()
                optimizer.zero_grad()
            if port:
                mon.log(loss=loss)
            if n == 0:
                print("ready", flush=True)
            time.sleep(pause)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_command(workers: int, port: int = 0, pause: float = 0.0) -> list[str]:
    return [sys.executable, "-c", TRAINING, str(workers), str(port), str(pause)]


@contextlib.contextmanager
def running(command: list[str]) -> Iterator[subprocess.Popen]:
    """``command`` until it printed ``ready`` (the loader's workers are up); stopped with SIGTERM after."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline().strip() != "ready":
            sys.exit(f"{command[:4]} did not start")
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then its whole tree killed if it lingers."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        process.wait()


def scrape(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def wait_for_metrics(url: str, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return scrape(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def measure(url: str, count: int, warmup: int, gap: float) -> tuple[list[float], bytes]:
    """Seconds per scrape (after ``warmup`` untimed ones) and the last body."""
    body = wait_for_metrics(url)
    for _ in range(warmup):
        scrape(url)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        body = scrape(url)
        latencies.append(time.perf_counter() - started)
        time.sleep(gap)
    return latencies, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between scrapes")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds the training sleeps per step (0: flat out, the machine saturated)")
    parser.add_argument("--modes", default="inprocess,cli,node_exporter")
    args = parser.parse_args()

    print(f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, Linux {platform.release()}, "
          f"Python {platform.python_version()}; CNN training with a {args.workers}-worker DataLoader, "
          f"{f'pausing {args.pause} s per step' if args.pause else 'flat out'}; "
          f"{args.scrapes} sequential scrapes {args.gap * 1e3:.0f} ms apart after {args.warmup} warm-up.\n")
    print("| Exporter | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | series | body (KiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in args.modes.split(","):
        port = free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        with contextlib.ExitStack() as stack:
            if mode == "inprocess":
                stack.enter_context(running(training_command(args.workers, port, args.pause)))
            elif mode == "cli":
                stack.enter_context(running([sys.executable, "-m", "perfwatch", "monitor", "--port", str(port), "--",
                                             *training_command(args.workers, pause=args.pause)]))
            else:
                stack.enter_context(running(training_command(args.workers, pause=args.pause)))
                binary = next(filter(None, map(shutil.which, NODE_EXPORTER_NAMES)), None)
                if binary is None:
                    print(f"| {mode} | not installed (apt-get install prometheus-node-exporter) |")
                    continue
                _, url = stack.enter_context(node_exporter(binary))
            latencies, body = measure(url, args.scrapes, args.warmup, args.gap)
        ms = sorted(x * 1e3 for x in latencies)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        print(f"| {mode} | {quantile(ms, 0.5):.2f} | {quantile(ms, 0.9):.2f} | {quantile(ms, 0.99):.2f} "
              f"| {ms[-1]:.2f} | {series} | {len(body) / 1024:.1f} |", flush=True)


if __name__ == "__main__":
    main()
