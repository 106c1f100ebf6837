"""Runs benchmarks honestly: one fresh process each, warm-up, calibration, repeats, timeout.

The runner itself never imports a suite: discovery and measurement both happen in
child processes (``perfwatch.worker``), so a suite that crashes, hangs or eats
memory is recorded as failed with a one-line reason and the run goes on.

Nothing measured is lost and nothing is left behind: workers die with the runner (worker.py),
SIGTERM is handled as Ctrl-C, each finished benchmark is journaled in the run's temp directory,
and what a run killed outright left (processes, temp directory, journal) the next one cleans up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import IO

import psutil

from perfwatch import assets
from perfwatch.bench.setupcache import RUN_DIR_ENV
from perfwatch.bench.suite import SIZE_ENV, Benchmark
from perfwatch.bench.worker import PARENT_ENV, TIMEOUT_ENV, Budget
from perfwatch.config import SIZES, AlertSinks
from perfwatch.env import fingerprint
from perfwatch.errors import UserError
from perfwatch.proctree import kill_tree  # paired, tests and scripts import it from here too
from perfwatch.results import BenchResult, RunRecord, new_run_id, utc_now_iso
from perfwatch.store import RunStore, write_atomic

log = logging.getLogger(__name__)

# Per suite size: (measurement budget, default timeout in seconds for one benchmark process).
BUDGETS: dict[str, tuple[Budget, float]] = {
    "quick": (Budget(warmup_time=0.2, sample_time=0.02, min_repeat=5, max_repeat=20, max_time=2.0), 60.0),
    "ci": (Budget(warmup_time=0.5, sample_time=0.05, min_repeat=10, max_repeat=50, max_time=10.0), 180.0),
    "full": (Budget(warmup_time=1.0, sample_time=0.1, min_repeat=20, max_repeat=200, max_time=30.0), 600.0),
}
DISCOVERY_TIMEOUT = 120.0
# RUN_DIR_ENV (setupcache.py, where workers keep a run's setup_cache) is on every process of a run: how a
# later run finds what a killed one left.
SCRATCH_PREFIX = "perfwatch-"
OWNER, JOURNAL = "owner.json", "journal.json"  # in a run's temp dir
NOT_RUN = "not run: perfwatch stopped before this benchmark finished"
PACKAGE_ROOT = assets.PACKAGE.parent  # the directory that holds perfwatch/
# The settings that may hold a password or a token, as environment variables (the store URL, the alert
# sinks: PERFWATCH_WEBHOOK, ...). A benchmark has no use for them and could print them: no worker gets them.
SECRET_ENV = ("PERFWATCH_STORE", *(f"PERFWATCH_{f.name.upper()}" for f in fields(AlertSinks) if f.name != "timeout"))
STDERR_TAIL = 64 * 1024  # bytes of a worker's stderr kept: its last line says why it died, and all of it may be GBs


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


def worker_env(size: str, run_dir: Path | None = None) -> dict[str, str]:
    """The child's environment, without the secrets (SECRET_ENV): the suite size, this perfwatch importable
    first, this process as the parent the worker must not outlive and, for a run's workers, the run's temp
    dir as their mark."""
    env = {name: value for name, value in os.environ.items() if name not in SECRET_ENV}
    env.pop(TIMEOUT_ENV, None)  # from a perfwatch run around this one; run_child sets each worker's own
    env[SIZE_ENV] = size
    env[PARENT_ENV] = str(os.getpid())
    if run_dir is not None:
        env[RUN_DIR_ENV] = str(run_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    return env


@dataclass(frozen=True)
class ChildOutcome:
    payload: dict | None
    returncode: int | None  # None: killed at the timeout
    stderr_tail: str


class StderrTail:
    """A child's stderr pipe, drained on a thread that keeps only its last ``limit`` bytes: a benchmark
    that writes gigabytes neither blocks on a full pipe nor fills the runner's memory or disk."""

    def __init__(self, stream: IO[bytes], limit: int = STDERR_TAIL):
        self._stream, self._limit = stream, limit
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, name="worker-stderr", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._stream:  # only this thread reads and closes it
            while chunk := self._stream.read1(1 << 16):
                with self._lock:
                    self._tail += chunk
                    del self._tail[:-self._limit]

    def last_line(self, wait: float = 1.0) -> str:
        """The last non-blank line, once the pipe is closed or after ``wait`` seconds (a process that
        outlived the worker may hold it open)."""
        self._thread.join(wait)
        with self._lock:
            text = self._tail.decode(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1].strip() if lines else ""


