"""Bottleneck classification and recommendations: pure functions over measurements.

``diagnose(Measurements)`` returns the report's ``bottleneck``, ``phases``,
``findings`` and ``recommendations`` (docs/architecture.md). Every threshold below is named and
cites where it comes from; every expected gain is a bound derived from the measured
shares (Amdahl's law, and the machine's cores where the work is CPU-bound), with its
reasoning spelled out, never a promise.

Where the phase shares come from, best first: a StepTimer in the script (exact
totals), py-spy stacks of the training thread (sampled wall time), or only the
Collector's resource usage (no shares; a weak guess at the primary bottleneck).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

CATEGORIES = ("data_loading", "host_to_device", "compute", "other")

# Phases of the training thread's wall time and the category each counts toward.
# "sync" (.item(), .cpu(), synchronize) is waiting for the device to finish queued
# work, i.e. device compute; it is also reported on its own as a finding.
PHASE_CATEGORY = {
    "data_loading": "data_loading",
    "host_to_device": "host_to_device",
    "forward": "compute",
    "backward": "compute",
    "optimizer": "compute",
    "sync": "compute",
    "checkpoint": "other",
    "logging": "other",
    "other": "other",
}
PHASES = tuple(PHASE_CATEGORY)
STEPTIMER_PHASES = {"data_wait": "data_loading", "h2d": "host_to_device", "forward": "forward",
                    "backward": "backward", "optimizer": "optimizer", "other": "other"}

# TF input-pipeline analyzer: input >= 20% of step time is highly input-bound, 5-20%
# moderately; the PyTorch TensorBoard plugin suggests num_workers above 5%.
HIGH_INPUT_SHARE = 0.20
MODERATE_INPUT_SHARE = 0.05
# PyTorch TensorBoard plugin: GPU utilization under 50% -> larger batch.
GPU_UNDERUSED = 0.50
GPU_BUSY = 0.80
H2D_SHARE = 0.10
SYNC_SHARE = 0.05
CHECKPOINT_SHARE = 0.05
LOGGING_SHARE = 0.05
OPTIMIZER_SHARE = 0.15
ZERO_GRAD_SHARE = 0.02
WORKER_STARTUP_SHARE = 0.02
COMPUTE_BOUND_SHARE = 0.50
HEALTHY_COMPUTE_SHARE = 0.80
# A DataLoader worker runs one thread (torch sets 1 intra-op thread in workers):
# >= 0.8 cores each is saturated, < 0.5 while the loop waits means blocked.
WORKER_SATURATED_CORES = 0.8
WORKER_BLOCKED_CORES = 0.5
# The training thread holds the GIL in Python/numpy transforms, releases it while
# blocked on a read, a sleep or a queue: a data-loading GIL share above this is CPU work.
GIL_CPU_BOUND = 0.5
GIL_CONTENTION_OTHERS = 0.2
IOWAIT_STORAGE = 0.10
# Loading in the training process (num_workers=0) that keeps it this busy, with little iowait, is
# CPU-bound even when the GIL is released: native decoders (PIL, torchvision.io) release it.
INLINE_CPU_BOUND_CORES = 0.7
IO_WORKERS_PER_CORE = 4  # workers blocked on storage need no core each; past this, memory is the limit
MEMORY_AVAILABLE_HIGH = 0.05  # severity high below 5% available, moderate below 10%
MEMORY_AVAILABLE_MODERATE = 0.10
HOST_SATURATED = 0.90
MIN_STACK_SAMPLES = 50  # fewer main-thread samples than this: no stack-based shares
MIN_STEPS = 3
# How far each source is trusted when it is sure of its numbers (the sampling error
# is accounted separately): StepTimer phases are the script's own clock; stacks are
# attributed by rules that can miss a custom loader; the Collector sees no phases.
SOURCE_WEIGHT = {"steptimer": 0.95, "pyspy": 0.9, "collector": 0.5}
# "other" made mostly of code no attribution rule knows may be a loader or a training
# step the rules miss: halve the confidence.
UNRECOGNIZED_OTHER_DISCOUNT = 0.5
# Assumed speedups of compute knobs, for their Amdahl bounds (stated in each reasoning).
AMP_KERNEL_SPEEDUP = 2.0
COMPILE_KERNEL_SPEEDUP = 1.3


@dataclass(frozen=True)
class Resources:
    """The Collector's view of the profiled window, reduced to what the rules use.

    CPU figures are cores (1.0 = one core busy for the whole window); ratios are 0..1.
    None where the Collector could not read the value.
    """

    seconds: float
    cores: int
    host_busy_ratio: float | None = None  # mean share of CPU time not idle and not iowait
    host_iowait_ratio: float | None = None
    load1_max: float | None = None
    memory_available_ratio_min: float | None = None
    swap_used_bytes_max: int | None = None
    swap_io_bytes_per_second: float | None = None
    main_cpu_cores: float | None = None
    main_threads_max: int | None = None
    main_involuntary_switches_per_second: float | None = None
    workers_max: int = 0
    worker_cpu_cores: float | None = None
    worker_read_bytes_per_second: float | None = None
    worker_rss_bytes_max: int | None = None
    gpu_utilization_mean: float | None = None

    @property
    def tree_cpu_cores(self) -> float | None:
        if self.main_cpu_cores is None:
            return None
        return self.main_cpu_cores + (self.worker_cpu_cores or 0.0)

    @property
    def cores_per_worker(self) -> float | None:
        if not self.workers_max or self.worker_cpu_cores is None:
            return None
        return self.worker_cpu_cores / self.workers_max


@dataclass(frozen=True)
class StackEvidence:
    """What py-spy saw of the training process, in samples of its main thread (wall pass,
    ``rate`` per second) unless said otherwise."""

    rate: float
    phases: dict[str, int]  # per phase in PHASES; interpreter start-up and imports excluded
    startup: int = 0
    data_detail: dict[str, int] = field(default_factory=dict)  # inline_fetch, collate, waiting_for_workers, worker_startup
    gil: dict[str, float] = field(default_factory=dict)  # per phase: share of its wall time the main thread held the GIL
    gil_other_threads: float | None = None  # share of wall time other threads of the process held the GIL
    workers: dict[str, int] = field(default_factory=dict)  # worker main threads: fetch, waiting_for_indices, other
    zero_grad: int = 0
    single_tensor_optimizer: int = 0  # in torch.optim's per-parameter Python loops (_single_tensor_*)
    compiled: bool = False  # torch._dynamo / inductor frames seen
    convolution: bool = False  # Conv*d.forward frames seen

    @property
    def total(self) -> int:
        return sum(self.phases.values())


@dataclass(frozen=True)
class Measurements:
    """Everything the rules look at; any part may be missing."""

    resources: Resources | None = None
    stacks: StackEvidence | None = None
    steptimer: dict[str, Any] | None = None  # StepTimer.summary() totals, summed over the script's timers
    intra_op_threads: int | None = None
    intra_op_threads_source: str = "unknown"
    uses_gpu: bool = False  # the training process tree holds memory on a GPU


# ---------------------------------------------------------------- the Collector's rows


def summarize(rows: list[dict[str, Any]], cores: int) -> Resources:
    """Reduce the profiler's Collector rows (see ``profile.collector_row``) to ``Resources``.

    Counters become rates over the span of the rows (the workers' over the rows where
    workers exist, so start-up before the first worker does not dilute them); gauges
    their mean, max or min.
    """
    if not rows:
        return Resources(seconds=0.0, cores=cores)
    with_workers = [row for row in rows if row.get("workers")]

    def rate(key: str, span: list[dict[str, Any]] = rows) -> float | None:
        if len(span) < 2 or span[0].get(key) is None or span[-1].get(key) is None:
            return None
        seconds = span[-1]["t"] - span[0]["t"]
        return max(span[-1][key] - span[0][key], 0) / seconds if seconds > 0 else None

    def values(key: str) -> list[float]:
        return [row[key] for row in rows if row.get(key) is not None]

    def mean(key: str) -> float | None:
        found = values(key)
        return sum(found) / len(found) if found else None

    available = [row["mem_available"] / row["mem_total"] for row in rows if row.get("mem_total")]
    gpu = [u for row in rows for u in row.get("gpu_util") or () if u is not None]
    return Resources(
        seconds=rows[-1]["t"] - rows[0]["t"],
        cores=cores,
        host_busy_ratio=mean("cpu_busy"),
        host_iowait_ratio=mean("cpu_iowait"),
        load1_max=max(values("load1"), default=None),
        memory_available_ratio_min=min(available, default=None),
        swap_used_bytes_max=max(values("swap_used"), default=None),
        swap_io_bytes_per_second=rate("swap_io"),
        main_cpu_cores=rate("main_cpu"),
        main_threads_max=max(values("main_threads"), default=None),
        main_involuntary_switches_per_second=rate("main_involuntary"),
        workers_max=int(max(values("workers"), default=0)),
        worker_cpu_cores=rate("worker_cpu", with_workers),
        worker_read_bytes_per_second=rate("worker_read", with_workers),
        worker_rss_bytes_max=max(values("worker_rss"), default=None),
        gpu_utilization_mean=sum(gpu) / len(gpu) if gpu else None,
    )


# ---------------------------------------------------------------- numbers


def amdahl(fraction: float, speedup: float = math.inf) -> float:
    """Whole-loop speedup when ``fraction`` of its wall time runs ``speedup`` times faster."""
    fraction = min(max(fraction, 0.0), 1.0)
    remaining = (1.0 - fraction) + (fraction / speedup if math.isfinite(speedup) else 0.0)
    return math.inf if remaining <= 0 else 1.0 / remaining


def gain(fraction: float, what: str, speedup: float = math.inf, cpu_cap: float | None = None) -> dict[str, Any]:
    """An ``expected_gain``: the Amdahl bound for making ``what`` (``fraction`` of wall time)
    ``speedup`` times faster, capped by ``cpu_cap`` (cores / cores in use) where the work needs CPU."""
    bound = amdahl(fraction, speedup)
    if math.isfinite(speedup):
        reasoning = (f"{what} is {fraction:.0%} of wall time; if it ran {speedup:g}x faster the loop would "
                     f"speed up by at most 1/(1 - {fraction:.2f} + {fraction:.2f}/{speedup:g}) = {bound:.2f}x")
    else:
        reasoning = (f"{what} is {fraction:.0%} of wall time; removing it entirely speeds the loop up by "
                     f"at most 1/(1 - {fraction:.2f}) = {bound:.2f}x (Amdahl)")
    basis = "amdahl"
    if cpu_cap is not None and cpu_cap < bound:
        bound = cpu_cap
        basis = "amdahl+cores"
        reasoning += (f"; but the work needs CPU and the process tree already uses 1/{cpu_cap:.2f} of the "
                      f"cores, so at most {cpu_cap:.2f}x")
    return {"speedup_at_most": round(bound, 2) if math.isfinite(bound) else None, "basis": basis,
            "fraction": round(fraction, 4), "reasoning": reasoning}


def confidence(shares: dict[str, float], samples: int, source: str) -> float:
    """How sure the primary bottleneck is right, 0..1.

    The source's trust (``SOURCE_WEIGHT``) times the probability that the largest share
    really exceeds the runner-up given ``samples`` observations: the normal approximation
    to their multinomial difference, Var(p1 - p2) = (p1 + p2 - (p1 - p2)^2) / n.
    """
    if samples <= 0 or not shares:
        return 0.0
    ranked = sorted(shares.values(), reverse=True) + [0.0]
    p1, p2 = ranked[0], ranked[1]
    se = math.sqrt(max(p1 + p2 - (p1 - p2) ** 2, 1e-12) / samples)
    return round(SOURCE_WEIGHT[source] * NormalDist().cdf((p1 - p2) / se), 3)


def category_shares(phase_shares: dict[str, float]) -> dict[str, float]:
    shares = dict.fromkeys(CATEGORIES, 0.0)
    for phase, share in phase_shares.items():
        shares[PHASE_CATEGORY[phase]] += share
    return shares


def _normalized(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {phase: counts.get(phase, 0) / total for phase in PHASES} if total > 0 else {}


def _split_by_stacks(exact: dict[str, float], stack_counts: dict[str, float]) -> dict[str, float]:
    """Exact data-wait and optimizer shares (injected timing), the rest of the step split among the
    other phases as py-spy's samples split it: each source where it is the better one."""
    measured = ("data_loading", "optimizer")
    rest = 1.0 - sum(exact.get(p, 0.0) for p in measured)
    others = {p: c for p, c in stack_counts.items() if p not in measured and c > 0}
    total = sum(others.values())
    if total <= 0:
        return exact
    return {p: exact.get(p, 0.0) if p in measured else rest * others.get(p, 0) / total for p in PHASES}


