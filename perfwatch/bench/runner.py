"""Runs benchmarks honestly: one fresh process each, warm-up, calibration, repeats, timeout.

The runner itself never imports a suite: discovery and measurement both happen in
child processes (``perfwatch.worker``), so a suite that crashes, hangs or eats
memory is recorded as failed with a one-line reason and the run goes on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import psutil

from perfwatch import assets
from perfwatch.bench.suite import SIZE_ENV, Benchmark
from perfwatch.bench.worker import Budget
from perfwatch.config import SIZES
from perfwatch.env import fingerprint
from perfwatch.errors import UserError
from perfwatch.results import BenchResult, RunRecord, new_run_id, utc_now_iso

# Per suite size: (measurement budget, default timeout in seconds for one benchmark process).
BUDGETS: dict[str, tuple[Budget, float]] = {
    "quick": (Budget(warmup_time=0.2, sample_time=0.02, min_repeat=5, max_repeat=20, max_time=2.0), 60.0),
    "ci": (Budget(warmup_time=0.5, sample_time=0.05, min_repeat=10, max_repeat=50, max_time=10.0), 180.0),
    "full": (Budget(warmup_time=1.0, sample_time=0.1, min_repeat=20, max_repeat=200, max_time=30.0), 600.0),
}
DISCOVERY_TIMEOUT = 120.0
PACKAGE_ROOT = assets.PACKAGE.parent  # the directory that holds perfwatch/


def default_paths(configured: tuple[Path, ...] = (), cwd: Path | None = None) -> list[Path]:
    """Configured paths, else ``./suites``, else perfwatch's own reference suites."""
    if configured:
        return list(configured)
    local = (cwd or Path.cwd()) / "suites"
    if local.is_dir():
        return [local]
    if assets.SUITES:
        return [assets.SUITES]
    raise UserError("no suites/ directory here and no reference suites installed; pass a suite file or directory")


BUSY_LOAD_PER_CORE = 0.5


def busy_warning(load: float | None = None, cores: int | None = None) -> str | None:
    """A warning when other work already loads the machine: timings would be noisy.

    With torch's default one intra-op thread per core, a single busy neighbour can
    slow a training step tenfold on a small machine.
    """
    load = os.getloadavg()[0] if load is None else load
    cores = cores or len(os.sched_getaffinity(0))
    if load < BUSY_LOAD_PER_CORE * cores:
        return None
    return (f"the machine is busy (load {load:.1f} on {cores} cores): timings will be noisy; "
            "stop other work, or compare runs taken side by side")


def worker_env(size: str) -> dict[str, str]:
    """The child's environment: the suite size, and this perfwatch importable first."""
    env = dict(os.environ)
    env[SIZE_ENV] = size
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    return env


@dataclass(frozen=True)
class ChildOutcome:
    payload: dict | None
    returncode: int | None  # None: killed at the timeout
    stderr_tail: str


def kill_tree(pid: int) -> None:
    """Kill a process, the process group it leads (if any) and every descendant.

    The group alone is not enough: torchrun starts its ranks in sessions of their own.
    """
    try:
        process = psutil.Process(pid)
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        members = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # not a group leader, or already gone
        pass
    for member in members:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass


