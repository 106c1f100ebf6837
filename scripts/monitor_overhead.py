"""Slow-down of the reference training under ``perfwatch.monitor()`` (an evaluation, not a test).

One process trains perfwatch's reference model (``perfwatch.pipelines.train``) in
short arms of ``--steps`` steps: plain, and inside ``monitor(interval=I)`` attached to
the training's StepTimer, for each I of ``--intervals`` (the default 1 s, and faster
ones). Every round runs each arm once, in a rotated order, so drift and bursts of
other load hit every arm alike; per-round ratios arm/plain are summarised by the
Hodges-Lehmann estimate with its 99% interval (Wilcoxon). A monitored arm starts once
the monitor has served its first sample (start-up is a one-off, not the steady state
measured here). A separate process scrapes the monitor's port every ``--scrape-every``
seconds through the whole run, as Prometheus would.

Why several intervals: on a shared machine single pairs vary by +-15-25%, far more
than the 1% to show at 1 s. The slow-down is caused by the sampler's work, so it
grows with the share of a core the sampler takes (its CPU seconds per wall second,
read from the monitor's own counters: CPU seconds per sample / interval). Faster intervals make that share, and the
slow-down, big enough to measure; the fitted slope (slow-down per unit of sampler
share, through the origin) times the share at 1 s predicts the 1 s slow-down, and the
1 s arm's own estimate is printed beside it.

    python scripts/monitor_overhead.py [--rounds 60] [--steps 40] [--intervals 1,0.05,0.01] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator

import torch

import perfwatch.pipelines.train as train
from perfwatch.env import cpu_model
from perfwatch.instrument import PHASES, StepRecord
from perfwatch.monitoring.metrics import TrainingMetrics
from perfwatch.monitoring.session import monitor
from perfwatch.stats import median, paired_ratio, quantile

SCRAPER = textwrap.dedent(
    """
    import sys, time, urllib.request
    url, every = sys.argv[1], float(sys.argv[2])
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
        except OSError:
            pass
        time.sleep(every)
    """
)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def sampler_cpu_seconds(text: str) -> tuple[float, float]:
    """(CPU seconds the sampler spent, samples taken) from a scrape."""
    found = {name: float(value) for name, value in
             (line.split() for line in text.splitlines() if line.startswith("perfwatch_collector_s"))}
    return found["perfwatch_collector_sample_cpu_seconds_total"], found["perfwatch_collector_samples_total"]


@contextlib.contextmanager
def monitored(port: int, interval: float, costs: list[tuple[float, float]]) -> Iterator[None]:
    """The monitor around an arm, once it has sampled, attached to each StepTimer ``TrainingBenchmark.run``
    creates; appends the sampler's (CPU seconds, samples) of the arm to ``costs``."""
    with monitor(port=port, interval=interval) as mon:
        while "perfwatch_collector_samples_total" not in (before := scrape(mon.url)):
            time.sleep(0.01)
        make_timer = train.StepTimer

        def attached_timer(*args, **kwargs):
            timer = make_timer(*args, **kwargs)
            mon.attach(timer)
            return timer

        train.StepTimer = attached_timer
        try:
            yield
        finally:
            train.StepTimer = make_timer
        (cpu_before, samples_before), (cpu_after, samples_after) = map(sampler_cpu_seconds, (before, scrape(mon.url)))
        costs.append((cpu_after - cpu_before, samples_after - samples_before))


def listener_seconds(calls: int = 100_000) -> float:
    """Seconds per call of the training-metrics listener that runs in the loop after every step."""
    training = TrainingMetrics()
    record = StepRecord(0, 0.0, 0.024, dict.fromkeys(PHASES, 0.004), 64)
    started = time.perf_counter()
    for _ in range(calls):
        training.observe(record)
    return (time.perf_counter() - started) / calls


def arm_order(arms: list[str], round_index: int) -> list[str]:
    """Arms rotated by one per round (and reversed every other round), so no arm always goes first."""
    shift = round_index % len(arms)
    order = arms[shift:] + arms[:shift]
    return order if round_index % 2 == 0 else order[::-1]


