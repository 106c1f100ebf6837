"""The public API is a promise: this test fails when a name is added or removed without meaning to."""

import subprocess
import sys
import types

import pytest

import perfwatch

EXPECTED = {
    "FORMAT_VERSION", "BenchResult", "BenchmarkFailed", "Config", "PerfwatchError", "PHASES",
    "RegressionFound", "RunRecord", "StepRecord", "StepTimer", "Store", "UserError", "by_size",
    "current_size", "discover", "fingerprint", "load_config", "monitor", "run_suite", "select",
    "AlertSinks", "send_alerts", "Verdict", "compare_runs", "ProfileOptions", "run_profile", "TuneResult", "tune_loader",
    "run_against",
}


def test_all_lists_exactly_the_public_names():
    assert set(perfwatch.__all__) == EXPECTED
    for name in perfwatch.__all__:
        getattr(perfwatch, name)  # each lazy export resolves
    public = {name for name, value in vars(perfwatch).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public == set(perfwatch.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        perfwatch.nonesuch  # noqa: B018


def test_importing_perfwatch_does_not_import_torch():
    # The CLI and the runner's parent process stay light; torch loads only where it is used.
    code = "import sys, perfwatch, perfwatch.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
