"""Prometheus adapter: the collector's snapshots and a StepTimer's steps as metric families.

Nothing is sampled at scrape time: ``PerfwatchMetrics.collect()`` only formats the
newest snapshot the collector's thread already took, plus the training counters a
StepTimer listener keeps, so a scrape costs milliseconds and never touches the
watched processes. One exporter serves one process (one per rank under torchrun);
prometheus_client's multiprocess mode is deliberately not used (docs/architecture.md).

Every metric is listed in docs/metrics.md; the names are a contract with grafana/.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from itertools import accumulate
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector as PrometheusCollector

from perfwatch.gpu import CLOCK_EVENT_REASONS, GpuSample
from perfwatch.instrument import PHASES, StepRecord
from perfwatch.monitoring.collector import CPU_MODES, Collector, HostSnapshot, Snapshot, TreeSnapshot
from perfwatch.monitoring.step_timing import read_published

log = logging.getLogger(__name__)

# Step durations from 1 ms (a tiny CPU model) to 60 s (a huge step with gradient accumulation).
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0)

try:
    VERSION = version("perfwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "unknown"


# ---------------------------------------------------------------- family helpers

Row = tuple[Sequence[str], float | int | None]


def _family(kind: type[Metric], name: str, doc: str, labels: Sequence[str], rows: Iterable[Row]) -> Metric | None:
    """A family of ``kind`` with the rows whose value is known; None when none is (absent, not zero)."""
    family = None
    for values, value in rows:
        if value is None:
            continue
        if family is None:
            family = kind(name, doc, labels=list(labels))
        family.add_metric(list(values), value)
    return family


def _gauge(name: str, doc: str, labels: Sequence[str], rows: Iterable[Row]) -> Metric | None:
    return _family(GaugeMetricFamily, name, doc, labels, rows)


def _counter(name: str, doc: str, labels: Sequence[str], rows: Iterable[Row]) -> Metric | None:
    return _family(CounterMetricFamily, name, doc, labels, rows)


# ---------------------------------------------------------------- training


def _detached(value: Any) -> Any:
    """A tensor without its autograd graph (no device sync here); anything else as given."""
    detach = getattr(value, "detach", None)
    return detach() if callable(detach) else value


class TrainingMetrics:
    """Step counters fed by a StepTimer listener (``observe``) and values from ``log``.

    ``observe`` runs in the training thread once per step: one lock and a few
    additions, no allocation kept. Scrapes run in server threads and hold the lock
    only to copy the numbers. Loss and learning rate are stored as given (a tensor
    detached, not read) and turned into floats at scrape time, so ``log`` never
    waits for the GPU; a scrape may (in its own thread).
    """

    def __init__(self, rank: str = "0", clock: Callable[[], float] = time.time) -> None:
        self.rank = rank
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets = [0] * (len(STEP_BUCKETS) + 1)  # the last one is +Inf
        self._step_seconds = 0.0
        self._steps = 0
        self._samples = 0
        self._phase_seconds = dict.fromkeys(PHASES, 0.0)
        self._last_step_time: float | None = None
        self._loss: Any = None
        self._learning_rate: Any = None
        self._unreadable: set[str] = set()

    def observe(self, record: StepRecord) -> None:
        """The StepTimer listener."""
        bucket = bisect_left(STEP_BUCKETS, record.wall)
        now = self._clock()
        with self._lock:
            self._buckets[bucket] += 1
            self._step_seconds += record.wall
            self._steps += 1
            self._samples += record.samples
            phase_seconds = self._phase_seconds
            for phase, seconds in record.phases.items():
                phase_seconds[phase] += seconds
            self._last_step_time = now

    def log(self, loss: Any = None, lr: Any = None) -> None:
        """Report the latest loss and/or learning rate (numbers or 0-d tensors); None keeps the last."""
        if loss is not None:
            self._loss = _detached(loss)
        if lr is not None:
            self._learning_rate = _detached(lr)

    def families(self) -> Iterator[Metric | None]:
        with self._lock:
            buckets = list(self._buckets)
            step_seconds, steps, samples = self._step_seconds, self._steps, self._samples
            phase_seconds = dict(self._phase_seconds)
            last_step_time = self._last_step_time
        yield from _step_families({self.rank: RankSteps(buckets, step_seconds, steps, samples, phase_seconds,
                                                        last_step_time)})
        rank = [self.rank]
        yield _gauge("perfwatch_train_loss", "Loss last reported with log().", ["rank"],
                     [(rank, self._read("loss", self._loss))])
        yield _gauge("perfwatch_train_learning_rate", "Learning rate last reported with log().", ["rank"],
                     [(rank, self._read("learning rate", self._learning_rate))])

    def _read(self, what: str, value: Any) -> float | None:
        """``value`` as a float, or None (with one warning per quantity) when it is not a number."""
        if value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: a tensor of several elements
            if what not in self._unreadable:
                self._unreadable.add(what)
                log.warning("perfwatch: the %s given to log() is not a number (%s); it is not exported", what, exc)
            return None


@dataclasses.dataclass
class RankSteps:
    """One rank's step counters, as the step families export them."""

    buckets: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(STEP_BUCKETS) + 1))
    step_seconds: float = 0.0
    steps: int = 0
    samples: int = 0
    phase_seconds: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    last_step_time: float | None = None


