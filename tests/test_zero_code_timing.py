"""Zero-code step timing: an unmodified training script, run by ``perfwatch monitor``, gets exact
steps, step time and data wait as ``perfwatch_train_*`` series, without a StepTimer.

The unit-ish tests run a real tiny torch loop (tests/zoo-like, written here) in a child
process under the injected sitecustomize and read what it published; the last runs the
real ``perfwatch monitor -- python train.py`` scraped by a real Prometheus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from grafana_dashboards import prometheus_config
from helpers import run_perfwatch
from servers import Prometheus, free_port

from perfwatch.monitoring.metrics import STEP_BUCKETS
from perfwatch.monitoring.step_timing import ENABLE_ENV, STEP_BUCKETS_ENV, STEP_DIR_ENV, install_child_hooks

# An unmodified script: a DataLoader whose dataset sleeps 4 ms per batch of 8, SGD, and options
# for gradient accumulation (--accumulate N), a second optimizer (--two-optimizers), perfwatch's
# own StepTimer (--steptimer), DataLoader workers (--workers N), LBFGS with a closure (--lbfgs)
# and float64 (--double). It prints its final loss, exactly.
TRAIN = textwrap.dedent("""\
    import argparse, time
    import torch
    from torch.utils.data import DataLoader, Dataset

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--two-optimizers", action="store_true")
    parser.add_argument("--steptimer", action="store_true")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--lbfgs", action="store_true")
    parser.add_argument("--double", action="store_true")
    args = parser.parse_args()
    dtype = torch.float64 if args.double else torch.float32

    class Slow(Dataset):
        def __len__(self):
            return 64
        def __getitem__(self, i):
            if i % 8 == 0:
                time.sleep(0.004)
            g = torch.Generator().manual_seed(i)
            return torch.randn(4, generator=g, dtype=dtype), torch.randn(1, generator=g, dtype=dtype)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).to(dtype)
    groups = [model[0].parameters(), model[2].parameters()] if args.two_optimizers else [model.parameters()]
    optimizers = [torch.optim.SGD(params, lr=0.05) for params in groups]
    loader = DataLoader(Slow(), batch_size=8, num_workers=args.workers)
    if args.lbfgs:
        lbfgs = torch.optim.LBFGS(model.parameters(), max_iter=4)
        def loss_of(x, y):  # LBFGS calls it several times a step
            lbfgs.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            return loss.backward() or loss
        for x, y in loader:
            lbfgs.step(lambda: loss_of(x, y))
        raise SystemExit(0)
    if args.steptimer:
        from perfwatch import StepTimer
        loader = StepTimer().iter(loader)
    deadline = time.time() + args.seconds
    while True:
        for i, (x, y) in enumerate(loader):
            torch.nn.functional.mse_loss(model(x), y).backward()
            if (i + 1) % args.accumulate == 0:
                for opt in optimizers:
                    opt.step()
                    opt.zero_grad()
        if time.time() >= deadline:
            break
    print(repr(float(torch.nn.functional.mse_loss(model(torch.ones(2, 4, dtype=dtype)), torch.zeros(2, 1, dtype=dtype)).detach())))
