"""What a benchmark writes to stderr: the runner drains it as it comes and keeps only its tail, so a
benchmark that floods stderr neither blocks nor swells `perfwatch run`, and the last line it wrote
before dying is still the reason recorded."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import write_suite

from perfwatch.results import RunRecord

FLOOD_MIB = 100
SUITE = f'''
import os, sys

def flood():
    line = "x" * (1 << 20)
    for _ in range({FLOOD_MIB}):
        print(line, file=sys.stderr)

def track_floods_stderr():
    flood()
    return 1.0
track_floods_stderr.repeat = 1
track_floods_stderr.warmup_time = 0

def track_floods_then_dies():
    flood()
    print("the last words", file=sys.stderr, flush=True)
    os._exit(1)
track_floods_then_dies.repeat = 1
track_floods_then_dies.warmup_time = 0
'''


def high_water_mib(pid: int) -> float:
    """The process's peak RSS since it exec'd (VmHWM). Not wait4's ru_maxrss: that also counts the image
    the child was forked from before exec, here the whole pytest process, and the largest waited-for child."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise ProcessLookupError(pid)  # a zombie has no memory left to report


def test_a_benchmark_flooding_stderr_leaves_the_runner_small_and_its_last_line_is_the_reason(tmp_path):
    write_suite(tmp_path / "suites", "flood.py", SUITE)
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "perfwatch", "run", "--results-dir", "results"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "COLUMNS": "200"})
        peak_mib = 0.0
        with contextlib.suppress(OSError):  # until it exits: the high-water mark only grows while it lives
            while proc.poll() is None:
                peak_mib = max(peak_mib, high_water_mib(proc.pid))
                time.sleep(0.01)
    proc.wait()

    assert proc.returncode == 3, (tmp_path / "stderr.txt").read_text()  # the benchmark that died
    assert 0 < peak_mib < FLOOD_MIB / 2, f"peak RSS {peak_mib:.0f} MiB: the runner held the flood"  # 235 before
    [stored] = (tmp_path / "results").glob("*.json")
    results = {b.name: b for b in RunRecord.load(stored).benchmarks}
    assert results["flood.track_floods_stderr"].ok
    assert results["flood.track_floods_then_dies"].error == "benchmark process exited with 1: the last words"


def test_a_benchmark_that_exits_silently_is_recorded_with_no_output_not_the_workers_warning(tmp_path):
    # Before: "RuntimeWarning: 'perfwatch.worker' found in sys.modules ..." from `python -m`, which
    # every worker printed first, was the last line and so the reason.
    write_suite(tmp_path / "suites", "exits.py", "import os\n\ndef time_exits():\n    os._exit(1)\n")
    proc = subprocess.run([sys.executable, "-m", "perfwatch", "run", "--results-dir", "results"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=300,
                          check=False)
    assert proc.returncode == 3, proc.stderr
    [stored] = (tmp_path / "results").glob("*.json")
    [result] = RunRecord.load(stored).benchmarks
    assert result.error == "benchmark process exited with 1: no output"
    assert "RuntimeWarning" not in proc.stderr