def _step_families(ranks: Mapping[str, RankSteps]) -> Iterator[Metric | None]:
    """The step families, the same whether a StepTimer in this process or a launched script's
    injected timing (``PublishedTraining``, one series per rank of a torchrun job) counted the steps."""
    histogram = HistogramMetricFamily(
        "perfwatch_train_step_duration_seconds", "Wall time of a training step (StepTimer).", labels=["rank"]
    )
    for rank, counted in ranks.items():
        histogram.add_metric([rank], list(zip((*map(str, STEP_BUCKETS), "+Inf"), accumulate(counted.buckets))),
                             sum_value=counted.step_seconds)
    yield histogram
    yield _counter("perfwatch_train_phase_seconds_total", "Time spent in each phase of the training steps.",
                   ["rank", "phase"], (([rank, phase], seconds) for rank, counted in ranks.items()
                                       for phase, seconds in counted.phase_seconds.items()))
    yield _counter("perfwatch_train_samples_total", "Samples trained on.", ["rank"],
                   [([rank], counted.samples) for rank, counted in ranks.items()])
    yield _counter("perfwatch_train_steps_total", "Training steps completed.", ["rank"],
                   [([rank], counted.steps) for rank, counted in ranks.items()])
    yield _gauge("perfwatch_train_last_step_timestamp_seconds", "Unix time when the last step completed.",
                 ["rank"], [([rank], counted.last_step_time) for rank, counted in ranks.items()])


class PublishedTraining:
    """The steps that ``perfwatch monitor``'s launched script published (zero-code step timing,
    perfwatch.monitoring.step_timing), read at scrape time and summed per rank over its processes
    (one rank ``rank`` outside torchrun; a restarted rank's processes add up). Exported with
    ``rank`` as for a StepTimer; nothing while nothing is published.

    Injected timing times data wait and the optimizer, not forward and backward, so DDP's wait at
    the gradient all-reduce (spent inside ``loss.backward()``) would hide in ``other``, where it
    evens out the ranks' steps. Where a rank's collective timing measured that wait and its
    backward is untimed, the wait is exported as ``backward``, where it is spent: ``other`` then
    holds the rank's own untimed compute, and the straggler rules, which take the wait out of
    backward, can tell the slow rank's ``other`` from the median rank's."""

    def __init__(self, directory: Path, rank: str = "0") -> None:
        self.directory = directory
        self.rank = rank

    def published(self) -> list[dict[str, Any]]:
        return [s for s in read_published(self.directory) if s.get("steps")]

    def families(self) -> Iterator[Metric | None]:
        ranks: dict[str, RankSteps] = {}
        for summary in self.published():
            counted = ranks.setdefault(str(summary.get("rank") or self.rank), RankSteps())
            if tuple(summary.get("bucket_bounds", ())) == STEP_BUCKETS:
                counted.buckets = [a + b for a, b in zip(counted.buckets, summary.get("buckets", ()))]
            totals = {phase: seconds for phase, seconds in summary.get("totals", {}).items() if phase in PHASES}
            wait = (summary.get("collective") or {}).get("wait_seconds") or 0.0
            if wait > 0 and not totals.get("backward"):
                totals["backward"] = min(wait, totals.get("other", 0.0))
                totals["other"] = totals.get("other", 0.0) - totals["backward"]
            for phase, seconds in totals.items():
                counted.phase_seconds[phase] += seconds
            counted.step_seconds += summary.get("wall", 0.0)
            counted.steps += summary.get("steps", 0)
            counted.samples += summary.get("samples", 0)
            last = summary.get("last_step_unix")
            if last is not None:
                counted.last_step_time = max(last, counted.last_step_time or last)
        if ranks:
            yield from _step_families(ranks)


