"""``perfwatch profile -- torchrun ...``: the report of a real 2-rank gloo job (scripts/straggler_study.py's
job, unmodified: rank 1's Dataset sleeps in ``__getitem__``) holds a row per rank and the straggler verdict,
in report.json, report.md and on the terminal; a run that timed no all-reduce has no ``ranks`` at all."""

from __future__ import annotations

import json
import socket
import sys
import textwrap

import pytest
from helpers import run_perfwatch, script_module

from perfwatch.profile.ranks import ranks_section

STEPS = 60
SLOW_MS = 6.0  # rank 1's sleep per batch: several times the whole step of the others


@pytest.fixture(scope="module")
def job_source() -> str:
    with script_module("straggler_study") as study:
        return study.JOB


def profile(tmp_path, *command: str):
    out = tmp_path / "report"
    proc = run_perfwatch("profile", "--no-pyspy", "--out", str(out), "--", *command, cwd=tmp_path,
                         env={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), proc.stderr


@pytest.mark.slow
def test_a_torchrun_jobs_report_has_a_row_per_rank_and_names_the_slowed_rank(tmp_path, job_source):
    job = tmp_path / "job.py"
    job.write_text(job_source)
    report, markdown, stderr = profile(
        tmp_path, sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(job),
        "--steps", str(STEPS), "--slow", "data", "--slow-rank", "1", "--slow-ms", str(SLOW_MS))
    host = socket.gethostname()
    ranks = report["ranks"]
    rows = {row["rank"]: row for row in ranks["rows"]}
    assert [(r["rank"], r["host"], r["steps"], r["collective_steps"]) for r in ranks["rows"]] == [
        ("0", host, STEPS, STEPS - 1), ("1", host, STEPS, STEPS - 1)]  # the first all-reduce sets the origin
    assert all(r["work_seconds_per_step"] > 0 and r["wait_seconds_per_step"] > 0 for r in ranks["rows"])
    assert {"data_wait", "optimizer", "other"} <= set(ranks["phases"])  # what the zero-code timing times
    assert rows["1"]["phase_seconds_per_step"]["data_wait"] > SLOW_MS / 1000 > rows["0"]["phase_seconds_per_step"][
        "data_wait"]
    assert rows["1"]["wait_seconds_per_step"] < rows["0"]["wait_seconds_per_step"]  # the others wait for it
    assert rows["1"]["straggler_score"] > 0.1 > rows["0"]["straggler_score"]
    named = ranks["straggler"]
    assert (named["rank"], named["host"], named["cause"]) == ("1", host, "data_wait"), named["says"]
    assert named["says"].startswith(f"rank 1 (host {host}) is the straggler")

    table = markdown[markdown.index("## Ranks (torchrun)"):]
    assert f"**Straggler:** {named['says']}." in table
    assert "| rank | host | steps | work ms/step | wait ms/step | data_wait ms/step |" in table
    assert table.count(f"| {host} | {STEPS} |") == 2  # rank 0's row and rank 1's
    assert f"perfwatch: ranks: {named['says']}" in stderr


@pytest.mark.slow
def test_a_single_process_runs_report_has_no_ranks(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""\
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        model = torch.nn.Linear(8, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for inputs, targets in DataLoader(TensorDataset(torch.randn(64, 8), torch.randn(64, 1)), batch_size=8):
            torch.nn.functional.mse_loss(model(inputs), targets).backward()
            optimizer.step()
            optimizer.zero_grad()
        """))
    report, markdown, stderr = profile(tmp_path, sys.executable, str(script))
    assert report["steptimer"]["steps"] == 8  # the zero-code timing ran ...
    assert "ranks" not in report and "Ranks" not in markdown and "ranks:" not in stderr  # ... and timed no all-reduce


def test_a_rank_restarted_by_torchrun_adds_up_and_a_summary_without_collective_timing_is_left_out():
    def summary(rank, steps, work, wait, other):
        return {"steps": steps + 1, "totals": {"data_wait": 0.001 * steps, "other": other * steps},
                "collective": {"rank": rank, "host": "n", "steps": steps, "work_seconds": work * steps,
                               "wait_seconds": wait * steps}}

    ranks = ranks_section([summary("1", 10, 0.004, 0.001, 0.004), summary("0", 10, 0.002, 0.003, 0.004),
                           summary("1", 30, 0.004, 0.001, 0.004), {"steps": 5, "totals": {"other": 1.0}}])
    assert [(r["rank"], r["steps"], r["collective_steps"]) for r in ranks["rows"]] == [("0", 11, 10), ("1", 42, 40)]
    assert ranks["rows"][1]["wait_seconds_per_step"] == pytest.approx(0.001)
    # the all-reduce wait is taken out of "other", which holds loss.backward() when backward is not timed
    assert ranks["rows"][0]["phase_seconds_per_step"]["other"] == pytest.approx(0.004 * 10 / 11 - 0.003)
    assert (ranks["straggler"]["rank"], ranks["straggler"]["cause"]) == ("1", "other")
    assert ranks_section([{"steps": 5, "totals": {"other": 1.0}}]) is None
    hooked_late = ranks_section([summary("0", 10, 0.002, 0.003, 0.004), summary("1", 0, 0.0, 0.0, 0.004)])
    assert [(r["rank"], r["work_seconds_per_step"], r["straggler_score"]) for r in hooked_late["rows"]][1] == (
        "1", None, None)  # a rank that timed no all-reduce yet sits out of the verdict
    assert hooked_late["straggler"]["rank"] is None and "a straggler needs 2 or more" in hooked_late["straggler"]["says"]
