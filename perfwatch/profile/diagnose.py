"""Bottleneck classification and recommendations: pure functions over measurements.

``diagnose(Measurements)`` returns the report's ``bottleneck``, ``phases``,
``findings`` and ``recommendations`` (docs/architecture.md). Every threshold below is named and
cites where it comes from; every expected gain is a bound derived from the measured
shares (Amdahl's law, and the machine's cores where the work is CPU-bound), with its
reasoning spelled out, never a promise.

Where the phase shares come from, best first: a StepTimer in the script (exact
totals), perfwatch's injected step timing (exact data wait and optimizer time, the rest
split as py-spy's stacks split it), py-spy stacks of the training thread (sampled wall
time), or only the Collector's resource usage (no shares: a verdict only where a resource
says so on its own, e.g. saturated workers). With too little of any, the primary bottleneck
is ``unknown`` and the report says what is missing; it is never a default guess.

Why the loop waits for data is judged by the loading process's resources, not by the GIL alone
(native decoders such as PIL release it while they work): storage where it shows (iowait, bytes
read from the block device), CPU where the loader uses a core or waits on the run queue for one
(``/proc/<pid>/schedstat``: starved on a full host is CPU-bound too), blocked on something else
otherwise. Every loader gain is capped by the cores the run can have (those it used and those
left idle) against the CPU it spends per step.

Advice applies only where its premise holds: no device knobs on a run without a GPU, bf16
autocast only for a float32 model on hardware with bf16 units (``autocast`` below).
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
    "copy": "other",  # .to()/.copy_() within host memory: what host_to_device is on a run without a GPU
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
# /proc/<pid>/io read_bytes counts what came from the block device, not page-cache hits: loading that
# reads this much a second touches storage (1 MiB/s: a few 4 KiB pages per 10 ms step are noise).
STORAGE_READ_BYTES_PER_S = 1 << 20
IO_WORKERS_PER_CORE = 4  # workers blocked on storage need no core each; past this, memory is the limit
MEMORY_AVAILABLE_HIGH = 0.05  # severity high below 5% available, moderate below 10%
MEMORY_AVAILABLE_MODERATE = 0.10
HOST_SATURATED = 0.90
MIN_STACK_SAMPLES = 50  # fewer main-thread samples than this: no stack-based shares
MIN_STEPS = 3
# How far each source is trusted when it is sure of its numbers (the sampling error and the
# disagreement between sources are accounted separately, in ``confidence``): StepTimer phases are
# the script's own clock; stacks are attributed by rules that can miss a custom loader; the
# Collector sees no phases, only a resource that speaks for one category.
SOURCE_WEIGHT = {"steptimer": 0.95, "pyspy": 0.9, "collector": 0.5}
# bf16 tensor cores came with Ampere (compute capability 8.0); Volta and Turing (7.x) have fp16 ones.
BF16_CUDA_CAPABILITY = 8.0
FP16_CUDA_CAPABILITY = 7.0
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
    main_read_bytes_per_second: float | None = None  # from the block device (page-cache hits are not counted)
    main_run_delay_cores: float | None = None  # its main thread runnable but waiting for a CPU (starved)
    workers_max: int = 0  # DataLoader workers of the training process (``profile.workers``), not any child
    worker_cpu_cores: float | None = None
    worker_read_bytes_per_second: float | None = None
    worker_run_delay_cores: float | None = None  # the workers' main threads waiting for a CPU, summed
    worker_rss_bytes_max: int | None = None
    other_cpu_cores: float | None = None  # the command's other processes (a shell, a data generator)
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

    @property
    def wanted_per_worker(self) -> float | None:
        """The cores each worker used plus the time it waited for one: what it would use on a free core."""
        per_worker = self.cores_per_worker
        if per_worker is None:
            return None
        return per_worker + (self.worker_run_delay_cores or 0.0) / self.workers_max


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
class ModelFacts:
    """What perfwatch's injected step timing saw of the parameters the optimizer steps."""

    dtype: str | None = None  # "float32", "float64", "bfloat16", ...
    device: str | None = None  # "cpu", "cuda", ...
    cuda_capability: str | None = None  # "8.0"
    optimizer: str | None = None  # its class: "AdamW", "LBFGS", ...


