"""A real 2-rank DDP job (torchrun, gloo, CPU) under ``perfwatch.monitor(model=...)``, rank 1
slowed by extra matrix work in its forward: each rank's own exporter, scraped for real, shows
the slowed rank working longer and waiting less at the all-reduce and the other rank the
other way round, and the straggler verdict over those scrapes names rank 1 and forward. A real
Prometheus scraping both exporters, with grafana/prometheus.yml's rules, names the same rank and
cause (the recording rules, the PerfwatchStragglerRank alert pending), and every query of the
Training dashboard's straggler panels ("Slowest rank and why") returns data there.

This file is also the job: torchrun runs it as a script (``main``), one process per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grafana_dashboards import PanelQueries, prometheus_config, targets
from helpers import assert_promtool_clean, ranks_printed, samples, value, wait_for_scrape
from servers import Prometheus, free_ports, wait_until

from perfwatch.instrument import PHASES
from perfwatch.monitoring.straggler import RankWindow, verdict

SLOW_RANK = 1
STEPS = 240  # the first only sets the timing's origin
WINDOW_FROM = 40  # the verdict's window: from this many timed steps to the end (warm-up left out)
JOB_TIMEOUT_S = 90.0
# The Training dashboard's panels over the straggler recording rules (perfwatch:train_*).
STRAGGLER_TARGETS = [t for t in targets() if t.dashboard == "training" and "perfwatch:train_" in t.expr]


# ---------------------------------------------------------------- the job (each rank)


def same_as_without_the_hook(torch, dist, install) -> bool:
    """Three steps of a small DDP model with the timing hook and of its twin without: equal bits."""
    from torch.nn.parallel import DistributedDataParallel

    twins = []
    for hooked in (True, False):
        torch.manual_seed(0)
        model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                                            torch.nn.Linear(64, 4)))
        if hooked:
            assert install(model) is not None
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(dist.get_rank())  # each rank its own batches
        for _ in range(3):
            model(torch.randn(16, 32, generator=generator)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        twins.append([p.detach().clone() for p in model.parameters()])
    return all(torch.equal(a, b) for a, b in zip(*twins))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one rank of the straggler test job")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--go", type=Path, required=True, help="train once the test has created this file")
    parser.add_argument("--release", type=Path, required=True, help="exit once the test has created this file")
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from perfwatch.monitoring.collective import install
    from perfwatch.monitoring.session import monitor

    torch.set_num_threads(1)  # two ranks on two cores
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    same = same_as_without_the_hook(torch, dist, install)

    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(64, 256, generator=generator), torch.randint(0, 10, (64,), generator=generator))
               for _ in range(8)]
    extra = torch.randn(256, 256, generator=generator)
    with monitor(port=args.port, interval=0.5, model=model) as mon:
        wait_for_file(args.go)  # Prometheus has scraped the counters at 0: its rates see every step
        timer = mon.timer
        for step, (inputs, targets) in enumerate(timer.iter(batches[i % len(batches)] for i in range(STEPS))):
            with timer.phase("forward"):
                if rank == SLOW_RANK:
                    for _ in range(8):  # the straggler: extra matrix work, a few ms on one core
                        extra = torch.tanh(extra @ extra)
                loss = torch.nn.functional.cross_entropy(model(inputs), targets)
            with timer.phase("backward"):
                loss.backward()
            with timer.phase("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
        result = {"rank": rank, "same_as_without_hook": same, "checksum": checksum}
        os.write(1, (json.dumps(result) + "\n").encode())  # one write: the ranks share the pipe
        wait_for_file(args.release)  # the exporter serves the final totals meanwhile
    dist.destroy_process_group()
    return 0


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


# ---------------------------------------------------------------- the test


def collective_window(first: str, last: str, rank: str) -> RankWindow:
    """Rank ``rank``'s window between two scrapes of its exporter."""
    host = socket.gethostname()

    def grown(name: str, **labels: str) -> float:
        return value(last, name, **labels) - value(first, name, **labels)

    return RankWindow(
        rank=rank,
        steps=int(grown("perfwatch_train_collective_steps_total", rank=rank, host=host)),
        work_seconds=grown("perfwatch_train_rank_work_seconds_total", rank=rank, host=host),
        wait_seconds=grown("perfwatch_train_collective_wait_seconds_total", rank=rank, host=host),
        phase_seconds={phase: grown("perfwatch_train_phase_seconds_total", rank=rank, phase=phase)
                       for phase in PHASES},
        timer_steps=int(grown("perfwatch_train_steps_total", rank=rank)),
        host=host,
    )


