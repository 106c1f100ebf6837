"""Measure the quick suite end to end: total wall time and the spread of every benchmark.

Runs the real command (`perfwatch run --suite quick --json`) in a temporary results
directory and prints a Markdown table for docs/performance.md:

    python scripts/quick_suite_timing.py [--suite quick] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perfwatch import stats
from perfwatch.display import format_value

ROOT = Path(__file__).resolve().parent.parent


def run_once(suite: str, results_dir: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "perfwatch", "run", "--suite", suite, "--json", "--results-dir", str(results_dir)],
        cwd=ROOT, capture_output=True, text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 3):
        sys.exit(f"perfwatch run failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole suite this many times")
    parser.add_argument("--results-dir", type=Path, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()

    walls, docs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            wall, doc = run_once(args.suite, args.results_dir or Path(tmp))
            walls.append(wall)
            docs.append(doc)

    print(f"{args.suite} suite wall time over {args.runs} run(s): "
          + ", ".join(f"{w:.1f} s" for w in walls) + f" (median {stats.median(walls):.1f} s)")
    env = docs[-1]["env"]
    print(f"machine: {env['cpu']} x{env['cpu_cores_logical']}, torch {env['torch']}, Python {env['python']}\n")
    print("| benchmark | status | n | median | IQR/median | process wall |")
    print("|---|---|---:|---:|---:|---:|")
    for bench in docs[-1]["benchmarks"]:
        samples = bench["samples"]
        median = format_value(stats.median(samples), bench["unit"]) if samples else "-"
        spread = f"{stats.spread(samples) * 100:.1f}%" if samples else "-"
        print(f"| `{bench['name']}` | {bench['status']} | {len(samples)} | {median} | {spread} | {bench['duration_s']:.1f} s |")


if __name__ == "__main__":
    main()
