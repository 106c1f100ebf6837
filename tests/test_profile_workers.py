"""``perfwatch profile`` counts as DataLoader workers only the training process's DataLoader workers:
the pids the injected step timing publishes, else the processes py-spy sees in ``_worker_loop``,
else (neither ran) multiprocessing children of the training process. Never a shell, a data generator
run before training, or a helper the script started. Pure rules on literal processes, the
heuristic on a real process tree, and the real command on ``bash -c "gen.py && train.py"``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import run_perfwatch

from perfwatch.monitoring.collector import Collector, ProcessStats
from perfwatch.profile.rows import with_roles
from perfwatch.profile.workers import dataloader_workers, multiprocessing_children

TRAIN_ARGV = ("/usr/bin/python3", "train.py")
SPAWN_ARGV = ("/usr/bin/python3", "-c",
              "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
              "--multiprocessing-fork")


def process(pid: int, ppid: int, *argv: str) -> ProcessStats:
    return ProcessStats(pid, ppid, argv, cpu_seconds_total=0.0, io_read_bytes_total=0, rss_bytes=0, threads=1,
                        involuntary_context_switches_total=0)


# bash -c "python gen.py && python train.py": a shell (10), the generator (11, gone by now in real life,
# here still listed), the training process (12) with two forked DataLoader workers (13, 14), a spawned
# one (15), multiprocessing's resource tracker (16), a forkserver (17) with a worker it forked (18),
# and a helper the script started with subprocess (19).
TREE = {p.pid: p for p in (
    process(10, 1, "bash", "-c", "python gen.py && python train.py"),
    process(11, 10, "/usr/bin/python3", "gen.py"),
    process(12, 10, *TRAIN_ARGV),
    process(13, 12, *TRAIN_ARGV), process(14, 12, *TRAIN_ARGV),
    process(15, 12, *SPAWN_ARGV),
    process(16, 12, "/usr/bin/python3", "-c", "from multiprocessing.resource_tracker import main;main(5)"),
    process(17, 12, "/usr/bin/python3", "-c", "from multiprocessing.forkserver import main; main(8, 9, ['__main__'])"),
    process(18, 17, "/usr/bin/python3", "-c", "from multiprocessing.forkserver import main; main(8, 9, ['__main__'])"),
    process(19, 12, "ffmpeg", "-i", "video.mp4"),
)}


def test_published_pids_win_then_py_spys_then_the_heuristic():
    assert dataloader_workers(12, TREE, published=[14, 13], stacks=[13]) == ((13, 14), "published")
    assert dataloader_workers(12, TREE, published=[], stacks=[13]) == ((), "published")  # no workers at all
    assert dataloader_workers(12, TREE, published=None, stacks=[13, 14]) == ((13, 14), "stacks")
    assert dataloader_workers(12, TREE, published=None, stacks=()) == ((), "stacks")  # py-spy saw none
    assert dataloader_workers(12, TREE, published=None, stacks=None) == ((13, 14, 15, 18), "heuristic")


def test_the_heuristic_takes_multiprocessing_children_of_the_training_process_only():
    assert multiprocessing_children(12, TREE) == (13, 14, 15, 18)
    assert multiprocessing_children(10, TREE) == ()  # the shell's children are not copies of it
    unreadable = {**TREE, 12: process(12, 10), 13: process(13, 12)}  # no command lines (access denied)
    assert 13 not in multiprocessing_children(12, unreadable)


def test_with_roles_sums_the_training_process_its_workers_and_the_rest_keeping_counters_cumulative():
    def row(t, **procs):  # pid -> [cpu, read, rss, threads, involuntary, run delay]
        return {"t": t, "procs": {str(pid[1:]): values for pid, values in procs.items()}}

    rows = [row(0.0, p10=[0.0, 0, 1, 1, 0, 0.0], p11=[0.5, 0, 1, 1, 0, 0.1]),  # the generator runs, no training yet
            row(1.0, p10=[0.0, 0, 1, 1, 0, 0.0], p11=[1.2, 0, 1, 1, 0, 0.2], p12=[0.1, 0, 5, 2, 1, 0.0]),
            row(2.0, p10=[0.0, 0, 1, 1, 0, 0.0], p12=[1.1, 0, 5, 2, 3, 0.2], p13=[0.8, 40, 3, 1, 0, 0.1]),  # gen.py exited
            row(3.0, p10=[0.0, 0, 1, 1, 0, 0.0], p12=[2.1, 0, 5, 2, 5, 0.3])]  # the worker exited
    first, second, third, last = with_roles(rows, main=12, workers=[13])
    assert first["main_cpu"] is None and first["workers"] == 0 and first["other_cpu"] == 0.5
    assert second["main_cpu"] == 0.1 and second["main_threads"] == 2
    assert third["worker_cpu"] == 0.8 and third["workers"] == 1 and third["worker_rss"] == 3
    assert last["worker_cpu"] == 0.8 and last["worker_read"] == 40 and last["workers"] == 0  # kept after it exited
    assert last["other_cpu"] == 1.2 and last["main_involuntary"] == 5
    assert last["main_run_delay"] == 0.3 and last["worker_run_delay"] == 0.1


# A training-like process: two forked children (as a DataLoader's workers with the fork start method)
# and a helper it runs with subprocess.
PARENT = textwrap.dedent("""\
    import multiprocessing, subprocess, sys, time
    if __name__ == "__main__":
        multiprocessing.set_start_method("fork")
        workers = [multiprocessing.Process(target=time.sleep, args=(30,), daemon=True) for _ in range(2)]
        for worker in workers:
            worker.start()
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        print(" ".join(str(p.pid) for p in workers), helper.pid, flush=True)
        time.sleep(30)