def phase_shares(m: Measurements) -> tuple[dict[str, float], str, int]:
    """(share of wall time per phase, source, observations): the best source available."""
    timer = m.steptimer
    if timer and timer.get("steps", 0) >= MIN_STEPS and timer.get("wall", 0) > 0:
        seconds: dict[str, float] = {}
        for name, value in timer["totals"].items():
            phase = STEPTIMER_PHASES.get(name, "other")
            seconds[phase] = seconds.get(phase, 0.0) + value
        shares = _normalized(seconds)
        if timer.get("injected") and m.stacks is not None and m.stacks.total >= MIN_STACK_SAMPLES:
            shares = _split_by_stacks(shares, m.stacks.phases)
        return shares, "steptimer", int(timer["steps"])
    if m.stacks is not None and m.stacks.total >= MIN_STACK_SAMPLES:
        return _normalized(m.stacks.phases), "pyspy", m.stacks.total
    return {}, "collector", 0


# ---------------------------------------------------------------- the rules


@dataclass
class _Diagnosis:
    """The findings and recommendations the rules add, in order."""

    m: Measurements
    phases: dict[str, float]
    shares: dict[str, float]
    findings: list[dict[str, Any]] = field(default_factory=list)
    recommendations: list[dict[str, Any]] = field(default_factory=list)

    def find(self, id: str, severity: str, title: str, **evidence: Any) -> str:
        self.findings.append({"id": id, "severity": severity, "title": title,
                              "evidence": {k: _rounded(v) for k, v in evidence.items()}})
        return id

    def recommend(self, id: str, title: str, evidence: str, expected_gain: dict[str, Any], finding: str,
                  knobs: dict[str, Any] | None = None) -> None:
        if any(r["id"] == id for r in self.recommendations):
            return  # one recommendation per knob; the first (strongest) evidence wins
        self.recommendations.append({"id": id, "title": title, "evidence": evidence, "expected_gain": expected_gain,
                                     "finding": finding, "knobs": knobs or {}})

    def detail(self, phase: str) -> float:
        """A fine phase's share: from the stacks when there are enough (a StepTimer's "other"
        does not say what it was), else from the phase shares."""
        stacks = self.m.stacks
        if stacks is not None and stacks.total >= MIN_STACK_SAMPLES:
            return self.stack_share(stacks.phases.get(phase, 0))
        return self.phases.get(phase, 0.0)

    def stack_share(self, samples: int) -> float:
        stacks = self.m.stacks
        return samples / stacks.total if stacks and stacks.total else 0.0

    @property
    def idle_cores(self) -> float | None:
        """Cores nobody used, by the host's CPU accounting (other processes count too)."""
        r = self.m.resources
        if r is None:
            return None
        if r.host_busy_ratio is not None:
            return r.cores * (1.0 - r.host_busy_ratio)
        return None if r.tree_cpu_cores is None else r.cores - r.tree_cpu_cores

    @property
    def cpu_cap(self) -> float | None:
        """cores / cores in use: how much faster CPU-bound work could possibly go on this machine."""
        r = self.m.resources
        if r is None or not r.tree_cpu_cores:
            return None
        return max(r.cores / r.tree_cpu_cores, 1.0)


