"""The benchmark worker: runs in a fresh child process, measures one benchmark, writes JSON.

A benchmark that crashes, leaks or hangs takes down only this process; the runner
records it and goes on. Usage (internal)::

    python -m perfwatch.worker discover OUT.json PATH...
    python -m perfwatch.worker run SPEC.json OUT.json
    python -m perfwatch.worker setup-cache SPEC.json CACHE_DIR
    python -m perfwatch.worker serve

``serve`` keeps one benchmark live and answers requests one JSON line at a time on
stdin/stdout, so a parent can interleave two workers sample by sample (paired.py).
It first writes ``{"serve": SERVE_PROTOCOL}``, then answers, in order:

    {"op": "discover", "paths": [...]}             -> like discover's OUT.json
    {"op": "open", "benchmark": {...}, "budget": {...}, "number": N | null}
        -> {"status": "ok", "number", "warmup_s", "max_samples"} after setup, warm-up and
           calibration (a time_ benchmark given ``number`` only warms up), or a failure
    {"op": "sample"}                               -> {"status": "ok", "sample": x} or a failure
    {"op": "close"}                                -> {"status": "ok"} or a teardown failure; exits

A failure is ``{"status": "failed" | "skipped", "error": "one line", "traceback": "..."}``.
The budget is used as given: the parent resolves it once for both sides of a pair.

``setup-cache`` runs a benchmark's asv ``setup_cache`` and pickles its result into CACHE_DIR; the
worker of a benchmark that needs one starts it (setupcache.py).

A worker does not outlive its runner: given ``$PERFWATCH_PARENT_PID`` it ends its whole tree
when that process dies (PR_SET_PDEATHSIG), and given ``$PERFWATCH_WORKER_TIMEOUT`` it ends it
itself a little after the runner should have, in case the runner is stopped or hung.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import resource
import signal
import sys
import threading
import time
import timeit
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, TypeVar

from perfwatch.bench import asvkinds, identity, setupcache
from perfwatch.bench.package import SuiteLoadError, one_line_error, suite_files
from perfwatch.bench.suite import Benchmark, Target, discover, load_target
from perfwatch.errors import UserError
from perfwatch.proctree import kill_tree

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")
SERVE_PROTOCOL = 1  # paired.py looks for this name to tell whether a perfwatch can serve
PARENT_ENV = "PERFWATCH_PARENT_PID"  # the runner: when it dies, so does this worker's tree
TIMEOUT_ENV = "PERFWATCH_WORKER_TIMEOUT"  # the runner's timeout for this worker, in seconds
DEFAULT_TIMEOUT = 60.0  # asv's default_benchmark_timeout: a setup_cache's limit when nothing sets one
OWN_TIMEOUT_GRACE = 2.0  # the worker's own limit comes this much later: normally the runner's fires first
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

T = TypeVar("T")


@dataclass(frozen=True)
class Budget:
    """How long to warm up and sample; set by the suite size, overridden per benchmark (asv names)."""

    warmup_time: float
    sample_time: float  # a time_ sample averages enough calls to last at least this long
    min_repeat: int
    max_repeat: int
    max_time: float  # stop sampling after this long once min_repeat samples exist

    def for_benchmark(self, bench: Benchmark) -> Budget:
        min_repeat, max_repeat, max_time = self.min_repeat, self.max_repeat, self.max_time
        if isinstance(bench.repeat, int) and bench.repeat > 0:
            min_repeat = max_repeat = bench.repeat
        elif isinstance(bench.repeat, list) and len(bench.repeat) == 3:
            min_repeat, max_repeat, max_time = int(bench.repeat[0]), int(bench.repeat[1]), float(bench.repeat[2])
        return Budget(
            warmup_time=self.warmup_time if bench.warmup_time is None or bench.warmup_time < 0 else bench.warmup_time,
            sample_time=bench.sample_time or self.sample_time,
            min_repeat=min_repeat,
            max_repeat=max_repeat,
            max_time=max_time,
        )

    def spent(self, samples: int, elapsed: float) -> bool:
        """Sampling is over: max_repeat samples taken, or max_time passed once min_repeat exist."""
        return samples >= self.max_repeat or (samples >= self.min_repeat and elapsed >= self.max_time)


def time_calls(func: Callable[[], Any], number: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call over ``number`` calls by ``clock`` (asv's ``timer``), with the GC paused as ``timeit`` does."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        for _ in range(number):
            func()
        return (clock() - start) / number
    finally:
        if gc_was_enabled:
            gc.enable()


def time_fresh_calls(func: Callable[[], Any], redo_setup: Callable[[], Any], number: int,
                     clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call over ``number`` calls, each on freshly set-up state: asv_runner's rule (0.3 on,
    asv#966) for a ``time_`` benchmark with setup hooks. Only the calls are timed; the GC stays paused
    for the whole sample, setup included, as asv has it."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        total = 0.0
        for _ in range(number):
            redo_setup()
            start = clock()
            func()
            total += clock() - start
        return total / number
    finally:
        if gc_was_enabled:
            gc.enable()


def warm_up(func: Callable[[], Any], seconds: float) -> float:
    """Call ``func`` for ``seconds`` (at least once when seconds > 0); returns the time spent."""
    start = time.perf_counter()
    while seconds > 0:
        func()
        if time.perf_counter() - start >= seconds:
            break
    return time.perf_counter() - start


def calibrate(timer: Callable[[int], float], sample_time: float, warmup_time: float) -> tuple[int, float]:
    """Warm up, then pick how many calls one sample needs to last ``sample_time``; ``timer(n)`` gives the
    seconds per call over ``n`` calls.

    Returns (number, seconds spent warming up); calibration calls count as warm-up.
    """
    start = time.perf_counter()
    number = 1
    while True:
        per_call = timer(number)
        spent = time.perf_counter() - start
        if per_call * number >= sample_time:
            if spent >= warmup_time:
                return number, spent
        else:
            number = max(number + 1, min(number * 10, math.ceil(sample_time / max(per_call, 1e-9))))


def sample_loop(take: Callable[[], T], budget: Budget) -> list[T]:
    """Take samples until the budget is spent (Budget.spent)."""
    samples: list[T] = []
    start = time.perf_counter()
    while not budget.spent(len(samples), time.perf_counter() - start):
        samples.append(take())
    return samples


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so each sample sees only its own call."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class Sampler:
    """A warmed-up benchmark: ``take()`` measures one sample; the kind decides what a sample is."""

    take: Callable[[], float]
    number: int  # inner calls averaged into one time_ sample
    warmup_s: float
    max_samples: int | None = None  # a cap where only the first samples are honest


def fresh_state_sampler(loaded: LoadedBenchmark, budget: Budget, number: int | None) -> Sampler:
    """An asv project's time_ benchmark with setup hooks: each call on fresh state, ``number`` 1 unless set
    (asv_runner >= 0.3, asv#966); warmed up the same way, a call after a fresh setup at a time."""
    clock = identity.first_attr(loaded.sources, "timer", time.perf_counter)
    redo = loaded.redo_setup
    assert redo is not None
    calls = number or loaded.bench.number or 1
    one_call = timeit.Timer(stmt=loaded.call, setup=redo, timer=clock)  # one for all: 3.11 specializes its code
    warmup_s = warm_up(lambda: one_call.timeit(1), budget.warmup_time)
    if calls == 1:  # timed by timeit itself, as asv_runner does: its loop is in asv's numbers (~15 ns a call)
        return Sampler(lambda: one_call.timeit(1), calls, warmup_s)
    return Sampler(lambda: time_fresh_calls(loaded.call, redo, calls, clock), calls, warmup_s)


def prepare(loaded: LoadedBenchmark, budget: Budget, number: int | None = None) -> Sampler:
    """Warm up (and calibrate a time_ or timeraw_ benchmark, unless ``number`` or the benchmark fixes it)."""
    bench, func = loaded.bench, loaded.call
    if bench.kind in ("time", "timeraw"):
        if bench.kind == "time" and bench.fresh_setup and loaded.redo_setup is not None:
            return fresh_state_sampler(loaded, budget, number)
        if bench.kind == "time":
            clock = identity.first_attr(loaded.sources, "timer", time.perf_counter)
            timer, warm = (lambda n: time_calls(func, n, clock)), func
        else:
            timer = asvkinds.raw_timer(func, identity.timeraw_env(identity.first_attr(loaded.sources, "env")))

            def warm() -> None:  # one fresh interpreter, as a timeraw sample with number 1
                timer(1)
        fixed = number or bench.number
        if fixed:
            calls, warmup_s = fixed, warm_up(warm, budget.warmup_time)
        else:
            calls, warmup_s = calibrate(timer, budget.sample_time, budget.warmup_time)
        return Sampler(lambda: timer(calls), calls, warmup_s)

    if bench.kind == "mem":
        return Sampler(lambda: float(asvkinds.object_size(func())), 1, 0.0)

    if bench.kind == "peakmem":
        if not reset_peak_rss():  # without a reset only the first call's peak is honest

            def first_peak() -> float:
                func()
                return float(peak_rss_bytes())

            return Sampler(first_peak, 1, 0.0, max_samples=1)

        def one_peak() -> float:
            reset_peak_rss()
            func()
            return float(peak_rss_bytes())

        return Sampler(one_peak, 1, 0.0)

    if bench.kind == "track":
        warmup_s = 0.0
        if budget.warmup_time > 0:  # one discarded call: first calls pay for allocation, caches, JIT
            start = time.perf_counter()
            func()
            warmup_s = time.perf_counter() - start

        def one_value() -> float:
            value = func()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"track benchmark returned {value!r}; it must return a finite number")
            return float(value)

        return Sampler(one_value, 1, warmup_s)

    raise ValueError(f"unknown benchmark kind {bench.kind!r}")


