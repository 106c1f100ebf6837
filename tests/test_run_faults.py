"""`perfwatch run` when things go wrong around it: the runner killed or stopped, bad benchmark
attributes, a store it cannot write. Nothing measured is lost, no process or temp dir is left.

Every run here gets a temp dir of its own (TMPDIR), so the leftovers counted are this test's only;
every process a run starts carries PERFWATCH_RUN_DIR, which is how the tests find them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import assert_one_line_error, run_perfwatch, write_suite

from perfwatch.bench.runner import NOT_RUN, RUN_DIR_ENV
from perfwatch.results import RunRecord

# The first benchmark finishes at once; the second starts a child in a session of its own (as
# torchrun starts its ranks) and then hangs. Both write a file when they run.
SUITE = '''
import subprocess, sys, time
from pathlib import Path

def time_first():
    Path("first-ran").touch()
time_first.warmup_time = 0
time_first.number = 1
time_first.repeat = 2

def time_spawns_and_hangs():
    Path("second-ran").touch()
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"], start_new_session=True)
    {hang}
time_spawns_and_hangs.number = 1
time_spawns_and_hangs.timeout = {timeout}
'''
SLEEPS = "time.sleep(1000)"
HOLDS_THE_GIL = "import ctypes; ctypes.PyDLL(None).sleep(1000)"  # a C call that keeps the GIL: no Python runs
IGNORES_SIGTERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tmp").mkdir()
    yield tmp_path
    for process in marked(tmp_path / "tmp"):  # a failed test still leaves no process behind
        process.kill()


def suite(project: Path, hang: str = SLEEPS, timeout: float = 60) -> None:
    write_suite(project / "suites", "faults.py", SUITE.format(hang=hang, timeout=timeout))


def env(project: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(project / "tmp"), "COLUMNS": "200"}


def perfwatch(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run_perfwatch(*args, cwd=project, env={"TMPDIR": str(project / "tmp")})


def start(project: Path, *args: str) -> subprocess.Popen:
    """`perfwatch run` in the background, to be signalled."""
    return subprocess.Popen([sys.executable, "-m", "perfwatch", "run", "--results-dir", "results", *args],
                            cwd=project, env=env(project), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def marked(tmp: Path) -> list[psutil.Process]:
    """Live processes of runs whose temp dirs are under ``tmp``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(RUN_DIR_ENV, "").startswith(str(tmp)) and not gone(process):
                found.append(process)
        except psutil.Error:
            continue
    return found


def gone(process: psutil.Process) -> bool:
    """Dead: a zombie too, since its parent may be stopped and unable to reap it."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout``."""
    begun = time.monotonic()
    while not condition():
        if time.monotonic() - begun > timeout:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.05)
    return time.monotonic() - begun


def running_second(project: Path) -> bool:
    """The hanging benchmark is running, and its child too."""
    return (project / "second-ran").exists() and len(marked(project / "tmp")) >= 2


def stored_runs(project: Path) -> list[RunRecord]:
    """Every stored run, each read as strict JSON (no NaN or Infinity) and as a results document."""
    def refuse(token: str) -> None:
        raise AssertionError(f"{token} in a results document")

    paths = sorted((project / "results").glob("*.json"))
    for path in paths:
        json.loads(path.read_text(), parse_constant=refuse)
    return [RunRecord.load(path) for path in paths]


def assert_stopped_during_the_second(run: RunRecord) -> None:
    first, second = run.benchmarks
    assert first.name == "faults.time_first" and first.ok and len(first.samples) == 2
    assert second.name == "faults.time_spawns_and_hangs" and (second.status, second.error) == ("failed", NOT_RUN)


# --- the runner killed or stopped -------------------------------------------------------------

def test_kill_9_and_term_of_the_runner_at_random_points_leave_nothing_behind(project, capsys):
    """Ten runs killed mid-run, by a seeded schedule: 6 kill -9 and 4 kill -TERM, each some time after
    the first benchmark finished (in the second's start-up or while it hangs)."""
    suite(project)
    rng = random.Random(14)
    schedule = [signal.SIGKILL] * 6 + [signal.SIGTERM] * 4
    rng.shuffle(schedule)
    orphans, notes = 0, []
    previous = None
    for sig in schedule:
        proc = start(project)
        wait_until(lambda: list((project / "tmp").glob(f"perfwatch-{proc.pid}-*/journal.json")), 60,
                   "the first benchmark")
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == (-9 if sig == signal.SIGKILL else 130), stderr
        try:
            wait_until(lambda: not marked(project / "tmp"), 5, "the workers to die with the runner")
        except AssertionError:
            left = marked(project / "tmp")
            orphans += len(left)
            for process in left:  # counted once, not again after the next kill
                process.kill()
        # The run before a kill -9 left its temp dir; this one said so and cleaned it up.
        notes.append(("cleaned up after 1 killed perfwatch run" in stderr) == (previous == signal.SIGKILL))
        previous = sig
    last = perfwatch(project, "run", "--results-dir", "results", "--filter", "first")
    assert last.returncode == 0, last.stderr
    notes.append(("cleaned up after 1 killed perfwatch run" in last.stderr) == (previous == signal.SIGKILL))

    leaked = list((project / "tmp").iterdir())
    runs = stored_runs(project)
    killed = [r for r in runs if len(r.benchmarks) == 2]
    for run in killed:
        assert_stopped_during_the_second(run)
    with capsys.disabled():
        print(f"\n{len(schedule)} kills ({schedule.count(signal.SIGKILL)} -9, {schedule.count(signal.SIGTERM)} -TERM): "
              f"{orphans} orphans, {len(leaked)} leaked temp dirs, {len(killed)}/{len(schedule)} killed runs readable")
    assert (orphans, leaked, len(killed), len(runs)) == (0, [], len(schedule), len(schedule) + 1)
    assert all(notes), notes