def _ceil(value: float) -> int:
    """Round up, ignoring float noise (0.8 / 0.2 is 4.000000000000001)."""
    return math.ceil(value - 1e-9)


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _input_bound(d: _Diagnosis) -> None:
    share = d.shares.get("data_loading", 0.0)
    if share < MODERATE_INPUT_SHARE:
        return
    severity = "high" if share >= HIGH_INPUT_SHARE else "moderate"
    r, stacks = d.m.resources, d.m.stacks
    workers = r.workers_max if r else 0
    per_worker = r.cores_per_worker if r else None
    cause, evidence = _input_cause(d, workers, per_worker)
    finding = d.find("input_bound", severity,
                     f"{'Highly' if severity == 'high' else 'Moderately'} input-bound: the training loop waits "
                     f"for data {share:.0%} of the time ({_CAUSE_TEXT[cause]})",
                     data_loading_share=share, cause=cause, workers=workers, **evidence)
    waiting = f"the loop waits for data {share:.0%} of wall time"
    keep_up = _ceil(share / max(1.0 - share, 0.05))  # workers at one batch per step time each keep pace
    cores = r.cores if r else None
    if stacks is not None and stacks.data_detail.get("worker_startup", 0) / max(stacks.total, 1) >= WORKER_STARTUP_SHARE:
        startup = d.stack_share(stacks.data_detail["worker_startup"])
        d.recommend("persistent_workers", "Keep workers alive across epochs: DataLoader(persistent_workers=True)",
                    f"starting and stopping DataLoader workers takes {startup:.0%} of wall time",
                    gain(startup, "worker start-up"), finding, {"persistent_workers": True})
    if cause in ("inline_cpu", "inline_blocked", "inline"):
        suggested = keep_up if cause == "inline_blocked" or cores is None else min(keep_up, max(1, cores - 1))
        note = "" if suggested == keep_up else f" (capped at cores - 1 = {suggested}; {keep_up} would keep pace)"
        d.recommend("num_workers", f"Load batches in worker processes: DataLoader(num_workers={suggested}, "
                    "persistent_workers=True)",
                    f"num_workers=0: {waiting}, all of it on the training thread; {keep_up} worker(s) producing "
                    f"a batch per step would overlap it with compute{note}",
                    gain(share, "data loading", cpu_cap=d.cpu_cap if cause != "inline_blocked" else None),
                    finding, {"num_workers": suggested, "persistent_workers": True})
    elif cause == "workers_cpu_saturated":
        wanted = _ceil(workers / max(1.0 - share, 0.05))
        headroom = d.idle_cores or 0.0
        if headroom >= 0.75:
            suggested = min(wanted, workers + int(headroom + 0.25))
            d.recommend("num_workers", f"Add DataLoader workers: num_workers={suggested}",
                        f"{workers} workers each use {per_worker:.2f} cores (saturated) and {headroom:.1f} cores "
                        f"are idle; {waiting}", gain(share, "data loading", cpu_cap=d.cpu_cap), finding,
                        {"num_workers": suggested})
        d.recommend("cheaper_transforms", "Make per-sample transforms cheaper: cache decoded/resized samples, "
                    "move augmentation to the GPU (batched), or use a faster decoder",
                    f"{workers} workers each use {per_worker:.2f} cores in transforms and {waiting}",
                    gain(share, "data loading", cpu_cap=d.cpu_cap), finding)
    elif cause == "storage":
        needed = max(workers * 2, _ceil(max(workers, 1) / max(1.0 - share, 0.05)))
        suggested = min(needed, max(IO_WORKERS_PER_CORE * (cores or 1), workers * 2))
        note = "" if suggested == needed else f" ({needed} would hide all of it; each worker costs memory)"
        d.recommend("num_workers", f"Overlap storage latency with more workers: num_workers={suggested}",
                    f"{waiting} while {workers} worker(s) use only {per_worker or 0:.2f} cores each: they are "
                    f"blocked on reads, and blocked workers cost no CPU, so more of them than cores is fine{note}",
                    gain(share, "waiting on storage"), finding, {"num_workers": suggested})
        d.recommend("prefetch_factor", "Queue more batches per worker to absorb slow reads: "
                    "DataLoader(prefetch_factor=4)",
                    "slow, variable reads stall the loop whenever the queue of ready batches runs dry",
                    gain(share, "waiting on storage"), finding, {"prefetch_factor": 4})
        d.recommend("storage_format", "Store samples packed: one memory-mapped .npy or Parquet file instead of "
                    "many small files (or copy the data set to local disk)",
                    "per-file latency dominates loading; packed formats turn thousands of opens into large "
                    "sequential reads", gain(share, "waiting on storage"), finding)
    elif cause == "too_few_workers":
        headroom = d.idle_cores or 0.0
        suggested = workers + max(1, int(headroom))
        d.recommend("num_workers", f"Add DataLoader workers: num_workers={suggested}",
                    f"{waiting} and {headroom:.1f} cores are idle", gain(share, "data loading", cpu_cap=d.cpu_cap),
                    finding, {"num_workers": suggested})
    else:
        d.recommend("prefetch_factor", "Queue more batches per worker: DataLoader(prefetch_factor=4, "
                    "persistent_workers=True)", waiting, gain(share, "data loading"), finding,
                    {"prefetch_factor": 4, "persistent_workers": True})


