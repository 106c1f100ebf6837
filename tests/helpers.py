"""What the test modules share, so that none imports another (tests/test_test_layout.py checks):
running the real `perfwatch` command and reading its errors, writing suites, a small process tree,
literal runs, reading scrapes, and an NVML stand-in for the GPU this machine lacks."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pynvml
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import binary

from perfwatch.results import BenchResult, RunRecord
from perfwatch.store import Store

GIB = 1 << 30


def run_perfwatch(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed command line exactly as a user would, in ``cwd``."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "perfwatch", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    """``proc`` exited with ``code`` and said why in one line as the CLI prints a perfwatch error
    ("perfwatch: error: " for bad input, "perfwatch: " otherwise), without a traceback, naming each needle.
    The busy-machine warning is a line of its own that depends on the load, not on the input: it is left out."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("warning: the machine is busy")]
    assert proc.returncode == code, f"exit {proc.returncode}, not {code}:\n{proc.stderr}"
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("perfwatch: ") and lines[0].startswith("perfwatch: error: ") == (code == 2), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_suite(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


# A process with two plain multiprocessing children that exits when its stdin closes:
# the smallest real process tree for the collector and exporter to watch.
TREE_CHILD = textwrap.dedent(
    """
    import multiprocessing, sys, time
    if __name__ == "__main__":
        children = [multiprocessing.Process(target=time.sleep, args=(60,), daemon=True) for _ in range(2)]
        for child in children:
            child.start()
        print("ready", flush=True)
        sys.stdin.read()
    """
)


# ---------------------------------------------------------------- literal runs

# 20 timings around 1 with ~1% spread (scaled() makes them milliseconds); a 10% step is clear, +-50% noise hides it.
STEADY = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00, 1.01, 0.99, 1.00, 1.02,
          0.98, 1.01, 1.00, 0.99, 1.00, 1.01, 0.99, 1.00, 1.02, 0.98]
NOISY = [0.6, 1.5, 0.9, 1.3, 0.7, 1.1, 1.6, 0.8, 1.2, 1.0]

MACHINE = {"host": "ci-1", "cpu": "AMD EPYC 7763", "cpu_cores_logical": 2, "memory_bytes": 8 * 1024**3,
           "gpu": None, "torch": "2.13.0", "python": "3.11.7", "git_commit": "a" * 40, "git_dirty": False,
           "machine_id": "0123456789ab"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def scaled(values, factor):
    return [round(v * factor, 6) * 1e-3 for v in values]


def bench(name, samples, *, status="ok", unit="seconds", higher_is_better=False, error=None) -> BenchResult:
    kind = {"seconds": "time", "bytes": "peakmem"}.get(unit, "track")
    return BenchResult(name=name, params={}, kind=kind, unit=unit, higher_is_better=higher_is_better,
                       status=status, error=error, samples=list(samples))


def store_run(project: Path, run_id: str, *benchmarks: BenchResult, env: dict | None = None,
              suite: str = "ci") -> RunRecord:
    """A run as `perfwatch run` would have stored it, with the given samples."""
    run = RunRecord(run_id=run_id, created="2026-01-01T00:00:00+00:00", suite=suite, env=env or MACHINE,
                    benchmarks=list(benchmarks))
    Store(project / ".perfwatch" / "results").save(run)
    return run


def run_record(run_id: str, created: str, benchmarks: list[BenchResult], commit: str = COMMIT) -> RunRecord:
    env = {"host": "ci-runner-7", "git_commit": commit, "git_dirty": False}
    return RunRecord(run_id=run_id, created=created, suite="ci", env=env, benchmarks=benchmarks)


def suite_run(run_id: str, created: str, *, slower: float = 1.0, broken: bool = False,
              commit: str = COMMIT) -> RunRecord:
    """The reference suites' units: a time, a peak memory, throughputs, a ratio; ``slower``
    scales the loader's batch time, ``broken`` fails the training step."""
    def steady(scale: float) -> list[float]:
        return [v * scale for v in STEADY]

    return run_record(run_id, created, [
        bench("loader.time_batch(workers=2)", steady(slower)),
        bench("training.time_step", [] if broken else STEADY, status="failed" if broken else "ok",
              error="RuntimeError: CUDA out of memory" if broken else None),
        bench("training.peakmem_step", steady(2e8), unit="bytes"),
        bench("loader.track_samples_per_s", steady(5000), unit="samples/s", higher_is_better=True),
        bench("loader.track_bytes_per_s", steady(3e8), unit="bytes/s", higher_is_better=True),
        bench("training.track_mfu", steady(0.4), unit="ratio", higher_is_better=True),
    ], commit=commit)


# A baseline, a clean candidate, and one with a 20% slower loader and a failed training step.
BASELINE = suite_run("20250101T000000Z-aaaaaa", "2025-01-01T00:00:00+00:00")
CLEAN = suite_run("20250102T000000Z-bbbbbb", "2025-01-02T00:00:00+00:00")
BAD = suite_run("20250103T000000Z-cccccc", "2025-01-03T00:00:00+00:00", slower=1.2, broken=True)


# ---------------------------------------------------------------- reading scrapes


def ranks_printed(stdout: str) -> list[dict]:
    """The ``{"rank": ...}`` objects the ranks of a job printed, by rank. The ranks share one stdout,
    so one rank's newline can land after the other's object: each object is found where it starts."""
    decoder = json.JSONDecoder()
    found = [decoder.raw_decode(stdout, match.start())[0] for match in re.finditer(r'\{"rank": ', stdout)]
    return sorted(found, key=lambda printed: printed["rank"])


def scrape(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def wait_for_scrape(url: str, condition=lambda text: True, timeout: float = 15.0) -> str:
    """The first scrape of ``url`` whose text satisfies ``condition``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = scrape(url)
            if condition(last):
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"no satisfying scrape of {url} within {timeout} s; last: {last!r:.2000}")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value of every sample in an exposition text."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def types(text: str) -> dict[str, str]:
    """Family name (as the parser gives it: counters without ``_total``) -> type."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def assert_promtool_clean(text: str) -> None:
    result = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                            timeout=30)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def documented_metrics(prefix: str = "perfwatch_") -> dict[str, str]:
    """Name -> type of every metric docs/metrics.md lists under ``prefix``."""
    docs = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    return {name: kind for name, kind in re.findall(r"^\| `(perfwatch_\w+)` \| (\w+) \|", docs, re.MULTILINE)
            if name.startswith(prefix)}


# ---------------------------------------------------------------- NVML stand-in

WATCHED, OTHER_WATCHED, STRANGER = 4242, 4343, 999


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # pynvml maps the code to NVMLError_NotSupported etc.


NOT_SUPPORTED = nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)