def measure(loaded: LoadedBenchmark, budget: Budget) -> dict[str, Any]:
    """Raw samples of one benchmark, within its budget; asv's ``min_run_count`` timed calls at least
    (as far as ``max_repeat`` allows) before ``max_time`` may end the sampling."""
    sampler = prepare(loaded, budget)
    if sampler.max_samples is not None:
        cap = sampler.max_samples
        budget = replace(budget, min_repeat=min(budget.min_repeat, cap), max_repeat=min(budget.max_repeat, cap))
    if loaded.bench.min_run_count and loaded.bench.kind in ("time", "timeraw"):
        needed = math.ceil(loaded.bench.min_run_count / sampler.number)
        budget = replace(budget, min_repeat=min(budget.max_repeat, max(budget.min_repeat, needed)))
    return {"samples": sample_loop(sampler.take, budget), "number": sampler.number, "warmup_s": sampler.warmup_s}


def failed(exc: BaseException, bench: Benchmark, stage: str = "") -> dict[str, Any]:
    """The failure payload: a one-line error (prefixed by the stage, e.g. ``setup: ``) naming the suite's
    deepest line, and the traceback."""
    files = (suite_files(Path(bench.root)) if bench.root else set()) | {Path(bench.file)}
    return {"status": "failed", "error": stage + one_line_error(exc, files),
            "traceback": "".join(traceback.format_exception(exc))}


