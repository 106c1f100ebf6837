"""Reference models train, steps are instrumented, FLOPs are counted right, MFU is honest."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perfwatch.instrument import PHASES
from perfwatch.pipelines import flops
from perfwatch.pipelines.models import MODEL_NAMES, build_model
from perfwatch.pipelines.train import TrainConfig, TrainingBenchmark, matmul_precision


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_make_batches_and_learn_a_fixed_batch(name):
    model = build_model(name)
    inputs, targets = model.example_batch(8, torch.Generator().manual_seed(0))
    assert targets.dtype == torch.int64 and targets.shape == (8,)
    assert inputs.dtype == (torch.int64 if name == "transformer" else torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_build_model_is_deterministic_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = build_model("cnn", seed=1), build_model("cnn", seed=1), build_model("cnn", seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_build_model_overrides_and_errors():
    assert build_model("mlp", in_features=12, hidden=8).example_batch(2)[0].shape == (2, 12)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match="bad option for model 'mlp'"):
        build_model("mlp", width=3)


def test_training_benchmark_runs_instrumented_steps():
    bench = TrainingBenchmark(TrainConfig(model="mlp", batch_size=16, pool_size=1, seed=3))
    first, later = bench.run(1), bench.run(6)
    assert later.loss < first.loss  # one fixed batch: the loss must fall
    assert (later.steps, later.samples, len(later.step_seconds)) == (6, 96, 6)
    assert set(later.phase_seconds) == set(PHASES)
    assert later.phase_seconds["forward"] > 0 and later.phase_seconds["backward"] > 0
    assert later.seconds == pytest.approx(sum(later.step_seconds))
    assert later.samples_per_second == pytest.approx(96 / later.seconds)
    assert bench.flops_per_second(later) == pytest.approx(bench.flops_per_step * 6 / later.seconds)
    assert later.peak_memory_bytes is None  # CPU: peak RSS is the runner's job
    assert bench.peak_flops is None and bench.mfu(later) is None  # a CPU has no known peak
    bench.peak_flops = flops.peak_flops("NVIDIA H100 80GB HBM3", "tf32")  # as if on an H100
    assert bench.mfu(later) == pytest.approx(bench.flops_per_second(later) / 494.5e12)


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(model="cnn", batch_size=4, channels_last=True, optimizer="sgd"),
        TrainConfig(model="transformer", batch_size=4, amp=True),
    ],
    ids=["cnn-channels_last-sgd", "transformer-bf16"],
)
def test_training_variants_run(config):
    run = TrainingBenchmark(config).run(2)
    assert run.steps == 2 and run.samples == 8 and torch.isfinite(torch.tensor(run.loss))


def test_bad_training_config_is_a_value_error():
    with pytest.raises(ValueError, match="channels_last applies to the cnn model only"):
        TrainConfig(model="mlp", channels_last=True)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="lamb")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            TrainingBenchmark(TrainConfig(device="cuda"))


def test_flop_count_is_exact_for_a_linear_layer_and_plausible_for_the_mlp():
    layer, x = nn.Linear(32, 16), torch.randn(8, 32, requires_grad=True)
    # forward 2*B*in*out; backward twice that (input and weight gradients).
    assert flops.count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 8 * 32 * 16

    bench = TrainingBenchmark(TrainConfig(model="mlp", batch_size=64))
    params = sum(p.numel() for p in bench.model.parameters())
    # The classic estimate: 6 FLOPs per parameter per sample, forward + backward.
    # The first layer needs no input gradient, so the count is a bit lower.
    assert 0.8 * 6 * params * 64 < bench.flops_per_step <= 6 * params * 64


def test_peak_lookup_and_mfu_for_known_and_unknown_devices():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.5e12)
    assert flops.peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.5e12)
    assert flops.peak_flops("NVIDIA A100-SXM4-40GB", "tf32") == pytest.approx(156e12)
    assert flops.peak_flops("Tesla T4", "tf32") == pytest.approx(8.1e12)  # no TF32 cores: FP32 peak
    assert flops.peak_flops("Tesla V100-SXM2-16GB", "bf16") is None
    assert flops.peak_flops("Mystery Accelerator 9000", "bf16") is None
    assert flops.mfu(312e12 / 2, flops.peak_flops("NVIDIA A100 80GB PCIe", "bf16")) == pytest.approx(0.5)
    assert flops.mfu(1e12, None) is None
    with pytest.raises(ValueError, match="unknown precision"):
        flops.peak_flops("NVIDIA L4", "fp8")


def test_mfu_uses_the_peak_of_the_precision_the_flops_run_in():
    cuda = torch.device("cuda")  # only the backend flags are read: no GPU needed
    assert matmul_precision(build_model("mlp"), amp=True, device=cuda) == "bf16"
    assert matmul_precision(build_model("mlp"), amp=False, device=torch.device("cpu")) == "fp32"
    tf32_matmul = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    assert matmul_precision(build_model("mlp"), amp=False, device=cuda) == tf32_matmul
    tf32_conv = "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    assert matmul_precision(build_model("cnn"), amp=False, device=cuda) == tf32_conv
