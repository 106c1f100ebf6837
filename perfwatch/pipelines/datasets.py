"""Deterministic synthetic datasets in four storage formats, cached on disk.

A :class:`DatasetSpec` fixes the data completely: the same spec yields byte-identical
samples in every format and every process, so loader benchmarks compare storage
formats and loader knobs, never different data. Files are written once into a cache
directory keyed by a hash of the spec, atomically, so concurrent benchmark processes
share them instead of racing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

FORMATS = ("memory", "npy", "parquet", "files")
# Bump when the on-disk layout or the generator changes: old cache entries are then ignored.
FORMAT_VERSION = 1
# Samples per RNG block: data depends only on the spec, not on how writers chunk it.
_BLOCK = 256
PARQUET_ROW_GROUP = _BLOCK  # one RNG block per row group


@dataclass(frozen=True)
class DatasetSpec:
    """What a synthetic classification dataset contains.

    ``transform_cost`` is the number of decode/augment-like numpy passes each sample
    gets in ``__getitem__`` (0 = none): the knob that makes loading CPU-bound.
    """

    num_samples: int = 1024
    sample_shape: tuple[int, ...] = (3, 32, 32)
    num_classes: int = 10
    seed: int = 0
    transform_cost: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_shape", tuple(int(d) for d in self.sample_shape))
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if not self.sample_shape or min(self.sample_shape) < 1:
            raise ValueError(f"sample_shape must be non-empty with positive sizes, got {self.sample_shape}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.transform_cost < 0:
            raise ValueError(f"transform_cost must be >= 0, got {self.transform_cost}")

    @property
    def record_dtype(self) -> np.dtype:
        """One sample as stored: float32 features then an int64 label, little-endian."""
        return np.dtype([("x", "<f4", self.sample_shape), ("y", "<i8")])

    @property
    def bytes_per_sample(self) -> int:
        """Bytes a loader delivers per sample (features + label), for bytes/s."""
        return self.record_dtype.itemsize

    @property
    def key(self) -> str:
        """Stable hash of the data-defining fields (transform cost excluded: not stored)."""
        fields = asdict(self)
        del fields["transform_cost"]
        text = json.dumps({"format_version": FORMAT_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def blocks(self) -> Iterator[np.ndarray]:
        """The records in order, as structured arrays of up to ``_BLOCK`` samples."""
        for block, start in enumerate(range(0, self.num_samples, _BLOCK)):
            count = min(_BLOCK, self.num_samples - start)
            rng = np.random.default_rng([self.seed, block])
            records = np.empty(count, dtype=self.record_dtype)
            records["x"] = rng.standard_normal((count, *self.sample_shape), dtype=np.float32)
            records["y"] = rng.integers(0, self.num_classes, count)
            yield records

    def records(self) -> np.ndarray:
        """All records in one array."""
        return np.concatenate(list(self.blocks()))


def transform(x: np.ndarray, cost: int) -> np.ndarray:
    """``cost`` decode/augment-like passes: running sum, standardize, clip. Deterministic."""
    for _ in range(cost):
        x = np.cumsum(x, axis=-1, dtype=np.float32)
        x -= x.mean()
        x /= x.std() + np.float32(1e-6)
        np.clip(x, -3.0, 3.0, out=x)
    return x


class SyntheticDataset(Dataset):
    """Base of the formats: ``record(i)`` reads one stored sample, the rest is shared."""

    format: str

    def __init__(self, spec: DatasetSpec):
        self.spec = spec

    def __len__(self) -> int:
        return self.spec.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = range(self.spec.num_samples)[index]  # IndexError and negative indices, as a list
        x, y = self.record(index)
        x = transform(np.array(x, dtype=np.float32), self.spec.transform_cost)
        return torch.from_numpy(x), torch.tensor(int(y), dtype=torch.int64)

    def record(self, index: int) -> tuple[np.ndarray, Any]:
        raise NotImplementedError


class MemoryDataset(SyntheticDataset):
    """All samples in RAM: the upper bound that the file formats are compared against."""

    format = "memory"

    def __init__(self, spec: DatasetSpec):
        super().__init__(spec)
        self._records = spec.records()

    def record(self, index: int) -> tuple[np.ndarray, Any]:
        row = self._records[index]
        return row["x"], row["y"]


class FileDataset(SyntheticDataset):
    """A format backed by files in ``path``, opened lazily in each process.

    Handles are dropped when pickled and reopened after a fork, so DataLoader workers
    never share a file offset or a cache with the parent.
    """

    def __init__(self, spec: DatasetSpec, path: Path):
        super().__init__(spec)
        self.path = Path(path)
        self._handle: Any = None
        self._pid: int | None = None

    def handle(self) -> Any:
        if self._pid != os.getpid():
            self._handle, self._pid = self.open(), os.getpid()
        return self._handle

    def open(self) -> Any:
        """This process's handle (a mapping, an open file); None for formats without one."""
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": None}

    @staticmethod
    def write(spec: DatasetSpec, directory: Path) -> None:
        raise NotImplementedError