class StandInNvml:
    """Two GPUs: 0 is Hopper-like and answers everything, 1 is old and answers little."""

    GPM_PERCENT = {
        pynvml.NVML_GPM_METRIC_SM_UTIL: 55.0,
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 22.5,
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 70.0,
    }

    def __init__(self, init_error: int | None = None, count: int = 2,
                 watched: tuple[int, ...] = (WATCHED, OTHER_WATCHED)):
        self.init_error = init_error
        self.count = count
        self.watched = watched
        self.calls: Counter[str] = Counter()
        self.xid_queue = [SimpleNamespace(device=0, eventData=79)]

    def __getattr__(self, name):
        value = getattr(pynvml, name)
        if callable(value) and not isinstance(value, type):
            raise AttributeError(f"the stand-in does not answer {name}")  # a call the test forgot
        return value

    def _answer(self, name: str, handle: int, modern, old=NOT_SUPPORTED):
        """Device 0 gives ``modern``; device 1 gives ``old``, or raises it when it is an NVML error."""
        self.calls[f"{name}:{handle}"] += 1
        if handle == 0:
            return modern
        if isinstance(old, pynvml.NVMLError):
            raise old
        return old

    # life cycle and inventory
    def nvmlInit(self):
        if self.init_error is not None:
            raise nvml_error(self.init_error)

    def nvmlShutdown(self):
        self.calls["shutdown"] += 1

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetIndex(self, handle):
        return handle

    def nvmlDeviceGetName(self, handle):
        return [b"NVIDIA H100 80GB HBM3", "Tesla V100"][handle]

    def nvmlDeviceGetUUID(self, handle):
        return self._answer("uuid", handle, "GPU-0000", "GPU-1111")

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    # readings
    def nvmlDeviceGetUtilizationRates(self, handle):
        return self._answer("utilization", handle, SimpleNamespace(gpu=87, memory=40), SimpleNamespace(gpu=5, memory=1))

    def nvmlDeviceGetMemoryInfo(self, handle):
        memory = SimpleNamespace(used=10 * GIB, total=80 * GIB, free=70 * GIB)
        return self._answer("memory", handle, memory, SimpleNamespace(used=GIB, total=16 * GIB, free=15 * GIB))

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._answer("power", handle, 350_123)  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self._answer("energy", handle, 123_456_789)  # mJ

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._answer("temperature", handle, 61, 45)

    def nvmlDeviceGetClockInfo(self, handle, clock):
        mhz = {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 2619}[clock]
        return self._answer(f"clock{clock}", handle, mhz, 1380)

    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        kb_per_s = {pynvml.NVML_PCIE_UTIL_TX_BYTES: 1000, pynvml.NVML_PCIE_UTIL_RX_BYTES: 2000}[counter]
        return self._answer("pcie", handle, kb_per_s)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        bits = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
        return self._answer("reasons", handle, bits, nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND))

    def nvmlDeviceGetTotalEccErrors(self, handle, error_type, counter_type):
        assert counter_type == pynvml.NVML_VOLATILE_ECC
        corrected = error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
        return self._answer(f"ecc{error_type}", handle, 3 if corrected else 0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        processes = [
            SimpleNamespace(pid=self.watched[0], usedGpuMemory=GIB),
            SimpleNamespace(pid=STRANGER, usedGpuMemory=5 * GIB),
            SimpleNamespace(pid=self.watched[-1], usedGpuMemory=None),  # not available (WDDM, MIG)
        ]
        return self._answer("processes", handle, processes, [])

    # GPM (Hopper)
    def nvmlGpmQueryDeviceSupport(self, handle):
        return SimpleNamespace(isSupportedDevice=1 if handle == 0 else 0)

    def nvmlGpmSampleAlloc(self):
        self.calls["gpm_alloc"] += 1
        return pynvml.c_nvmlGpmSample_t()

    def nvmlGpmSampleFree(self, sample):
        self.calls["gpm_free"] += 1

    def nvmlGpmSampleGet(self, handle, sample):
        self.calls[f"gpm_sample:{handle}"] += 1
        return sample

    def nvmlGpmMetricsGet(self, request):
        assert request.version == pynvml.NVML_GPM_METRICS_GET_VERSION
        for metric in request.metrics[: request.numMetrics]:
            metric.value = self.GPM_PERCENT[metric.metricId]
            metric.nvmlReturn = pynvml.NVML_SUCCESS
        return request

    # XID events
    def nvmlEventSetCreate(self):
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle, event_types, event_set):
        assert event_types & pynvml.nvmlEventTypeXidCriticalError
        self._answer("register_events", handle, None)

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        assert timeout_ms == 0, "the sampler must never wait for events"
        if not self.xid_queue:
            raise nvml_error(pynvml.NVML_ERROR_TIMEOUT)
        return self.xid_queue.pop(0)

    def nvmlEventSetFree(self, event_set):
        self.calls["event_set_free"] += 1


