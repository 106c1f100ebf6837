"""The runner measures each benchmark in its own process and records failures instead of stopping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers import TREE_CHILD, write_suite

from perfwatch.bench.runner import busy_warning, discover, kill_tree, run_suite, select
from perfwatch.errors import UserError

SUITE = '''
import os, signal, time

class Sums:
    params = [[1000, 2000], ["list"]]
    param_names = ["n", "container"]

    def setup(self, n, container):
        self.data = list(range(n))

    def time_sum(self, n, container):
        sum(self.data)

    def track_length(self, n, container):
        return len(self.data)
    track_length.unit = "items"
    track_length.higher_is_better = True

    def peakmem_buffer(self, n, container):
        bytearray(n * 20_000)

class OnlyInCI:
    sizes = ("ci", "full")
    def time_nothing(self):
        pass

def time_step():
    time.sleep(0.002)
time_step.number = 1

def time_raises():
    raise ValueError("the benchmark broke")

def time_hangs():
    time.sleep(600)
time_hangs.timeout = 3

def time_crashes():
    os.kill(os.getpid(), signal.SIGKILL)

def time_out_of_memory():
    bytearray(1 << 50)

def setup_skip():
    raise NotImplementedError("needs a GPU")

def time_gpu_only():
    pass
time_gpu_only.setup = setup_skip

def track_not_a_number():
    return "fast"
'''


@pytest.fixture
def suite_dir(tmp_path: Path) -> Path:
    write_suite(tmp_path / "suites", "demo.py", SUITE)
    return tmp_path / "suites"


def by_name(run, name):
    return next(b for b in run.benchmarks if b.name == name)


def test_discovery_expands_params_and_reads_asv_attributes(suite_dir):
    benchmarks = {b.name: b for b in discover([suite_dir], "quick")}
    assert "demo.Sums.time_sum(n=1000, container='list')" in benchmarks
    assert "demo.Sums.time_sum(n=2000, container='list')" in benchmarks
    track = benchmarks["demo.Sums.track_length(n=2000, container='list')"]
    assert (track.kind, track.unit, track.higher_is_better, track.params) == ("track", "items", True, {"n": 2000, "container": "list"})
    assert benchmarks["demo.time_hangs"].timeout == 3
    assert benchmarks["demo.OnlyInCI.time_nothing"].sizes == ("ci", "full")


def test_suite_size_and_filter_select_benchmarks(suite_dir):
    benchmarks = discover([suite_dir], "quick")
    assert not any("OnlyInCI" in b.name for b in select(benchmarks, "quick"))
    assert any("OnlyInCI" in b.name for b in select(benchmarks, "ci"))
    assert [b.name for b in select(benchmarks, "quick", r"track_length\(n=1000")] == [
        "demo.Sums.track_length(n=1000, container='list')"
    ]
    with pytest.raises(UserError, match="invalid regular expression"):
        select(benchmarks, "quick", "(")


def test_measurements_keep_raw_samples(suite_dir):
    chosen = select(discover([suite_dir], "quick"), "quick", r"Sums|time_step")
    run = run_suite(chosen, "quick")
    assert all(b.status == "ok" for b in run.benchmarks), [(b.name, b.error) for b in run.benchmarks]

    timed = by_name(run, "demo.Sums.time_sum(n=2000, container='list')")
    assert len(timed.samples) >= 5 and timed.number > 1  # calibrated: one sample is many calls
    assert all(0 < s < 0.01 for s in timed.samples)

    step = by_name(run, "demo.time_step")
    assert step.number == 1 and all(s >= 0.002 for s in step.samples)

    assert by_name(run, "demo.Sums.track_length(n=1000, container='list')").samples[0] == 1000.0

    small = by_name(run, "demo.Sums.peakmem_buffer(n=1000, container='list')")
    large = by_name(run, "demo.Sums.peakmem_buffer(n=2000, container='list')")
    # 20 MB more per call: the peak mark is reset before each sample, so the difference shows.
    assert min(large.samples) - min(small.samples) > 15e6


def test_failures_are_recorded_with_one_line_reasons_and_the_run_goes_on(suite_dir):
    chosen = select(discover([suite_dir], "quick"), "quick", r"raises|hangs|crashes|out_of_memory|gpu_only|not_a_number|time_step")
    run = run_suite(chosen, "quick")
    results = {b.name.split(".")[-1]: b for b in run.benchmarks}
    assert results["time_raises"].status == "failed"
    assert results["time_raises"].error.startswith("ValueError: the benchmark broke (demo.py:")
    assert results["time_hangs"].status == "timeout" and "timed out after 3 s" in results["time_hangs"].error
    assert results["time_crashes"].status == "failed" and "SIGKILL" in results["time_crashes"].error
    assert results["time_out_of_memory"].error.startswith("MemoryError")
    assert (results["time_gpu_only"].status, results["time_gpu_only"].error) == ("skipped", "needs a GPU")
    assert "must return a finite number" in results["track_not_a_number"].error
    assert results["time_step"].status == "ok"  # ran after all the failures
    assert all("\n" not in (b.error or "") for b in run.benchmarks)
    assert {b.name for b in run.failed} == {f"demo.{n}" for n in ("time_raises", "time_hangs", "time_crashes", "time_out_of_memory", "track_not_a_number")}


def test_a_broken_suite_file_is_named_with_its_line(tmp_path):
    write_suite(tmp_path, "broken.py", "def time_x(:\n    pass\n")
    with pytest.raises(UserError, match=r"broken.py:1: syntax error"):
        discover([tmp_path], "quick")
    write_suite(tmp_path / "other", "imports.py", "import not_a_module_anywhere\n")
    with pytest.raises(UserError, match=r"imports.py:1: importing the suite failed: ModuleNotFoundError"):
        discover([tmp_path / "other"], "quick")


def test_a_timeout_kills_descendants_in_other_sessions(tmp_path):
    # torchrun starts ranks in sessions of their own; killing the process group misses them.
    pid_file = tmp_path / "grandchild.pid"
    write_suite(tmp_path / "suites", "spawner.py", f'''
import subprocess, sys, time

def time_spawns_and_hangs():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    open({str(pid_file)!r}, "w").write(str(child.pid))
    time.sleep(600)
time_spawns_and_hangs.timeout = 3
''')
    run = run_suite(discover([tmp_path / "suites"], "quick"), "quick")
    assert run.benchmarks[0].status == "timeout"
    grandchild = psutil.Process(int(pid_file.read_text()))
    grandchild.wait(timeout=5)  # raises TimeoutExpired if it survived


def test_kill_tree_kills_a_child_that_leads_no_group_and_its_children():
    process = subprocess.Popen([sys.executable, "-c", TREE_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "ready"
    children = psutil.Process(process.pid).children(recursive=True)
    kill_tree(process.pid)  # same process group as pytest: only the tree may die
    assert process.wait(30) == -9
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive


def test_a_busy_machine_is_called_out():
    assert busy_warning(load=0.3, cores=2) is None
    assert "load 1.5 on 2 cores" in busy_warning(load=1.5, cores=2)
