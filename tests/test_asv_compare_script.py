"""The pure helpers of scripts/asv_compare.py: how asv's combinations are named and matched, which
benchmarks are picked, and how the ratios are summarised. The comparison itself runs real asv and
perfwatch over public suites and is too slow for the test suite (docs/performance.md has its numbers)."""

from __future__ import annotations

import re

import pytest
from helpers import script_module


@pytest.fixture(scope="module")
def ac():
    with script_module("asv_compare") as module:
        yield module


def test_combinations_are_labelled_in_asvs_index_order(ac):
    entry = {"name": "m.C.time_x", "params": [["'a'", "'b'"], ["1", "2", "3"]]}
    labels = ac.asv_labels(entry)
    assert labels[0] == "m.C.time_x('a', 1)" and labels[1] == "m.C.time_x('a', 2)" and labels[3] == "m.C.time_x('b', 1)"
    assert len(labels) == 6
    assert ac.asv_labels({"name": "m.time_y", "params": []}) == ["m.time_y"]


def test_the_selection_regex_takes_one_benchmark_with_all_its_combinations_and_no_other(ac):
    pattern = re.compile(ac.selection_regex("m.C.time_x"))
    assert pattern.search("m.C.time_x")  # asv's plain name
    assert pattern.search("m.C.time_x('a', 1)")  # asv's combination label
    assert pattern.search("m.C.time_x(kind='a', n=1)")  # perfwatch's name
    for other in ("m.C.time_x2", "m.C.time_xy(1)", "mmC.time_x", "n.m.C.time_x"):
        assert not pattern.search(other), other


def test_each_module_gives_evenly_spread_small_benchmarks_or_its_smallest(ac):
    combos = {f"a.t{i}": 1 for i in range(7)} | {"b.big": 50, "b.mid": 9, "c.huge": 100, "d.one": 2}
    picked = ac.spread_pick(combos, per_module=3, max_combos=6)
    assert [n for n in picked if n.startswith("a.")] == ["a.t0", "a.t3", "a.t6"]
    assert "b.mid" in picked and "b.big" not in picked  # no small one: the smallest, within twice the cap
    assert not any(n.startswith("c.") for n in picked)  # its smallest is still too big
    assert "d.one" in picked
    assert ac.spread_pick({"a.x": 1, "a.y": 1}, per_module=1, max_combos=6) == ["a.x"]


def test_names_only_one_tool_found_and_different_combination_counts(ac):
    asv = ac.Discovery({("m.a", 0): "m.a", ("m.b", 0): "m.b(1)", ("m.b", 1): "m.b(2)", ("io.c", 0): "io.c"})
    pw = ac.Discovery({("m.a", 0): "m.a", ("m.b", 0): "m.b(n=1)", ("m.extra", 0): "m.extra"})
    assert ac.name_differences(asv, pw) == {"only_asv": ["io.c"], "only_perfwatch": ["m.extra"],
                                            "combos_differ": ["m.b"]}


def test_ratio_summary_gives_the_median_and_both_spreads(ac):
    ratios = [0.9, 0.97, 1.0, 1.02, 1.04, 1.3]
    s = ac.ratio_summary(ratios)
    assert s["n"] == 6 and s["median"] == pytest.approx(1.01)
    assert s["q25"] == pytest.approx(0.9775) and s["q75"] == pytest.approx(1.035)
    assert s["p05"] == pytest.approx(0.9175) and s["p95"] == pytest.approx(1.235)
    assert s["within_5pct"] == 4


def test_a_ratio_needs_both_medians(ac):
    row = ac.Row("m.a", 0, "m.a", "time", pw_median=2.0, asv_median=4.0)
    assert row.ratio == 0.5
    assert ac.Row("m.a", 0, "m.a", "time", pw_median=2.0).ratio is None
    assert ac.Row("m.a", 0, "m.a", "time", pw_median=2.0, asv_median=0.0).ratio is None


def test_the_failure_reason_is_the_last_line_naming_an_exception(ac):
    out = ("[50%] ··· m.a  failed\n   Traceback (most recent call last):\n     File \"x.py\", line 3\n"
           "   ModuleNotFoundError: No module named 'sksparse'\n[100%] done\n")
    assert ac.last_error(out) == "ModuleNotFoundError: No module named 'sksparse'"
    assert ac.last_error("all fine\n") is None


def test_samples_median_ignores_missing_values(ac):
    assert ac.sample_median([3.0, None, float("nan"), 1.0, 2.0]) == (2.0, 3)
    assert ac.sample_median(None) == (None, 0)


def test_combinations_that_ran_under_one_tool_only_are_counted_per_benchmark_and_reason(ac):
    def row(name, asv, pw, pw_error=None):
        return {"asv_name": name, "asv_status": asv, "asv_error": None, "pw_status": pw, "pw_error": pw_error}
    rows = [row("m.a", "ok", "ok"), row("m.b", "ok", "cannot list", "bad params"), row("m.b", "ok", "cannot list", "x"),
            row("m.c", "ok", "failed", "TypeError: t"), row("m.c", "ok", "failed", "TypeError: t"),
            row("m.d", "failed", "ok")]
    assert ac.differing(rows) == {("m.b", "ok", "cannot list"): 2, ("m.c", "ok", "failed: TypeError: t"): 2,
                                  ("m.d", "failed", "ok"): 1}