# ---------------------------------------------------------------- snapshots


def _host_families(host: HostSnapshot) -> Iterator[Metric | None]:
    yield _counter("perfwatch_host_cpu_seconds_total", "CPU time of all cores, by mode.", ["mode"],
                   (([mode], getattr(host.cpu_seconds_total, mode)) for mode in CPU_MODES))
    yield _counter("perfwatch_host_cpu_core_seconds_total", "CPU time of each core, by mode.", ["core", "mode"],
                   (([str(core), mode], getattr(times, mode))
                    for core, times in enumerate(host.per_core_seconds_total) for mode in CPU_MODES))
    yield _gauge("perfwatch_host_load_average", "System load average over a window.", ["window"],
                 [(["1m"], host.load1), (["5m"], host.load5), (["15m"], host.load15)])
    memory = host.memory
    yield _gauge("perfwatch_host_memory_bytes", "Physical memory by kind.", ["kind"], [
        (["total"], memory.total_bytes), (["available"], memory.available_bytes), (["used"], memory.used_bytes),
        (["cached"], memory.cached_bytes), (["buffers"], memory.buffers_bytes),
    ])
    yield _gauge("perfwatch_host_swap_bytes", "Swap space by kind.", ["kind"],
                 [(["total"], memory.swap_total_bytes), (["used"], memory.swap_used_bytes)])
    yield _counter("perfwatch_host_swap_io_bytes_total", "Bytes swapped in from and out to disk.", ["direction"],
                   [(["in"], memory.swap_in_bytes_total), (["out"], memory.swap_out_bytes_total)])
    for name, field, doc in (
        ("perfwatch_host_disk_read_bytes_total", "read_bytes_total", "Bytes read from a disk."),
        ("perfwatch_host_disk_written_bytes_total", "write_bytes_total", "Bytes written to a disk."),
        ("perfwatch_host_disk_reads_total", "reads_total", "Reads completed by a disk."),
        ("perfwatch_host_disk_writes_total", "writes_total", "Writes completed by a disk."),
        ("perfwatch_host_disk_busy_seconds_total", "busy_seconds_total", "Time a disk was busy with IO."),
    ):
        yield _counter(name, doc, ["device"], (([disk.device], getattr(disk, field)) for disk in host.disks))
    for name, field, doc in (
        ("perfwatch_host_network_receive_bytes_total", "receive_bytes_total", "Bytes received by an interface."),
        ("perfwatch_host_network_transmit_bytes_total", "transmit_bytes_total", "Bytes sent by an interface."),
        ("perfwatch_host_network_receive_packets_total", "receive_packets_total", "Packets received by an interface."),
        ("perfwatch_host_network_transmit_packets_total", "transmit_packets_total", "Packets sent by an interface."),
    ):
        yield _counter(name, doc, ["interface"], (([nic.interface], getattr(nic, field)) for nic in host.networks))
    yield _counter("perfwatch_host_pressure_stall_seconds_total",
                   "Time tasks stalled waiting for a resource (PSI); some: at least one task, full: all.",
                   ["resource", "kind"],
                   (row for p in host.pressure for row in (([p.resource, "some"], p.some_stall_seconds_total),
                                                           ([p.resource, "full"], p.full_stall_seconds_total))))
    yield _gauge("perfwatch_host_pressure_avg10_ratio", "Share of the last 10 s tasks stalled on a resource (PSI).",
                 ["resource", "kind"],
                 (row for p in host.pressure for row in (([p.resource, "some"], p.some_avg10_ratio),
                                                         ([p.resource, "full"], p.full_avg10_ratio))))


_ROLE_COUNTERS = (
    ("perfwatch_process_cpu_seconds_total", "cpu_seconds_total", "CPU time (user + system) of the role's processes."),
    ("perfwatch_process_io_read_bytes_total", "io_read_bytes_total", "Bytes the role's processes read from storage."),
    ("perfwatch_process_io_written_bytes_total", "io_write_bytes_total",
     "Bytes the role's processes wrote to storage."),
)
_ROLE_GAUGES = (
    ("perfwatch_process_resident_memory_bytes", "rss_bytes", "Resident memory (RSS) of the role's live processes."),
    ("perfwatch_process_unique_memory_bytes", "uss_bytes",
     "Memory only the role's processes use (USS), when sampled."),
    ("perfwatch_process_proportional_memory_bytes", "pss_bytes",
     "Proportional set size (PSS) of the role's processes, when sampled."),
    ("perfwatch_process_threads", "threads", "Threads of the role's live processes."),
)


