"""The results directory: every run kept as one JSON file, written atomically.

A run is never rewritten or deleted here. Reading history tolerates a corrupt
or future-version file (it is skipped with a warning naming it), so one bad
file does not hide every other run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from perfwatch import stats
from perfwatch.errors import UserError
from perfwatch.results import RunRecord

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)

DEFAULT_RESULTS_DIR = Path(".perfwatch/results")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same directory plus rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results and reports are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    """A directory of results documents named ``<run_id>.json``; run ids sort by time."""

    def __init__(self, root: Path | str = DEFAULT_RESULTS_DIR):
        self.root = Path(root)

    def save(self, run: RunRecord) -> Path:
        path = self.root / f"{run.run_id}.json"
        if path.exists():
            raise UserError(f"{path}: a run with id {run.run_id} is already stored; not overwriting it")
        try:
            write_atomic(path, run.to_json() + "\n")
        except OSError as exc:
            raise UserError(f"{self.root}: cannot write results ({exc.strerror}); pass a writable results directory",
                            setting="results_dir") from None
        return path

    def paths(self) -> list[Path]:
        """Stored run files, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.json") if not p.name.startswith("."))

    def resolve(self, ref: str | None = None) -> Path:
        """A run by file path, run id, unique id prefix, or ``latest`` (the default)."""
        if ref and (ref.endswith(".json") or os.sep in ref):
            path = Path(ref)
            if not path.is_file():
                raise UserError(f"{ref}: no such results file")
            return path
        paths = self.paths()
        if not paths:
            raise UserError(f"{self.root}: no stored runs yet; run `perfwatch run` first")
        if ref in (None, "", "latest"):
            return paths[-1]
        matches = [p for p in paths if p.stem.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UserError(f"{ref}: no stored run with that id in {self.root}; `perfwatch runs` lists them")
        raise UserError(f"{ref}: ambiguous run id, matches {len(matches)} runs; give more characters")

    def load(self, ref: str | None = None) -> RunRecord:
        return RunRecord.load(self.resolve(ref))

    def runs(self) -> Iterator[RunRecord]:
        """Every readable run, oldest first; unreadable files are skipped with a warning."""
        for path in self.paths():
            try:
                yield RunRecord.load(path)
            except UserError as exc:
                log.warning("skipping %s", exc)

    def frame(self) -> "pandas.DataFrame":
        """One row per benchmark per run, with summary columns computed from the raw samples."""
        import pandas as pd

        rows = []
        for run in self.runs():
            for b in run.benchmarks:
                values = b.samples
                rows.append(
                    {
                        "run_id": run.run_id,
                        "created": pd.Timestamp(run.created),
                        "suite": run.suite,
                        "git_commit": run.env.get("git_commit"),
                        "machine": run.env.get("machine_id"),
                        "name": b.name,
                        "kind": b.kind,
                        "unit": b.unit,
                        "higher_is_better": b.higher_is_better,
                        "status": b.status,
                        "n": len(values),
                        "median": stats.median(values),
                        "samples": list(values),
                    }
                )
        columns = ["run_id", "created", "suite", "git_commit", "machine", "name", "kind",
                   "unit", "higher_is_better", "status", "n", "median", "samples"]
        return pd.DataFrame(rows, columns=columns)