def test_sigterm_is_ctrl_c_the_workers_die_and_what_finished_is_stored(project):
    suite(project)
    proc = start(project)
    wait_until(lambda: running_second(project), 60, "the second benchmark")
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "perfwatch: interrupted" in stderr, stderr
    assert "stopped after 1 of 2 benchmarks; stored what finished as results/" in stderr
    [run] = stored_runs(project)
    assert_stopped_during_the_second(run)
    assert marked(project / "tmp") == [] and list((project / "tmp").iterdir()) == []


def test_the_next_run_cleans_up_after_a_run_killed_with_its_worker_still_running(project):
    # This benchmark ignores SIGTERM, the signal its worker gets when the runner dies:
    # the worker lives on, and the next run is what finds it, by the mark in its environment.
    suite(project, hang=IGNORES_SIGTERM)
    proc = start(project)
    wait_until(lambda: running_second(project), 60, "the second benchmark")
    time.sleep(0.5)  # past signal.signal in the benchmark
    proc.kill()
    proc.communicate(timeout=60)
    [left] = (project / "tmp").iterdir()
    assert len(marked(project / "tmp")) == 2  # the worker, and the child in its own session

    after = perfwatch(project, "run", "--results-dir", "results", "--filter", "first")
    assert after.returncode == 0, after.stderr
    [note] = [line for line in after.stderr.splitlines() if line.startswith("note:")]
    assert note.startswith(f"note: cleaned up after 1 killed perfwatch run: stored what pid {proc.pid} finished "
                           "(1 of 2 benchmarks) as results/"), note
    assert f"removed {left}" in note and note.endswith("killed 2 processes left running")
    assert marked(project / "tmp") == [] and list((project / "tmp").iterdir()) == []
    killed, last = stored_runs(project)
    assert_stopped_during_the_second(killed)
    assert [b.name for b in last.benchmarks] == ["faults.time_first"]


@pytest.mark.parametrize("hang", [SLEEPS, HOLDS_THE_GIL], ids=["sleeps", "holds-the-gil"])
def test_a_worker_ends_itself_at_its_timeout_when_the_runner_cannot(project, hang):
    # A stopped runner enforces no timeout; the worker's own limit (timeout + 2 s) does, even while
    # the benchmark holds the GIL (then the kernel's SIGALRM, one second later).
    suite(project, hang=hang, timeout=1)
    proc = start(project)
    wait_until(lambda: running_second(project), 60, "the second benchmark")
    worker = next(p for p in marked(project / "tmp") if "perfwatch.worker" in " ".join(p.cmdline()))
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: gone(worker), 10, "the worker to end itself")
    finally:
        proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "faults.time_spawns_and_hangs: timed out after 1 s" in stderr, stderr
    assert marked(project / "tmp") == [] and list((project / "tmp").iterdir()) == []


# --- benchmark attributes, checked before anything runs -------------------------------------

@pytest.mark.parametrize(
    "attribute, shown",
    [
        ('timeout = "abc"', "timeout = 'abc' is not valid; it must be a number of seconds > 0"),
        ("timeout = -1", "timeout = -1 is not valid"),
        ("number = -5", "number = -5 is not valid; it must be a whole number of calls per sample"),
        ("repeat = (0, 0, 0)", "repeat = (0, 0, 0) is not valid; it must be a whole number of samples"),
        ("repeat = 2.5", "repeat = 2.5 is not valid"),
        ('warmup_time = float("nan")', "warmup_time = nan is not valid"),
        ("unit = 3", "unit = 3 is not valid"),
        ('sizes = "ci"', "sizes = 'ci' is not valid; it must be a list of suite sizes out of quick, ci, full"),
        ("params = [[1, 2], 3]", "params = [[1, 2], 3] is not valid"),
    ],
)
def test_a_bad_attribute_is_refused_before_anything_runs(project, attribute, shown):
    suite(project)
    write_suite(project / "suites", "later.py", f"def time_bad():\n    pass\ntime_bad.{attribute}\n")
    proc = perfwatch(project, "run", "--results-dir", "results")
    assert_one_line_error(proc, f"later.py: benchmark later.time_bad: {shown}")
    assert not (project / "first-ran").exists() and not list((project / "results").glob("*.json"))


