"""The benchmark worker: runs in a fresh child process, measures one benchmark, writes JSON.

A benchmark that crashes, leaks or hangs takes down only this process; the runner
records it and goes on. Usage (internal)::

    python -m perfwatch.worker discover OUT.json PATH...
    python -m perfwatch.worker run SPEC.json OUT.json
"""

from __future__ import annotations

import gc
import json
import math
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .suite import Benchmark, SuiteLoadError, discover, import_suite, resolve_target, lookup_attr

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


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


def time_calls(func: Callable[[], Any], number: int) -> float:
    """Seconds per call over ``number`` calls, with the GC paused as ``timeit`` does."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            func()
        return (time.perf_counter() - start) / number
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


def calibrate(func: Callable[[], Any], sample_time: float, warmup_time: float) -> tuple[int, float]:
    """Warm up, then pick how many calls one sample needs to last ``sample_time``.

    Returns (number, seconds spent warming up); calibration calls count as warm-up.
    """
    start = time.perf_counter()
    number = 1
    while True:
        per_call = time_calls(func, number)
        spent = time.perf_counter() - start
        if per_call * number >= sample_time:
            if spent >= warmup_time:
                return number, spent
        else:
            number = max(number + 1, min(number * 10, math.ceil(sample_time / max(per_call, 1e-9))))


def sample_loop(take: Callable[[], float], budget: Budget) -> list[float]:
    """Take samples until max_repeat, or max_time once min_repeat samples exist."""
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < budget.max_repeat:
        if len(samples) >= budget.min_repeat and time.perf_counter() - start >= budget.max_time:
            break
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


def measure(bench: Benchmark, func: Callable[[], Any], budget: Budget) -> dict[str, Any]:
    """Raw samples of one benchmark; the kind decides what a sample is."""
    if bench.kind == "time":
        if bench.number:
            number, warmup_s = bench.number, warm_up(func, budget.warmup_time)
        else:
            number, warmup_s = calibrate(func, budget.sample_time, budget.warmup_time)
        samples = sample_loop(lambda: time_calls(func, number), budget)
        return {"samples": samples, "number": number, "warmup_s": warmup_s}

    if bench.kind == "peakmem":
        if not reset_peak_rss():  # without a reset only the first call's peak is honest
            func()
            return {"samples": [float(peak_rss_bytes())], "number": 1, "warmup_s": 0.0}

        def one_peak() -> float:
            reset_peak_rss()
            func()
            return float(peak_rss_bytes())

        return {"samples": sample_loop(one_peak, budget), "number": 1, "warmup_s": 0.0}

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

        return {"samples": sample_loop(one_value, budget), "number": 1, "warmup_s": warmup_s}

    raise ValueError(f"unknown benchmark kind {bench.kind!r}")


def one_line_error(exc: BaseException, file: str) -> str:
    """``Type: message (suite.py:LINE)``, naming the deepest line in the suite file."""
    where = ""
    for frame, line in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == file:
            where = f" ({Path(file).name}:{line})"
    message = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {message}{where}"


def run_benchmark(bench: Benchmark, budget: Budget) -> dict[str, Any]:
    """Set up, measure and tear down one benchmark; never raises."""
    try:
        module = import_suite(Path(bench.file), bench.module)
        owner, values, func = resolve_target(module, bench.qualname, bench.param_index)
    except (SuiteLoadError, AttributeError, IndexError) as exc:
        return {"status": "failed", "error": str(exc), "traceback": traceback.format_exc()}

    setup = lookup_attr("setup", func, owner)
    teardown = lookup_attr("teardown", func, owner)
    try:
        if setup is not None:
            setup(*values)
    except NotImplementedError as exc:  # asv's way to skip a parameter combination
        return {"status": "skipped", "error": str(exc) or "skipped by setup (NotImplementedError)"}
    except BaseException as exc:
        return {"status": "failed", "error": "setup: " + one_line_error(exc, bench.file), "traceback": traceback.format_exc()}

    try:
        result = measure(bench, lambda: func(*values), budget.for_benchmark(bench))
        result["status"] = "ok"
    except NotImplementedError as exc:
        result = {"status": "skipped", "error": str(exc) or "skipped (NotImplementedError)"}
    except BaseException as exc:
        result = {"status": "failed", "error": one_line_error(exc, bench.file), "traceback": traceback.format_exc()}
    finally:
        if teardown is not None:
            try:
                teardown(*values)
            except Exception as exc:
                result = {"status": "failed", "error": "teardown: " + one_line_error(exc, bench.file), "traceback": traceback.format_exc()}
    return result


def main(argv: list[str]) -> int:
    mode, out = argv[0], Path(argv[1]) if argv[0] == "discover" else Path(argv[2])
    if mode == "discover":
        try:
            payload: dict[str, Any] = {"benchmarks": [b.to_dict() for b in discover([Path(p) for p in argv[2:]])]}
        except SuiteLoadError as exc:
            payload = {"error": str(exc)}
    elif mode == "run":
        spec = json.loads(Path(argv[1]).read_text())
        payload = run_benchmark(Benchmark.from_dict(spec["benchmark"]), Budget(**spec["budget"]))
    else:
        print(f"unknown worker mode {mode!r}", file=sys.stderr)
        return 2
    out.write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