def run_child(args: list[str], out: Path, env: dict[str, str], timeout: float) -> ChildOutcome:
    """Run a worker in its own process group; on timeout kill the group (DataLoader workers too).

    When it ends, so does whatever it started and left running, even in a session of its own and
    reparented to init (found by the run's mark): it would otherwise run into the next benchmark's
    measurement, and outlive a runner killed then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "perfwatch.worker", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**env, TIMEOUT_ENV: repr(timeout)},
        start_new_session=True,
    )
    assert proc.stderr is not None
    stderr = StderrTail(proc.stderr)
    try:
        returncode: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:  # also on KeyboardInterrupt: never leave a benchmark running behind us
        kill_tree(proc.pid)
        proc.wait()
        if RUN_DIR_ENV in env:
            kill_all(marked_processes({env[RUN_DIR_ENV]}))
    payload = None
    if returncode is not None and out.exists():
        try:
            payload = json.loads(out.read_text())
        except json.JSONDecodeError:
            payload = None
    return ChildOutcome(payload, returncode, stderr.last_line())


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does (only the main thread can set a handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def started(pid: int) -> float | None:
    """When process ``pid`` started, None if there is none: with the pid, it tells a process from a later one."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temp directory for one discovery or run, marked with its owner (pid and start time) so that a
    later run can clean up after a killed one (clean_leftovers). While it is open SIGTERM acts as
    Ctrl-C, so the ``finally`` blocks kill the workers and remove it. At its end, any process that still
    carries its mark is killed: one a worker left behind, which no parent link leads to any more."""
    path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
    try:
        (path / OWNER).write_text(json.dumps({"pid": os.getpid(), "started": started(os.getpid())}))
        with terminate_as_interrupt():
            yield path
    finally:
        kill_all(marked_processes({str(path)}))
        shutil.rmtree(path, ignore_errors=True)


def discover(paths: list[Path], size: str) -> list[Benchmark]:
    """Benchmarks under ``paths`` (all sizes); a suite that fails to import is a UserError."""
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file or directory; pass an existing suite file or directory")
    with scratch() as run_dir:
        out = run_dir / "discovered.json"
        outcome = run_child(["discover", str(out), *map(str, paths)], out, worker_env(size, run_dir),
                            DISCOVERY_TIMEOUT)
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
            raise UserError(f"filter {pattern!r}: invalid regular expression ({exc})", setting="pattern") from None
        chosen = [b for b in chosen if regex.search(b.name)]
    return chosen


def nothing_selected(size: str, paths: list[Path], pattern: str | None) -> UserError:
    """The error for a selection that came out empty: where perfwatch looked, and how to see what is there."""
    return UserError(f"no benchmarks in the {size} suite of {', '.join(map(str, paths))}"
                     + (f" match the filter {pattern!r}" if pattern else "") + "; `perfwatch list` shows them",
                     setting="pattern" if pattern else None)


def failure_reason(outcome: ChildOutcome, timeout: float) -> tuple[str, str]:
    """(status, one-line error) for a worker that wrote no result."""
    if outcome.returncode in (None, -signal.SIGALRM):  # SIGALRM: the worker's own limit (worker.end_at)
        return "timeout", f"timed out after {timeout:g} s; set a larger `timeout` on the benchmark if it needs more"
    if outcome.returncode < 0:
        name = signal.Signals(-outcome.returncode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return "failed", f"benchmark process killed by {name}{hint}"
    return "failed", f"benchmark process exited with {outcome.returncode}: {outcome.stderr_tail or 'no output'}"


def result_of(bench: Benchmark, status: str, **fields: object) -> BenchResult:
    """A result for ``bench``: its identity, ``status`` and the measured ``fields``."""
    return BenchResult(name=bench.name, params=bench.params, kind=bench.kind, unit=bench.unit,
                       higher_is_better=bench.higher_is_better, status=status, version=bench.version,
                       pretty_name=bench.pretty_name, **fields)


def run_one(bench: Benchmark, size: str, run_dir: Path | None = None) -> tuple[BenchResult, str | None]:
    """Measure one benchmark in a fresh process, its files in ``run_dir`` (by default a scratch() of its
    own); returns the result and any traceback text."""
    budget, default_timeout = BUDGETS[size]
    timeout = float(bench.timeout or default_timeout)
    if bench.setup_cache_key:  # the worker may make the cache first, under its own limit (asv's)
        timeout += float(bench.setup_cache_timeout or timeout)
    if bench.unsupported:
        return result_of(bench, "skipped", error=bench.unsupported), None
    begun = time.perf_counter()
    with contextlib.ExitStack() as stack:
        parent = run_dir or stack.enter_context(scratch())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=parent)))
        spec, out = tmp / "spec.json", tmp / "result.json"
        spec.write_text(json.dumps({"benchmark": bench.to_dict(), "budget": asdict(budget)}))
        outcome = run_child(["run", str(spec), str(out)], out, worker_env(size, parent), timeout)
    duration = time.perf_counter() - begun
    if outcome.payload is None:
        status, error = failure_reason(outcome, timeout)
        return result_of(bench, status, error=error, duration_s=duration), None
    p = outcome.payload
    result = result_of(
        bench,
        p["status"],
        error=p.get("error"),
        samples=p.get("samples", []),
        number=p.get("number", 1),
        warmup_s=p.get("warmup_s", 0.0),
        duration_s=duration,
    )
    return result, p.get("traceback")


Progress = Callable[[str, Benchmark, "BenchResult | None"], None]


def so_far(run: RunRecord, benchmarks: list[Benchmark], results: list[BenchResult]) -> RunRecord:
    """The run as it stands: the finished results, and the rest failed as not run."""
    rest = [result_of(b, "failed", error=NOT_RUN) for b in benchmarks[len(results):]]
    return replace(run, benchmarks=results + rest)


def run_suite(
    benchmarks: list[Benchmark],
    size: str,
    progress: Progress | None = None,
    debug_log: Callable[[str], None] | None = None,
    store: RunStore | None = None,
) -> RunRecord:
    """Run each benchmark in turn and return the whole run; failures are recorded, not raised.

    With ``store``, nothing finished is lost: each result is journaled as it comes; a run that is
    interrupted (Ctrl-C, SIGTERM) or crashes stores what finished before the error goes on, and the
    journal of one killed outright is stored by the next run's clean_leftovers.
    """
    if size not in SIZES:
        raise UserError(f"unknown suite size {size!r}; use one of {', '.join(SIZES)}", setting="size")
    run = RunRecord(run_id=new_run_id(), created=utc_now_iso(), suite=size, env=fingerprint(), benchmarks=[])
    results: list[BenchResult] = []
    with scratch() as run_dir:
        try:
            for bench in benchmarks:
                if progress:
                    progress("start", bench, None)
                result, tb = run_one(bench, size, run_dir)
                if tb and debug_log:
                    debug_log(f"{bench.name}:\n{tb}")
                results.append(result)
                if store is not None:
                    journal = {"store": store.identity, "run": so_far(run, benchmarks, results).to_dict()}
                    write_atomic(run_dir / JOURNAL, json.dumps(journal, allow_nan=False))
                if progress:
                    progress("done", bench, result)
        except BaseException:
            if store is not None and results:
                log.warning("stopped after %d of %d benchmarks; stored what finished as %s",
                            len(results), len(benchmarks), store.save(so_far(run, benchmarks, results)))
            raise
    return replace(run, benchmarks=results)


def check_writable(directory: Path, what: str = "results", setting: str = "results_dir") -> None:
    """Prove now, before anything runs, that ``directory`` (created if missing) takes a new file.

    Writing one is the only honest test: permission bits do not stop root, a read-only mount does.
    """
    blocker = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        reason = f"{blocker} is a file, not a directory"
    else:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                return
        except OSError as exc:
            reason = exc.strerror or str(exc)
    raise UserError(f"{directory}: cannot write {what} ({reason}); pass a writable {what} directory",
                    setting=setting)


# --- after a killed run ---------------------------------------------------------------

def abandoned(path: Path) -> int | None:
    """The pid of the run that owned temp dir ``path`` if it is gone (a process that reused the pid does
    not count); None for a live run's, another user's, or anything else that matches the name."""
    try:
        if path.stat().st_uid != os.getuid():
            return None
        owner = json.loads((path / OWNER).read_text())
        now = started(owner["pid"])
        if now is None or abs(now - owner["started"]) > 1.0:  # /proc's boot time may wobble by a second
            return int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not a run's temp dir, or one still being made
    return None


def marked_processes(run_dirs: set[str]) -> list[psutil.Process]:
    """Live processes whose environment names one of ``run_dirs``: workers and all they started."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get(RUN_DIR_ENV) in run_dirs:
                found.append(process)
        except psutil.Error:
            continue
    return found