def _tree_families(tree: TreeSnapshot, extra: Mapping[str, str]) -> Iterator[Metric | None]:
    """Per role (``main`` the watched PID, ``worker`` its descendants); ``extra`` labels (rank) on each."""
    names, values = ["role", *extra], list(extra.values())
    roles = (tree.main, tree.workers)
    for name, field, doc in _ROLE_COUNTERS:
        yield _counter(name, doc, names, (([role.role, *values], getattr(role, field)) for role in roles))
    for name, field, doc in _ROLE_GAUGES:
        yield _gauge(name, doc, names, (([role.role, *values], getattr(role, field)) for role in roles))
    yield _counter("perfwatch_process_context_switches_total", "Context switches of the role's processes, by kind.",
                   [*names, "kind"],
                   (row for role in roles for row in (
                       ([role.role, *values, "voluntary"], role.voluntary_context_switches_total),
                       ([role.role, *values, "involuntary"], role.involuntary_context_switches_total))))
    yield _gauge("perfwatch_process_workers", "Live descendant processes (DataLoader workers) of the watched process.",
                 list(extra), [(values, tree.workers.count)])
    yield _gauge("perfwatch_process_up", "1 while the watched process runs, 0 once it has exited.",
                 list(extra), [(values, int(tree.alive))])
    yield _counter("perfwatch_collector_access_denied_total",
                   "Process readings refused by the kernel (left out of the sums).", [],
                   [((), tree.access_denied_total)])


_GPU_GAUGES = (
    ("perfwatch_gpu_utilization_ratio", "utilization_ratio", "Share of time a kernel ran on the GPU."),
    ("perfwatch_gpu_memory_utilization_ratio", "memory_utilization_ratio",
     "Share of time device memory was read or written."),
    ("perfwatch_gpu_memory_used_bytes", "memory_used_bytes", "Device memory in use."),
    ("perfwatch_gpu_memory_total_bytes", "memory_total_bytes", "Device memory in all."),
    ("perfwatch_gpu_power_watts", "power_watts", "Power draw."),
    ("perfwatch_gpu_temperature_celsius", "temperature_celsius", "GPU core temperature."),
    ("perfwatch_gpu_sm_clock_hertz", "sm_clock_hz", "SM clock."),
    ("perfwatch_gpu_memory_clock_hertz", "memory_clock_hz", "Memory clock."),
    ("perfwatch_gpu_pcie_transmit_bytes_per_second", "pcie_tx_bytes_per_second",
     "PCIe bytes sent by the GPU per second (NVML's 20 ms window)."),
    ("perfwatch_gpu_pcie_receive_bytes_per_second", "pcie_rx_bytes_per_second",
     "PCIe bytes received by the GPU per second (NVML's 20 ms window)."),
    ("perfwatch_gpu_last_xid", "last_xid", "Code of the last XID error (absent before the first)."),
    ("perfwatch_gpu_sm_active_ratio", "sm_active_ratio", "Share of SM cycles with a warp resident (GPM, Hopper+)."),
    ("perfwatch_gpu_tensor_active_ratio", "tensor_active_ratio", "Share of cycles a tensor pipe was busy (GPM)."),
    ("perfwatch_gpu_dram_active_ratio", "dram_bandwidth_ratio", "Share of peak DRAM bandwidth used (GPM)."),
)
_GPU_COUNTERS = (
    ("perfwatch_gpu_energy_joules_total", "energy_joules_total", "Energy used since the driver loaded."),
    ("perfwatch_gpu_xid_errors_total", "xid_errors_total", "XID errors seen since the collector started."),
)