def skipped(exc: NotImplementedError, default: str) -> dict[str, Any]:
    """asv's way to skip a parameter combination: raise NotImplementedError."""
    return {"status": "skipped", "error": str(exc) or default}


@dataclass(frozen=True)
class LoadedBenchmark:
    """A benchmark imported and set up: ``call`` runs it once, ``teardown`` (if any) undoes setup;
    ``sources`` are where its attributes come from (method, instance, module), as in asv; ``redo_setup``
    (None without setup hooks) gives the next call fresh state: teardown then setup, skipped the first
    time, since setup has just run (asv's ``redo_setup``)."""

    bench: Benchmark
    call: Callable[[], Any]
    teardown: Callable[[], Any] | None
    sources: list[Any]
    redo_setup: Callable[[], Any] | None = None


def setup_cache_timeout(bench: Benchmark) -> float:
    """asv's limit for a setup_cache: its own ``timeout``, else the benchmark's, else this worker's."""
    return float(bench.setup_cache_timeout or bench.timeout or os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)


def cached_value(bench: Benchmark) -> tuple[Any, ...]:
    """``(value,)`` of the benchmark's setup_cache, made once per run, and this worker moved into its
    directory (as asv does); ``()`` without a setup_cache or when it returned None (asv passes nothing then)."""
    if not bench.setup_cache_key:
        return ()
    directory = setupcache.ensure(bench, setup_cache_timeout(bench), {PARENT_ENV: str(os.getpid())})
    value = setupcache.load(directory)
    os.chdir(directory)
    return () if value is None else (value,)