def measured_project(project: Path, suite: str, settings: str | None = None) -> Path:
    """``project`` with ``suite`` as suites/tiny.py (and ``settings`` as perfwatch.toml), one stored
    ci run of it and that run saved as the baseline: what `perfwatch ci` compares against."""
    write_suite(project / "suites", "tiny.py", suite)
    if settings is not None:
        (project / "perfwatch.toml").write_text(settings)
    for args in (("run", "--suite", "ci"), ("baseline", "save")):
        proc = run_perfwatch(*args, cwd=project)
        assert proc.returncode == 0, proc.stderr
    return project


# ---------------------------------------------------------------- scripts/

@contextmanager
def script_module(name: str) -> Iterator[ModuleType]:
    """scripts/<name>.py imported as module ``name`` (registered in sys.modules while in use, as its
    dataclasses need), for testing a benchmark script's pure helpers."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def chromium() -> str:
    """Debian's chromium for the browser tests: skipped where it is missing, a failure on CI (which installs it)."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("chromium is not installed, and CI must run the browser tests "
                        "(.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs these tests")
    return path


def hung_process_report(pid: int) -> str:
    """What a process that outlived its test's wait is doing, for the failure message: its signal masks (an
    ignored SIGINT is inherited from the parent) and py-spy's dump of its Python threads and its children's."""
    from perfwatch.profile.pyspy import find_pyspy, install_dirs

    try:
        status = Path(f"/proc/{pid}/status").read_text()
        masks = " ".join(line for line in status.splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
    except OSError as exc:
        masks = f"(no /proc/{pid}/status: {exc.strerror})"
    pyspy = find_pyspy(install_dirs())
    if pyspy is None:
        return f"{masks}; py-spy not found"
    dump = subprocess.run([pyspy, "dump", "--pid", str(pid), "--subprocesses"], capture_output=True, text=True,
                          timeout=60, check=False)
    return f"{masks}\n{(dump.stdout + dump.stderr)[-6000:]}"


def default_sigint() -> None:
    """A Popen ``preexec_fn`` for a child that a test interrupts: SIGINT as a terminal gives it. A test run
    started in the background (``nohup pytest &``) ignores SIGINT, its children inherit that, and Python
    keeps an inherited ignore, so a Ctrl-C test would hang there. It runs between fork and exec and only
    calls signal(), which is async-signal-safe, so a threaded test process is no concern."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