_CAUSE_TEXT = {
    "inline_cpu": "num_workers=0 and the per-sample work is CPU-bound on the training thread",
    "inline_blocked": "num_workers=0 and the training thread is blocked in the dataset, likely on storage",
    "inline": "num_workers=0: the data is loaded on the training thread",
    "workers_cpu_saturated": "the workers are CPU-saturated by per-sample transforms",
    "storage": "the workers are blocked, not computing: waiting on storage",
    "too_few_workers": "too few workers for the idle cores",
    "unknown": "workers neither saturated nor blocked on storage",
}


def _input_cause(d: _Diagnosis, workers: int, per_worker: float | None) -> tuple[str, dict[str, Any]]:
    """Why the loop waits for data, and the numbers that say so."""
    r, stacks = d.m.resources, d.m.stacks
    evidence: dict[str, Any] = {}
    if r is not None:
        evidence.update(worker_cpu_cores=r.worker_cpu_cores, host_iowait_ratio=r.host_iowait_ratio,
                        worker_read_bytes_per_second=r.worker_read_bytes_per_second)
    if workers == 0:
        gil = stacks.gil.get("data_loading") if stacks else None
        busy = r.main_cpu_cores if r is not None else None
        iowait = r.host_iowait_ratio if r is not None else None
        evidence.update(main_cpu_cores=busy)
        if gil is not None:
            evidence["data_loading_gil_share"] = gil
        if busy is not None and busy >= INLINE_CPU_BOUND_CORES and (iowait or 0.0) < IOWAIT_STORAGE:
            return "inline_cpu", evidence  # busy and not waiting on storage: whatever holds the GIL
        if gil is None:
            return "inline", evidence
        return ("inline_cpu" if gil >= GIL_CPU_BOUND else "inline_blocked"), evidence
    evidence["cores_per_worker"] = per_worker
    if stacks is not None and stacks.workers:
        busy = stacks.workers.get("fetch", 0) / max(sum(stacks.workers.values()), 1)
        evidence["worker_busy_share"] = busy
    if per_worker is not None and per_worker >= WORKER_SATURATED_CORES:
        return "workers_cpu_saturated", evidence
    iowait = r.host_iowait_ratio if r else None
    busy_in_fetch = evidence.get("worker_busy_share", 1.0) >= 0.5
    if (per_worker is not None and per_worker < WORKER_BLOCKED_CORES and busy_in_fetch) or (
            iowait is not None and iowait >= IOWAIT_STORAGE):
        return "storage", evidence
    if (d.idle_cores or 0.0) >= 1.0:
        return "too_few_workers", evidence
    return "unknown", evidence


