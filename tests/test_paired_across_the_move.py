"""Paired mode against a perfwatch commit from before the package moved into wings.

`ci --against REF` starts the *baseline checkout's own* worker by its module path
(`python -m perfwatch.worker`) when the project under test is perfwatch itself, so the
layout by capability must still talk to a worker of the flat layout, and vice versa.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import run_perfwatch, write_suite

import perfwatch

REPO = Path(perfwatch.__file__).resolve().parent.parent
BEFORE_THE_MOVE = "02cc2110"  # the last commit of the flat package (perfwatch/worker.py held the worker)

TINY_SUITE = """
def time_sum():
    sum(range(2000))
time_sum.sample_time = 0.002
time_sum.warmup_time = 0.01
time_sum.repeat = 20
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _has_history() -> bool:
    done = subprocess.run(["git", "cat-file", "-e", f"{BEFORE_THE_MOVE}^{{commit}}"], cwd=REPO, capture_output=True,
                          check=False)
    return done.returncode == 0


@pytest.mark.skipif(not _has_history(), reason="needs perfwatch's own git history (a clone, not an installed wheel)")
def test_ci_against_a_commit_of_the_flat_layout_runs_its_old_worker(tmp_path):
    clone = tmp_path / "perfwatch"
    subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(REPO), str(clone)], check=True)
    # REF: the flat layout plus a tiny suite; the working tree: the current layout plus the same suite.
    git(clone, "checkout", "-q", BEFORE_THE_MOVE)
    write_suite(clone / "tiny", "bench_tiny.py", TINY_SUITE)
    git(clone, "add", "tiny")
    git(clone, "commit", "-q", "-m", "tiny suite on the flat layout")
    ref = git(clone, "rev-parse", "HEAD")
    assert (clone / "perfwatch" / "worker.py").read_text().count("SERVE_PROTOCOL") >= 1
    git(clone, "checkout", "-q", "--detach", git(REPO, "rev-parse", "HEAD"))
    write_suite(clone / "tiny", "bench_tiny.py", TINY_SUITE)
    assert (clone / "perfwatch" / "bench" / "worker.py").is_file()

    report_dir = tmp_path / "report"
    proc = run_perfwatch("ci", "tiny", "--against", ref, "--suite", "quick", "--report-dir", str(report_dir),
                         cwd=clone, timeout=240)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads((report_dir / "report.json").read_text())
    [verdict] = report["verdicts"]
    assert verdict["name"] == "bench_tiny.time_sum"
    assert verdict["verdict"] in ("unchanged", "too-noisy", "regressed", "improved"), (verdict, proc.stderr)
    listed = subprocess.run(["git", "worktree", "list"], cwd=clone, capture_output=True, text=True, check=True)
    assert listed.stdout.count("\n") == 1
