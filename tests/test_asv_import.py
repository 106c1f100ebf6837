"""A team moving from asv keeps its history: `perfwatch store import-asv RESULTS_DIR` reads asv's results
files (the current format and the older one asv migrates) with their machine files into the store, and
`perfwatch history` then shows asv's runs and perfwatch's own as one series per benchmark and machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_suite

ASV_CONF = """\
{
    // asv's quickstart settings, trimmed to what `asv run --python=same` needs
    "version": 1, "project": "tiny", "repo": ".", "branches": ["main"],
    "environment_type": "virtualenv", "benchmark_dir": "benchmarks", "results_dir": "results", "html_dir": "html",
}
"""

SUITE = """
class Grid:
    params = [[1, 2], ["a"]]
    param_names = ["n", "s"]

    def track_double(self, n, s):
        return 2.0 * n

    def time_sum(self, n, s):
        sum(range(n))
    time_sum.number = 1
    time_sum.repeat = 2
    time_sum.warmup_time = 0
"""

# What asv's `machine.json` holds for a machine (asv machine --yes); the host perfwatch fingerprints as "box".
MACHINE = {"arch": "x86_64", "cpu": "Example CPU", "machine": "box", "num_cpu": "8", "os": "Linux 6.1",
           "ram": "16000000000", "version": 1}


def perfwatch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command line as a user runs it, with `store import-asv` registered (perfwatch/cli/asvimport.py)."""
    program = "import sys, perfwatch.cli.asvimport; from perfwatch.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", program, *args], check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


