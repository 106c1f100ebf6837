"""Zero-code collective timing: an unmodified DDP script under torchrun, launched by ``perfwatch
monitor``, gets each rank's gradient all-reduces timed (work before, wait in) and exported per rank
from the monitor's exporter, as ``perfwatch.monitor(model=...)`` exports them; a script with a comm
hook of its own keeps it, trains as it would without perfwatch, and is told so once per rank.

Real torchrun, two gloo ranks on the CPU, a few seconds of training; each job is a process group
of its own, killed by its PID if it outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_promtool_clean, ranks_printed, samples, scrape, value
from servers import free_port, wait_until

from perfwatch.instrument import PHASES
from perfwatch.monitoring.metrics import STEP_BUCKETS
from perfwatch.monitoring.step_timing import (
    STEP_BUCKETS_ENV,
    STEP_DIR_ENV,
    install_child_hooks,
    read_published,
)
from perfwatch.monitoring.straggler import RankWindow, verdict

pytestmark = pytest.mark.slow

RANKS = ("0", "1")
STEPS = 20
JOB_TIMEOUT_S = 120.0  # importing torch in three processes on a loaded 2-core machine
UNAVAILABLE = "collective timing (perfwatch_train_collective_wait_seconds_total and friends) is unavailable"

# An unmodified DDP script: a DataLoader, SGD, --steps N steps or (--release) until a file exists,
# on every rank at the same step; --own-hook registers a comm hook of its own (DDP's all-reduce,
# counted). Each rank prints its steps, a checksum of its parameters and its hook's calls.
TRAIN = textwrap.dedent("""\
    import argparse, json, os
    from pathlib import Path
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--release", type=Path)
    parser.add_argument("--own-hook", action="store_true")
    parser.add_argument("--slow-rank", type=int, default=-1, help="this rank does extra matrix work in forward")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    class Slowed(torch.nn.Sequential):
        def forward(self, x):
            if rank == args.slow_rank:  # a straggler: a few ms of extra matrix work on one core
                extra = torch.randn(192, 192)
                for _ in range(6):
                    extra = torch.tanh(extra @ extra)
            return super().forward(x)

    model = DistributedDataParallel(Slowed(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)))
    calls = 0
    if args.own_hook:
        def counted_allreduce(state, bucket):
            global calls
            calls += 1
            return allreduce_hook(state, bucket)
        model.register_comm_hook(None, counted_allreduce)
    generator = torch.Generator().manual_seed(rank)
    loader = DataLoader(TensorDataset(torch.randn(64, 16, generator=generator),
                                      torch.randn(64, 1, generator=generator)), batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def more(steps):
        if args.steps:
            return steps < args.steps
        released = torch.tensor([float(args.release.exists())])
        dist.all_reduce(released, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        return not released.item()

    steps = 0
    while more(steps):
        for inputs, targets in loader:
            torch.nn.functional.mse_loss(model(inputs), targets).backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            if not more(steps):
                break
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    result = {"rank": rank, "steps": steps, "checksum": checksum, "own_hook_calls": calls}
    os.write(1, (json.dumps(result) + "\\n").encode())  # one write: the ranks share the pipe
    dist.destroy_process_group()
""")


@pytest.fixture
def train(tmp_path: Path) -> Path:
    script = tmp_path / "train_ddp.py"
    script.write_text(TRAIN)
    return script


def torchrun(script: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]


@contextlib.contextmanager
def job_group(command: list[str], env: dict[str, str], **options: Any) -> Iterator[subprocess.Popen]:
    """``command`` started as a process group of its own, killed by its PID if still running at the end."""
    job = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**env, "OMP_NUM_THREADS": "1"}, start_new_session=True, **options)
    try:
        yield job
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()


def run_job(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    with job_group(command, env) as job:
        stdout, stderr = job.communicate(timeout=JOB_TIMEOUT_S)
    return subprocess.CompletedProcess(command, job.returncode, stdout, stderr)


def timed_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The environment ``perfwatch monitor`` gives its command, and where the ranks publish."""
    steps = tmp_path / "steps"
    steps.mkdir()
    env = {**os.environ, STEP_DIR_ENV: str(steps), STEP_BUCKETS_ENV: ",".join(map(str, STEP_BUCKETS))}
    install_child_hooks(tmp_path / "hooks", env)
    return env, steps


def collective(text: str) -> dict[tuple[str, str], dict[str, float]]:
    """(rank, host) -> {counter name: value} of the collective counters in one scrape."""
    found: dict[tuple[str, str], dict[str, float]] = {}
    for (name, labels), reading in samples(text).items():
        if name.startswith(("perfwatch_train_collective_", "perfwatch_train_rank_work_")):
            labels = dict(labels)
            found.setdefault((labels["rank"], labels["host"]), {})[name] = reading
    return found


def scraped(job: subprocess.Popen, url: str, condition: Callable[[str], bool]) -> str | None:
    """A scrape of ``url`` that satisfies ``condition``, else None; a job that exited fails the test at once."""
    assert job.poll() is None, f"the job exited ({job.returncode}):\n{job.communicate()[1][-3000:]}"
    try:
        text = scrape(url)
    except OSError:  # not serving yet
        return None
    return text if condition(text) else None


def timed_steps(text: str) -> dict[str, float]:
    return {rank: found["perfwatch_train_collective_steps_total"] for (rank, _), found in collective(text).items()}


def window(first: str, last: str, rank: str, host: str) -> RankWindow:
    """Rank ``rank``'s straggler window between two scrapes of the monitor's exporter."""
    def grown(name: str, **labels: str) -> float:
        return (value(last, name, **labels) or 0.0) - (value(first, name, **labels) or 0.0)

    return RankWindow(rank=rank, host=host,
                      steps=int(grown("perfwatch_train_collective_steps_total", rank=rank, host=host)),
                      work_seconds=grown("perfwatch_train_rank_work_seconds_total", rank=rank, host=host),
                      wait_seconds=grown("perfwatch_train_collective_wait_seconds_total", rank=rank, host=host),
                      phase_seconds={p: grown("perfwatch_train_phase_seconds_total", rank=rank, phase=p) for p in PHASES},
                      timer_steps=int(grown("perfwatch_train_steps_total", rank=rank)))


def test_monitor_exports_each_ranks_collective_timing_of_an_unmodified_torchrun_job(train, tmp_path):
    """Rank 1 is slowed in its forward: besides the collective counters, each rank's own step series (data
    wait and optimizer timed, DDP's wait in backward, the rest in other) let the verdict name rank 1 and
    `other`, the untimed compute where its extra work is."""
    port, release = free_port(), tmp_path / "release"
    command = [sys.executable, "-m", "perfwatch", "monitor", "--port", str(port), "--",
               *torchrun(train, "--release", str(release), "--slow-rank", "1")]
    with job_group(command, dict(os.environ), cwd=tmp_path) as job:
        url = f"http://127.0.0.1:{port}/metrics"
        first = wait_until(lambda: scraped(job, url, lambda t: min(timed_steps(t).values(), default=0) >= 10),
                           timeout=JOB_TIMEOUT_S, what="both ranks' first timed all-reduces")
        before = timed_steps(first)
        later = wait_until(lambda: scraped(job, url, lambda t: all(timed_steps(t).get(r, 0) >= before[r] + 20
                                                                   for r in RANKS)),
                           timeout=60, what="20 more timed all-reduces on each rank")
        release.touch()
        stdout, stderr = job.communicate(timeout=60)
    assert job.returncode == 0, stderr[-3000:]
    assert "collective timing" not in stderr and "failed" not in stderr, stderr[-3000:]  # nothing stepped aside
    assert [r["rank"] for r in ranks_printed(stdout)] == [0, 1]

    host = socket.gethostname()
    start, end = collective(first), collective(later)
    assert set(start) == set(end) == {(rank, host) for rank in RANKS}  # one series per rank, labelled as monitor()'s
    for key in end:
        grown = {name: end[key][name] - start[key][name] for name in end[key]}
        assert grown["perfwatch_train_collective_steps_total"] >= 20, (key, grown)
        assert grown["perfwatch_train_rank_work_seconds_total"] > 0, (key, grown)
        assert grown["perfwatch_train_collective_wait_seconds_total"] > 0, (key, grown)
    assert_promtool_clean(later)
    named = verdict([window(first, later, rank, host) for rank in RANKS])
    assert (named.rank, named.host, named.cause) == ("1", host, "other"), named.says


def test_a_comm_hook_of_the_scripts_own_is_kept_and_the_training_is_unchanged(train, tmp_path):
    (tmp_path / "theirs").mkdir()
    (tmp_path / "ours").mkdir()
    plain = run_job(torchrun(train, "--steps", str(STEPS), "--own-hook"), dict(os.environ))
    env, published_theirs = timed_env(tmp_path / "theirs")
    theirs = run_job(torchrun(train, "--steps", str(STEPS), "--own-hook"), env)
    env, published_ours = timed_env(tmp_path / "ours")
    ours = run_job(torchrun(train, "--steps", str(STEPS)), env)
    for done in (plain, theirs, ours):
        assert done.returncode == 0, done.stderr[-3000:]

    reference = ranks_printed(plain.stdout)
    assert [r["own_hook_calls"] for r in reference] == [STEPS, STEPS]  # one bucket a step: the model is small
    assert ranks_printed(theirs.stdout) == reference  # their hook ran every step and trained the same bits
    assert [r["checksum"] for r in ranks_printed(ours.stdout)] == [r["checksum"] for r in reference]

    assert theirs.stderr.count(UNAVAILABLE) == 2, theirs.stderr[-3000:]  # once per rank
    assert theirs.stderr.count("perfwatch: ") == 2, theirs.stderr[-3000:]
    assert [s.get("collective") for s in read_published(published_theirs) if s.get("steps")] == [None, None]

    assert "perfwatch: " not in ours.stderr, ours.stderr[-3000:]
    timed = sorted((s["collective"] for s in read_published(published_ours) if s.get("steps")),
                   key=lambda c: c["rank"])
    assert [(c["rank"], c["host"], c["steps"]) for c in timed] == [
        (rank, socket.gethostname(), STEPS - 1) for rank in RANKS]  # the first step sets the origin
    assert all(c["work_seconds"] > 0 and c["wait_seconds"] > 0 for c in timed)
