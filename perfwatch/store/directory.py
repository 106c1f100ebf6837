"""A directory of results documents, one ``<run_id>.json`` each, written atomically: for those
who commit their results. A run is never rewritten or deleted here."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from perfwatch.errors import RunExists, UserError
from perfwatch.results import RunRecord
from perfwatch.store.base import RunStore, existing_file, is_file_ref, pick
from perfwatch.store.files import write_or_refuse

log = logging.getLogger(__name__)

DEFAULT_RESULTS_DIR = Path(".perfwatch/results")


class Store(RunStore):
    """A directory of results documents named ``<run_id>.json``; run ids sort by time."""

    backend = "directory"

    def __init__(self, root: Path | str = DEFAULT_RESULTS_DIR):
        self.root = Path(root)

    def add(self, run: RunRecord) -> Path:
        path = self.root / f"{run.run_id}.json"
        if path.exists():
            raise RunExists(f"{path}: a run with id {run.run_id} is already stored; not overwriting it")
        write_or_refuse(path, run.to_json() + "\n", self.root, "results", "pass a writable results directory",
                        setting="results_dir")
        return path

    def paths(self) -> list[Path]:
        """Stored run files, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.json") if not p.name.startswith("."))

    def ids(self) -> list[str]:
        return [p.stem for p in self.paths()]

    def resolve(self, ref: str | None = None) -> Path:
        """The file of a run given by file path, run id, unique id prefix, or ``latest`` (the default)."""
        if is_file_ref(ref):
            return existing_file(ref)
        return self.root / f"{pick(ref, self.ids(), str(self.root))}.json"

    def load_id(self, run_id: str) -> RunRecord:
        return RunRecord.load(self.root / f"{run_id}.json")

    def runs(self) -> Iterator[RunRecord]:
        for path in self.paths():
            try:
                yield RunRecord.load(path)
            except UserError as exc:
                log.warning("skipping %s", exc)