@dataclass(frozen=True)
class Measurements:
    """Everything the rules look at; any part may be missing."""

    resources: Resources | None = None
    stacks: StackEvidence | None = None
    steptimer: dict[str, Any] | None = None  # read_timer_summaries(): totals summed over the timers, and facts
    intra_op_threads: int | None = None
    intra_op_threads_source: str = "unknown"
    uses_gpu: bool = False  # the training process tree holds memory on a GPU
    model: ModelFacts | None = None
    cpu_bf16: tuple[str, ...] | None = None  # the CPU's bf16 instructions (env.cpu_bf16_flags); None: unknown
    exit_code: int | None = None  # the command's own, when it ended by itself before the report
    workers_source: str = "unknown"  # how the DataLoader workers were told from other children

    @property
    def cpu_only(self) -> bool:
        """No GPU in the training: its parameters are on the CPU, or (not measured) the tree holds no GPU memory."""
        if self.model is not None and self.model.device is not None:
            return self.model.device == "cpu"
        return not self.uses_gpu

    @property
    def steps(self) -> int:
        return int(self.steptimer.get("steps", 0)) if self.steptimer else 0


# ---------------------------------------------------------------- the Collector's rows


def summarize(rows: list[dict[str, Any]], cores: int) -> Resources:
    """Reduce the profiler's Collector rows (see ``profile.collector_row``) to ``Resources``.

    Counters become rates over the span of the rows (the workers' over the rows where
    workers exist, so start-up before the first worker does not dilute them; the training
    process's over the later half of its rows, past its imports); gauges their mean, max or min.
    """
    if not rows:
        return Resources(seconds=0.0, cores=cores)
    with_workers = [row for row in rows if row.get("workers")]
    with_main = [row for row in rows if row.get("main_cpu") is not None]  # a training child may start late
    # the training process's CPU, reads and waits over the later half of its rows: start-up (imports reading
    # and compiling torch's libraries) would pass for the loader's work on a short run
    steady = with_main[len(with_main) // 2:]

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
        main_cpu_cores=rate("main_cpu", steady),
        main_threads_max=max(values("main_threads"), default=None),
        main_involuntary_switches_per_second=rate("main_involuntary", with_main),
        main_read_bytes_per_second=rate("main_read", steady),
        main_run_delay_cores=rate("main_run_delay", steady),
        workers_max=int(max(values("workers"), default=0)),
        worker_cpu_cores=rate("worker_cpu", with_workers),
        worker_read_bytes_per_second=rate("worker_read", with_workers),
        worker_run_delay_cores=rate("worker_run_delay", with_workers),
        worker_rss_bytes_max=max(values("worker_rss"), default=None),
        other_cpu_cores=rate("other_cpu"),
        gpu_utilization_mean=sum(gpu) / len(gpu) if gpu else None,
    )


# ---------------------------------------------------------------- numbers


def amdahl(fraction: float, speedup: float = math.inf) -> float:
    """Whole-loop speedup when ``fraction`` of its wall time runs ``speedup`` times faster."""
    fraction = min(max(fraction, 0.0), 1.0)
    remaining = (1.0 - fraction) + (fraction / speedup if math.isfinite(speedup) else 0.0)
    return math.inf if remaining <= 0 else 1.0 / remaining


def gain(fraction: float, what: str, speedup: float = math.inf, cpu_cap: float | None = None,
         cpu_why: str | None = None) -> dict[str, Any]:
    """An ``expected_gain``: the Amdahl bound for making ``what`` (``fraction`` of wall time)
    ``speedup`` times faster, capped by ``cpu_cap`` (cores / cores in use, said by ``cpu_why``)
    where the work needs CPU: the same work per step done faster needs that many more cores."""
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
        reasoning += (f"; but the work needs CPU and {cpu_why or f'the process tree already uses 1/{cpu_cap:.2f} of the cores'}"
                      f", so at most {cpu_cap:.2f}x")
    return {"speedup_at_most": round(bound, 2) if math.isfinite(bound) else None, "basis": basis,
            "fraction": round(fraction, 4), "reasoning": reasoning}


