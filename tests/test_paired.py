"""Paired runs: a git ref and the working tree measured interleaved in live workers (perfwatch.bench.paired)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers import default_sigint, hung_process_report, write_suite
from servers import wait_until

from perfwatch.bench.paired import run_against
from perfwatch.bench.suite import discover
from perfwatch.errors import UserError
from perfwatch.regress.compare import compare_runs
from perfwatch.stats import median

# The user's code: COST sets how much work one call does; the candidate quadruples it.
WORK = """
COST = {cost}
BROKEN = {broken}
SIDE = {side!r}

def work():
    return sum(range(COST))
"""

SUITE = """
import os
import time
import work

def time_work():
    work.work()
time_work.sample_time = 0.005
time_work.warmup_time = 0.02
time_work.repeat = 10

def time_fragile():
    if work.BROKEN:
        raise RuntimeError("broken in this version")
    work.work()
time_fragile.sample_time = 0.005
time_fragile.warmup_time = 0.02
time_fragile.repeat = 4

def time_hangs_in_the_tree():
    if work.BROKEN:
        time.sleep(600)
    work.work()
time_hangs_in_the_tree.timeout = 3
time_hangs_in_the_tree.warmup_time = 0.02
time_hangs_in_the_tree.repeat = 4

def track_side():
    with open(os.environ["PAIRED_ORDER_LOG"], "a") as log:
        log.write(work.SIDE + "\\n")
    return 1.0
track_side.warmup_time = 0
track_side.repeat = 6
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def commit_all(repo: Path) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "baseline")
    return git(repo, "rev-parse", "HEAD").strip()