def _host_to_device(d: _Diagnosis) -> None:
    share = d.shares.get("host_to_device", 0.0)
    if share < H2D_SHARE:
        return
    finding = d.find("host_to_device", "high" if share >= HIGH_INPUT_SHARE else "moderate",
                     f"Host-to-device copies take {share:.0%} of wall time", host_to_device_share=share)
    d.recommend("pin_memory", "Pin batches and copy asynchronously: DataLoader(pin_memory=True) and "
                ".to(device, non_blocking=True)",
                f"copies take {share:.0%} of wall time; from pinned memory they overlap with compute",
                gain(share, "host-to-device copying"), finding, {"pin_memory": True, "non_blocking": True})


def _gpu(d: _Diagnosis) -> None:
    r = d.m.resources
    util = r.gpu_utilization_mean if r else None
    if not d.m.uses_gpu or util is None or util >= GPU_UNDERUSED:
        return
    finding = d.find("gpu_underused", "high", f"The GPU is busy only {util:.0%} of the time",
                     gpu_utilization=util)
    d.recommend("batch_size", "Increase the batch size (scale the learning rate with it)",
                f"GPU utilization {util:.0%} < {GPU_UNDERUSED:.0%}: each step launches too little work "
                "(PyTorch TensorBoard plugin rule)",
                gain(1.0 - util, "GPU idle time"), finding, {"batch_size": "x2"})


