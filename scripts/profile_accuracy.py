"""Accuracy and overhead of `perfwatch profile` on the bottleneck zoo (an evaluation, not a test).

Every zoo script (tests/zoo/*.py with an ``EXPECTED`` primary bottleneck) runs ``--runs``
times under ``perfwatch profile`` with its default settings, and as many times plainly,
interleaved in pairs whose order alternates (plain first, then profiled first, ...), so
drift in a shared machine hits both sides of a pair alike.

* Accuracy: each profiled run's primary bottleneck against the script's ``EXPECTED``; a
  confusion table, per-script hits and confidences.
* Overhead, run by run: each script reports its own training throughput (``zoo-result``
  line, timed around its loop only); per pair, profiled/plain steps per second. The
  overhead is 1 - ratio: median over all pairs, with the Hodges-Lehmann estimate and its
  Tukey interval from the Wilcoxon signed-rank test (perfwatch.stats.paired_ratio).
* Overhead, window by window (``--cycles``, the precise one on a shared machine): one long
  run of each script, with what ``perfwatch profile`` runs beside a command (the
  Collector and both py-spy passes: ``perfwatch.profile.run.Sampler``) switched on and off
  every ``--window`` seconds in alternating order; the first second of each window is
  dropped (attach, detach). Neighbouring windows share the machine's load, so each
  on/off cycle is a pair. This is the steady-state cost on a long training run;
  perfwatch's own start-up and report come before and after the command's loop.

GPU scripts (``REQUIRES_CUDA = True``) are skipped without CUDA.

    python scripts/profile_accuracy.py [--runs 3] [--cycles 10] [--window 5] [--rate 100]
                                       [--only transform_bound,healthy] [--json results.json]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from perfwatch.env import cpu_model
from perfwatch.profile.diagnose import CATEGORIES
from perfwatch.profile.pyspy import DEFAULT_RATE, find_pyspy, install_dirs
from perfwatch.profile.run import COLLECTOR_INTERVAL_S, GIL_RATE_DIVISOR, ProfileOptions, Sampler
from perfwatch.stats import median, paired_ratio

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "tests" / "zoo"
RESULT_PREFIX = "zoo-result "
TICK_PREFIX = "zoo-tick "
SETTLE_S = 1.0  # dropped at the start of each window: py-spy attaching, or the last one detaching


def zoo_scripts() -> list[tuple[Path, str, bool]]:
    """(path, expected primary, needs CUDA) of each zoo script, read without importing it."""
    found = []
    for path in sorted(ZOO.glob("*.py")):
        constants = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(path.read_text()).body
                     if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                     and node.targets[0].id in ("EXPECTED", "REQUIRES_CUDA")}
        if "EXPECTED" in constants:
            found.append((path, constants["EXPECTED"], constants.get("REQUIRES_CUDA", False)))
    return found


def steps_per_second(stdout: str) -> float:
    line = next(line for line in reversed(stdout.splitlines()) if line.startswith(RESULT_PREFIX))
    return json.loads(line[len(RESULT_PREFIX):])["steps_per_second"]


def timed(argv: list[str]) -> tuple[str, float, float]:
    """(stdout, wall seconds, CPU seconds of the process and everything it waited for)."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return done.stdout, time.monotonic() - started, cpu


def run_plain(path: Path) -> dict:
    stdout, wall, cpu = timed([sys.executable, str(path)])
    return {"steps_per_second": steps_per_second(stdout), "wall": wall, "cpu": cpu}


def run_profiled(path: Path, out: Path, rate: int) -> tuple[dict, dict]:
    """The run's numbers (CPU includes perfwatch and py-spy) and its report."""
    stdout, wall, cpu = timed([sys.executable, "-m", "perfwatch", "profile", "--out", str(out), "--rate", str(rate),
                               "--", sys.executable, str(path)])
    report = json.loads((out / "report.json").read_text())
    return {"steps_per_second": steps_per_second(stdout), "wall": wall, "cpu": cpu}, report


