"""`perfwatch run` and its workers killed at random points, by a seeded schedule: kill -9 and kill -TERM
of the runner, and of whichever benchmark worker is running at that moment.

After each kill: no process of the run is left (found by scanning /proc for the marker that every process
of the run inherits from its environment, not by perfwatch's own bookkeeping), and the next run says
what it cleaned up, stores what the killed run finished, and leaves no `perfwatch-*` temp directory
(TMPDIR is the test's own). At the end every stored run reads back, and `perfwatch runs` lists them all.

Then the same faults one at a time, asserted in detail: kill -TERM is Ctrl-C, a worker that ignores SIGTERM
is killed by the next run, and a worker ends itself at its timeout when its runner is stopped.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import run_perfwatch, write_suite

from perfwatch.bench.runner import NOT_RUN
from perfwatch.results import RunRecord

pytestmark = pytest.mark.fault("kills")

MARK_ENV = "FAULT_SUITE_MARK"
SEED = 14
# (what is killed, with which signal): 10 runner kills and 5 worker kills.
SCHEDULE = ([("runner", signal.SIGKILL)] * 5 + [("runner", signal.SIGTERM)] * 5
            + [("worker", signal.SIGKILL)] * 3 + [("worker", signal.SIGTERM)] * 2)
RUN_SECONDS = 2.0  # about how long a whole run of SUITE takes here: kills land anywhere in it

# Three benchmarks; the second starts a child in a session of its own (as torchrun starts its ranks),
# which no process-group kill reaches and which outlives a killed worker.
SUITE = '''
import subprocess, time

def time_first():
    pass
time_first.number = 1
time_first.repeat = 2
time_first.warmup_time = 0

def time_spawns_a_session():
    subprocess.Popen(["sleep", "1000"], start_new_session=True)
    time.sleep(0.2)
time_spawns_a_session.number = 1
time_spawns_a_session.repeat = 3
time_spawns_a_session.warmup_time = 0

def time_last():
    pass
time_last.number = 1
time_last.repeat = 2
time_last.warmup_time = 0
'''


def marked(mark: str) -> list[int]:
    """Live processes whose environment holds the mark (a zombie's environment reads empty)."""
    entry = f"{MARK_ENV}={mark}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if entry in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def workers(mark: str) -> list[int]:
    """The run's perfwatch workers (discovery and benchmarks) alive now."""
    found = []
    for pid in marked(mark):
        try:
            if b"perfwatch.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def gone_within(mark: str, seconds: float) -> list[str]:
    """The marked processes still alive after ``seconds``, each as "pid: command line" (each is killed
    then, and counted once)."""
    deadline = time.monotonic() + seconds
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    named = [f"{pid}: {command_line(pid)}" for pid in left]
    kill_all(left)
    return named


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"


def kill_a_worker(runner: subprocess.Popen, mark: str, sig: int) -> None:
    """Send ``sig`` to the run's worker running now, or else to the next one to start."""
    while runner.poll() is None:
        for pid in workers(mark):
            try:
                os.kill(pid, sig)
                return
            except ProcessLookupError:
                continue
        time.sleep(0.01)


@pytest.fixture
def project(tmp_path: Path):
    """A project directory with its own TMPDIR, and the mark its runs' processes are found by."""
    (tmp_path / "tmp").mkdir()
    mark = f"{os.getpid()}-{time.monotonic_ns()}"
    yield tmp_path, mark
    kill_all(marked(mark))  # a failed test still leaves no process behind


def stored(project: Path) -> list[RunRecord]:
    """Every stored run, read as strict JSON (no NaN or Infinity) and as a results document."""
    def refuse(token: str) -> None:
        raise AssertionError(f"{token} in a results document")

    paths = sorted((project / "results").glob("*.json"))
    for path in paths:
        json.loads(path.read_text(), parse_constant=refuse)
    return [RunRecord.load(path) for path in paths]


@pytest.mark.slow
def test_runner_and_worker_killed_at_random_points_leave_nothing_behind(project, record_property):
    root, mark = project
    write_suite(root / "suites", "kills.py", SUITE)
    env = {"TMPDIR": str(root / "tmp"), MARK_ENV: mark}
    rng = random.Random(SEED)
    schedule = list(SCHEDULE)
    rng.shuffle(schedule)
    orphans, leaked, readable = [], 0, 0
    expected_runs = 0
    for target, sig in schedule:
        proc = subprocess.Popen([sys.executable, "-m", "perfwatch", "run", "--results-dir", "results"], cwd=root,
                                env={**os.environ, "COLUMNS": "200", **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.0, RUN_SECONDS))
        if target == "runner":
            proc.send_signal(sig)
        else:
            kill_a_worker(proc, mark, sig)
        stdout, stderr = proc.communicate(timeout=120)
        orphans += [f"after {target} {signal.Signals(sig).name}: {p}" for p in gone_within(mark, 5.0)]

        # What the killed run leaves to the next: its temp dir (after kill -9, or kill -TERM before
        # perfwatch handles it) and in it a journal of the benchmarks it finished.
        left = list((root / "tmp").glob("perfwatch-*"))
        journaled = any((path / "journal.json").exists() for path in left)
        expected_runs += journaled or "stored what finished as" in stderr or "\nstored " in f"\n{stdout}"
        after = run_perfwatch("run", "--results-dir", "results", "--filter", "first", cwd=root, env=env)
        assert after.returncode == 0, after.stderr
        expected_runs += 1
        noted = "note: cleaned up after" in after.stderr
        assert noted == bool(left) and ("stored what pid" in after.stderr) == journaled, (target, sig, after.stderr)
        leaked += len(list((root / "tmp").iterdir()))
        orphans += [f"after the next run ({target} {signal.Signals(sig).name}): {p}" for p in gone_within(mark, 0)]
        readable += len(stored(root)) == expected_runs

    listed = run_perfwatch("runs", "--results-dir", "results", cwd=root, env=env)
    assert listed.returncode == 0 and "skipping" not in listed.stderr, listed.stderr
    kinds = Counter(f"{target} {signal.Signals(sig).name}" for target, sig in schedule)
    figures = (f"{len(schedule)} kills ({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}, seed {SEED}): "
               f"{len(orphans)} orphans, {leaked} leaked temp dirs, store readable with every run after {readable}"
               f"/{len(schedule)} kills")
    record_property("kill figures", figures)
    assert (orphans, leaked, readable) == ([], 0, len(schedule)), f"{figures}: {orphans}"


# --- one fault at a time ---------------------------------------------------------------------

# After conftest's first benchmark (suites/first.py), which finishes at once, this one starts a child in a
# session of its own and then hangs; it leaves a file when it runs.
HANGING_SUITE = '''
import subprocess, sys, time
from pathlib import Path

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


def hanging(project, hang: str = SLEEPS, timeout: float = 60) -> tuple[Path, dict[str, str]]:
    """The project with HANGING_SUITE after the first benchmark, and the environment its runs get (their
    own TMPDIR, the mark)."""
    root, mark = project
    write_suite(root / "suites", "hangs.py", HANGING_SUITE.format(hang=hang, timeout=timeout))
    return root, {"TMPDIR": str(root / "tmp"), MARK_ENV: mark}


def start(root: Path, env: dict[str, str]) -> subprocess.Popen:
    """`perfwatch run` in the background, to be signalled."""
    return subprocess.Popen([sys.executable, "-m", "perfwatch", "run", "--results-dir", "results"], cwd=root,
                            env={**os.environ, "COLUMNS": "200", **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.05)


def running_second(root: Path, env: dict[str, str]) -> bool:
    """The hanging benchmark is running, and its child too."""
    return (root / "second-ran").exists() and len(marked(env[MARK_ENV])) >= 3  # the runner, the worker, its child


def assert_stopped_during_the_second(run: RunRecord) -> None:
    first, second = run.benchmarks
    assert first.name == "first.time_first" and first.ok and len(first.samples) == 2
    assert second.name == "hangs.time_spawns_and_hangs" and (second.status, second.error) == ("failed", NOT_RUN)


def assert_nothing_left(root: Path, env: dict[str, str]) -> None:
    assert marked(env[MARK_ENV]) == [] and list((root / "tmp").iterdir()) == []


@pytest.mark.usefixtures("first_benchmark")
def test_sigterm_is_ctrl_c_the_workers_die_and_what_finished_is_stored(project):
    root, env = hanging(project)
    proc = start(root, env)
    wait_until(lambda: running_second(root, env), 60, "the second benchmark")
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "perfwatch: interrupted" in stderr, stderr
    assert "stopped after 1 of 2 benchmarks; stored what finished as results/" in stderr
    [run] = stored(root)
    assert_stopped_during_the_second(run)
    assert_nothing_left(root, env)


@pytest.mark.usefixtures("first_benchmark")
def test_the_next_run_cleans_up_after_a_run_killed_with_its_worker_still_running(project):
    # This benchmark ignores SIGTERM, the signal its worker gets when the runner dies:
    # the worker lives on, and the next run is what finds it, by the mark in its environment.
    root, env = hanging(project, hang=IGNORES_SIGTERM)
    proc = start(root, env)
    wait_until(lambda: running_second(root, env), 60, "the second benchmark")
    time.sleep(0.5)  # past signal.signal in the benchmark
    proc.kill()
    proc.communicate(timeout=60)
    [left] = (root / "tmp").iterdir()
    assert len(marked(env[MARK_ENV])) == 2  # the worker, and the child in its own session

    after = run_perfwatch("run", "--results-dir", "results", "--filter", "first", cwd=root, env=env)
    assert after.returncode == 0, after.stderr
    [note] = [line for line in after.stderr.splitlines() if line.startswith("note:")]
    assert note.startswith(f"note: cleaned up after 1 killed perfwatch run: stored what pid {proc.pid} finished "
                           "(1 of 2 benchmarks) as results/"), note
    assert f"removed {left}" in note and note.endswith("killed 2 processes left running")
    assert_nothing_left(root, env)
    killed, last = stored(root)
    assert_stopped_during_the_second(killed)
    assert [b.name for b in last.benchmarks] == ["first.time_first"]


@pytest.mark.usefixtures("first_benchmark")
@pytest.mark.parametrize("hang", [SLEEPS, HOLDS_THE_GIL], ids=["sleeps", "holds-the-gil"])
def test_a_worker_ends_itself_at_its_timeout_when_the_runner_cannot(project, hang):
    # A stopped runner enforces no timeout; the worker's own limit (timeout + 2 s) does, even while
    # the benchmark holds the GIL (then the kernel's SIGALRM, one second later).
    root, env = hanging(project, hang=hang, timeout=1)
    proc = start(root, env)
    wait_until(lambda: running_second(root, env), 60, "the second benchmark")
    [worker] = workers(env[MARK_ENV])
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: worker not in marked(env[MARK_ENV]), 10, "the worker to end itself")
    finally:
        proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "hangs.time_spawns_and_hangs: timed out after 1 s" in stderr, stderr
    assert_nothing_left(root, env)
