"""scripts/straggler_study.py in its smallest configuration: one injected case under ``perfwatch monitor``
and a real Prometheus for a few seconds, one pair of jobs for the hook's overhead; its Markdown table and its
JSON have their shape. Whether the rank is named in time is the study's finding (docs/performance.md), not
this test's: a few seconds on a loaded machine may be too few."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from servers import binary

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "straggler_study.py"
TINY = ["--cases", "data", "--case-seconds", "6", "--pairs", "1", "--steps", "150"]


@pytest.mark.slow
def test_the_tiny_study_prints_a_case_row_and_the_overhead_of_one_pair(tmp_path):
    binary("prometheus")
    done = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--json", str(tmp_path / "study.json")],
                          capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads((tmp_path / "study.json").read_text())
    (case,) = found["cases"]
    assert (case["case"], case["ranks"], case["slowed_rank"], case["expected_cause"]) == ("data", 2, 1, "data_wait")
    assert case["watched_seconds"] >= 6 and isinstance(case["ok"], bool)
    assert case["named_right"] == (case["seconds_to_named"] is not None)
    (pair,) = found["overhead"]["pairs"]
    assert pair["order"] == "AB" and pair["with_s"] > 0 and pair["without_s"] > 0
    assert found["overhead"]["median_ratio"] == pytest.approx(pair["with_s"] / pair["without_s"])

    tables = [[row for row in block.splitlines() if row.startswith("|")] for block in done.stdout.split("\n\n")]
    cases, hook = [table for table in tables if table]
    assert cases[0].startswith("| case | slowed rank | expected cause | named right |")
    assert len(cases) == 3 and cases[2].startswith("| data | 1 | data_wait | ")  # header, rule, the case
    assert cases[2].count("|") == cases[0].count("|")
    assert len(hook) == 3 and hook[0].startswith("| step ms without | step ms with | median ratio")
    assert f"| {found['overhead']['median_ratio']:.4f} |" in hook[2]
