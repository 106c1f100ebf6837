"""Training-step benchmarks of the reference models: step time, throughput, memory, FLOP/s, MFU.

``setup`` builds the model and runs one step, so optimizer state exists and the
measured calls see a steady state. Every step is instrumented with StepTimer.
"""

import torch

from perfwatch.bench.suite import by_size
from perfwatch.pipelines.models import MODEL_NAMES
from perfwatch.pipelines.train import TrainConfig, TrainingBenchmark

# perfwatch: set up once per process and time the steady state, even under this repository's
# asv.conf.json, where each call would otherwise get fresh state (asv_runner >= 0.3; README).
fresh_setup = False

MODELS = list(MODEL_NAMES)
STEPS_PER_CALL = 5  # a track call stays under ~0.3 s on two CPU cores
VARIANTS = {"bf16": {"amp": True}, "compile": {"compile": True}, "channels_last": {"channels_last": True}}


class _Training:
    """Shared setup: a TrainingBenchmark for one model, warmed by one step."""

    timeout = 120

    def setup_bench(self, model, **options):
        self.bench = TrainingBenchmark(TrainConfig(model=model, **options))
        self.bench.run(1)


class Step(_Training):
    """Step time (``number = 1``: the samples are the step-time distribution), samples/s, peak RSS."""

    number = 1
    param_names = ["model"]
    params = [MODELS]

    def setup(self, model):
        self.setup_bench(model)

    def time_step(self, model):
        self.bench.run(1)

    def track_samples_per_s(self, model):
        return self.bench.run(STEPS_PER_CALL).samples_per_second

    track_samples_per_s.unit = "samples/s"
    track_samples_per_s.higher_is_better = True

    def peakmem_step(self, model):
        self.bench.run(1)


class Flops(_Training):
    """Achieved FLOP/s: the FLOPs of one step (counted once, FlopCounterMode) over measured step time.

    FLOP/s is FLOPs per sample times Step's samples/s, so the smaller suites keep one model.
    """

    param_names = ["model"]
    params = by_size(quick=[["mlp"]], full=[MODELS])

    def setup(self, model):
        self.setup_bench(model)
        self.bench.flops_per_step  # counted once here, not in the measured calls

    def track_flops_per_s(self, model):
        return self.bench.flops_per_second(self.bench.run(STEPS_PER_CALL))

    track_flops_per_s.unit = "FLOP/s"
    track_flops_per_s.higher_is_better = True


class MFU(_Training):
    """Model FLOP utilization, on GPUs whose peak FLOP/s perfwatch knows (skipped elsewhere)."""

    param_names = ["model"]
    params = by_size(quick=[["mlp"]], ci=[MODELS])

    def setup(self, model):
        if not torch.cuda.is_available():
            raise NotImplementedError("MFU needs a GPU")
        self.setup_bench(model)
        if self.bench.peak_flops is None:
            raise NotImplementedError(f"peak FLOP/s of {torch.cuda.get_device_name()} is unknown")
        self.bench.flops_per_step  # counted once here, not in the measured calls

    def track_mfu(self, model):
        return self.bench.mfu(self.bench.run(STEPS_PER_CALL))

    track_mfu.unit = "ratio"
    track_mfu.higher_is_better = True


class Variants(_Training):
    """Samples/s with bf16 autocast, torch.compile (slow to set up) or channels_last (CNN only)."""

    sizes = ("ci", "full")
    timeout = 600  # compiling on two CPU cores takes ~30 s per model
    param_names = ["model", "variant"]
    params = by_size(quick=[["cnn"], ["bf16", "channels_last"]], ci=[MODELS, list(VARIANTS)])

    def setup(self, model, variant):
        if variant == "channels_last" and model != "cnn":
            raise NotImplementedError("channels_last applies to the cnn only")
        self.setup_bench(model, **VARIANTS[variant])

    def track_samples_per_s(self, model, variant):
        return self.bench.run(STEPS_PER_CALL).samples_per_second

    track_samples_per_s.unit = "samples/s"
    track_samples_per_s.higher_is_better = True
