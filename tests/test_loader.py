"""DataLoader knobs reach torch, and the measurements count what the loader delivers."""

from __future__ import annotations

import warnings

import pytest
import torch

from perfwatch.pipelines.datasets import DatasetSpec, open_dataset
from perfwatch.pipelines.loader import (
    EndlessBatches,
    LoaderKnobs,
    batch_size_and_bytes,
    build_loader,
    measure_epoch,
    measure_first_batch,
)

SPEC = DatasetSpec(num_samples=100, sample_shape=(3, 8, 8), transform_cost=1)


@pytest.fixture(scope="module")
def dataset():
    return open_dataset(SPEC, "memory")


def test_knobs_are_passed_to_the_dataloader(dataset):
    knobs = LoaderKnobs(batch_size=16, num_workers=2, prefetch_factor=4, persistent_workers=True, drop_last=True)
    loader = build_loader(dataset, knobs)
    assert (loader.batch_size, loader.num_workers, loader.prefetch_factor) == (16, 2, 4)
    assert loader.persistent_workers and loader.drop_last
    assert build_loader(dataset, knobs, batch_size=8).batch_size == 8  # keyword overrides


def test_pin_memory_without_cuda_is_off_and_silent(dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = build_loader(dataset, pin_memory=True, batch_size=50)
        stats = measure_epoch(loader)
    assert loader.pin_memory == torch.cuda.is_available()
    assert stats.samples == 100


def test_worker_options_need_workers(dataset):
    with pytest.raises(ValueError, match="need num_workers > 0"):
        build_loader(dataset, prefetch_factor=2)
    with pytest.raises(ValueError, match="need num_workers > 0"):
        LoaderKnobs(persistent_workers=True)
    with pytest.raises(ValueError, match="batch_size"):
        LoaderKnobs(batch_size=0)


def test_measure_epoch_counts_samples_bytes_and_batches(dataset):
    stats = measure_epoch(build_loader(dataset, batch_size=32))
    assert stats.samples == 100
    assert stats.bytes == 100 * SPEC.bytes_per_sample
    assert len(stats.batch_seconds) == 4  # 32 + 32 + 32 + 4
    assert stats.first_batch_seconds == stats.batch_seconds[0]
    assert stats.seconds == pytest.approx(sum(stats.batch_seconds))
    assert stats.samples_per_second == pytest.approx(100 / stats.seconds)
    assert stats.bytes_per_second == pytest.approx(stats.samples_per_second * SPEC.bytes_per_sample)


def test_measure_epoch_with_workers_and_a_clock(tmp_path):
    ticks = iter(range(100))
    loader = build_loader(open_dataset(SPEC, "files", root=tmp_path), batch_size=25, num_workers=2)
    stats = measure_epoch(loader, max_batches=3, clock=lambda: float(next(ticks)))
    assert stats.samples == 75
    assert stats.batch_seconds == (1.0, 1.0, 1.0)  # one tick per batch; bookkeeping excluded


def test_measure_first_batch_and_endless_batches(dataset):
    loader = build_loader(dataset, batch_size=40, shuffle=True)
    assert 0 < measure_first_batch(loader) < 5
    batches = EndlessBatches(loader)
    sizes = [len(next(batches)[0]) for _ in range(7)]
    assert sizes == [40, 40, 20, 40, 40, 20, 40]  # crosses epoch boundaries


def test_shuffle_order_is_seeded(dataset):
    def labels(seed):
        return torch.cat([y for _, y in build_loader(dataset, batch_size=100, shuffle=True, seed=seed)])

    assert torch.equal(labels(1), labels(1))
    assert not torch.equal(labels(1), labels(2))


def test_batch_size_and_bytes_walks_nested_batches():
    x, y = torch.zeros(4, 3, dtype=torch.float32), torch.zeros(4, dtype=torch.int64)
    assert batch_size_and_bytes((x, y)) == (4, 4 * 3 * 4 + 4 * 8)
    assert batch_size_and_bytes({"x": x, "extra": [y]}) == (4, 4 * 3 * 4 + 4 * 8)