def load_benchmark(bench: Benchmark) -> LoadedBenchmark | dict[str, Any]:
    """Import the suite, make or load its setup_cache and run every ``setup`` (module, class, method, as asv
    does); a failure payload instead when one of them fails."""
    if bench.import_error:
        return {"status": "failed", "error": bench.import_error}
    try:
        target: Target = load_target(bench)
    except SuiteLoadError as exc:
        return {"status": "failed", "error": str(exc), "traceback": "".join(traceback.format_exception(exc))}
    except Exception as exc:  # noqa: BLE001  (the suite's own: a class that fails to instantiate, params that changed)
        return failed(exc, bench)
    try:
        args = cached_value(bench) + target.values
    except setupcache.SetupCacheFailed as exc:
        return {"status": "failed", "error": f"setup_cache: {exc}"}
    setups = identity.setups(target.sources)
    try:
        for setup in setups:
            setup(*args)
    except NotImplementedError as exc:
        return skipped(exc, "skipped by setup (NotImplementedError)")
    except BaseException as exc:  # noqa: BLE001  (a worker reports the suite's failure, never raises it)
        return failed(exc, bench, "setup: ")
    hooks = identity.teardowns(target.sources)

    def teardown() -> None:
        for hook in hooks:
            hook(*args)

    fresh = [False]  # setup has just run: the first call needs no other

    def redo_setup() -> None:
        if fresh[0]:
            for hook in (*hooks, *setups):
                hook(*args)
        fresh[0] = True

    # Called as asv_runner calls it: bare without arguments, else through one closure (a ~100 ns
    # benchmark pays for either, and asv's numbers include what asv does).
    call = (lambda: target.func(*args)) if args else target.func
    return LoadedBenchmark(bench, call, teardown if hooks else None, target.sources, redo_setup if setups else None)


def unload_benchmark(loaded: LoadedBenchmark) -> dict[str, Any] | None:
    """Run ``teardown``; a failure payload when it raises."""
    if loaded.teardown is None:
        return None
    try:
        loaded.teardown()
    except Exception as exc:  # noqa: BLE001  (as above)
        return failed(exc, loaded.bench, "teardown: ")
    return None


def run_benchmark(bench: Benchmark, budget: Budget) -> dict[str, Any]:
    """Set up, measure and tear down one benchmark; never raises."""
    loaded = load_benchmark(bench)
    if not isinstance(loaded, LoadedBenchmark):
        return loaded
    try:
        result = measure(loaded, budget.for_benchmark(bench))
        result["status"] = "ok"
    except NotImplementedError as exc:
        result = skipped(exc, "skipped (NotImplementedError)")
    except BaseException as exc:  # noqa: BLE001  (a worker reports the suite's failure, never raises it)
        result = failed(exc, bench)
    return unload_benchmark(loaded) or result


def discover_payload(paths: list[Path]) -> dict[str, Any]:
    """The benchmarks under ``paths`` as dicts (a module that failed to import as one of kind ``import``),
    or the error: a bad attribute, or a suite where no module imported."""
    try:
        benchmarks = discover(paths)
    except (SuiteLoadError, UserError) as exc:
        return {"error": str(exc)}
    broken = [b.import_error for b in benchmarks if b.import_error]
    if broken and len(broken) == len(benchmarks):
        more = f" (and {len(broken) - 1} more suite files failed to import)" if len(broken) > 1 else ""
        return {"error": broken[0] + more}
    return {"benchmarks": [b.to_dict() for b in benchmarks]}


class ServedBenchmark:
    """The one benchmark a serve-mode worker holds open between requests."""

    def __init__(self) -> None:
        self.loaded: LoadedBenchmark | None = None
        self.sampler: Sampler | None = None

    def open(self, request: dict[str, Any]) -> dict[str, Any]:
        bench = Benchmark.from_dict(request["benchmark"])
        loaded = load_benchmark(bench)
        if not isinstance(loaded, LoadedBenchmark):
            return loaded
        self.loaded = loaded
        try:
            self.sampler = prepare(loaded, Budget(**request["budget"]), request.get("number"))
        except NotImplementedError as exc:
            return skipped(exc, "skipped (NotImplementedError)")
        except BaseException as exc:  # noqa: BLE001  (a worker reports the suite's failure, never raises it)
            return failed(exc, bench)
        s = self.sampler
        return {"status": "ok", "number": s.number, "warmup_s": s.warmup_s, "max_samples": s.max_samples}

    def sample(self) -> dict[str, Any]:
        if self.loaded is None or self.sampler is None:
            return {"status": "failed", "error": "no benchmark open: send a successful 'open' first"}
        try:
            return {"status": "ok", "sample": self.sampler.take()}
        except NotImplementedError as exc:
            return skipped(exc, "skipped (NotImplementedError)")
        except BaseException as exc:  # noqa: BLE001  (a worker reports the suite's failure, never raises it)
            return failed(exc, self.loaded.bench)

    def close(self) -> dict[str, Any]:
        loaded, self.loaded, self.sampler = self.loaded, None, None
        return (unload_benchmark(loaded) if loaded else None) or {"status": "ok"}