def workers_cap(expected: dict[str, Any], share: float, now: int, suggested: int) -> dict[str, Any]:
    """``expected`` capped by what ``suggested`` DataLoader workers can supply. A worker loads a batch no
    faster than the loader does now: inline (``now`` = 0) one takes the ``share`` of today's step the
    training thread spends loading, and ``now`` data-bound workers supply one batch per step today. So
    the step cannot get shorter than the compute (1 - share) or the supply period (share / suggested,
    or now / suggested of today's step): at most 1 / max(1 - share, that)."""
    supply = share / suggested if now == 0 else now / suggested
    cap = 1.0 / max(1.0 - share, supply, 1e-9)
    bound = expected["speedup_at_most"]
    if bound is not None and cap >= bound:
        return expected
    source = (f"each loads a batch as slowly as the training thread does now ({share:.0%} of a step)" if now == 0
              else f"{now} worker(s) supply one batch per step now")
    return {**expected, "speedup_at_most": round(cap, 2), "basis": expected["basis"] + "+workers",
            "reasoning": expected["reasoning"] + f"; and {suggested} worker(s) cannot supply more: {source}, so a step "
                         f"takes at least max(1 - {share:.2f}, {supply:.2f}) of today's: at most {cap:.2f}x"}


def confidence(shares: dict[str, float], observations: int, source: str, slack: float = 0.0,
               spread: float = 0.0) -> float:
    """How likely the primary bottleneck (the largest category share) is right, 0..1:

        confidence = SOURCE_WEIGHT[source] * Phi((p1 - p2 - slack) / sqrt(se^2 + spread^2)),
        se = sqrt((p1 + p2 - (p1 - p2)^2) / n)

    * p1 - p2, the largest share minus the runner-up, is the verdict's margin from its decision
      threshold (the two shares equal). Phi(margin / se) is the probability that the largest share
      really is the largest given ``n`` observations: the normal approximation to the difference of
      two multinomial proportions. n is the training thread's stack samples for py-spy's shares,
      the timed steps for a StepTimer's (each step one observation), the smaller of the two when
      the injected timing's exact shares are completed by the stacks' split.
    * ``slack`` is what the margin must first clear: the share of the step that nothing split
      (injected timing without enough stacks; see ``primary_of``), which could all belong to the
      runner-up.
    * ``spread`` is the error of the stacks' attribution, as one standard deviation beside the
      sampling error: where both an exact timing and stacks measured the same phase (the data wait),
      their difference. It is a measured size of the stacks' error, not a bound on the side it
      falls: taken from the margin as a bound it made near-ties too unsure (docs/performance.md,
      "graded cases": 26 of 26 verdicts right, four of them given under 0.7).
    * SOURCE_WEIGHT caps what the best evidence of a source earns: timing rules and stack rules can
      miss a custom loader or step.

    So confidence grows with the samples and the margin, falls to half the source's weight where the
    margin is no larger than ``slack``, and below that towards 0. ``diagnose`` halves it when
    "other" wins with code no rule knows. Calibrated on the bottleneck zoo and the external cases
    (docs/performance.md).
    """
    ranked = sorted((shares.get(c, 0.0) for c in CATEGORIES), reverse=True)
    if observations <= 0 or not any(ranked):
        return 0.0
    p1, p2 = ranked[0], ranked[1]
    se = math.sqrt(max(p1 + p2 - (p1 - p2) ** 2, 1e-12) / observations + spread ** 2)
    return round(SOURCE_WEIGHT[source] * NormalDist().cdf((p1 - p2 - slack) / se), 3)


def category_shares(phase_shares: dict[str, float]) -> dict[str, float]:
    shares = dict.fromkeys(CATEGORIES, 0.0)
    for phase, share in phase_shares.items():
        shares[PHASE_CATEGORY[phase]] += share
    return shares