def _syncs(d: _Diagnosis) -> None:
    share = d.detail("sync")
    if share < SYNC_SHARE:
        return
    finding = d.find("host_device_syncs", "moderate",
                     f"The training thread waits in .item()/.cpu()/synchronize {share:.0%} of the time",
                     sync_share=share)
    d.recommend("avoid_item", "Do not call .item()/.cpu() every step: accumulate metrics on the device and "
                "read them every N steps",
                f"syncs take {share:.0%} of wall time and stop the host from queueing the next step's kernels",
                gain(share, "synchronizing"), finding)


def _memory(d: _Diagnosis) -> None:
    r = d.m.resources
    if r is None:
        return
    available, swap_io = r.memory_available_ratio_min, r.swap_io_bytes_per_second
    swapping = bool(swap_io) and swap_io > 0
    if not swapping and (available is None or available >= MEMORY_AVAILABLE_MODERATE):
        return
    severity = "high" if swapping or (available is not None and available < MEMORY_AVAILABLE_HIGH) else "moderate"
    finding = d.find("memory_pressure", severity,
                     "Memory pressure: " + ("the machine is swapping" if swapping
                                            else f"only {available:.0%} of memory is available"),
                     memory_available_ratio_min=available, swap_io_bytes_per_second=swap_io,
                     swap_used_bytes_max=r.swap_used_bytes_max, worker_rss_bytes_max=r.worker_rss_bytes_max)
    d.recommend("reduce_memory", "Lower host memory use: fewer workers or a smaller prefetch_factor, keep the "
                "dataset's index in numpy arrays rather than Python lists (copy-on-access in workers)",
                "swapping or reclaiming page cache stalls both loading and compute", gain(0.0, "memory pressure"),
                finding)