def _gpu_families(
    gpus: Sequence[GpuSample], tree: TreeSnapshot | None, extra: Mapping[str, str]
) -> Iterator[Metric | None]:
    """Per GPU index; the memory of the watched tree's processes by their role in ``tree``."""
    yield _gauge("perfwatch_gpu_info", "1 for each GPU, with its model and UUID.", ["gpu", "model", "uuid"],
                 (([str(gpu.index), gpu.name, gpu.uuid or ""], 1) for gpu in gpus))
    for name, field, doc in _GPU_GAUGES:
        yield _gauge(name, doc, ["gpu"], (([str(gpu.index)], getattr(gpu, field)) for gpu in gpus))
    for name, field, doc in _GPU_COUNTERS:
        yield _counter(name, doc, ["gpu"], (([str(gpu.index)], getattr(gpu, field)) for gpu in gpus))
    yield _gauge("perfwatch_gpu_clock_event_active", "1 while a reason holds the clocks down (throttling).",
                 ["gpu", "reason"],
                 (([str(gpu.index), reason], int(reason in gpu.clock_event_reasons))
                  for gpu in gpus if gpu.clock_event_reasons is not None for reason, _ in CLOCK_EVENT_REASONS))
    yield _counter("perfwatch_gpu_ecc_errors_total", "ECC errors since the driver loaded, by kind.", ["gpu", "kind"],
                   (row for gpu in gpus for row in (([str(gpu.index), "corrected"], gpu.ecc_corrected_errors_total),
                                                    ([str(gpu.index), "uncorrected"],
                                                     gpu.ecc_uncorrected_errors_total))))
    roles = {pid: role.role for role in (tree.main, tree.workers) for pid in role.pids} if tree else {}
    by_role: dict[tuple[str, str], int] = {}
    for gpu in gpus:
        for pid, used in gpu.process_memory_bytes:
            key = (str(gpu.index), roles[pid])
            by_role[key] = by_role.get(key, 0) + used
    yield _gauge("perfwatch_gpu_process_memory_bytes", "Device memory used by the watched processes, by role.",
                 ["gpu", "role", *extra],
                 (([gpu, role, *extra.values()], used) for (gpu, role), used in by_role.items()))


class _SamplerCpu:
    """The sampler's cumulative CPU, summed from the per-snapshot costs in the collector's history.

    Exact while scrapes come at least every ``history * interval`` seconds; snapshots
    that dropped out of the history unseen are counted at the mean cost of those seen.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen_seq = 0
        self._seconds = 0.0

    def total(self, history: Sequence[Snapshot]) -> float:
        with self._lock:
            new = [s.sample_cpu_seconds for s in history if s.seq > self._seen_seq]
            if new:
                unseen = history[-len(new)].seq - self._seen_seq - 1
                self._seconds += sum(new) * (1 + unseen / len(new))
                self._seen_seq = history[-1].seq
            return self._seconds


class PerfwatchMetrics(PrometheusCollector):
    """The custom Collector: training metrics, the newest snapshot's metrics and perfwatch's own.

    ``collector`` may be None (training and self metrics only) and may be set after the
    server started: ``perfwatch monitor -- CMD`` launches the command once its port is
    known to be free, and only then has a PID to watch. ``process_labels`` (the rank,
    in-process) go on the metrics of the watched process tree.
    """

    def __init__(
        self,
        collector: Collector | None = None,
        *,
        training: TrainingMetrics | PublishedTraining | None = None,
        process_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.collector = collector
        self.training = training
        self._process_labels = dict(process_labels or {})
        self._sampler_cpu = _SamplerCpu()
        self._failed_parts: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        collector = self.collector
        snapshot = collector.latest() if collector is not None else None
        if self.training is not None:
            yield from self._part("training", self.training.families)
        if snapshot is not None:
            if snapshot.host is not None:
                yield from self._part("host", _host_families, snapshot.host)
            if snapshot.tree is not None:
                yield from self._part("process", _tree_families, snapshot.tree, self._process_labels)
            yield from self._part("gpu", _gpu_families, snapshot.gpus, snapshot.tree, self._process_labels)
        yield from self._part("self", self._self_families, collector, snapshot)

    def _self_families(self, collector: Collector | None, snapshot: Snapshot | None) -> Iterator[Metric | None]:
        yield _gauge("perfwatch_exporter_info", "1, with the perfwatch version serving these metrics.", ["version"],
                     [([VERSION], 1)])
        if snapshot is None:
            return
        yield _counter("perfwatch_collector_samples_total", "Snapshots the collector took.", [], [((), snapshot.seq)])
        yield _counter("perfwatch_collector_errors_total", "Readings that failed (logged, sampling went on).", [],
                       [((), snapshot.errors_total)])
        yield _counter("perfwatch_collector_sample_cpu_seconds_total", "CPU time the collector spent sampling.", [],
                       [((), self._sampler_cpu.total(collector.history()))])

    def _part(self, name: str, families: Callable[..., Iterable[Metric | None]], *args: Any) -> list[Metric]:
        """One part's families; a part that fails is left out of the scrape (warned once), not the others."""
        try:
            return [family for family in families(*args) if family is not None]
        except Exception:
            if name not in self._failed_parts:
                self._failed_parts.add(name)
                log.warning("perfwatch: exporting the %s metrics failed; they are left out", name, exc_info=True)
            return []