def interleaved_overhead(path: Path, cycles: int, window: float, rate: int) -> list[tuple[float, float]]:
    """(profiled, plain) steps/s of each on/off cycle of one long run of ``path``."""
    ticks: list[dict] = []
    # stderr is dropped: the SIGINT that ends the run prints a KeyboardInterrupt traceback.
    process = subprocess.Popen([sys.executable, str(path), "--steps", str(10**9), "--report-every", "0.25"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)

    def read() -> None:
        for line in process.stdout:
            if line.startswith(TICK_PREFIX):
                ticks.append(json.loads(line[len(TICK_PREFIX):]))

    threading.Thread(target=read, daemon=True).start()
    windows: list[dict[bool, tuple[float, float]]] = []
    try:
        while not ticks:  # the loop runs
            if process.poll() is not None:
                raise RuntimeError(f"{path.name} exited with {process.returncode}; run it alone to see why")
            time.sleep(0.1)
        time.sleep(2.0)
        with tempfile.TemporaryDirectory(prefix="profile-overhead-") as tmp:
            for cycle in range(cycles):
                pair = {}
                for profiled in ((True, False) if cycle % 2 == 0 else (False, True)):
                    begin = time.time()
                    sampler = Sampler(process.pid, Path(tmp), ProfileOptions(rate=rate), find_pyspy(install_dirs())) \
                        if profiled else None
                    end = time.monotonic() + window
                    while time.monotonic() < end:
                        if sampler is not None:
                            sampler.poll()
                        time.sleep(0.2)
                    if sampler is not None:
                        sampler.stop(0)
                    pair[profiled] = (begin + SETTLE_S, time.time())
                windows.append(pair)
    finally:
        process.send_signal(signal.SIGINT)  # KeyboardInterrupt: the script's temp dirs are cleaned up
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def throughput(span: tuple[float, float]) -> float:
        inside = [t for t in ticks if t["end"] - t["seconds"] >= span[0] and t["end"] <= span[1]]
        return sum(t["steps"] for t in inside) / sum(t["seconds"] for t in inside)

    return [(throughput(pair[True]), throughput(pair[False])) for pair in windows]


def cuda_available() -> bool:
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe]).returncode == 0


def accuracy_runs(scripts: list[tuple[Path, str, bool]], runs: int, rate: int) -> list[dict]:
    """Profiled and plain runs of every script, ``runs`` pairs each, the order alternating."""
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="profile-accuracy-") as tmp:
        for i in range(runs):
            for path, expected, _ in scripts:
                out = Path(tmp) / f"{path.stem}-{i}"
                started = time.monotonic()
                if i % 2 == 0:
                    plain = run_plain(path)
                    profiled, report = run_profiled(path, out, rate)
                else:
                    profiled, report = run_profiled(path, out, rate)
                    plain = run_plain(path)
                b = report["bottleneck"]
                results.append({"script": path.stem, "run": i, "expected": expected, "primary": b["primary"],
                                "confidence": b["confidence"], "shares": b["shares"],
                                "plain_steps_per_second": plain["steps_per_second"],
                                "profiled_steps_per_second": profiled["steps_per_second"],
                                "profiler_cpu_seconds": profiled["cpu"] - plain["cpu"],
                                "profiled_wall": profiled["wall"], "load1": os.getloadavg()[0],
                                "pyspy_samples": report["pyspy"]["training_thread_samples"]})
                mark = "ok " if b["primary"] == expected else "MISS"
                ratio = profiled["steps_per_second"] / plain["steps_per_second"]
                print(f"  [{mark}] {path.stem:<18} run {i}: {b['primary']:<14} conf {b['confidence']:.2f}  "
                      f"plain {plain['steps_per_second']:6.2f} steps/s, profiled {profiled['steps_per_second']:6.2f} "
                      f"({ratio - 1:+.1%}); profiler CPU {profiled['cpu'] - plain['cpu']:.1f} s; "
                      f"load {os.getloadavg()[0]:.1f}  [{time.monotonic() - started:.0f} s]", flush=True)
    return results


