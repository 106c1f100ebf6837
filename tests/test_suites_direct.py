"""The reference suites import at every size, and their benchmarks run when called directly.

This is what asv and perfwatch's runner do with a suite, minus the process per benchmark.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import pytest

from perfwatch.config import SIZES

SUITES = Path(__file__).resolve().parent.parent / "suites"


def load_suite(name: str, size: str, monkeypatch) -> object:
    """Import suites/<name>.py afresh with PERFWATCH_SUITE=size (grids are chosen at import)."""
    monkeypatch.setenv("PERFWATCH_SUITE", size)
    spec = importlib.util.spec_from_file_location(f"suite_{name}_{size}", SUITES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def combinations(cls) -> list[tuple]:
    return list(itertools.product(*cls.params))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["loader", "training", "ddp"])
def test_suites_import_at_every_size(name, size, monkeypatch):
    module = load_suite(name, size, monkeypatch)
    classes = [v for k, v in vars(module).items() if isinstance(v, type) and not k.startswith("_")
               and v.__module__ == module.__name__]
    assert classes
    for cls in classes:
        assert len(cls.param_names) == len(cls.params), cls.__name__
        assert combinations(cls), cls.__name__


def test_quick_suite_stays_small(monkeypatch):
    """The quick suite's budget: about 20 benchmark processes of a few seconds each."""
    count = 0
    for name in ("loader", "training", "ddp"):
        module = load_suite(name, "quick", monkeypatch)
        for cls in vars(module).values():
            if isinstance(cls, type) and "quick" in getattr(cls, "sizes", SIZES) and hasattr(cls, "params"):
                methods = [m for m in dir(cls) if m.startswith(("time_", "track_", "peakmem_"))]
                count += len(methods) * len(combinations(cls))
    assert 15 <= count <= 25


def test_loader_benchmarks_run(monkeypatch):
    loader = load_suite("loader", "quick", monkeypatch)
    throughput = loader.Throughput()
    throughput.setup("parquet", 0, 64)
    assert throughput.track_samples_per_s("parquet", 0, 64) > 0
    throughput.teardown("parquet", 0, 64)

    latency = loader.Latency()
    latency.setup("files", 2)
    for _ in range(10):  # 512 samples / 64: crosses an epoch boundary
        latency.time_next_batch("files", 2)
    latency.teardown("files", 2)

    first = loader.FirstBatch()
    first.setup("npy", 0)
    assert 0 < first.track_first_batch_seconds("npy", 0) < 5

    knobs = loader.Knobs()
    with pytest.raises(NotImplementedError):  # pin_memory is skipped without CUDA
        knobs.setup(True, 2, False)


def test_training_benchmarks_run(monkeypatch):
    training = load_suite("training", "quick", monkeypatch)
    step = training.Step()
    step.setup("mlp")
    step.time_step("mlp")
    step.peakmem_step("mlp")
    assert step.track_samples_per_s("mlp") > 0

    flops = training.Flops()
    flops.setup("mlp")
    value = flops.track_flops_per_s("mlp")
    assert math.isfinite(value) and value > 0

    with pytest.raises(NotImplementedError):  # no GPU here (or no known peak)
        training.MFU().setup("mlp")
    with pytest.raises(NotImplementedError):
        training.Variants().setup("mlp", "channels_last")
    assert training.Step.track_samples_per_s.unit == "samples/s"
    assert training.Step.track_samples_per_s.higher_is_better


def test_ddp_benchmark_is_ci_only(monkeypatch):
    ddp = load_suite("ddp", "ci", monkeypatch)
    assert ddp.DataParallel.sizes == ("ci", "full")
    assert combinations(ddp.DataParallel) == [("mlp", 2)]
    ddp.DataParallel().setup("mlp", 2)  # its run is covered by test_ddp.py