def kill_all(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Kill each of ``processes`` (those already gone are skipped); returns them."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return processes


def journaled_run(run_dir: Path, store: RunStore) -> RunRecord | None:
    """The run a killed run journaled for ``store``; None when it finished no benchmark."""
    try:
        journal = json.loads((run_dir / JOURNAL).read_text())
        if journal["store"] != store.identity:
            raise LookupError(journal["store"])  # someone else's: theirs to store
        return RunRecord.from_dict(journal["run"], str(run_dir / JOURNAL))
    except FileNotFoundError:
        return None


def clean_leftovers(store: RunStore) -> str | None:
    """Clean up after earlier runs that were killed: kill the processes they left, store in ``store`` the
    benchmarks they finished for it, remove their temp dirs. One line that says what was done, or None.

    A journal for another store is left for a run on that store.
    """
    leftovers = {p: pid for p in sorted(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"))
                 if (pid := abandoned(p)) is not None}
    processes = kill_all(marked_processes({str(p) for p in leftovers})) if leftovers else []
    notes, cleaned = [], 0
    for path, pid in leftovers.items():
        try:
            run = journaled_run(path, store)
            if run is not None:
                finished = sum(b.error != NOT_RUN for b in run.benchmarks)
                notes.append(f"stored what pid {pid} finished ({finished} of {len(run.benchmarks)} benchmarks) "
                             f"as {store.save(run)}")
        except (LookupError, ValueError, TypeError, UserError):  # another store's, unreadable, or unstorable
            continue
        shutil.rmtree(path, ignore_errors=True)
        notes.append(f"removed {path}")
        cleaned += 1
    if processes:
        notes.append(f"killed {len(processes)} process{'es' if len(processes) != 1 else ''} left running")
    runs = f"{cleaned} killed perfwatch run{'s' if cleaned != 1 else ''}"
    return f"cleaned up after {runs}: {'; '.join(notes)}" if notes else None