def _normalized(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {phase: counts.get(phase, 0) / total for phase in PHASES} if total > 0 else {}


@dataclass(frozen=True)
class Shares:
    """The training thread's wall time by phase, and how far to trust it (see ``confidence``)."""

    phases: dict[str, float]  # empty: no source had enough evidence
    source: str  # "steptimer", "pyspy" or "collector"
    observations: int
    disagreement: float = 0.0  # |exact - stacks| on the phases both measured
    unsplit: float = 0.0  # of the step, what the injected timing did not time and no stacks split


def _split_by_stacks(exact: dict[str, float], measured: set[str], stack_counts: dict[str, int]) -> dict[str, float]:
    """The ``measured`` phases' exact shares (injected timing), the rest of the step split among the
    other phases as py-spy's samples split it: each source where it is the better one."""
    rest = 1.0 - sum(exact.get(p, 0.0) for p in measured)
    others = {p: c for p, c in stack_counts.items() if p not in measured and c > 0}
    total = sum(others.values())
    if total <= 0:
        return {p: exact.get(p, 0.0) if p in measured else (rest if p == "other" else 0.0) for p in PHASES}
    return {p: exact.get(p, 0.0) if p in measured else rest * others.get(p, 0) / total for p in PHASES}


def phase_shares(m: Measurements) -> Shares:
    """The phase shares from the best source available (see the module docstring)."""
    timer, stacks = m.steptimer, m.stacks
    enough_stacks = stacks is not None and stacks.total >= MIN_STACK_SAMPLES
    stack_shares = _normalized(stacks.phases) if enough_stacks else {}
    if timer and timer.get("steps", 0) >= MIN_STEPS and timer.get("wall", 0) > 0:
        seconds: dict[str, float] = {}
        for name, value in timer["totals"].items():
            phase = STEPTIMER_PHASES.get(name, "other")
            seconds[phase] = seconds.get(phase, 0.0) + value
        shares, steps = _normalized(seconds), int(timer["steps"])
        if not timer.get("injected"):  # the script's own timer: every phase is its own clock's
            compared = {"data_loading"} if "data_wait" in timer["totals"] else set()
            return Shares(shares, "steptimer", steps, _disagreement(shares, stack_shares, compared))
        measured = {STEPTIMER_PHASES[name] for name in timer.get("exact_phases") or ()}
        if enough_stacks:
            return Shares(_split_by_stacks(shares, measured, stacks.phases), "steptimer", min(steps, stacks.total),
                          _disagreement(shares, stack_shares, measured))
        known = {p: shares.get(p, 0.0) for p in measured}
        return Shares(known, "steptimer", steps, unsplit=max(0.0, 1.0 - sum(known.values())))
    if enough_stacks:
        return Shares(stack_shares, "pyspy", stacks.total)
    return Shares({}, "collector", 0)


def _disagreement(exact: dict[str, float], stacks: dict[str, float], phases: set[str]) -> float:
    """The largest difference between the exact and the stacks' share of a phase both measured."""
    return max((abs(exact.get(p, 0.0) - stacks[p]) for p in phases if stacks), default=0.0)


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

    def loading_gain(self, share: float, what: str = "data loading", blocked: bool = False) -> dict[str, Any]:
        """The gain of a loader knob (more workers, prefetching): Amdahl on ``share``, capped by what
        the machine can give. The work per step stays the same, so running s times as many steps a
        second needs s times the CPU the training process and its workers use now: s <= cores /
        cores in use, counting as available the cores the run used and those left idle, not those other
        processes kept busy (with the step timing, said as CPU-seconds per step against the steps/s).
        Loading that is ``blocked`` (waiting on storage or the network) asks for little CPU, and the
        scheduler gives a process that asks its share of the busy cores too: every core counts (a run
        capped at 1.03x by the cores other processes kept busy measured 12.6x with 20 workers)."""
        r = self.m.resources
        if r is None or not r.tree_cpu_cores:
            return gain(share, what)
        idle = self.idle_cores
        available = r.cores if idle is None or blocked else min(r.cores, r.tree_cpu_cores + idle)
        cap = max(available / r.tree_cpu_cores, 1.0)
        why = f"the training process and its workers use {r.tree_cpu_cores:.2f} of {r.cores} cores"
        if available < r.cores - 0.05:
            why += f" and other processes kept {r.cores - available:.2f} busy"
        timer = self.m.steptimer
        if self.m.steps and timer.get("wall", 0) > 0:
            rate = self.m.steps / timer["wall"]
            why += (f" ({r.tree_cpu_cores / rate * 1000:.0f} ms of CPU per step, "
                    f"{(r.worker_cpu_cores or 0.0) / rate * 1000:.0f} ms of it in the workers: {available:.3g} cores "
                    f"sustain at most {available * rate / r.tree_cpu_cores:.3g} steps/s against {rate:.3g} now)")
        return gain(share, what, cpu_cap=cap, cpu_why=why)


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
    if cause in ("inline_cpu", "inline_storage", "inline_blocked", "inline"):
        blocked = cause in ("inline_storage", "inline_blocked")  # workers waiting need no core each
        suggested = keep_up if blocked or cores is None else min(keep_up, max(1, cores - 1))
        note = "" if suggested == keep_up else f" (capped at cores - 1 = {suggested}; {keep_up} would keep pace)"
        d.recommend("num_workers", f"Load batches in worker processes: DataLoader(num_workers={suggested}, "
                    "persistent_workers=True)",
                    f"num_workers=0: {waiting}, all of it on the training thread; {keep_up} worker(s) producing "
                    f"a batch per step would overlap it with compute{note}",
                    workers_cap(d.loading_gain(share, blocked=blocked), share, 0, suggested),
                    finding, {"num_workers": suggested, "persistent_workers": True})
    elif cause == "workers_cpu_saturated":
        wanted = _ceil(workers / max(1.0 - share, 0.05))
        headroom = d.idle_cores or 0.0
        starved = (r.worker_run_delay_cores or 0.0) / workers if r else 0.0
        each = f"{workers} workers each use {per_worker:.2f} cores" + (
            f" and wait {starved:.2f} for one" if starved >= 0.05 else "")
        if headroom >= 0.75:
            suggested = min(wanted, workers + int(headroom + 0.25))
            d.recommend("num_workers", f"Add DataLoader workers: num_workers={suggested}",
                        f"{each} (saturated) and {headroom:.1f} cores are idle; {waiting}",
                        workers_cap(d.loading_gain(share), share, workers, suggested), finding,
                        {"num_workers": suggested})
        d.recommend("cheaper_transforms", "Make per-sample transforms cheaper: cache decoded/resized samples, "
                    "move augmentation to the GPU (batched), or use a faster decoder",
                    f"{each} in transforms and {waiting}", d.loading_gain(share), finding)
    elif cause == "storage":
        needed = max(workers * 2, _ceil(max(workers, 1) / max(1.0 - share, 0.05)))
        suggested = min(needed, max(IO_WORKERS_PER_CORE * (cores or 1), workers * 2))
        note = "" if suggested == needed else f" ({needed} would hide all of it; each worker costs memory)"
        d.recommend("num_workers", f"Overlap storage latency with more workers: num_workers={suggested}",
                    f"{waiting} while {workers} worker(s) use only {per_worker or 0:.2f} cores each: they are "
                    f"blocked on reads, and blocked workers cost no CPU, so more of them than cores is fine{note}",
                    workers_cap(d.loading_gain(share, "waiting on storage", blocked=True), share, workers, suggested), finding,
                    {"num_workers": suggested})
        d.recommend("prefetch_factor", "Queue more batches per worker to absorb slow reads: "
                    "DataLoader(prefetch_factor=4)",
                    "slow, variable reads stall the loop whenever the queue of ready batches runs dry",
                    d.loading_gain(share, "waiting on storage", blocked=True), finding, {"prefetch_factor": 4})
        d.recommend("storage_format", "Store samples packed: one memory-mapped .npy or Parquet file instead of "
                    "many small files (or copy the data set to local disk)",
                    "per-file latency dominates loading; packed formats turn thousands of opens into large "
                    "sequential reads", d.loading_gain(share, "waiting on storage", blocked=True), finding)
    elif cause == "too_few_workers":
        headroom = d.idle_cores or 0.0
        suggested = workers + max(1, int(headroom))
        d.recommend("num_workers", f"Add DataLoader workers: num_workers={suggested}",
                    f"{waiting} and {headroom:.1f} cores are idle",
                    workers_cap(d.loading_gain(share), share, workers, suggested),
                    finding, {"num_workers": suggested})
    else:
        d.recommend("prefetch_factor", "Queue more batches per worker: DataLoader(prefetch_factor=4, "
                    "persistent_workers=True)", waiting, d.loading_gain(share), finding,
                    {"prefetch_factor": 4, "persistent_workers": True})


_CAUSE_TEXT = {
    "inline_cpu": "num_workers=0 and the per-sample work is CPU-bound on the training thread",
    "inline_storage": "num_workers=0 and the training thread waits on storage in the dataset",
    "inline_blocked": "num_workers=0 and the training thread is blocked in the dataset, not computing and not "
                      "reading local storage: remote storage, the network or a lock",
    "inline": "num_workers=0: the data is loaded on the training thread",
    "workers_cpu_saturated": "the workers are CPU-bound in per-sample transforms (busy or waiting for a core)",
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
        return _inline_cause(d, evidence)
    wanted = r.wanted_per_worker if r else None  # a starved worker wants a core as a busy one does
    evidence.update(cores_per_worker=per_worker, worker_run_delay_cores=r.worker_run_delay_cores if r else None)
    if stacks is not None and stacks.workers:
        busy = stacks.workers.get("fetch", 0) / max(sum(stacks.workers.values()), 1)
        evidence["worker_busy_share"] = busy
    if wanted is not None and wanted >= WORKER_SATURATED_CORES:
        return "workers_cpu_saturated", evidence
    iowait = r.host_iowait_ratio if r else None
    busy_in_fetch = evidence.get("worker_busy_share", 1.0) >= 0.5
    if (wanted is not None and wanted < WORKER_BLOCKED_CORES and busy_in_fetch) or (
            iowait is not None and iowait >= IOWAIT_STORAGE):
        return "storage", evidence
    if (d.idle_cores or 0.0) >= 1.0:
        return "too_few_workers", evidence
    return "unknown", evidence


def _inline_cause(d: _Diagnosis, evidence: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Why loading on the training thread (num_workers=0) takes long: CPU where the thread uses a core
    or waits for one (native decoders release the GIL: its share alone says nothing then) or holds the
    GIL; storage where the evidence shows reads from it (iowait, bytes read from the block device);
    else blocked on something else, or unknown without the GIL pass."""
    r, stacks = d.m.resources, d.m.stacks
    gil = stacks.gil.get("data_loading") if stacks else None
    busy = r.main_cpu_cores if r is not None else None
    delay = r.main_run_delay_cores if r is not None else None
    iowait = r.host_iowait_ratio if r is not None else None
    read = r.main_read_bytes_per_second if r is not None else None
    saturated = r is not None and r.host_busy_ratio is not None and r.host_busy_ratio >= HOST_SATURATED
    evidence.update(main_cpu_cores=busy, main_run_delay_cores=delay, main_read_bytes_per_second=read,
                    host_busy_ratio=r.host_busy_ratio if r is not None else None)
    if gil is not None:
        evidence["data_loading_gil_share"] = gil
    # what it would use on a free core: its CPU and its wait for one; a thread that busy is not waiting on reads
    wanted = None if busy is None else busy + (delay or 0.0)
    if (wanted is not None and wanted >= INLINE_CPU_BOUND_CORES) or (gil is not None and gil >= GIL_CPU_BOUND):
        return "inline_cpu", evidence
    if (iowait or 0.0) >= IOWAIT_STORAGE or (read or 0.0) >= STORAGE_READ_BYTES_PER_S:
        return "inline_storage", evidence
    if delay is None and saturated:  # without schedstat, a full host is taken for starvation
        return "inline_cpu", evidence
    if gil is None:
        return "inline", evidence
    return "inline_blocked", evidence


def _host_to_device(d: _Diagnosis) -> None:
    share = d.shares.get("host_to_device", 0.0)  # 0 without a GPU: copies there are "copy" (host memory)
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
    if share < SYNC_SHARE or d.m.cpu_only:  # without a GPU, .item() waits for nothing: it is the op itself
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
    fit = autocast(d.m)
    if fit is not None:
        dtype, why = fit
        half = dtype == "float16"
        d.recommend("amp_fp16" if half else "amp_bf16",
                    f"Run forward and loss under torch.autocast(device_type, dtype=torch.{dtype})"
                    + (" with a torch.amp.GradScaler" if half else ""),
                    f"compute is {share:.0%} of wall time; {dtype} matmuls/convolutions are ~{AMP_KERNEL_SPEEDUP:g}x "
                    f"faster where {why}", gain(share, "compute", speedup=AMP_KERNEL_SPEEDUP), finding,
                    {"autocast": dtype, **({"GradScaler": True} if half else {})})
    if stacks is not None and stacks.convolution:
        d.recommend("channels_last", "Use channels_last memory format for the conv model and its inputs",
                    "convolutions run in the forward pass; NHWC kernels avoid layout conversions (mostly with AMP)",
                    gain(share, "compute", speedup=1.2), finding, {"memory_format": "channels_last"})
    if stacks is None or not stacks.compiled:
        d.recommend("torch_compile", "Compile the model: model = torch.compile(model)",
                    f"compute is {share:.0%} of wall time and the model runs eagerly; fusion cuts memory traffic "
                    f"and Python overhead (assumed ~{COMPILE_KERNEL_SPEEDUP:g}x on compute)",
                    gain(share, "compute", speedup=COMPILE_KERNEL_SPEEDUP), finding, {"torch.compile": True})


def autocast(m: Measurements) -> tuple[str, str] | None:
    """(dtype, why it gains) where mixed precision fits the run, None where its premise fails:
    autocast lowers float32 work only (it leaves float64 alone; bf16/fp16 models are there already),
    and gains only on bf16/fp16 units: tensor cores (bf16 from compute capability 8.0, fp16 from
    7.0) or a CPU with AVX512-BF16/AMX. Not measured (no injected timing): said so, GPU assumed recent."""
    model = m.model or ModelFacts()
    if model.dtype not in (None, "float32"):
        return None
    unmeasured = "" if model.dtype else " (if the model is float32: its dtype was not measured)"
    if m.cpu_only:
        if not m.cpu_bf16:
            return None
        return "bfloat16", f"the CPU has {'/'.join(m.cpu_bf16)}{unmeasured}"
    if model.cuda_capability is None:
        return "bfloat16", f"the GPU has bf16 tensor cores (Ampere or newer; not measured){unmeasured}"
    capability = float(model.cuda_capability)
    if capability >= BF16_CUDA_CAPABILITY:
        return "bfloat16", f"the GPU (compute capability {model.cuda_capability}) has bf16 tensor cores{unmeasured}"
    if capability >= FP16_CUDA_CAPABILITY:
        return "float16", f"the GPU (compute capability {model.cuda_capability}) has fp16 tensor cores{unmeasured}"
    return None


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


@dataclass(frozen=True)
class Verdict:
    """The report's primary bottleneck and why; ``missing`` says what an ``unknown`` one lacks."""

    primary: str
    confidence: float
    basis: str
    missing: dict[str, Any] | None = None


def _past(value: float, threshold: float, certain: float) -> float:
    """A collector verdict's confidence: half the source's weight at the rule's threshold, all of it
    where the resource leaves no doubt (``certain``), linear between."""
    x = min(max((value - threshold) / (certain - threshold), 0.0), 1.0)
    return round(SOURCE_WEIGHT["collector"] * (0.5 + 0.5 * x), 3)


def _collector_verdict(r: Resources | None) -> Verdict | None:
    """A verdict from resource usage alone, where one resource speaks for one category; else None."""
    if r is None or r.seconds <= 0:
        return None
    util = r.gpu_utilization_mean
    if util is not None and util >= GPU_BUSY:
        return Verdict("compute", _past(util, GPU_BUSY, 1.0), f"the GPU is busy {util:.0%} of the time (collector)")
    per_worker = r.cores_per_worker
    if per_worker is not None and per_worker >= WORKER_SATURATED_CORES:
        return Verdict("data_loading", _past(per_worker, WORKER_SATURATED_CORES, 1.0),
                       f"{r.workers_max} DataLoader workers each use {per_worker:.2f} cores, saturated (collector)")
    iowait = r.host_iowait_ratio
    if iowait is not None and iowait >= 2 * IOWAIT_STORAGE:
        return Verdict("data_loading", _past(iowait, 2 * IOWAIT_STORAGE, 0.5),
                       f"the CPUs wait on IO {iowait:.0%} of the time (collector)")
    return None


def _trained(m: Measurements) -> bool:
    """Whether any evidence shows a training step: a timed step or a stack sample in forward, backward or the optimizer."""
    stacks = m.stacks
    return m.steps > 0 or (stacks is not None and any(stacks.phases.get(p, 0) for p in ("forward", "backward",
                                                                                          "optimizer")))


def _unknown(m: Measurements, failed: bool) -> Verdict:
    """``unknown``, saying what is missing: how many steps and stack samples it had and would need."""
    samples = m.stacks.total if m.stacks is not None else 0
    missing = {"steps": {"have": m.steps, "need": MIN_STEPS},
               "stack_samples": {"have": samples, "need": MIN_STACK_SAMPLES}}
    if failed:
        return Verdict("unknown", 0.0, f"the command failed (exit code {m.exit_code}) before training: no step was "
                       "timed and no stack sample shows forward, backward or an optimizer step", missing)
    stacks = (f"{samples} stack samples of the training thread" if m.stacks is not None
              else "no stack samples of a Python training thread")
    how = (f"; at {m.stacks.rate:g} Hz, {MIN_STACK_SAMPLES} samples take {MIN_STACK_SAMPLES / m.stacks.rate:.1f} s "
           "of training" if m.stacks is not None and m.stacks.rate > 0 else "")
    ended = f"; the command exited with code {m.exit_code}" if m.exit_code else ""
    return Verdict("unknown", 0.0, f"too little evidence: {m.steps} timed steps (needs {MIN_STEPS}) and {stacks} "
                   f"(needs {MIN_STACK_SAMPLES}), and no resource that speaks for one category on its own (saturated "
                   f"workers, IO wait, a busy GPU){ended}: profile a longer run{how}", missing)


def _verdict(m: Measurements, found: Shares, shares: dict[str, float]) -> Verdict:
    if not _trained(m) and m.exit_code:
        return _unknown(m, failed=True)
    if not found.phases:
        return _collector_verdict(m.resources) or _unknown(m, failed=False)
    ranked = sorted(CATEGORIES, key=lambda c: -shares[c])
    primary, margin = ranked[0], shares[ranked[0]] - shares[ranked[1]]
    if found.unsplit and margin <= found.unsplit:
        timed = ", ".join(f"{p.replace('_', ' ')} {v:.0%}" for p, v in found.phases.items()) or "no phase"
        samples = m.stacks.total if m.stacks is not None else 0
        return Verdict("unknown", 0.0, f"the injected step timing measured {timed} of {m.steps} steps exactly; the "
                       f"other {found.unsplit:.0%} of the step could be any category and needs {MIN_STACK_SAMPLES} "
                       f"stack samples to split ({samples} taken)",
                       {"stack_samples": {"have": samples, "need": MIN_STACK_SAMPLES}})
    sure = confidence(shares, found.observations, found.source, slack=found.unsplit, spread=found.disagreement)
    basis = f"largest share of wall time ({found.source})"
    if found.disagreement:
        basis += f"; exact timing and stacks differ by {found.disagreement:.0%} on the phases both measured"
    if primary == "other" and found.phases.get("other", 0.0) > shares["other"] / 2:
        sure = round(sure * UNRECOGNIZED_OTHER_DISCOUNT, 3)
        basis += "; most of it in code no rule recognizes (a custom loop, loader or framework?)"
    return Verdict(primary, sure, basis)


def _on_host(phases: dict[str, float]) -> dict[str, float]:
    """Without a GPU a ``.to()`` or ``.copy_()`` copies within host memory: not host-to-device."""
    moved = dict(phases)
    moved["copy"] = moved.get("copy", 0.0) + moved.pop("host_to_device", 0.0)
    return moved


def _command_failed(d: _Diagnosis) -> None:
    code = d.m.exit_code
    if not code:
        return
    trained = _trained(d.m)
    d.find("command_failed", "moderate" if trained else "high",
           f"The command failed with exit code {code} "
           + (f"after {d.m.steps} timed steps: this covers the run until then" if trained else "before training"),
           exit_code=code, steps=d.m.steps)


RULES = (_command_failed, _input_bound, _host_to_device, _gpu, _syncs, _memory, _oversubscription, _other_work,
         _compute, _gil)


def diagnose(m: Measurements) -> dict[str, Any]:
    """The report's ``bottleneck``, ``phases``, ``findings`` and ``recommendations`` for ``m``.

    Recommendations are ordered by their expected gain, largest first.
    """
    found = phase_shares(m)
    phases = _on_host(found.phases) if m.cpu_only and found.phases else found.phases
    shares = category_shares(phases) if phases else {}
    if found.unsplit:
        shares["unsplit"] = found.unsplit
    verdict = _verdict(m, found, shares)
    d = _Diagnosis(m, phases, shares)
    for rule in RULES:
        rule(d)
    d.recommendations.sort(key=lambda rec: -(rec["expected_gain"]["speedup_at_most"] or 1.0))
    return {
        "bottleneck": {"primary": verdict.primary, "shares": {k: round(v, 4) for k, v in shares.items()},
                       "confidence": verdict.confidence, "source": found.source, "samples": found.observations,
                       "basis": verdict.basis, "missing": verdict.missing},
        "phases": {k: round(v, 4) for k, v in phases.items()},
        "findings": d.findings,
        "recommendations": d.recommendations,
    }