""")


@pytest.fixture
def train(tmp_path: Path) -> Path:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    return script


def run_timed(script: Path, tmp_path: Path, *args: str, enabled: bool = True) -> tuple[str, list[dict]]:
    """Run ``script`` under the child hooks as ``perfwatch monitor`` does; its stdout and what it published."""
    steps = tmp_path / "steps"
    steps.mkdir(exist_ok=True)
    env = {**os.environ, STEP_DIR_ENV: str(steps), STEP_BUCKETS_ENV: ",".join(map(str, STEP_BUCKETS))}
    install_child_hooks(tmp_path / "hooks", env)
    env[ENABLE_ENV] = "1" if enabled else "0"
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "perfwatch" not in done.stderr  # no warning: the timing did not step aside
    return done.stdout, [json.loads(p.read_text()) for p in sorted(steps.glob("steptimer-*.json"))]


def test_each_optimizer_step_is_a_step_and_the_loaders_next_is_its_data_wait(train, tmp_path):
    _, [summary] = run_timed(train, tmp_path)
    assert (summary["steps"], summary["samples"]) == (8, 64)
    # 8 batches, each waiting >= 4 ms in the dataset: data wait is measured, not estimated
    assert summary["totals"]["data_wait"] >= 8 * 0.004
    assert summary["totals"]["optimizer"] > 0
    assert sum(summary["buckets"]) == 8 and summary["last_step_unix"] is not None


def test_gradient_accumulation_makes_one_step_of_several_batches(train, tmp_path):
    _, [summary] = run_timed(train, tmp_path, "--accumulate", "4")
    assert (summary["steps"], summary["samples"]) == (2, 64)
    assert summary["totals"]["data_wait"] >= 8 * 0.004


def test_two_optimizers_stepping_in_one_iteration_make_one_step(train, tmp_path):
    _, [summary] = run_timed(train, tmp_path, "--two-optimizers")
    assert summary["steps"] == 8


def test_the_injected_timing_does_not_change_what_the_script_computes(train, tmp_path):
    (tmp_path / "timed").mkdir()
    (tmp_path / "untimed").mkdir()
    timed, _ = run_timed(train, tmp_path / "timed", "--accumulate", "2")
    untimed, published = run_timed(train, tmp_path / "untimed", "--accumulate", "2", enabled=False)
    assert published == []
    assert timed == untimed


def test_a_script_with_its_own_steptimer_is_not_timed_twice(train, tmp_path):
    _, published = run_timed(train, tmp_path, "--steptimer")
    assert published == []


def test_it_publishes_the_dataloader_workers_pids_and_the_models_dtype(train, tmp_path):
    _, [summary] = run_timed(train, tmp_path, "--workers", "2")
    assert len(summary["dataloader_worker_pids"]) == 2 and os.getpid() not in summary["dataloader_worker_pids"]
    assert summary["exact_phases"] == ["data_wait", "optimizer"] and summary["closure_steps"] == 0
    assert summary["model"] == {"dtype": "float32", "device": "cpu", "cuda_capability": None, "optimizer": "SGD"}
    (tmp_path / "inline").mkdir()
    _, [inline] = run_timed(train, tmp_path / "inline", "--double")
    assert inline["dataloader_worker_pids"] == [] and inline["model"]["dtype"] == "float64"


def test_an_optimizer_closure_is_not_timed_as_the_optimizer(train, tmp_path):
    # LBFGS runs forward and backward inside step(closure): that time is left to py-spy's attribution
    _, [summary] = run_timed(train, tmp_path, "--lbfgs")
    assert summary["steps"] == 8 and summary["closure_steps"] == 8
    assert summary["totals"]["optimizer"] == 0 and summary["exact_phases"] == ["data_wait"]
    assert summary["model"]["optimizer"] == "LBFGS"


# A script on a GPU that is always behind the host: the machine has none, so the test stands in for
# CUDA's events (never done until waited for), which is all a StepTimer in events mode asks of it.
BEHIND_GPU = textwrap.dedent("""\
    import time
    import torch

    class Event:
        def __init__(self, enable_timing=False):
            self.at, self.done = None, False
        def record(self, stream=None):
            self.at = time.perf_counter()
        def query(self):
            return self.done
        def synchronize(self):
            self.done = True
        def elapsed_time(self, end):
            return (end.at - self.at) * 1000.0

    torch.cuda.is_available = torch.cuda.is_initialized = lambda: True
    torch.cuda.Event, torch.cuda.current_stream = Event, lambda index=None: None
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=8):
        model(x).sum().backward()
        optimizer.step()