@pytest.mark.slow
def test_the_slowed_rank_works_longer_and_waits_less_and_is_named(tmp_path):
    port, go, release = free_ports(2), tmp_path / "go", tmp_path / "release"
    instances = [f"127.0.0.1:{port + rank}" for rank in (0, 1)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with Prometheus(tmp_path / "prometheus", prometheus_config(instances)) as prometheus:
        job = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
             "--port", str(port), "--go", str(go), "--release", str(release)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True,
        )
        try:
            urls = [f"http://127.0.0.1:{port + rank}/metrics" for rank in (0, 1)]
            wait_until(lambda: len(prometheus.query("perfwatch_train_collective_steps_total")) == 2, timeout=60,
                       what="Prometheus to scrape both ranks' collective counters")
            go.touch()
            first = [wait_for_scrape(url, lambda t: _steps(t) >= WINDOW_FROM, timeout=60) for url in urls]
            last = [wait_for_scrape(url, lambda t: _steps(t) >= STEPS - 1, timeout=60) for url in urls]
            trained = time.time()  # rules evaluated 1 s after a scrape after this have seen every step
            named = wait_until(lambda: time.time() > trained + 3 and straggler_named(prometheus), timeout=30,
                               what="the recording rules to name a straggler over the whole run")
            panels = PanelQueries(prometheus, time.time())
            empty_panels = [failure for target in STRAGGLER_TARGETS if (failure := panels.failure(target))]
            release.touch()
            stdout, stderr = job.communicate(timeout=30)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.communicate()
    assert job.returncode == 0, stderr[-3000:]
    ranks = ranks_printed(stdout)
    assert [r["same_as_without_hook"] for r in ranks] == [True, True]  # the hook computes what DDP does
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # and the ranks stay in step
    assert_promtool_clean(last[SLOW_RANK])

    slow, fast = (collective_window(first[r], last[r], str(r)) for r in (SLOW_RANK, 1 - SLOW_RANK))
    assert min(slow.steps, fast.steps) >= 100  # the first scrapes came while the ranks trained
    work = {w.rank: w.work_seconds / w.steps for w in (slow, fast)}
    wait = {w.rank: w.wait_seconds / w.steps for w in (slow, fast)}
    assert work[slow.rank] > 1.3 * work[fast.rank], (work, wait)  # the slowed rank works longer ...
    assert wait[slow.rank] < wait[fast.rank], (work, wait)  # ... and waits less; the other the other way round
    # Work + wait is the same cycle on both ranks: the all-reduce levels their step times.
    assert work[slow.rank] + wait[slow.rank] == pytest.approx(work[fast.rank] + wait[fast.rank], rel=0.15)

    judged = verdict([slow, fast])
    assert (judged.rank, judged.cause, judged.host) == (str(SLOW_RANK), "forward", socket.gethostname()), judged.says
    assert judged.scores[slow.rank] > 0.1 > judged.scores[fast.rank]

    # Prometheus's rules judge the same, and the alert names the rank, its host and the cause.
    assert named == {"rank": str(SLOW_RANK), "host": socket.gethostname(), "cause": "forward",
                     "instance": instances[SLOW_RANK], "alert": "PerfwatchStragglerRank"}
    assert len(STRAGGLER_TARGETS) >= 6 and not empty_panels, "\n".join(empty_panels)


def straggler_named(prometheus: Prometheus) -> dict[str, str] | None:
    """The straggler's rank, host, instance and cause as the rules name it, with the alert that names
    it (pending: it fires after 2 minutes); None while there is not exactly one of each."""
    causes = prometheus.query("perfwatch:train_straggler_cause_info")
    alerts = [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == "PerfwatchStragglerRank"]
    if len(causes) != 1 or len(alerts) != 1:
        return None
    labels = causes[0]["metric"]
    assert alerts[0]["labels"]["rank"] == labels["rank"] and alerts[0]["labels"]["cause"] == labels["cause"]
    return {**{key: labels[key] for key in ("rank", "host", "cause", "instance")},
            "alert": alerts[0]["labels"]["alertname"]}


def _steps(text: str) -> int:
    """The timed all-reduce steps in one rank's scrape (0 before its hook counted any)."""
    counted = [v for (name, _), v in samples(text).items() if name == "perfwatch_train_collective_steps_total"]
    return int(counted[0]) if counted else 0


if __name__ == "__main__":
    sys.exit(main())