def slope_through_origin(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of y = k x, the slow-down per unit of sampler share."""
    return sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--steps", type=int, default=40, help="training steps per arm")
    parser.add_argument("--model", default="mlp", choices=train.MODEL_NAMES)
    parser.add_argument("--intervals", default="1,0.05,0.01",
                        help="comma-separated sampling intervals (s) of the monitored arms")
    parser.add_argument("--scrape-every", type=float, default=5.0, help="seconds between scrapes")
    parser.add_argument("--port", type=int, default=9473)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    intervals = [float(i) for i in args.intervals.split(",")]
    arms = ["plain", *map(str, intervals)]

    bench = train.TrainingBenchmark(train.TrainConfig(model=args.model, device="cpu"))
    bench.run(max(10, args.steps // 5))  # warm-up: allocator, kernels
    scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, f"http://127.0.0.1:{args.port}/metrics",
                                str(args.scrape_every)])
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    costs: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms[1:]}
    load = []
    try:
        for round_index in range(args.rounds):
            for arm in arm_order(arms, round_index):
                if arm == "plain":
                    seconds[arm].append(bench.run(args.steps).seconds)
                else:
                    with monitored(args.port, float(arm), costs[arm]):
                        seconds[arm].append(bench.run(args.steps).seconds)
            load.append(os.getloadavg()[0])
            print(f"round {round_index + 1}/{args.rounds}: "
                  + " ".join(f"{arm}={seconds[arm][-1] / seconds['plain'][-1]:.3f}" for arm in arms[1:]),
                  file=sys.stderr, flush=True)
    finally:
        scraper.kill()
        scraper.wait()

    plain = seconds["plain"]
    step_ms = median(plain) / args.steps * 1e3
    print(f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, Linux {platform.release()}, "
          f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"reference {args.model} training on CPU, {step_ms:.1f} ms/step, {args.steps} steps per arm, "
          f"{args.rounds} rounds; scraped every {args.scrape_every} s; load average during the run: median "
          f"{median(load):.1f} (min {min(load):.1f}, max {max(load):.1f}).")
    print("\n| interval | sampler share of a core | median ratio (quartiles) | Hodges-Lehmann, 99% interval | p |")
    print("|---:|---:|---|---|---:|")
    shares, slowdowns, highs = {}, {}, {}
    for arm in arms[1:]:
        ratios = [b / a for a, b in zip(plain, seconds[arm])]
        estimate = paired_ratio(plain, seconds[arm], alpha=0.01)
        shares[arm] = sum(cpu for cpu, _ in costs[arm]) / sum(n for _, n in costs[arm]) / float(arm)  # steady state
        slowdowns[arm] = estimate.ratio - 1
        highs[arm] = estimate.high
        print(f"| {arm} s | {shares[arm]:.2%} | {median(ratios):.4f} ({quantile(ratios, 0.25):.4f}-"
              f"{quantile(ratios, 0.75):.4f}) | {estimate.ratio:.4f}, {estimate.low:.4f}-{estimate.high:.4f} | "
              f"{estimate.p_value:.2g} |")
    slope = slope_through_origin(list(shares.values()), list(slowdowns.values()))
    fastest = min(arms[1:], key=float)
    worst_slope = (highs[fastest] - 1) / shares[fastest]
    print(f"\nslow-down per unit of sampler share (fit through the origin over all intervals): {slope:.2f}")
    for arm in arms[1:]:
        print(f"predicted slow-down at {arm} s: {slope * shares[arm]:+.3%}, at most {worst_slope * shares[arm]:+.3%} "
              f"by the {fastest} s arm's upper 99% bound (measured directly: {slowdowns[arm]:+.2%})")
    listener = listener_seconds()
    print(f"listener {listener * 1e6:.2f} us per step = {listener / (step_ms / 1e3):.4%} of a step")


if __name__ == "__main__":
    main()
