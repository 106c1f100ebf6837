"""scripts/site_scale.py end to end on a tiny generated history: asv's results are written, imported by the
real `perfwatch store import-asv`, published by `perfwatch publish` and by `asv publish`, re-published after
a new commit, and both pages load in Chromium. The numbers at a team's scale are in docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import chromium

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "site_scale.py"


def test_a_tiny_history_is_published_by_both_tools_and_loads_in_the_browser(tmp_path):
    chromium()  # skips where there is no chromium (CI installs it and must run this)
    pytest.importorskip("playwright.sync_api")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--benchmarks", "12", "--runs", "15", "--samples", "3",
                           "--repeat", "1", "--work", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert "published 12 benchmark series" in report["publish"]["said"][0]
    assert len(report["republish"]) == len(report["asv republish"]) == 1
    for step in (report["import"], report["publish"], report["asv publish"], *report["republish"]):
        assert step["seconds"] > 0 and step["peak_rss_mib"] > 0
    assert report["size"]["perfwatch"]["files"] >= 12 + 3 and report["size"]["asv"]["files"] > 0
    assert all(len(times) == 1 and times[0] > 0 for times in report["browser"].values())
    assert "| publish |" in proc.stdout and "| Chromium: summary |" in proc.stdout


def test_a_work_directory_in_use_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "not empty" in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == [
        "keep.txt"]
