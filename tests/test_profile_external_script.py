"""The pure helpers of scripts/profile_external.py: how a report is judged against a case's truth, how
verdicts are binned for calibration, and the totals against issue #15's targets. The benchmark itself
profiles real training scripts for minutes and is not a test (docs/performance.md has its numbers)."""

from __future__ import annotations

import random

import pytest
from helpers import script_module


@pytest.fixture(scope="module")
def pe():
    with script_module("profile_external") as module:
        yield module


def report(primary, confidence=0.9, findings=(), tried=None):
    return {"bottleneck": {"primary": primary, "confidence": confidence, "shares": {}, "basis": "b"},
            "findings": list(findings), "recommendations": [], **({"try": tried} if tried else {})}


def test_the_iterator_share_decides_the_truth_and_the_cause_is_checked_only_when_input_bound(pe):
    case = pe.Case("d", "", "src", cause="inline_cpu")
    bound = {"id": "input_bound", "evidence": {"cause": "inline_storage"}}
    judged = pe.judge(case, report("data_loading", findings=[bound]),
                      {"data_wait": 6.0, "data_cpu": 5.4, "wall": 10.0, "steps": 50})
    assert (judged["expected"], judged["right"], judged["cause_right"]) == ("data_loading", True, False)
    assert judged["data_cpu_ratio"] == pytest.approx(0.9)
    between = pe.judge(case, report("compute"), {"data_wait": 3.0, "data_cpu": 0.0, "wall": 10.0, "steps": 50})
    assert (between["expected"], between["right"], between["cause_right"]) == (None, None, None)
    quiet = pe.judge(case, report("compute"), {"data_wait": 1.0, "data_cpu": 0.0, "wall": 10.0, "steps": 50})
    assert (quiet["expected"], quiet["right"]) == ("compute", True)


def test_a_failed_command_is_right_only_when_the_report_says_it_failed(pe):
    case = pe.Case("crash", "", "src", primary="unknown", failed=True)
    assert pe.judge(case, report("unknown", 0.0), None)["right"] is False
    said = pe.judge(case, report("unknown", 0.0, [{"id": "command_failed", "evidence": {}}]), None)
    assert said["right"] is True and said["said_failed"] is True


def test_calibration_bins_verdicts_and_leaves_out_unknown_and_unclear(pe):
    results = [{"right": True, "primary": "compute", "confidence": 0.95},
               {"right": False, "primary": "compute", "confidence": 0.92},
               {"right": True, "primary": "data_loading", "confidence": 0.6},
               {"right": True, "primary": "unknown", "confidence": 0.0},
               {"right": None, "primary": "compute", "confidence": 0.3}]
    assert pe.calibration(results) == [("0.5-0.7", 1, 0.6, 1.0), ("0.9-1.0", 2, pytest.approx(0.935), 0.5)]
    table = pe.calibration_table(results)
    assert "| 0.9-1.0 | 2 | 0.94 | 50% |" in table
    error, brier = pe.calibration_scores(results)
    assert error == pytest.approx((1 * 0.4 + 2 * 0.435) / 3)
    assert brier == pytest.approx((0.05 ** 2 + 0.92 ** 2 + 0.4 ** 2) / 3)
    assert f"Expected calibration error {error:.3f}" in table


def test_a_balanced_case_is_judged_by_the_larger_side_and_a_near_tie_is_unclear(pe):
    case = pe.Case("b", "", "src", balanced=True)
    data = pe.judge(case, report("data_loading"), {"data_wait": 5.6, "data_cpu": 5.6, "wall": 10.0, "steps": 9})
    compute = pe.judge(case, report("data_loading"), {"data_wait": 4.5, "data_cpu": 4.5, "wall": 10.0, "steps": 9})
    tie = pe.judge(case, report("compute"), {"data_wait": 5.1, "data_cpu": 5.1, "wall": 10.0, "steps": 9})
    assert (data["expected"], data["right"]) == ("data_loading", True)
    assert (compute["expected"], compute["right"]) == ("compute", False)
    assert (tie["expected"], tie["right"]) == (None, None)


def test_totals_count_kept_slower_tries_and_missing_reports_as_wrong(pe):
    tried = {"verdict": "unclear", "speedup": 0.97, "low": 0.9, "high": 1.05, "pairs": 2, "predicted_at_most": 1.5}
    case = pe.Case("d", "", "src", try_it=True)
    fast = pe.judge(case, report("data_loading", tried={**tried, "knobs": {"num_workers": 1}, "measured": {
        k: tried[k] for k in ("speedup", "low", "high", "pairs")}}), {"data_wait": 7, "data_cpu": 7, "wall": 10})
    lines = pe.totals([fast, {"case": "x", "origin": "built", "error": "no report"}])
    assert lines[0].startswith("- primary right: 1/2 (50%)") and "NOT met" in lines[0]
    assert "1 kept recommendations measured slower" in lines[-1]
    rows = pe.table([fast, {"case": "x", "origin": "built", "error": "no report"}]).splitlines()
    assert "num_workers=1: 0.97x [0.90, 1.05], predicted at most 1.5x, unclear" in rows[2]
    assert rows[3].startswith("| x | built |") and "NO (no report)" in rows[3]


def test_the_stand_ins_have_the_formats_the_examples_read(pe, tmp_path):
    pe.write_wikitext(tmp_path / "wt", random.Random(0), train_tokens=500, other_tokens=100)
    lines = (tmp_path / "wt" / "train.txt").read_text(encoding="utf8").splitlines()
    assert any(line.startswith(" = ") and line.endswith(" = ") for line in lines)
    assert sum(len(line.split()) for line in lines) >= 500
    pe.write_cora(tmp_path / "cora", random.Random(0), nodes=20, features=5, edges=30)
    rows = [line.split("\t") for line in (tmp_path / "cora" / "cora.content").read_text().splitlines()]
    ids = {row[0] for row in rows}
    assert len(rows) == 20 and all(len(row) == 7 and set(row[1:6]) <= {"0", "1"} for row in rows)
    cites = [line.split("\t") for line in (tmp_path / "cora" / "cora.cites").read_text().splitlines()]
    assert len(cites) == 30 and all(a in ids and b in ids for a, b in cites)