""")


def test_steps_whose_gpu_events_are_still_in_flight_at_exit_are_counted(tmp_path):
    script = tmp_path / "gpu.py"
    script.write_text(BEHIND_GPU)
    _, [summary] = run_timed(script, tmp_path)
    assert summary["mode"] == "events" and summary["pending"] == 0
    assert summary["steps"] == 8 and summary["samples"] == 64  # the last steps too, not only those the GPU finished


def test_profile_gets_exact_steps_and_data_wait_of_an_unmodified_script(train, tmp_path):
    out = tmp_path / "out"
    done = run_perfwatch("profile", "--no-pyspy", "--out", str(out), "--", sys.executable, str(train),
                         "--accumulate", "2", cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["steptimer"]["steps"] == 4 and report["steptimer"]["samples"] == 64
    assert report["steptimer"]["totals"]["data_wait"] >= 8 * 0.004


@pytest.mark.slow
def test_monitor_exports_steps_step_time_and_data_wait_of_an_unmodified_script_to_prometheus(train, tmp_path):
    port = free_port()
    with Prometheus(tmp_path / "prometheus", prometheus_config([f"127.0.0.1:{port}"])) as prometheus:
        done = run_perfwatch("monitor", "--port", str(port), "--", sys.executable, str(train), "--seconds", "12",
                             cwd=tmp_path, timeout=180)
        assert done.returncode == 0, done.stderr
        assert "no training steps were measured" not in done.stderr

        def peak(expr: str) -> float:
            series = prometheus.query(f"max_over_time(({expr})[2m:1s])")
            assert series, f"Prometheus has no {expr}"
            return float(series[0]["value"][1])

        assert peak("perfwatch_train_steps_total") >= 8
        assert peak("perfwatch_train_step_duration_seconds_count") == peak("perfwatch_train_steps_total")
        assert peak("perfwatch_train_step_duration_seconds_sum") > 0
        assert peak('perfwatch_train_phase_seconds_total{phase="data_wait"}') > 0
        assert peak("perfwatch_train_samples_total") == 8 * peak("perfwatch_train_steps_total")
        assert peak("perfwatch_train_last_step_timestamp_seconds") > 0


def test_monitor_says_so_when_a_script_has_no_steps_to_measure(tmp_path):
    done = run_perfwatch("monitor", "--port", "0", "--", sys.executable, "-c", "import torch", cwd=tmp_path,
                         timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no training steps were measured") == 1


def test_a_torchrun_jobs_ranks_are_exported_apart_with_ddps_wait_in_backward(tmp_path):
    """What two ranks published (literal summaries, as step_timing writes them): one series per rank, and
    the all-reduce wait that the rank's collective timing measured counted in backward, not in other."""
    from perfwatch.monitoring.metrics import PublishedTraining

    def summary(rank, other, wait):
        return {"steps": 10, "samples": 80, "wall": 1.0, "bucket_bounds": list(STEP_BUCKETS),
                "buckets": [10] + [0] * len(STEP_BUCKETS), "last_step_unix": 1.0e9,
                "totals": {"data_wait": 0.2, "optimizer": 0.1, "other": other}, "rank": rank,
                "collective": {"rank": rank, "host": "h", "steps": 9, "work_seconds": 0.6, "wait_seconds": wait}}

    for rank, other, wait in (("0", 0.7, 0.3), ("1", 0.7, 0.05)):
        (tmp_path / f"steptimer-{rank}.json").write_text(json.dumps(summary(rank, other, wait)))
    (tmp_path / "steptimer-9.json").write_text(json.dumps({"steps": 4, "wall": 0.5, "totals": {"other": 0.5}}))
    found = {(s.name, frozenset(s.labels.items())): s.value
             for family in PublishedTraining(tmp_path).families() if family for s in family.samples}

    def phase(rank, name):
        return found[("perfwatch_train_phase_seconds_total", frozenset({"rank": rank, "phase": name}.items()))]

    assert found[("perfwatch_train_steps_total", frozenset({"rank": "0"}.items()))] == 10 + 4  # outside torchrun: "0"
    assert found[("perfwatch_train_steps_total", frozenset({"rank": "1"}.items()))] == 10
    assert (phase("0", "backward"), phase("0", "other")) == (0.3, pytest.approx(0.4 + 0.5))
    assert (phase("1", "backward"), phase("1", "other")) == (0.05, pytest.approx(0.65))
    assert phase("1", "data_wait") == 0.2 and phase("1", "forward") == 0.0
