"""Data-loader benchmarks: throughput, bandwidth, knobs, time to first batch, batch latency.

Datasets are synthetic and cached on disk across benchmark processes (see
perfwatch.pipelines.datasets), so ``setup`` only opens them. Each sample costs two
decode-like numpy passes, so workers have real CPU work to parallelize.
"""

import torch

from perfwatch.bench.suite import by_size
from perfwatch.pipelines.datasets import FORMATS, DatasetSpec, open_dataset
from perfwatch.pipelines.loader import EndlessBatches, build_loader, measure_epoch, measure_first_batch

# perfwatch: set up once per process and time the steady state, even under this repository's
# asv.conf.json, where each call would otherwise get fresh state (asv_runner >= 0.3; README).
fresh_setup = False

# Small images, CPU work per sample: an epoch takes ~0.1 s on two cores, so the
# runner's sample cap (not its time cap) ends quick and ci benchmarks.
SPEC = DatasetSpec(num_samples=by_size(quick=512, full=4096), transform_cost=2)
# Large images (192 KiB) and no per-sample work: storage bandwidth.
LARGE_SPEC = DatasetSpec(num_samples=by_size(quick=64, ci=128, full=1024), sample_shape=(3, 128, 128))


class _Loader:
    """Shared by the benchmarks below: a loader over a cached dataset, shut down after."""

    timeout = 120

    def open_loader(self, spec, fmt, **knobs):
        self.loader = build_loader(open_dataset(spec, fmt), **knobs)

    def teardown(self, *params):
        del self.loader  # stops persistent workers before the next parameter combination


class Throughput(_Loader):
    """Samples/s of whole epochs, by storage format, worker count and batch size.

    An epoch includes starting its workers: what a short epoch really costs.
    """

    param_names = ["format", "num_workers", "batch_size"]
    params = by_size(
        quick=[list(FORMATS), [0, 2], [64]],
        full=[list(FORMATS), [0, 1, 2, 4], [16, 64, 256]],
    )

    def setup(self, fmt, num_workers, batch_size):
        self.open_loader(SPEC, fmt, num_workers=num_workers, batch_size=batch_size)

    def track_samples_per_s(self, fmt, num_workers, batch_size):
        return measure_epoch(self.loader).samples_per_second

    track_samples_per_s.unit = "samples/s"
    track_samples_per_s.higher_is_better = True


class Bandwidth(_Loader):
    """Bytes/s from storage: 192 KiB samples, no per-sample work."""

    sizes = ("ci", "full")
    param_names = ["format", "num_workers"]
    params = by_size(quick=[["npy"], [0]], ci=[list(FORMATS), [2]], full=[list(FORMATS), [0, 2, 4]])

    def setup(self, fmt, num_workers):
        self.open_loader(LARGE_SPEC, fmt, num_workers=num_workers, batch_size=32)

    def track_bytes_per_s(self, fmt, num_workers):
        return measure_epoch(self.loader).bytes_per_second

    track_bytes_per_s.unit = "bytes/s"
    track_bytes_per_s.higher_is_better = True


class Knobs(_Loader):
    """Samples/s of the files format with two workers, by the knobs that tune them."""

    sizes = ("ci", "full")
    param_names = ["pin_memory", "prefetch_factor", "persistent_workers"]
    params = by_size(
        quick=[[False], [4], [True]],
        ci=[[False, True], [2, 8], [False, True]],
        full=[[False, True], [1, 2, 4, 8], [False, True]],
    )

    def setup(self, pin_memory, prefetch_factor, persistent_workers):
        if pin_memory and not torch.cuda.is_available():
            raise NotImplementedError("pin_memory needs CUDA")
        self.open_loader(
            SPEC, "files", num_workers=2, batch_size=64, pin_memory=pin_memory,
            prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
        )

    def track_samples_per_s(self, pin_memory, prefetch_factor, persistent_workers):
        return measure_epoch(self.loader).samples_per_second

    track_samples_per_s.unit = "samples/s"
    track_samples_per_s.higher_is_better = True


class FirstBatch(_Loader):
    """Seconds from a new iterator (worker start-up included) to the first batch."""

    param_names = ["format", "num_workers"]
    params = by_size(quick=[["npy"], [0, 2]], ci=[list(FORMATS), [0, 2]], full=[list(FORMATS), [0, 2, 4]])

    def setup(self, fmt, num_workers):
        self.open_loader(SPEC, fmt, num_workers=num_workers, batch_size=64)

    def track_first_batch_seconds(self, fmt, num_workers):
        return measure_first_batch(self.loader)  # excludes shutting the workers down

    track_first_batch_seconds.unit = "seconds"


class Latency(_Loader):
    """One batch per call from a never-ending stream: the samples are the latency distribution."""

    number = 1
    param_names = ["format", "num_workers"]
    params = by_size(quick=[["files"], [2]], ci=[list(FORMATS), [0, 2]], full=[list(FORMATS), [0, 2, 4]])

    def setup(self, fmt, num_workers):
        self.open_loader(SPEC, fmt, num_workers=num_workers, batch_size=64)
        self.batches = EndlessBatches(self.loader)
        next(self.batches)  # workers up before the first timed call

    def time_next_batch(self, fmt, num_workers):
        next(self.batches)

    def teardown(self, *params):
        del self.batches
        super().teardown(*params)