def _oversubscription(d: _Diagnosis) -> None:
    r, threads = d.m.resources, d.m.intra_op_threads
    if r is None or threads is None or r.host_busy_ratio is None:
        return
    busy_workers = r.worker_cpu_cores or 0.0
    demand = threads + busy_workers
    if demand <= r.cores + 0.5 or r.host_busy_ratio < HOST_SATURATED:
        return
    finding = d.find("cpu_oversubscribed", "moderate",
                     f"CPU oversubscribed: {threads} intra-op threads + workers using {busy_workers:.1f} cores "
                     f"on {r.cores} cores", intra_op_threads=threads,
                     intra_op_threads_source=d.m.intra_op_threads_source, worker_cpu_cores=busy_workers,
                     cores=r.cores, host_busy_ratio=r.host_busy_ratio, load1_max=r.load1_max,
                     main_involuntary_switches_per_second=r.main_involuntary_switches_per_second)
    suggested = max(1, r.cores - math.ceil(busy_workers))
    d.recommend("torch_threads", f"Leave cores to the workers: torch.set_num_threads({suggested}) "
                f"(or OMP_NUM_THREADS={suggested})",
                "OpenMP threads spin at barriers; preempted by workers they stall every parallel op",
                {"speedup_at_most": None, "basis": "not bounded by shares",
                 "reasoning": "the stall grows with contention: nothing in the shares bounds it; measure before "
                              "and after"}, finding, {"torch.set_num_threads": suggested})


def _other_work(d: _Diagnosis) -> None:
    for phase, threshold, rec, title in (
            ("checkpoint", CHECKPOINT_SHARE, "checkpoint_less_often",
             "Checkpoint every N steps (or save in a background thread from a CPU copy of the state)"),
            ("logging", LOGGING_SHARE, "log_less_often", "Log every N steps, not every step")):
        share = d.detail(phase)
        if share < threshold:
            continue
        finding = d.find(f"{phase}_time", "high" if share >= HIGH_INPUT_SHARE else "moderate",
                         f"{phase.capitalize()} takes {share:.0%} of wall time", **{f"{phase}_share": share})
        d.recommend(rec, title, f"{phase} takes {share:.0%} of wall time", gain(share, phase), finding)


def _compute(d: _Diagnosis) -> None:
    share = d.shares.get("compute", 0.0)
    stacks = d.m.stacks
    optimizer = d.detail("optimizer")
    if stacks is not None and optimizer >= OPTIMIZER_SHARE and stacks.single_tensor_optimizer >= 0.5 * stacks.phases.get("optimizer", 0):
        finding = d.find("optimizer_python_loop", "moderate",
                         f"The optimizer takes {optimizer:.0%} of wall time in its per-parameter Python loop",
                         optimizer_share=optimizer,
                         single_tensor_share=d.stack_share(stacks.single_tensor_optimizer))
        d.recommend("foreach_optimizer", "Use the multi-tensor optimizer: e.g. AdamW(..., foreach=True) "
                    "(or fused=True where supported)",
                    f"the optimizer step is {optimizer:.0%} of wall time, mostly torch.optim's _single_tensor_ loop",
                    gain(optimizer, "the optimizer step", speedup=2.0), finding, {"foreach": True})
    if stacks is not None and d.stack_share(stacks.zero_grad) >= ZERO_GRAD_SHARE:
        zero = d.stack_share(stacks.zero_grad)
        finding = d.find("zero_grad", "moderate", f"zero_grad takes {zero:.0%} of wall time", zero_grad_share=zero)
        d.recommend("zero_grad_set_to_none", "Drop gradients instead of zeroing them: zero_grad(set_to_none=True)",
                    f"zero_grad takes {zero:.0%} of wall time", gain(zero, "zero_grad"), finding,
                    {"set_to_none": True})
    if share < COMPUTE_BOUND_SHARE:
        return
    healthy = d.shares.get("data_loading", 0.0) < MODERATE_INPUT_SHARE and share >= HEALTHY_COMPUTE_SHARE
    finding = d.find("compute_bound", "info",
                     f"Compute-bound: forward, backward and optimizer take {share:.0%} of wall time"
                     + ("; the input pipeline keeps up (healthy)" if healthy else ""),
                     compute_share=share, healthy=healthy)
    device = "GPU tensor cores" if d.m.uses_gpu else "CPUs with AMX/AVX512-BF16 (little or none elsewhere)"
    d.recommend("amp_bf16", "Run forward and loss under torch.autocast(device_type, dtype=torch.bfloat16)",
                f"compute is {share:.0%} of wall time; bf16 matmuls/convolutions are ~{AMP_KERNEL_SPEEDUP:g}x "
                f"faster on {device}", gain(share, "compute", speedup=AMP_KERNEL_SPEEDUP), finding,
                {"autocast": "bfloat16"})
    if stacks is not None and stacks.convolution:
        d.recommend("channels_last", "Use channels_last memory format for the conv model and its inputs",
                    "convolutions run in the forward pass; NHWC kernels avoid layout conversions (mostly with AMP)",
                    gain(share, "compute", speedup=1.2), finding, {"memory_format": "channels_last"})
    if stacks is None or not stacks.compiled:
        d.recommend("torch_compile", "Compile the model: model = torch.compile(model)",
                    f"compute is {share:.0%} of wall time and the model runs eagerly; fusion cuts memory traffic "
                    f"and Python overhead (assumed ~{COMPILE_KERNEL_SPEEDUP:g}x on compute)",
                    gain(share, "compute", speedup=COMPILE_KERNEL_SPEEDUP), finding, {"torch.compile": True})