def asv(*args: str, cwd: Path) -> None:
    """Run asv itself, with a HOME of its own (``asv machine`` writes ~/.asv-machine.json)."""
    home = cwd / ".home"
    home.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "asv", *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def history(bench: str, cwd: Path) -> list[dict]:
    proc = perfwatch("history", bench, "--store", "store", "--json", "--plot-dir", "plots", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["benchmarks"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_real_asv_run_imported_continues_as_one_series_with_perfwatchs_runs(tmp_path):
    pytest.importorskip("asv")
    (tmp_path / "asv.conf.json").write_text(ASV_CONF)
    write_suite(tmp_path / "benchmarks", "__init__.py", "")
    write_suite(tmp_path / "benchmarks", "grid.py", SUITE)
    git("init", "-q", "-b", "main", cwd=tmp_path)
    git("add", "asv.conf.json", "benchmarks", cwd=tmp_path)
    git("commit", "-qm", "tiny suite", cwd=tmp_path)
    commit = git("rev-parse", "HEAD", cwd=tmp_path)
    asv("machine", "--yes", cwd=tmp_path)
    asv("run", "--python=same", f"--set-commit-hash={commit}", "--record-samples", cwd=tmp_path)

    proc = perfwatch("store", "import-asv", "results", "--store", "store", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "imported 1 of 1 asv runs" in proc.stdout
    again = perfwatch("store", "import-asv", "results", "--store", "store", cwd=tmp_path)
    assert again.returncode == 0 and "imported 0 of 1 asv runs" in again.stdout and "(1 already stored)" in again.stdout

    run = perfwatch("run", "--filter", "track_double", "--store", "store", cwd=tmp_path)  # the same suite, unchanged
    assert run.returncode == 0, run.stderr
    [series] = history("grid.Grid.track_double(n=2, s='a')", tmp_path)
    assert series["host"] == MACHINE_HOST(tmp_path)  # asv's machine name is the host name: one machine, one series
    assert series["version"] == asv_version(tmp_path, "grid.Grid.track_double")  # perfwatch versions as asv does
    [point] = series["series"]  # one point per commit: asv's run and perfwatch's pool their samples
    assert (point["commit"], len(point["run_ids"]), point["median"]) == (commit, 2, 4.0)
    [timed] = history("grid.Grid.time_sum(n=1, s='a')", tmp_path)
    assert timed["series"][0]["samples"] == 4  # every sample asv kept (--record-samples): 2 rounds of repeat 2


def asv_version(project: Path, name: str) -> str:
    """The version asv recorded for benchmark ``name`` in its results file (format 2)."""
    [results] = [p for p in (project / "results").glob("*/*.json") if p.name != "machine.json"]
    data = json.loads(results.read_text())
    return data["results"][name][data["result_columns"].index("version")]


def MACHINE_HOST(project: Path) -> str:
    return json.loads(next((project / "results").glob("*/machine.json")).read_text())["machine"]


def results_v2(commit: str, date_ms: int, value: float) -> dict:
    """An asv results file as asv 0.5 and later write it (results api_version 2)."""
    columns = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a", "stats_ci_99_b",
               "stats_q_25", "stats_q_75", "stats_number", "stats_repeat", "samples", "profile"]
    samples = [value * f for f in (0.99, 1.0, 1.01, 1.0, 0.995)]
    return {"commit_hash": commit, "env_name": "existing-py", "date": date_ms, "params": {"machine": "box"},
            "python": "3.11", "requirements": {}, "env_vars": {}, "result_columns": columns,
            "results": {"walk.time_walk": [[value], [], "v1", date_ms + 1000, 0.5, [value * 0.9], [value * 1.1],
                                           [value * 0.99], [value * 1.01], [10], [5], [samples]],
                        "walk.time_nan": [[float("nan")], [], "v1", date_ms + 1000, 0.1]},
            "durations": {}, "version": 2}


def results_v1(commit: str, date_ms: int, value: float) -> dict:
    """An asv results file as asv 0.3 and 0.4 wrote it (api_version 1), which `asv update` migrates."""
    samples = [value * f for f in (0.99, 1.0, 1.01, 1.0, 0.995)]
    return {"commit_hash": commit, "date": date_ms, "params": {"machine": "box"}, "python": "3.11",
            "requirements": {}, "version": 1,
            "results": {"walk.time_walk": {"result": [value], "params": [], "samples": [samples],
                                           "stats": [{"ci_99": [value * 0.9, value * 1.1], "q_25": value * 0.99,
                                                      "q_75": value * 1.01, "number": 10, "repeat": 5}]},
                        "walk.time_nan": float("nan")},
            "started_at": {"walk.time_walk": date_ms + 1000}, "duration": {"walk.time_walk": 0.5},
            "benchmark_version": {"walk.time_walk": "v1"}}


def write_history(results: Path, values: list[float]) -> list[str]:
    """One results file per commit, old format for the first half and the current one after; the commits."""
    (results / "box").mkdir(parents=True)
    (results / "box" / "machine.json").write_text(json.dumps(MACHINE))
    commits = []
    for i, value in enumerate(values):
        commit = f"{i + 1:08x}{i:032x}"
        write = results_v1 if i < len(values) // 2 else results_v2
        data = write(commit, 1_700_000_000_000 + i * 86_400_000, value)
        (results / "box" / f"{commit[:8]}-existing-py.json").write_text(json.dumps(data))
        commits.append(commit)
    return commits


def test_history_finds_the_step_in_an_imported_history_of_both_formats(tmp_path):
    values = [1e-3] * 10 + [2e-3] * 10  # twice as slow from the 11th commit on
    commits = write_history(tmp_path / "results", values)
    proc = perfwatch("store", "import-asv", "results", "--store", "store", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "imported 20 of 20 asv runs" in proc.stdout

    [walk] = history("walk.time_walk", tmp_path)
    assert walk["points"] == 20 and walk["unit"] == "seconds"
    [step] = walk["steps"]
    assert step["commit"] == commits[10]
    [skipped] = history("walk.time_nan", tmp_path)
    assert {p["status"] for p in skipped["series"]} == {"skipped"}

    old, new = (json.loads(perfwatch("store", "export", run_id, "--store", "store", cwd=tmp_path).stdout)
                for run_id in (walk["series"][0]["run_id"], walk["series"][-1]["run_id"]))
    for run, value in ((old, 1e-3), (new, 2e-3)):
        [bench] = [b for b in run["benchmarks"] if b["name"] == "walk.time_walk"]
        assert (len(bench["samples"]), bench["number"], bench["kind"]) == (5, 10, "time")
        [stats] = run["env"]["asv"]["benchmarks"]["walk.time_walk"]["stats"]
        assert stats == pytest.approx({"ci_99_a": value * 0.9, "ci_99_b": value * 1.1, "q_25": value * 0.99,
                                       "q_75": value * 1.01, "number": 10, "repeat": 5})
        assert run["env"]["host"] == "box" and run["env"]["cpu_cores_logical"] == 8 and run["suite"] == "asv"
    assert old["env"]["machine_id"] == new["env"]["machine_id"]


def test_a_file_that_cannot_be_read_is_named_and_the_rest_imports(tmp_path):
    results = tmp_path / "results"
    write_history(results, [1e-3])
    (results / "box" / "aaaaaaaa-future.json").write_text(json.dumps({**results_v2("a" * 40, 1, 1.0), "version": 3}))
    (results / "box" / "bbbbbbbb-torn.json").write_text('{"commit_hash": "bb')
    (results / "orphan").mkdir()
    (results / "orphan" / "cccccccc-py.json").write_text(json.dumps(results_v2("c" * 40, 1, 1.0)))

    proc = perfwatch("store", "import-asv", "results", "--store", "store", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 4, proc.stderr
    assert "results/box/aaaaaaaa-future.json: asv results format 3 is unknown" in lines[0]
    assert "results/box/bbbbbbbb-torn.json: not a JSON file" in lines[1]
    assert "results/orphan/machine.json: missing" in lines[2] and "its 1 results file" in lines[2]
    assert lines[3] == "perfwatch: error: 3 of 4 asv results files were not imported; see the warnings above"
    assert "imported 1 of 1 asv runs" in proc.stdout

    missing = perfwatch("store", "import-asv", "no-such-dir", "--store", "store", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "perfwatch: error: no-such-dir: no such directory; give asv's results_dir (where asv.conf.json points)")
