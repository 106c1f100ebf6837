"""Slow-down of the reference training under ``perfwatch.monitor()`` (an evaluation, not a test).

One process trains perfwatch's reference model (``perfwatch.pipelines.train``) in
short arms of ``--steps`` steps: plain (A) and inside ``monitor(interval=1.0)`` with
the monitor attached to the training's StepTimer (B), interleaved A B, B A, A B, ...
so drift and bursts of other load on the machine hit both arms of a pair alike; many
short pairs and the median ratio keep a burst from deciding the result. A B arm
starts once the monitor has served its first sample (start-up is a one-off, not the
steady state measured here). An arm's time is the sum of its step walls. A separate
process scrapes the monitor's port every ``--scrape-every`` seconds through the whole
run (refused during A arms), as Prometheus would.

Reported: the median of the per-pair ratios B/A with quartiles, the Hodges-Lehmann
estimate with its 99% interval (Wilcoxon), and as cross-checks that do not depend on
the noise of step times: the sampler's CPU per sample (the most it can take from the
training per interval, as CPU or as GIL held) and the listener's cost per step.

    python scripts/monitor_overhead.py [--pairs 100] [--steps 40] [--model mlp] [--interval 1.0] [--threads N]
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
from perfwatch.exporter import TrainingMetrics
from perfwatch.instrument import PHASES, StepRecord
from perfwatch.monitoring import monitor
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=40, help="training steps per arm")
    parser.add_argument("--model", default="mlp", choices=train.MODEL_NAMES)
    parser.add_argument("--interval", type=float, default=1.0, help="the monitor's sampling interval (s)")
    parser.add_argument("--scrape-every", type=float, default=5.0, help="seconds between scrapes")
    parser.add_argument("--port", type=int, default=9473)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bench = train.TrainingBenchmark(train.TrainConfig(model=args.model, device="cpu"))
    bench.run(max(10, args.steps // 5))  # warm-up: allocator, kernels
    scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, f"http://127.0.0.1:{args.port}/metrics",
                                str(args.scrape_every)])
    plain, watched, costs = [], [], []
    try:
        for pair in range(args.pairs):
            for arm in ("AB" if pair % 2 == 0 else "BA"):
                if arm == "A":
                    plain.append(bench.run(args.steps).seconds)
                else:
                    with monitored(args.port, args.interval, costs):
                        watched.append(bench.run(args.steps).seconds)
            print(f"pair {pair + 1}/{args.pairs}: {watched[-1] / plain[-1]:.4f}", file=sys.stderr, flush=True)
    finally:
        scraper.kill()
        scraper.wait()

    ratios = [b / a for a, b in zip(plain, watched)]
    estimate = paired_ratio(plain, watched, alpha=0.01)
    step_ms = median(plain) / args.steps * 1e3
    print(f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, Linux {platform.release()}, "
          f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"reference {args.model} training on CPU, {step_ms:.1f} ms/step, {args.steps} steps per arm, "
          f"{args.pairs} interleaved pairs; monitor interval {args.interval} s, scraped every {args.scrape_every} s.")
    samples = sum(n for _, n in costs)
    if samples:
        sampler_cpu = sum(cpu for cpu, _ in costs) / samples
        print(f"sampler CPU {sampler_cpu * 1e3:.2f} ms per sample = {sampler_cpu / args.interval / os.cpu_count():.3%} "
              f"of this machine's CPU at one sample every {args.interval} s ({samples:.0f} samples)")
    listener = listener_seconds()
    print(f"listener {listener * 1e6:.2f} us per step = {listener / (step_ms / 1e3):.4%} of a step")
    print(f"median paired ratio monitored/plain {median(ratios):.4f} "
          f"(quartiles {quantile(ratios, 0.25):.4f}..{quantile(ratios, 0.75):.4f}, "
          f"min {min(ratios):.4f}, max {max(ratios):.4f}); Hodges-Lehmann {estimate.ratio:.4f}, "
          f"99% interval {estimate.low:.4f}..{estimate.high:.4f}, Wilcoxon p {estimate.p_value:.3f}")


if __name__ == "__main__":
    main()
