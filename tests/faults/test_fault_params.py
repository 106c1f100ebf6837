"""Hostile benchmark attributes. A value perfwatch cannot run with is refused at discovery, before
anything runs, in one line naming the file, the benchmark and the attribute; a value it can run with
(a NaN or infinite parameter) gives a stored run that is valid JSON, with nothing measured lost; a
result that is not a finite number fails that benchmark alone, with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_perfwatch, write_suite

from perfwatch.results import RunRecord

pytestmark = pytest.mark.fault("params")


REFUSED = [
    ('timeout = "abc"', "timeout = 'abc' is not valid; it must be a number of seconds > 0"),
    ("timeout = -1", "timeout = -1 is not valid"),
    ("timeout = 0", "timeout = 0 is not valid"),
    ('timeout = float("nan")', "timeout = nan is not valid"),
    ('timeout = float("inf")', "timeout = inf is not valid"),
    ("timeout = True", "timeout = True is not valid"),
    ("number = -5", "number = -5 is not valid; it must be a whole number of calls per sample"),
    ("number = 2.5", "number = 2.5 is not valid"),
    ('number = "10"', "number = '10' is not valid"),
    ("repeat = (0, 0, 0)", "repeat = (0, 0, 0) is not valid; it must be a whole number of samples"),
    ("repeat = 2.5", "repeat = 2.5 is not valid"),
    ("repeat = -3", "repeat = -3 is not valid"),
    ('repeat = (1, 2, float("nan"))', "repeat = (1, 2, nan) is not valid"),
    ("repeat = (5, 2, 1.0)", "repeat = (5, 2, 1.0) is not valid"),
    ('warmup_time = float("nan")', "warmup_time = nan is not valid"),
    ('warmup_time = float("inf")', "warmup_time = inf is not valid"),
    ("unit = 3", "unit = 3 is not valid"),
    ('sizes = "ci"', "sizes = 'ci' is not valid; it must be a list of suite sizes out of quick, ci, full"),
    ("params = [[1, 2], 3]", "params = [[1, 2], 3] is not valid"),
]


@pytest.mark.parametrize("attribute, shown", REFUSED, ids=[a for a, _ in REFUSED])
def test_a_bad_attribute_is_refused_before_anything_runs(first_benchmark, attribute, shown):
    project = first_benchmark
    write_suite(project / "suites", "later.py", f"def time_bad():\n    pass\ntime_bad.{attribute}\n")
    proc = run_perfwatch("run", "--results-dir", "results", cwd=project)
    assert_one_line_error(proc, f"later.py: benchmark later.time_bad: {shown}")
    assert not (project / "first-ran").exists() and not list((project / "results").glob("*.json"))


# Each parameter value the suite gives -> the name and the stored value it must get.
ODD_PARAMS = [
    ('float("nan")', "nan", "nan"),
    ('float("inf")', "inf", "inf"),
    ('float("-inf")', "-inf", "-inf"),
    ("5e-324", "5e-324", 5e-324),  # the smallest subnormal
    ("-0.0", "-0.0", -0.0),
    ("1.0", "1.0", 1.0),
]
# A track benchmark's result -> its stored status and error.
ODD_RESULTS = [
    ('float("inf")', "returned inf; it must return a finite number"),
    ('float("nan")', "returned nan; it must return a finite number"),
    ('"fast"', "returned 'fast'; it must return a finite number"),
    ("None", "returned None; it must return a finite number"),
]


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory) -> tuple[Path, object, RunRecord]:
    """One run of a suite with each odd parameter and each odd result: (project, the command, the stored run)."""
    project = tmp_path_factory.mktemp("odd")
    values = ", ".join(value for value, _, _ in ODD_PARAMS)
    tracks = "".join(f"\ndef track_odd_{i}():\n    return {result}\ntrack_odd_{i}.repeat = 2\n"
                     for i, (result, _) in enumerate(ODD_RESULTS))
    write_suite(project / "suites", "odd.py", f"def time_scaled(factor):\n    pass\ntime_scaled.params = [{values}]\n"
                f"time_scaled.param_names = ['factor']\ntime_scaled.warmup_time = 0\ntime_scaled.repeat = 2\n{tracks}")
    proc = run_perfwatch("run", "--results-dir", "results", "--json", cwd=project)
    [path] = (project / "results").glob("*.json")
    return project, proc, RunRecord.load(path)


def test_odd_parameters_and_results_give_a_valid_stored_run(odd_run):
    project, proc, _ = odd_run
    assert proc.returncode == 3, proc.stderr  # the odd results failed; the rest is stored
    text = next((project / "results").glob("*.json")).read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: any tool reads it
    assert json.loads(proc.stdout) == json.loads(text)


@pytest.mark.parametrize("value, shown, stored", ODD_PARAMS, ids=[v for v, _, _ in ODD_PARAMS])
def test_an_odd_parameter_is_measured_and_stored_under_its_name(odd_run, value, shown, stored):
    by_name = {b.name: b for b in odd_run[2].benchmarks}
    result = by_name[f"odd.time_scaled(factor={shown})"]
    assert result.ok and len(result.samples) == 2 and result.params == {"factor": stored}


@pytest.mark.parametrize("index, words", [(i, words) for i, (_, words) in enumerate(ODD_RESULTS)],
                         ids=[r for r, _ in ODD_RESULTS])
def test_an_odd_result_fails_its_benchmark_alone_with_the_reason(odd_run, index, words):
    result = {b.name: b for b in odd_run[2].benchmarks}[f"odd.track_odd_{index}"]
    assert result.status == "failed" and words in result.error and result.samples == []
    assert f"odd.track_odd_{index}" in odd_run[1].stderr


def test_asv_forms_of_the_attributes_are_accepted(tmp_path):
    write_suite(tmp_path / "suites", "forms.py", '''
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
    proc = run_perfwatch("run", "--results-dir", "results", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [path] = (tmp_path / "results").glob("*.json")
    samples = {b.name: len(b.samples) for b in RunRecord.load(path).benchmarks}
    assert samples["forms.time_fixed_repeat"] == 3 and samples["forms.time_repeat_range"] == 2
    assert samples["forms.time_default_repeat"] >= 5  # the quick suite's min_repeat