def run_child(args: list[str], out: Path, env: dict[str, str], timeout: float) -> ChildOutcome:
    """Run a worker in its own process group; on timeout kill the group (DataLoader workers too)."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "perfwatch.worker", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:  # also on KeyboardInterrupt: never leave a benchmark running behind us
            kill_tree(proc.pid)
            proc.wait()
        stderr.seek(0)
        lines = [ln for ln in stderr.read().decode(errors="replace").splitlines() if ln.strip()]
    payload = None
    if returncode is not None and out.exists():
        try:
            payload = json.loads(out.read_text())
        except json.JSONDecodeError:
            payload = None
    return ChildOutcome(payload, returncode, lines[-1].strip() if lines else "")


def discover(paths: list[Path], size: str) -> list[Benchmark]:
    """Benchmarks under ``paths`` (all sizes); a suite that fails to import is a UserError."""
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file or directory; pass an existing suite file or directory")
    with tempfile.TemporaryDirectory(prefix="perfwatch-") as tmp:
        out = Path(tmp) / "discovered.json"
        outcome = run_child(["discover", str(out), *map(str, paths)], out, worker_env(size), DISCOVERY_TIMEOUT)
    if outcome.payload is None:
        reason = "timed out" if outcome.returncode is None else outcome.stderr_tail or f"exit {outcome.returncode}"
        raise UserError(f"discovering benchmarks in {', '.join(map(str, paths))} failed: {reason}")
    if "error" in outcome.payload:
        raise UserError(outcome.payload["error"])
    return [Benchmark.from_dict(b) for b in outcome.payload["benchmarks"]]


def select(benchmarks: list[Benchmark], size: str, pattern: str | None = None) -> list[Benchmark]:
    """Benchmarks that belong to suite ``size`` and whose name matches ``pattern`` (re.search)."""
    chosen = [b for b in benchmarks if size in b.sizes]
    if pattern:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise UserError(f"--filter {pattern!r}: invalid regular expression ({exc})") from None
        chosen = [b for b in chosen if regex.search(b.name)]
    return chosen


def nothing_selected(size: str, paths: list[Path], pattern: str | None) -> UserError:
    """The error for a selection that came out empty: where perfwatch looked, and how to see what is there."""
    return UserError(f"no benchmarks in the {size} suite of {', '.join(map(str, paths))}"
                     + (f" match --filter {pattern!r}" if pattern else "") + "; `perfwatch list` shows them")


def failure_reason(outcome: ChildOutcome, timeout: float) -> tuple[str, str]:
    """(status, one-line error) for a worker that wrote no result."""
    if outcome.returncode is None:
        return "timeout", f"timed out after {timeout:g} s; set a larger `timeout` on the benchmark if it needs more"
    if outcome.returncode < 0:
        name = signal.Signals(-outcome.returncode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return "failed", f"benchmark process killed by {name}{hint}"
    return "failed", f"benchmark process exited with {outcome.returncode}: {outcome.stderr_tail or 'no output'}"


def run_one(bench: Benchmark, size: str) -> tuple[BenchResult, str | None]:
    """Measure one benchmark in a fresh process; returns the result and any traceback text."""
    budget, default_timeout = BUDGETS[size]
    timeout = float(bench.timeout or default_timeout)
    base = dict(
        name=bench.name, params=bench.params, kind=bench.kind, unit=bench.unit,
        higher_is_better=bench.higher_is_better,
    )
    if bench.unsupported:
        return BenchResult(**base, status="skipped", error=bench.unsupported), None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="perfwatch-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"benchmark": bench.to_dict(), "budget": asdict(budget)}))
        outcome = run_child(["run", str(spec), str(out)], out, worker_env(size), timeout)
    duration = time.perf_counter() - started
    if outcome.payload is None:
        status, error = failure_reason(outcome, timeout)
        return BenchResult(**base, status=status, error=error, duration_s=duration), None
    p = outcome.payload
    result = BenchResult(
        **base,
        status=p["status"],
        error=p.get("error"),
        samples=p.get("samples", []),
        number=p.get("number", 1),
        warmup_s=p.get("warmup_s", 0.0),
        duration_s=duration,
    )
    return result, p.get("traceback")


Progress = Callable[[str, Benchmark, "BenchResult | None"], None]


def run_suite(
    benchmarks: list[Benchmark],
    size: str,
    progress: Progress | None = None,
    debug_log: Callable[[str], None] | None = None,
) -> RunRecord:
    """Run each benchmark in turn and return the whole run; failures are recorded, not raised."""
    if size not in SIZES:
        raise UserError(f"--suite {size!r}: unknown suite; use one of {', '.join(SIZES)}")
    created = utc_now_iso()
    env = fingerprint()
    results = []
    for bench in benchmarks:
        if progress:
            progress("start", bench, None)
        result, tb = run_one(bench, size)
        if tb and debug_log:
            debug_log(f"{bench.name}:\n{tb}")
        results.append(result)
        if progress:
            progress("done", bench, result)
    return RunRecord(run_id=new_run_id(), created=created, suite=size, env=env, benchmarks=results)