""")


def test_the_heuristic_on_a_real_tree_takes_the_forked_children_and_not_a_helper(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        *forked, helper = map(int, parent.stdout.readline().split())
        with Collector(parent.pid, interval=0.1) as collector:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                latest = collector.latest()
                if latest is not None and latest.tree is not None and len(latest.tree.members) == 5 \
                        and latest.seq >= 3:  # the command lines are read on a process's first two samples
                    break
                time.sleep(0.1)
        members = {m.pid: m for m in latest.tree.members}
        assert members[helper].ppid == parent.pid and "time.sleep(30)" in members[helper].cmdline[-1]
        assert multiprocessing_children(parent.pid, members) == tuple(sorted(forked))
    finally:
        for pid in (*forked, helper):
            subprocess.run(["kill", str(pid)], check=False)
        parent.kill()
        parent.wait()


# bash -c "python gen.py && python train.py": the generator burns a core for a second and writes the
# data; the training that follows is compute-bound with num_workers=0 and starts one helper process.
GEN = textwrap.dedent("""\
    import time, torch
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        sum(range(10000))
    torch.save(torch.randn(512, 64), "data.pt")
""")
TRAIN = textwrap.dedent("""\
    import subprocess, sys, time, torch
    from torch.utils.data import DataLoader, TensorDataset
    torch.set_num_threads(1)
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    x = torch.load("data.pt")
    loader = DataLoader(TensorDataset(x, x[:, :1]), batch_size=64, num_workers=int(sys.argv[1]))
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        for xb, yb in loader:
            torch.nn.functional.mse_loss(model(xb), yb).backward()
            optimizer.step()
            optimizer.zero_grad()
    helper.kill()
""")


@pytest.mark.slow
@pytest.mark.parametrize("workers, pyspy, then", [(0, True, ""), (2, True, ""), (2, False, "; echo trained")])
def test_a_generator_run_before_training_and_a_helper_are_not_dataloader_workers(tmp_path, workers, pyspy, then):
    # bash execs the last command of "a && b" itself (train.py then is the launched process, gen.py was its
    # child); with "; echo" after it, train.py is the shell's child, found without py-spy by its timing
    (tmp_path / "gen.py").write_text(GEN)
    (tmp_path / "train.py").write_text(TRAIN)
    out = tmp_path / "out"
    command = f"{sys.executable} gen.py && {sys.executable} train.py {workers}{then}"
    done = run_perfwatch("profile", "--out", str(out), *([] if pyspy else ["--no-pyspy"]), "--", "bash", "-c",
                         command, cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    identified = report["measurements"]["dataloader_workers"]
    assert identified["identified_by"] == "published"  # by the training process itself
    assert (len(identified["pids"]) >= workers) and (workers or not identified["pids"])  # new ones every epoch
    if then:
        assert report["run"]["training_pid"] != report["run"]["launched_pid"]  # train.py, not the shell
    r = report["measurements"]["resources"]
    assert r["workers_max"] == workers and r["main_cpu_cores"] > 0.25  # train.py's own CPU, past its imports
    assert r["other_cpu_cores"] > 0.1  # the generator's second on a core went to the other processes
    if workers == 0:
        assert r["worker_cpu_cores"] is None
        assert "torch_threads" not in [rec["id"] for rec in report["recommendations"]]