def print_accuracy(scripts: list[tuple[Path, str, bool]], runs: list[dict], rate: int) -> None:
    print("\nconfusion (rows: expected, columns: reported primary)")
    print(f"{'':<16}" + "".join(f"{c:>16}" for c in CATEGORIES))
    for expected in CATEGORIES:
        row = [sum(1 for r in runs if r["expected"] == expected and r["primary"] == got) for got in CATEGORIES]
        if any(row):
            print(f"{expected:<16}" + "".join(f"{n:>16}" for n in row))
    hits = sum(r["primary"] == r["expected"] for r in runs)
    print(f"\naccuracy: {hits}/{len(runs)} = {hits / len(runs):.1%}")
    for path, expected, _ in scripts:
        mine = [r for r in runs if r["script"] == path.stem]
        print(f"  {path.stem:<18} expected {expected:<14} {sum(r['primary'] == expected for r in mine)}/{len(mine)}"
              f"  confidence median {median([r['confidence'] for r in mine]):.2f}")

    plain = [r["plain_steps_per_second"] for r in runs]
    profiled = [r["profiled_steps_per_second"] for r in runs]
    estimate = paired_ratio(plain, profiled, alpha=0.05)
    print(f"\noverhead run by run on the script's own steps/s (py-spy {rate} Hz wall + "
          f"{max(1, rate // GIL_RATE_DIVISOR)} Hz GIL pass, collector every {COLLECTOR_INTERVAL_S} s), "
          f"{len(runs)} interleaved pairs:")
    print(f"  median of per-pair ratios: {1 - median([p / q for p, q in zip(profiled, plain)]):+.1%} slower")
    print(f"  Hodges-Lehmann: {1 - estimate.ratio:+.1%} slower, 95% CI [{1 - estimate.high:+.1%}, "
          f"{1 - estimate.low:+.1%}], Wilcoxon p = {estimate.p_value:.3f}")
    for path, _, _ in scripts:
        mine = [r["profiled_steps_per_second"] / r["plain_steps_per_second"] for r in runs if r["script"] == path.stem]
        print(f"  {path.stem:<18} median {1 - median(mine):+.1%} slower ({', '.join(f'{1 - x:+.1%}' for x in mine)})")
    cost = [r["profiler_cpu_seconds"] / r["profiled_wall"] for r in runs]
    print(f"  CPU used by perfwatch + py-spy (profiled minus plain run, incl. start-up and the report): "
          f"median {median(cost):.2f} cores over the profiled run; load average median "
          f"{median([r['load1'] for r in runs]):.1f} on {os.cpu_count()} cores")


def window_overhead(scripts: list[tuple[Path, str, bool]], cycles: int, window: float, rate: int) -> dict[str, list]:
    print(f"\noverhead window by window (py-spy {rate} Hz): {cycles} cycles of {window:g} s on / {window:g} s off "
          "per script, one long run each")
    results = {}
    for path, _, _ in scripts:
        results[path.stem] = pairs = interleaved_overhead(path, cycles, window, rate)
        on, off = [p[0] for p in pairs], [p[1] for p in pairs]
        estimate = paired_ratio(off, on, alpha=0.05)
        print(f"  {path.stem:<18} {1 - estimate.ratio:+.1%} slower, 95% CI [{1 - estimate.high:+.1%}, "
              f"{1 - estimate.low:+.1%}] (plain {median(off):.2f} steps/s; load {os.getloadavg()[0]:.1f})", flush=True)
    pooled = [p for pairs in results.values() for p in pairs]
    estimate = paired_ratio([p[1] for p in pooled], [p[0] for p in pooled], alpha=0.05)
    print(f"  all scripts: {1 - estimate.ratio:+.1%} slower, 95% CI [{1 - estimate.high:+.1%}, "
          f"{1 - estimate.low:+.1%}], {len(pooled)} cycles")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="profiled (and plain) runs per script (default 3; 0: skip)")
    parser.add_argument("--cycles", type=int, default=10, help="on/off cycles per script (default 10; 0: skip)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds on, then off (default 5)")
    parser.add_argument("--rate", type=int, default=DEFAULT_RATE, help=f"py-spy rate (default {DEFAULT_RATE})")
    parser.add_argument("--only", help="comma-separated zoo script names (default: all)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    # Started in the background by a shell without job control, this process and its children
    # would ignore SIGINT; with a handler here, children start with the default again, so the
    # SIGINT that ends a long zoo run raises KeyboardInterrupt and its temp dirs are removed.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    scripts = zoo_scripts()
    if args.only:
        wanted = set(args.only.split(","))
        scripts = [s for s in scripts if s[0].stem in wanted]
    cuda = cuda_available()
    skipped = [path.stem for path, _, needs_cuda in scripts if needs_cuda and not cuda]
    scripts = [s for s in scripts if not s[2] or cuda]
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; cuda: {cuda}; runs: {args.runs}; skipped: {skipped or 'none'}")
    runs = accuracy_runs(scripts, args.runs, args.rate)
    if runs:
        print_accuracy(scripts, runs, args.rate)
    cycles = window_overhead(scripts, args.cycles, args.window, args.rate) if args.cycles else {}
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "cuda": cuda, "skipped": skipped, "runs": runs,
                                         "cycles": cycles}, indent=1))


if __name__ == "__main__":
    main()