def _gil(d: _Diagnosis) -> None:
    stacks = d.m.stacks
    others = stacks.gil_other_threads if stacks else None
    if others is None or others < GIL_CONTENTION_OTHERS:
        return
    finding = d.find("gil_contention", "moderate",
                     f"Other Python threads of the training process hold the GIL {others:.0%} of the time",
                     other_threads_gil_share=others)
    d.recommend("threads_to_processes", "Move per-sample Python work out of threads into DataLoader worker "
                "processes", f"the training thread competes for the GIL with threads holding it {others:.0%} of "
                "the time", gain(others, "GIL contention"), finding)


RULES = (_input_bound, _host_to_device, _gpu, _syncs, _memory, _oversubscription, _other_work, _compute, _gil)


def _collector_guess(r: Resources | None) -> tuple[str, float, str]:
    """(primary, confidence, why) from resource usage alone, when no phase shares exist."""
    if r is None or r.seconds <= 0:
        return "other", 0.0, "nothing was measured (the run was too short or not sampled)"
    if r.gpu_utilization_mean is not None and r.gpu_utilization_mean >= GPU_BUSY:
        return "compute", 0.5, f"GPU busy {r.gpu_utilization_mean:.0%} of the time"
    per_worker = r.cores_per_worker
    if per_worker is not None and per_worker >= WORKER_SATURATED_CORES:
        return "data_loading", 0.4, f"{r.workers_max} workers each use {per_worker:.2f} cores (saturated)"
    if r.host_iowait_ratio is not None and r.host_iowait_ratio >= 2 * IOWAIT_STORAGE:
        return "data_loading", 0.35, f"CPUs wait on IO {r.host_iowait_ratio:.0%} of the time"
    return "compute", 0.25, "no sign of input stalls in CPU, IO or worker usage (no stacks to confirm)"


def diagnose(m: Measurements) -> dict[str, Any]:
    """The report's ``bottleneck``, ``phases``, ``findings`` and ``recommendations`` for ``m``.

    Recommendations are ordered by their expected gain, largest first.
    """
    phases, source, samples = phase_shares(m)
    if phases:
        shares = category_shares(phases)
        primary = max(CATEGORIES, key=lambda c: shares[c])
        sure = confidence(shares, samples, source)
        basis = f"largest share of wall time ({source})"
        if primary == "other" and phases.get("other", 0.0) > shares["other"] / 2:
            sure = round(sure * UNRECOGNIZED_OTHER_DISCOUNT, 3)
            basis += "; most of it in code no rule recognizes (a custom loop, loader or framework?)"
    else:
        shares = {}
        primary, sure, basis = _collector_guess(m.resources)
    d = _Diagnosis(m, phases, shares)
    for rule in RULES:
        rule(d)
    d.recommendations.sort(key=lambda rec: -(rec["expected_gain"]["speedup_at_most"] or 1.0))
    return {
        "bottleneck": {"primary": primary, "shares": {k: round(v, 4) for k, v in shares.items()},
                       "confidence": sure, "source": source, "samples": samples, "basis": basis},
        "phases": {k: round(v, 4) for k, v in phases.items()},
        "findings": d.findings,
        "recommendations": d.recommendations,
    }
