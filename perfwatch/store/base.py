"""What every store offers the commands: save a run, load one by reference, list them all (or
those a history asks for: RunFilter, which a database turns into its query).

A reference is a results file (a path ending in ``.json`` or holding a separator: read as is,
whatever the store), a run id, a unique prefix of one, or ``latest``. Listings skip a run that
cannot be read, with a warning naming it, so one bad document never hides the others.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfwatch import stats
from perfwatch.errors import UserError
from perfwatch.results import RunRecord

if TYPE_CHECKING:
    import pandas

FRAME_COLUMNS = ["run_id", "created", "suite", "git_commit", "machine", "name", "kind",
                 "unit", "higher_is_better", "status", "n", "median", "samples"]


@dataclass(frozen=True)
class RunFilter:
    """Which runs a history reads; None lets every run through.

    ``machine``: a machine id, a prefix of one, or a host name. ``branch``: the branch the run was made
    on. ``since``: a UTC time in the form ``created`` has; a run passes if its commit is that new, or,
    without a commit time, if it was made since.
    """

    machine: str | None = None
    branch: str | None = None
    since: str | None = None

    def machine_matches(self, machine_id: str | None, host: str | None) -> bool:
        return self.machine is None or (machine_id or "").startswith(self.machine) or host == self.machine

    def matches(self, run: RunRecord) -> bool:
        env = run.env
        if not self.machine_matches(env.get("machine_id"), env.get("host")):
            return False
        if self.branch is not None and env.get("git_branch") != self.branch:
            return False
        return self.since is None or (env.get("git_commit_time") or run.created) >= self.since

    def describe(self) -> str:
        """The filters in words, as an error message names them."""
        words = [f"of machine {self.machine!r}" if self.machine is not None else "",
                 f"on branch {self.branch!r}" if self.branch is not None else "",
                 f"since {self.since}" if self.since is not None else ""]
        return " ".join(w for w in words if w)


def machine_of(env: dict[str, Any]) -> str:
    """The machine a run's history belongs to: its ``machine_id``, else (an older document) its host."""
    return env.get("machine_id") or env.get("host") or "unknown"


def is_file_ref(ref: str | None) -> bool:
    return bool(ref) and (ref.endswith(".json") or os.sep in ref)


def existing_file(ref: str) -> Path:
    path = Path(ref)
    if not path.is_file():
        raise UserError(f"{ref}: no such results file")
    return path


def pick(ref: str | None, ids: list[str], where: str) -> str:
    """The one id of ``ids`` (oldest first) that ``ref`` names: ``latest``/None, an id or a unique prefix."""
    if not ids:
        raise UserError(f"{where}: no stored runs yet; run `perfwatch run` first")
    if ref in (None, "", "latest"):
        return ids[-1]
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"{ref}: no stored run with that id in {where}; `perfwatch runs` lists them")
    raise UserError(f"{ref}: ambiguous run id, matches {len(matches)} runs; give more characters")


class RunStore(ABC):
    """A place runs are kept; ``root`` is how messages name it (a directory, or a URL without its password)."""

    root: object
    backend: str  # directory, sqlite or postgresql

    def ready(self) -> None:
        """Open the store now, so that a bad one is an error before a long suite rather than after it."""

    @abstractmethod
    def save(self, run: RunRecord) -> object:
        """Store ``run`` (never overwriting one of the same id); returns what to show as where it went."""

    @abstractmethod
    def ids(self) -> list[str]:
        """Stored run ids, oldest first."""

    @abstractmethod
    def load_id(self, run_id: str) -> RunRecord:
        """The stored run ``run_id`` (one of ``ids()``)."""

    def load(self, ref: str | None = None) -> RunRecord:
        """A run by results file, run id, unique id prefix, or ``latest`` (the default)."""
        if is_file_ref(ref):
            return RunRecord.load(existing_file(ref))
        return self.load_id(pick(ref, self.ids(), str(self.root)))

    @abstractmethod
    def runs(self) -> Iterator[RunRecord]:
        """Every readable run, oldest first; an unreadable one is skipped with a warning naming it."""

    def select(self, which: RunFilter) -> Iterator[RunRecord]:
        """The readable runs that ``which`` lets through, oldest first (a database filters in its query)."""
        return (run for run in self.runs() if which.matches(run))

    def machines(self) -> dict[str, str | None]:
        """Machine id -> host name of every machine with a stored run (a run without an id: its host)."""
        return {machine_of(run.env): run.env.get("host") for run in self.runs()}

    def commit_times(self, prefix: str) -> dict[str, str | None]:
        """Stored commits that start with ``prefix`` -> their commit time (None where no run recorded it)."""
        found: dict[str, str | None] = {}
        for run in self.runs():
            commit = run.env.get("git_commit")
            if commit and commit.startswith(prefix):
                found[commit] = found.get(commit) or run.env.get("git_commit_time")
        return found

    def import_runs(self, records: Iterable[RunRecord]) -> list[str]:
        """Store each run whose id is not stored yet (a stored one is left as it is); returns the ids stored."""
        present = set(self.ids())
        imported = []
        for run in records:
            if run.run_id not in present:
                self.save(run)
                present.add(run.run_id)
                imported.append(run.run_id)
        return imported

    def info(self) -> dict[str, Any]:
        """What `perfwatch store info` shows: where, which backend, how many runs, the oldest and latest."""
        ids = self.ids()
        return {"store": str(self.root), "backend": self.backend, "runs": len(ids),
                "oldest": ids[0] if ids else None, "latest": ids[-1] if ids else None}

    def frame(self) -> pandas.DataFrame:
        """One row per benchmark per run, with summary columns computed from the raw samples."""
        import pandas as pd

        rows = [{"run_id": run.run_id, "created": pd.Timestamp(run.created), "suite": run.suite,
                 "git_commit": run.env.get("git_commit"), "machine": run.env.get("machine_id"), "name": b.name,
                 "kind": b.kind, "unit": b.unit, "higher_is_better": b.higher_is_better, "status": b.status,
                 "n": len(b.samples), "median": stats.median(b.samples), "samples": list(b.samples)}
                for run in self.runs() for b in run.benchmarks]
        return pd.DataFrame(rows, columns=FRAME_COLUMNS)