def serve(requests: IO[str], replies: IO[str]) -> None:
    """Answer JSON-line requests (module doc) until ``close`` or the end of input."""

    def reply(payload: dict[str, Any]) -> None:
        replies.write(json.dumps(payload, allow_nan=False) + "\n")
        replies.flush()

    reply({"serve": SERVE_PROTOCOL})
    served = ServedBenchmark()
    try:
        for line in requests:
            request = json.loads(line)
            op = request.get("op")
            if op == "discover":
                reply(discover_payload([Path(p) for p in request["paths"]]))
            elif op == "open":
                reply(served.open(request))
            elif op == "sample":
                reply(served.sample())
            elif op == "close":
                reply(served.close())
                return
            else:
                reply({"status": "failed", "error": f"unknown serve request {op!r}"})
    finally:
        served.close()  # end of input without "close": still tear down


def serve_stdio() -> None:
    """Serve on this process's stdin/stdout, with fd 0 and 1 taken away from the benchmark:
    what it prints goes to stderr and cannot corrupt the protocol."""
    requests = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    serve(requests, replies)


def die_with_parent(parent: int) -> None:
    """End this worker's tree when ``parent`` dies, however it dies (kill -9 too).

    The kernel sends SIGTERM at the parent's death (PR_SET_PDEATHSIG); the handler kills the tree,
    since the kernel's signal reaches only this process. A handler inherited by a forked child
    (a DataLoader worker) acts as the default SIGTERM there.
    """
    me = os.getpid()

    def end(signum: int, frame: Any) -> None:
        if os.getpid() != me:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        kill_tree(me)

    signal.signal(signal.SIGTERM, end)
    prctl = getattr(ctypes.CDLL(None), "prctl", None)  # Linux only
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:  # it died before prctl: no signal will come
        kill_tree(me)


def end_at(seconds: float) -> None:
    """This worker's own time limit: after ``seconds`` a timer thread ends its tree with SIGALRM (the
    runner reads that as a timeout; SIGKILL follows if the benchmark set a SIGALRM handler); one second
    later the kernel's default SIGALRM ends the worker even while a benchmark holds the GIL."""
    me = os.getpid()

    def expire() -> None:
        kill_tree(me, signal.SIGALRM)
        os.kill(me, signal.SIGKILL)

    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # an ignored SIGALRM is inherited across exec
    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    signal.alarm(math.ceil(seconds) + 1)


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else ""
    if os.environ.get(PARENT_ENV):
        die_with_parent(int(os.environ[PARENT_ENV]))
    if os.environ.get(TIMEOUT_ENV):
        end_at(float(os.environ[TIMEOUT_ENV]) + OWN_TIMEOUT_GRACE)
    if mode == "serve":
        serve_stdio()
        return 0
    if mode == "discover":
        out, payload = Path(argv[1]), discover_payload([Path(p) for p in argv[2:]])
    elif mode == "run":
        spec, out = json.loads(Path(argv[1]).read_text()), Path(argv[2]).resolve()  # setup_cache moves the cwd
        payload = run_benchmark(Benchmark.from_dict(spec["benchmark"]), Budget(**spec["budget"]))
    elif mode == "setup-cache":
        setupcache.make(Benchmark.from_dict(json.loads(Path(argv[1]).read_text())), Path(argv[2]))
        return 0
    else:
        print(f"unknown worker mode {mode!r}", file=sys.stderr)
        return 2
    out.write_text(json.dumps(payload, allow_nan=False))  # strict JSON, as the results document is
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