def test_nan_and_inf_parameters_and_results_make_a_valid_stored_run(project):
    write_suite(project / "suites", "odd.py", '''
        def time_scaled(factor):
            pass
        time_scaled.params = [1.0, float("nan"), float("inf")]
        time_scaled.param_names = ["factor"]
        time_scaled.warmup_time = 0
        time_scaled.repeat = 2

        def track_infinite():
            return float("inf")
    ''')
    proc = perfwatch(project, "run", "--results-dir", "results", "--json")
    assert proc.returncode == 3, proc.stderr  # the track benchmark failed; the rest is stored
    [run] = stored_runs(project)
    by_name = {b.name: b for b in run.benchmarks}
    nan = by_name["odd.time_scaled(factor=nan)"]  # the name keeps what the suite wrote
    assert nan.ok and nan.params == {"factor": "nan"}
    assert by_name["odd.time_scaled(factor=inf)"].params == {"factor": "inf"}
    assert by_name["odd.time_scaled(factor=1.0)"].params == {"factor": 1.0}
    infinite = by_name["odd.track_infinite"]
    assert infinite.status == "failed" and "returned inf; it must return a finite number" in infinite.error
    assert json.loads(proc.stdout) == json.loads(next((project / "results").glob("*.json")).read_text())


def test_asv_forms_of_the_attributes_are_accepted(project):
    write_suite(project / "suites", "forms.py", '''
        def time_fixed_repeat():
            pass
        time_fixed_repeat.repeat = 3
        time_fixed_repeat.number = 0      # asv: calibrate
        time_fixed_repeat.warmup_time = -1  # asv: the default

        def time_repeat_range():
            pass
        time_repeat_range.repeat = (2, 4, 0.0)  # (min_repeat, max_repeat, max_time): min_repeat once max_time passed
        time_repeat_range.timeout = 30

        def time_default_repeat():
            pass
        time_default_repeat.repeat = 0
    ''')
    proc = perfwatch(project, "run", "--results-dir", "results")
    assert proc.returncode == 0, proc.stderr
    [run] = stored_runs(project)
    samples = {b.name: len(b.samples) for b in run.benchmarks}
    assert samples["forms.time_fixed_repeat"] == 3 and samples["forms.time_repeat_range"] == 2
    assert samples["forms.time_default_repeat"] >= 5  # the quick suite's min_repeat


# --- a store it cannot write, found before the suite runs ---------------------------------------

def test_a_store_directory_that_is_a_file_is_refused_before_anything_runs(project):
    suite(project)
    (project / "results").write_text("a file where the results directory should be")
    proc = perfwatch(project, "run", "--store", "results")
    assert_one_line_error(proc, "results: cannot write results (results is a file, not a directory); "
                                "pass a writable results directory (--store)")
    assert not (project / "first-ran").exists()


def test_ci_refuses_a_report_dir_it_cannot_write_before_anything_runs(project):
    suite(project)
    (project / "occupied").write_text("a file")
    proc = perfwatch(project, "ci", "--against", "HEAD", "--report-dir", "occupied/reports")
    assert_one_line_error(proc, "occupied/reports: cannot write reports (occupied is a file, not a directory)",
                          "(--report-dir)")
    assert not (project / "first-ran").exists()


def test_a_results_dir_under_a_file_is_refused_before_anything_runs(project):
    suite(project)
    (project / "occupied").write_text("a file")
    proc = perfwatch(project, "run", "--results-dir", "occupied/results")
    assert_one_line_error(proc, "occupied/results: cannot write results (occupied is a file, not a directory)")
    assert not (project / "first-ran").exists()


def test_a_results_dir_on_a_read_only_file_system_is_refused_before_anything_runs(project):
    # Permission bits do not stop root; a read-only mount does. The mount is made in a mount
    # namespace of the perfwatch process's own (unshare), so nothing outside it sees it.
    suite(project, timeout=1)
    (project / "ro").mkdir()
    mount = shutil.which("unshare") and subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {project / 'ro'}"], capture_output=True)
    if not mount or mount.returncode != 0:
        pytest.skip("cannot mount a read-only file system here (needs unshare and CAP_SYS_ADMIN)")
    command = (f"mount -t tmpfs -o ro tmpfs ro && exec {sys.executable} -m perfwatch run --results-dir ro/results")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", command], cwd=project, env=env(project),
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "ro/results: cannot write results (Read-only file system)")
    assert not (project / "first-ran").exists()