def worktrees(repo: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """A committed project, then a working tree that is 4x slower, broken in one benchmark, with one new one."""
    repo = tmp_path_factory.mktemp("project")
    git(repo, "init", "-q")
    (repo / "work.py").write_text(WORK.format(cost=10_000, broken=False, side="ref"))
    write_suite(repo / "suites", "bench_work.py", SUITE)
    commit = commit_all(repo)
    (repo / "work.py").write_text(WORK.format(cost=40_000, broken=True, side="tree"))
    write_suite(repo / "suites", "bench_new.py", "import work\ndef time_new():\n    work.work()\ntime_new.repeat = 3\n")

    order_log = repo.parent / "order.log"
    seen_worktrees: list[list[str]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAIRED_ORDER_LOG", str(order_log))
        baseline, candidate = run_against(
            "HEAD", "quick", repo=repo,
            progress=lambda event, bench, result: seen_worktrees.append(worktrees(repo)),
        )
    return {"repo": repo, "commit": commit, "baseline": baseline, "candidate": candidate,
            "order": order_log.read_text().split(), "worktrees": seen_worktrees}


def result(run, name):
    return next(b for b in run.benchmarks if b.name == name)


def test_the_baseline_runs_ref_and_the_candidate_the_working_tree(project):
    baseline, candidate = project["baseline"], project["candidate"]
    assert baseline.env["git_commit"] == project["commit"] and not baseline.env["git_dirty"]
    assert candidate.env["git_commit"] == project["commit"] and candidate.env["git_dirty"]
    assert baseline.env["paired"] and candidate.env["paired"]
    assert (baseline.env["paired_with"], candidate.env["paired_with"]) == (candidate.run_id, baseline.run_id)
    assert baseline.suite == candidate.suite == "quick"

    before, after = result(baseline, "bench_work.time_work"), result(candidate, "bench_work.time_work")
    assert before.status == after.status == "ok"
    assert len(before.samples) == len(after.samples) == 10
    assert before.number == after.number > 1  # calibrated once, on the baseline: samples are the same work
    assert median(after.samples) > 1.5 * median(before.samples)  # the candidate does 4x the work


def test_the_sides_alternate_sample_by_sample_in_abba_order(project):
    # track_side logs one line per call; it has no warm-up call, so every line is a sample.
    # quick's 4 rounds of fresh processes take 2, 2, 1 and 1 pairs; the side that starts alternates
    assert project["order"] == ["ref", "tree", "tree", "ref", "tree", "ref", "ref", "tree", "ref", "tree", "tree", "ref"]
    baseline_side = result(project["baseline"], "bench_work.track_side")
    assert len(baseline_side.samples) == len(result(project["candidate"], "bench_work.track_side").samples) == 6


def test_a_failure_on_one_side_fails_that_side_only(project):
    before, after = result(project["baseline"], "bench_work.time_fragile"), result(project["candidate"], "bench_work.time_fragile")
    assert before.status == "ok" and len(before.samples) == 4
    assert after.status == "failed" and after.samples == []
    assert after.error.startswith("RuntimeError: broken in this version (bench_work.py:")


def test_a_timeout_on_one_side_times_out_that_side_only(project):
    before = result(project["baseline"], "bench_work.time_hangs_in_the_tree")
    after = result(project["candidate"], "bench_work.time_hangs_in_the_tree")
    assert before.status == "ok" and len(before.samples) == 4
    assert after.status == "timeout" and "timed out after 3 s" in after.error


def test_a_benchmark_only_in_the_working_tree_is_measured_alone(project):
    assert "bench_new.time_new" not in {b.name for b in project["baseline"].benchmarks}
    new = result(project["candidate"], "bench_new.time_new")
    assert new.status == "ok" and len(new.samples) == 3
    assert {v.name: v.verdict for v in compare_runs(project["baseline"], project["candidate"])}["bench_new.time_new"] == "new"


def test_the_worktree_of_ref_is_removed_afterwards(project):
    during = {path for listing in project["worktrees"] for path in listing} - {str(project["repo"])}
    assert len(during) == 1  # one worktree, for REF, while measuring
    assert worktrees(project["repo"]) == [str(project["repo"])]
    assert not Path(during.pop()).exists()


def test_a_bad_ref_or_no_repository_is_one_clear_line(project, tmp_path):
    with pytest.raises(UserError, match=r"'no-such-branch': no such commit") as bad_ref:
        run_against("no-such-branch", "quick", repo=project["repo"])
    assert "\n" not in str(bad_ref.value)
    with pytest.raises(UserError, match="not inside a git repository") as no_repo:
        run_against("HEAD", "quick", repo=tmp_path)
    assert "\n" not in str(no_repo.value)
    assert worktrees(project["repo"]) == [str(project["repo"])]


def test_a_ref_whose_own_perfwatch_cannot_serve_is_refused(tmp_path):
    # The project under test is perfwatch itself, at a commit from before interleaved mode.
    repo = tmp_path / "old-perfwatch"
    write_suite(repo / "perfwatch", "__init__.py", "")
    write_suite(repo / "perfwatch", "worker.py", """
        import sys
        print(f"unknown worker mode {sys.argv[1]!r}", file=sys.stderr)
        sys.exit(2)
    """)
    write_suite(repo / "suites", "bench.py", "def time_nothing():\n    pass\n")
    git(repo, "init", "-q")
    commit_all(repo)
    with pytest.raises(UserError, match=r"HEAD \([0-9a-f]{10}\) predates interleaved mode.*baseline file"):
        run_against("HEAD", "quick", repo=repo)
    assert worktrees(repo) == [str(repo)]


def test_serve_mode_answers_one_request_per_line(tmp_path):
    suite = write_suite(tmp_path, "echo.py", """
        def track_answer():
            print("chatter on stdout must not reach the protocol")
            return 42
    """)
    bench = discover([suite])[0].to_dict()
    budget = {"warmup_time": 0, "sample_time": 0.01, "min_repeat": 1, "max_repeat": 1, "max_time": 1}
    requests = [{"op": "open", "benchmark": bench, "budget": budget}, {"op": "sample"}, {"op": "close"}]
    done = subprocess.run([sys.executable, "-m", "perfwatch.worker", "serve"], capture_output=True, text=True,
                          input="".join(json.dumps(r) + "\n" for r in requests), timeout=60, check=False)
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert replies == [{"serve": 1}, {"status": "ok", "number": 1, "warmup_s": 0.0, "max_samples": None},
                       {"status": "ok", "sample": 42.0}, {"status": "ok"}]
    assert "chatter on stdout" in done.stderr


def test_ctrl_c_kills_the_workers_and_removes_the_worktree(tmp_path):
    repo, pid_file = tmp_path / "project", tmp_path / "benchmark.pid"
    write_suite(repo / "suites", "bench_slow.py", f"""
        import os, time

        def time_slow():
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(600)
        time_slow.number = 1
    """)
    git(repo, "init", "-q")
    commit_all(repo)
    script = f"from pathlib import Path; from perfwatch.bench.paired import run_against; run_against('HEAD', 'quick', repo=Path({str(repo)!r}))"
    runner = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                              preexec_fn=default_sigint)
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=60, what="the benchmark to start")
        benchmark = psutil.Process(int(pid_file.read_text()))
        runner.send_signal(signal.SIGINT)
        try:
            assert "KeyboardInterrupt" in runner.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            pytest.fail(f"run_against still runs 60 s after SIGINT: {hung_process_report(runner.pid)}")
    finally:
        runner.kill()
    benchmark.wait(timeout=10)  # raises TimeoutExpired if it survived
    assert worktrees(repo) == [str(repo)]
