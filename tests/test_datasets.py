"""Synthetic datasets: identical data in every format, cached files reused, clear errors."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import replace

import pytest
import torch

from perfwatch.pipelines.datasets import FORMATS, DatasetSpec, NpyDataset, cache_root, materialize, open_dataset

# 300 samples: two RNG blocks and two parquet row groups, the second one partial.
SPEC = DatasetSpec(num_samples=300, sample_shape=(2, 4, 4), num_classes=5, seed=7, transform_cost=1)


def all_samples(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)


def test_every_format_returns_the_same_samples(tmp_path):
    reference_x, reference_y = all_samples(open_dataset(SPEC, "memory", root=tmp_path))
    assert reference_x.dtype == torch.float32 and reference_x.shape == (300, 2, 4, 4)
    assert reference_y.dtype == torch.int64 and set(reference_y.tolist()) <= set(range(5))
    for fmt in FORMATS[1:]:
        x, y = all_samples(open_dataset(SPEC, fmt, root=tmp_path))
        assert torch.equal(x, reference_x), fmt
        assert torch.equal(y, reference_y), fmt


def test_same_spec_gives_the_same_bytes_everywhere():
    # A golden digest: equal in every process and on every machine. If numpy's
    # generator ever changes, this fails, and FORMAT_VERSION must be bumped so that
    # stale cache entries are not mixed with fresh ones.
    digest = hashlib.sha256(SPEC.records().tobytes()).hexdigest()
    assert digest == "c64301487db556c6671712aa38c62c112ad76c55149086d3b9b4b2cdec4a0f5e"
    assert replace(SPEC, seed=8).records().tobytes() != SPEC.records().tobytes()


def test_transform_cost_changes_the_features_deterministically(tmp_path):
    raw = open_dataset(DatasetSpec(num_samples=4), "memory")[1][0]
    cooked = open_dataset(DatasetSpec(num_samples=4, transform_cost=3), "memory")[1][0]
    assert not torch.equal(raw, cooked)
    assert torch.equal(cooked, open_dataset(DatasetSpec(num_samples=4, transform_cost=3), "memory")[1][0])
    assert cooked.abs().max() <= 3.0  # the passes standardize and clip


def test_materialize_writes_once_and_reuses_the_cache(tmp_path):
    first = materialize(SPEC, "files", root=tmp_path)
    marker = first / "00000000.bin"
    mtime = marker.stat().st_mtime_ns
    assert materialize(SPEC, "files", root=tmp_path) == first
    assert marker.stat().st_mtime_ns == mtime  # not rewritten
    assert len(list(first.glob("*.bin"))) == 300
    # Only the finished directory is left: no temporary siblings.
    assert [p.name for p in first.parent.iterdir()] == [first.name]
    # The transform cost is applied when reading, so it shares the stored files.
    assert materialize(replace(SPEC, transform_cost=0), "files", root=tmp_path) == first


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PERFWATCH_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("PERFWATCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "perfwatch"


def test_file_datasets_pickle_without_their_open_handles(tmp_path):
    dataset = open_dataset(SPEC, "npy", root=tmp_path)
    x, _ = dataset[3]  # opens the memory map in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._handle is None
    assert torch.equal(clone[3][0], x)
    assert len(pickle.dumps(dataset)) < 2000  # workers receive a path, not the data


def test_bytes_per_sample_counts_features_and_label():
    assert SPEC.bytes_per_sample == 2 * 4 * 4 * 4 + 8


def test_indexing_behaves_like_a_sequence(tmp_path):
    dataset = open_dataset(SPEC, "parquet", root=tmp_path)
    assert torch.equal(dataset[-1][0], dataset[299][0])
    with pytest.raises(IndexError):
        dataset[300]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"sample_shape": (3, 0)}, "sample_shape"),
        ({"transform_cost": -1}, "transform_cost"),
    ],
)
def test_bad_specs_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DatasetSpec(**kwargs)


def test_unknown_format_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset format 'hdf5'"):
        open_dataset(SPEC, "hdf5", root=tmp_path)


def test_spec_key_ignores_only_the_transform_cost():
    assert SPEC.key == replace(SPEC, transform_cost=5).key
    assert SPEC.key != replace(SPEC, seed=8).key
    assert SPEC.key != replace(SPEC, sample_shape=(4, 2, 4)).key


def test_a_writer_that_loses_the_race_keeps_the_winners_copy(tmp_path, monkeypatch):
    real_write = NpyDataset.write

    def write_while_another_process_finishes_first(spec, directory):
        monkeypatch.setattr(NpyDataset, "write", staticmethod(real_write))
        materialize(spec, "npy", root=tmp_path)  # the other process wins the rename
        real_write(spec, directory)

    monkeypatch.setattr(NpyDataset, "write", staticmethod(write_while_another_process_finishes_first))
    path = materialize(SPEC, "npy", root=tmp_path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the loser's copy is gone
    assert torch.equal(open_dataset(SPEC, "npy", root=tmp_path)[299][0], open_dataset(SPEC, "memory")[299][0])
