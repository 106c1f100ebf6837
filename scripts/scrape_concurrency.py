"""/metrics latency under bursts of concurrent scrapers while a 4-worker DataLoader trains (an evaluation).

One training process (scrape_latency.py's CNN, its DataLoader workers burning CPU in
transforms) runs inside ``perfwatch.monitor()``, and two ``perfwatch monitor --pid``
processes watch it from outside. Three exporters of the same training, scraped in turn:

* ``before``: ``perfwatch monitor --pid`` serving with prometheus_client's
  ``start_http_server`` (the exporter before issue #14: listen backlog 5, no timeouts);
* ``after``: ``perfwatch monitor --pid`` as it is now;
* ``in-process``: the training's own ``monitor()`` as it is now (scrapes share its GIL).

A burst is N scrapers connecting at the same moment, each one HTTP/1.0 GET on a fresh
connection, timed from connect to the last byte; a scrape is an error unless it
answers 200 with all of its Content-Length within 10 s. The arms take turns burst by
burst (the order rotated every round), so they see the same machine. A burst's last
scrapes end together, so p99 is about its slowest burst; "slow bursts" counts the
bursts whose slowest scrape took over 50 ms (or failed).

    python scripts/scrape_concurrency.py [--scrapers 20,50] [--rounds 30] [--gap 0.25] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator

from scrape_latency import (  # a sibling script
    free_port,
    running,
    stop,
    training_command,
    wait_for_metrics,
)

from perfwatch.env import cpu_model
from perfwatch.stats import quantile

SCRAPE_TIMEOUT_S = 10.0
SLOW_BURST_S = 0.050  # the target for p99

# `perfwatch monitor` with the exporter as it was before issue #14: prometheus_client's own server.
BEFORE = """
import sys
from prometheus_client import start_http_server
from perfwatch.cli import main
from perfwatch.monitoring import serve

class StartHttpServer:
    def __init__(self, registry, port, bind="127.0.0.1"):
        self._server, self._thread = start_http_server(port, addr=bind, registry=registry)
        self.port = self._server.server_port
        self.url = f"http://{bind}:{self.port}/metrics"

    def close(self):
        self._server.shutdown()
        self._server.server_close()

serve.MetricsServer = StartHttpServer
sys.exit(main(sys.argv[1:]))
"""


@contextlib.contextmanager
def exporter(command: list[str], url: str) -> Iterator[None]:
    """``command`` serving ``url`` until the block ends."""
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_for_metrics(url)
        yield
    finally:
        stop(process)


async def scrape(port: int) -> float | None:
    """Seconds for one whole scrape on a fresh connection; None when it failed."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), SCRAPE_TIMEOUT_S)
        try:
            writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), SCRAPE_TIMEOUT_S - (time.perf_counter() - started))
        finally:
            writer.close()
    except (OSError, asyncio.TimeoutError):
        return None
    elapsed = time.perf_counter() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((line.split(":", 1)[1] for line in lines if line.lower().startswith("content-length:")), None)
    complete = lines[0].split(" ")[1:2] == ["200"] and length is not None and int(length) == len(body)
    return elapsed if complete else None


async def burst(port: int, scrapers: int) -> list[float | None]:
    return await asyncio.gather(*(scrape(port) for _ in range(scrapers)))


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapers", default="20,50", help="burst sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=30, help="bursts per arm and burst size")
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between bursts")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds the training sleeps per step")
    args = parser.parse_args()
    sizes = [int(n) for n in args.scrapers.split(",")]

    ports = {arm: free_port() for arm in ("before", "after", "in-process")}
    urls = {arm: f"http://127.0.0.1:{port}/metrics" for arm, port in ports.items()}
    bursts: dict[tuple[str, int], list[list[float | None]]] = {(arm, n): [] for arm in ports for n in sizes}
    load_before = load()
    with contextlib.ExitStack() as stack:
        training = stack.enter_context(running(training_command(args.workers, ports["in-process"], args.pause)))
        pid = ["--pid", str(training.pid)]
        stack.enter_context(exporter([sys.executable, "-c", BEFORE, "monitor", "--port", str(ports["before"]), *pid],
                                     urls["before"]))
        stack.enter_context(exporter([sys.executable, "-m", "perfwatch", "monitor", "--port", str(ports["after"]),
                                      *pid], urls["after"]))
        wait_for_metrics(urls["in-process"])
        arms = list(ports)
        for round_ in range(args.rounds):
            for n in sizes:
                for arm in arms[round_ % 3:] + arms[:round_ % 3]:
                    bursts[arm, n].append(asyncio.run(burst(ports[arm], n)))
                    time.sleep(args.gap)
    load_after = load()

    print(f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, Linux {platform.release()}, "
          f"Python {platform.python_version()}; CNN training with a {args.workers}-worker DataLoader, "
          f"{f'pausing {args.pause} s per step' if args.pause else 'flat out'}; {args.rounds} bursts per arm "
          f"and size, {args.gap * 1e3:.0f} ms apart. Load average before {load_before}, after {load_after}.\n")
    print("| scrapers | exporter | scrapes | errors | p50 ms | p99 ms | max ms | slow bursts |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for arm in ports:
            results = [x for one in bursts[arm, n] for x in one]
            ms = sorted(x * 1e3 for x in results if x is not None)
            slow = sum(1 for one in bursts[arm, n] if None in one or max(one) > SLOW_BURST_S)
            print(f"| {n} | {arm} | {len(results)} | {len(results) - len(ms)} | {quantile(ms, 0.5):.1f} "
                  f"| {quantile(ms, 0.99):.1f} | {max(ms, default=float('nan')):.1f} "
                  f"| {slow}/{len(bursts[arm, n])} |")


if __name__ == "__main__":
    main()
