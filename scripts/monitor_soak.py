"""Resident memory of ``perfwatch monitor`` over a long run at 10 Hz (an evaluation, not a test).

``perfwatch monitor --interval 0.1 -- <training>`` watches perfwatch's reference CNN
training with a 4-worker DataLoader (paced, so the machine stays usable) and is scraped
once a second, as a busy Prometheus would. The monitor process's RSS is read every
``--every`` seconds. Growth is measured from the end of ``--settle`` (imports done,
history ring buffer full) to the end, and as a least-squares slope over the same span.

    python scripts/monitor_soak.py [--minutes 10] [--interval 0.1] [--csv soak.csv]
"""

from __future__ import annotations

import argparse
import sys
import time

import psutil
from scrape_latency import free_port, running, scrape, training_command, wait_for_metrics

MIB = 1 << 20


def slope_per_hour(times: list[float], values: list[float]) -> float:
    mean_t, mean_v = sum(times) / len(times), sum(values) / len(values)
    var = sum((t - mean_t) ** 2 for t in times)
    return sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values)) / var * 3600 if var else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.1, help="collector interval (seconds)")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds before the baseline RSS")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between RSS readings")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--csv", help="write (seconds, rss_bytes, scrapes) rows here")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    command = [sys.executable, "-m", "perfwatch", "monitor", "--port", str(port), "--interval", str(args.interval),
               "--", *training_command(args.workers, pause=0.05)]
    rows: list[tuple[float, int, int]] = []
    with running(command) as monitor:
        wait_for_metrics(url)
        process = psutil.Process(monitor.pid)
        started = time.monotonic()
        next_reading = started
        scrapes = 0
        while (elapsed := time.monotonic() - started) < args.minutes * 60:
            scrape(url)
            scrapes += 1
            if time.monotonic() >= next_reading:
                rows.append((elapsed, process.memory_info().rss, scrapes))
                next_reading += args.every
            time.sleep(1.0)
        body = scrape(url)
    samples = next(line for line in body.decode().splitlines() if line.startswith("perfwatch_collector_samples_total"))

    if args.csv:
        with open(args.csv, "w") as f:
            f.write("seconds,rss_bytes,scrapes\n")
            f.writelines(f"{t:.1f},{rss},{n}\n" for t, rss, n in rows)
    settled = [(t, rss) for t, rss, _ in rows if t >= args.settle]
    times, rss = [t for t, _ in settled], [r for _, r in settled]
    print(f"perfwatch monitor at {args.interval} s interval for {args.minutes:g} min, {scrapes} scrapes, "
          f"{samples.split()[-1]} collector samples, {args.workers}-worker DataLoader tree")
    print(f"RSS at start {rows[0][1] / MIB:.1f} MiB, after {args.settle:g} s {rss[0] / MIB:.1f} MiB, "
          f"at end {rss[-1] / MIB:.1f} MiB, max {max(rss) / MIB:.1f} MiB")
    print(f"growth after settling: {(rss[-1] - rss[0]) / MIB:+.2f} MiB "
          f"(least-squares slope {slope_per_hour(times, rss) / MIB:+.2f} MiB/hour)")


if __name__ == "__main__":
    main()
