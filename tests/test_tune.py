"""The DataLoader tuner: its search on literal throughput surfaces, its real measurement, its CLI."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch
from helpers import assert_one_line_error, run_perfwatch
from torch.utils.data import Dataset, TensorDataset

from perfwatch.errors import UserError
from perfwatch.pipelines.loader import LoaderKnobs
from perfwatch.tune.measure import EpochBench
from perfwatch.tune.search import SearchSpace, Trial, search

SPACE = SearchSpace(num_workers=(0, 1, 2, 4), batch_sizes=(16, 32, 64, 128, 256))
DEFAULT = LoaderKnobs(batch_size=64)

# samples/s by num_workers and batch size: a single peak at 2 workers and batch 128.
UNIMODAL = {
    0: {16: 300, 32: 400, 64: 500, 128: 540, 256: 520},
    1: {16: 500, 32: 700, 64: 900, 128: 950, 256: 900},
    2: {16: 700, 32: 1000, 64: 1300, 128: 1400, 256: 1350},
    4: {16: 600, 32: 900, 64: 1100, 128: 1200, 256: 1150},
}
# Factors of the worker-only knobs: prefetching 4 batches helps a little, persistence helps.
PREFETCH = {1: 0.9, 2: 1.0, 4: 1.05, 8: 1.05}
PERSISTENT = {False: 1.0, True: 1.1}


def surface(table, prefetch=PREFETCH, persistent=PERSISTENT, seconds_per_epoch=1.0, finals=None):
    """A measure function over literal numbers: every epoch of ``knobs`` delivers the table's value
    (``finals`` overrides it for the longer final trials), and a trial costs its epochs plus a warm-up one."""
    calls = []

    def measure(knobs: LoaderKnobs, epochs: int) -> Trial:
        calls.append(knobs)
        value = table[knobs.num_workers][knobs.batch_size]
        if knobs.num_workers:
            value *= prefetch[knobs.prefetch_factor] * persistent[knobs.persistent_workers]
        if finals and epochs > 1:
            value = finals.get(knobs, value)
        return Trial(knobs, (value,) * epochs, seconds_per_epoch * (epochs + 1))

    measure.calls = calls
    return measure


def test_finds_the_peak_of_a_unimodal_surface_without_the_grid():
    measure = surface(UNIMODAL)
    result = search(measure, SPACE, budget_s=1000, start=DEFAULT)
    assert result.best == LoaderKnobs(num_workers=2, batch_size=128, prefetch_factor=4, persistent_workers=True)
    assert result.best_samples_per_s == pytest.approx(1400 * 1.05 * 1.1)
    assert result.default_samples_per_s == 500
    assert result.speedup == pytest.approx(1400 * 1.05 * 1.1 / 500)
    assert not result.budget_exhausted
    assert result.configs_tried < result.grid_size / 4 and result.grid_size == 5 + 3 * 5 * 4 * 2
    rows = result.rows()
    assert rows[0]["best"] and rows[0]["final_samples_per_s"] == pytest.approx(result.best_samples_per_s)


def test_respects_the_budget_and_says_it_stopped_early():
    measure = surface(UNIMODAL, seconds_per_epoch=1.0)
    result = search(measure, SPACE, budget_s=10, start=DEFAULT)
    assert sum(t.seconds for t in result.trials) == result.seconds <= 10
    assert result.budget_exhausted
    assert result.default == DEFAULT and result.default_samples_per_s == 500


def test_the_default_is_measured_even_when_the_budget_is_tiny():
    result = search(surface(UNIMODAL), SPACE, budget_s=0.5, start=DEFAULT)
    assert [t.knobs for t in result.trials] == [DEFAULT]
    assert result.best == DEFAULT and result.speedup == 1.0


def test_never_proposes_worker_options_without_workers_nor_leaves_the_space():
    no_workers_win = {w: {b: 1000 - 300 * w + b for b in SPACE.batch_sizes} for w in SPACE.num_workers}
    measure = surface(no_workers_win)
    result = search(measure, SPACE, budget_s=1000, start=DEFAULT)
    assert result.best == LoaderKnobs(batch_size=256)
    assert any(k.num_workers for k in measure.calls)  # workers were tried, and lost
    for knobs in measure.calls:
        assert SPACE.contains(knobs)
        if knobs.num_workers == 0:
            assert knobs.prefetch_factor is None and not knobs.persistent_workers


def test_looks_past_the_one_worker_plateau():
    # One worker only moves the loading off the main process, no faster than none; two add a core.
    plateau = {0: {64: 1000}, 1: {64: 1000}, 2: {64: 1900}, 4: {64: 1700}}
    space = SearchSpace(num_workers=(0, 1, 2, 4), batch_sizes=(64,))
    result = search(surface(plateau, persistent={False: 1.0, True: 1.0}), space, budget_s=1000, start=DEFAULT)
    assert result.best.num_workers == 2


def test_revisits_workers_once_a_larger_batch_makes_them_pay():
    # Per-batch transfer costs sink workers at batch 64; at 256 they win.
    interaction = {0: {64: 1000, 128: 1100, 256: 1200}, 1: {64: 600, 128: 900, 256: 1300},
                   2: {64: 500, 128: 1000, 256: 1600}}
    space = SearchSpace(num_workers=(0, 1, 2), batch_sizes=(64, 128, 256))
    neutral = {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0}
    result = search(surface(interaction, prefetch=neutral, persistent={False: 1.0, True: 1.0}),
                    space, budget_s=1000, start=DEFAULT)
    assert (result.best.num_workers, result.best.batch_size) == (2, 256)


def test_the_final_rounds_pick_the_winner_interleaved():
    # One worker looks best in the one-epoch exploration, two workers win the longer final trials.
    flat = {0: {64: 500}, 1: {64: 1000}, 2: {64: 950}}
    space = SearchSpace(num_workers=(0, 1, 2), batch_sizes=(64,), prefetch_factors=(2,), persistent_workers=(True,))
    one, two = (LoaderKnobs(num_workers=w, batch_size=64, prefetch_factor=2, persistent_workers=True) for w in (1, 2))
    measure = surface(flat, prefetch={2: 1.0}, persistent={True: 1.0}, finals={one: 800, two: 900})
    result = search(measure, space, budget_s=1000, start=DEFAULT, final_rounds=3)
    assert result.best == two and result.best_samples_per_s == 900
    finals = [t.knobs for t in result.trials if t.phase == "final"]
    assert finals == [one, two, DEFAULT, DEFAULT, two, one, one, two, DEFAULT]


def test_pin_memory_is_searched_only_where_the_space_has_it():
    pinned_wins = surface(UNIMODAL, persistent={False: 1.0, True: 1.0})
    space = SearchSpace(num_workers=(0, 1), batch_sizes=(64,), prefetch_factors=(2,), pin_memory=(False, True))

    def measure(knobs, epochs):
        trial = pinned_wins(knobs, epochs)
        return Trial(knobs, tuple(v * (1.2 if knobs.pin_memory else 1.0) for v in trial.samples_per_s), trial.seconds)

    assert search(measure, space, budget_s=1000, start=DEFAULT).best.pin_memory
    assert SearchSpace.for_machine(64, 1024, 100, cores=2, cuda=False).pin_memory == (False,)


def test_machine_space_follows_cores_window_and_memory():
    space = SearchSpace.for_machine(64, window=1024, bytes_per_sample=1000, cores=2, available_bytes=4e6)
    assert space.num_workers == (0, 1, 2, 4)
    assert space.batch_sizes == (16, 32, 64, 128, 256)  # natural / 4 up to a quarter of the window
    assert space.memory_limit_bytes == 1e6
    too_big = LoaderKnobs(num_workers=4, batch_size=256, prefetch_factor=8, persistent_workers=True)
    assert not space.allows(too_big) and too_big not in space.grid()
    measure = surface(UNIMODAL, prefetch={1: 1.0, 2: 1.0, 4: 1.5, 8: 2.0})
    search(measure, space, budget_s=1000, start=DEFAULT)
    assert all(space.allows(k) for k in measure.calls)


def test_a_failing_config_is_passed_over_and_a_failing_default_is_an_error():
    healthy = surface(UNIMODAL)

    def four_workers_fail(knobs, epochs):
        if knobs.num_workers == 4:
            return Trial(knobs, (), 0.5, error="RuntimeError: unable to open shared memory")
        return healthy(knobs, epochs)

    result = search(four_workers_fail, SPACE, budget_s=1000, start=DEFAULT)
    assert result.best.num_workers == 2
    assert any(row["error"] for row in result.rows())

    def default_fails(knobs, epochs):
        return Trial(knobs, (), 0.5, error="OSError: disk gone")

    with pytest.raises(UserError, match="DataLoader\\(dataset, batch_size=64\\) failed: OSError: disk gone"):
        search(default_fails, SPACE, budget_s=1000, start=DEFAULT)


# --- Real DataLoaders ---------------------------------------------------------------------


class FailsInWorkers(Dataset):
    """Reads fine in the main process, raises in a DataLoader worker."""

    def __init__(self):
        self.parent = os.getpid()

    def __len__(self):
        return 64

    def __getitem__(self, index):
        if os.getpid() != self.parent:
            raise OSError("too many open files")
        return torch.zeros(4)


def test_epoch_bench_measures_epochs_of_a_real_loader():
    dataset = TensorDataset(torch.randn(256, 8), torch.arange(256))
    bench = EpochBench(dataset, window=128)
    trial = bench(LoaderKnobs(batch_size=16, num_workers=1, prefetch_factor=2, persistent_workers=True), 2)
    assert trial.error is None and len(trial.samples_per_s) == 2 and min(trial.samples_per_s) > 0
    assert trial.seconds > 0
    failed = EpochBench(FailsInWorkers(), window=64)(LoaderKnobs(batch_size=16, num_workers=1), 1)
    assert failed.samples_per_s == () and "OSError: too many open files" in failed.error
    assert EpochBench(FailsInWorkers(), window=64)(LoaderKnobs(batch_size=16), 1).error is None


def test_cli_tunes_a_reference_dataset(tmp_path):
    proc = run_perfwatch("tune", "loader", "--dataset", "transforms", "--budget", "20", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["dataset"] == "transforms" and doc["speedup"] > 0
    assert doc["best"]["dataloader"].startswith("DataLoader(dataset, batch_size=")
    assert doc["default"]["num_workers"] == 0 and doc["default"]["batch_size"] == 64
    assert 1 <= doc["configs_tried"] < doc["grid_size"] and doc["budget_s"] <= 20
    assert "best: DataLoader(dataset, batch_size=" in proc.stderr and "speedup" in proc.stderr


def test_cli_tunes_a_dataset_from_the_working_directory(tmp_path):
    (tmp_path / "mydata.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import TensorDataset

        def make():
            return TensorDataset(torch.randn(512, 16), torch.arange(512))
    """))
    proc = run_perfwatch("tune", "loader", "--dataset", "mydata:make", "--budget", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "best: DataLoader(dataset, batch_size=" in proc.stdout and "speedup" in proc.stdout


@pytest.mark.parametrize(
    "dataset, needle",
    [
        ("imagenet", "--dataset 'imagenet': unknown reference dataset; choose one of transforms, files, npy, parquet"),
        ("nosuchmodule:make", "--dataset nosuchmodule:make: importing 'nosuchmodule' failed: ModuleNotFoundError"),
        ("broken:make", "--dataset broken:make: module 'broken' has no callable 'make'"),
        ("broken:explode", "--dataset broken:explode: calling explode() failed: ValueError: no data here"),
        ("broken:number", "--dataset broken:number: number() returned a value of type int, not a map-style"),
    ],
)
def test_cli_names_a_bad_dataset(tmp_path, dataset, needle):
    (tmp_path / "broken.py").write_text(textwrap.dedent("""
        def explode():
            raise ValueError("no data here")

        def number():
            return 3
    """))
    proc = run_perfwatch("tune", "loader", "--dataset", dataset, cwd=tmp_path)
    assert_one_line_error(proc, needle)


@pytest.mark.parametrize("budget", ["0", "-5"])
def test_cli_refuses_a_budget_that_is_not_positive(tmp_path, budget):
    proc = run_perfwatch("tune", "loader", "--budget", budget, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Invalid value for '--budget'" in proc.stderr and "Traceback" not in proc.stderr