class NpyDataset(FileDataset):
    """One ``records.npy`` of structured records, memory-mapped read-only."""

    format = "npy"

    def open(self) -> np.ndarray:
        return np.load(self.path / "records.npy", mmap_mode="r")

    def record(self, index: int) -> tuple[np.ndarray, Any]:
        row = self.handle()[index]
        return row["x"], row["y"]

    @staticmethod
    def write(spec: DatasetSpec, directory: Path) -> None:
        out = np.lib.format.open_memmap(
            directory / "records.npy", mode="w+", dtype=spec.record_dtype, shape=(spec.num_samples,)
        )
        start = 0
        for block in spec.blocks():
            out[start : start + len(block)] = block
            start += len(block)
        out.flush()
        del out


class ParquetDataset(FileDataset):
    """``data.parquet`` with ``PARQUET_ROW_GROUP`` rows per group; features as a fixed-size list.

    Reading a sample reads and decodes its whole row group, cached per process: the
    realistic access pattern, fast in order and slow when shuffled.
    """

    format = "parquet"

    def __init__(self, spec: DatasetSpec, path: Path):
        super().__init__(spec, path)
        import pyarrow.parquet  # noqa: F401  imported here, forked workers need not import it each epoch

    def open(self) -> dict[str, Any]:
        import pyarrow.parquet as pq

        return {"file": pq.ParquetFile(self.path / "data.parquet"), "group": -1, "x": None, "y": None}

    def record(self, index: int) -> tuple[np.ndarray, Any]:
        state = self.handle()
        group, offset = divmod(index, PARQUET_ROW_GROUP)
        if state["group"] != group:
            table = state["file"].read_row_group(group, columns=["x", "y"])
            features = _values(table.column("x").combine_chunks().flatten(), np.float32)
            state["x"] = features.reshape(-1, *self.spec.sample_shape)
            state["y"] = _values(table.column("y").combine_chunks(), np.int64)
            state["group"] = group
        return state["x"][offset], state["y"][offset]

    @staticmethod
    def write(spec: DatasetSpec, directory: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        numel = int(np.prod(spec.sample_shape))
        schema = pa.schema([("x", pa.list_(pa.float32(), numel)), ("y", pa.int64())])
        with pq.ParquetWriter(directory / "data.parquet", schema) as writer:
            for block in spec.blocks():
                features = pa.FixedSizeListArray.from_arrays(pa.array(block["x"].reshape(-1)), numel)
                table = pa.Table.from_arrays([features, pa.array(block["y"])], schema=schema)
                writer.write_table(table, row_group_size=PARQUET_ROW_GROUP)


def _values(array: Any, dtype: type) -> np.ndarray:
    """Zero-copy numpy view of a null-free primitive Arrow array. (``to_numpy()`` would
    import pandas on first use: a quarter second in every fresh DataLoader worker.)"""
    return np.frombuffer(array.buffers()[1], dtype=dtype)[array.offset : array.offset + len(array)]


class FilesDataset(FileDataset):
    """A directory with one small file per sample (raw record bytes): many opens, like JPEGs."""

    format = "files"

    def __init__(self, spec: DatasetSpec, path: Path):
        super().__init__(spec, path)
        self._dtype = spec.record_dtype

    def record(self, index: int) -> tuple[np.ndarray, Any]:
        row = np.frombuffer((self.path / f"{index:08d}.bin").read_bytes(), dtype=self._dtype)[0]
        return row["x"], row["y"]

    @staticmethod
    def write(spec: DatasetSpec, directory: Path) -> None:
        index = 0
        for block in spec.blocks():
            for row in block:
                (directory / f"{index:08d}.bin").write_bytes(row.tobytes())
                index += 1


FILE_FORMATS: dict[str, type[FileDataset]] = {
    cls.format: cls for cls in (NpyDataset, ParquetDataset, FilesDataset)
}


def cache_root() -> Path:
    """``$PERFWATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/perfwatch``, else ``~/.cache/perfwatch``."""
    explicit = os.environ.get("PERFWATCH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "perfwatch"


def materialize(spec: DatasetSpec, fmt: str, root: Path | None = None) -> Path:
    """The directory holding ``spec`` in file format ``fmt``, written on first use.

    Writing goes to a temporary sibling that is renamed into place, so readers see a
    complete directory or none; a process that loses the race keeps the winner's.
    """
    if fmt not in FILE_FORMATS:
        raise ValueError(f"unknown file format {fmt!r}; choose one of {', '.join(FILE_FORMATS)}")
    base = (root or cache_root()) / "datasets"
    final = base / f"{fmt}-v{FORMAT_VERSION}-{spec.key}"
    if final.is_dir():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=base))
    try:
        FILE_FORMATS[fmt].write(spec, tmp)
        (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # a real failure, not a lost race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def open_dataset(spec: DatasetSpec, fmt: str = "memory", root: Path | None = None) -> SyntheticDataset:
    """``spec`` as a map-style Dataset of ``(x: float32, y: int64)`` in format ``fmt``."""
    if fmt == "memory":
        return MemoryDataset(spec)
    if fmt not in FILE_FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return FILE_FORMATS[fmt](spec, materialize(spec, fmt, root))
