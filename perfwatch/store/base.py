"""What every store offers the commands: save a run, load one by reference, list them all (or
those a history asks for: RunFilter, which a database turns into its query, down to the benchmarks;
or a line each without their samples: RunSummary), and store what waits for it in the spool (sync).

A reference is a results file (a path ending in ``.json`` or holding a separator: read as is,
whatever the store), a run id, a unique prefix of one, or ``latest``. Listings skip a run that
cannot be read, with a warning naming it, so one bad document never hides the others.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfwatch import stats
from perfwatch.errors import RunExists, StoreUnavailable, UserError
from perfwatch.results import RunRecord
from perfwatch.store.spool import Spool, Synced

if TYPE_CHECKING:
    import pandas

FRAME_COLUMNS = ["run_id", "created", "suite", "git_commit", "machine", "name", "kind",
                 "unit", "higher_is_better", "status", "n", "median", "samples"]


def age(run: RunRecord) -> str:
    """When a run's code was made, for ordering history: its commit time, else its creation time."""
    return run.env.get("git_commit_time") or run.created


@dataclass(frozen=True)
class RunFilter:
    """Which runs a history reads; None lets every run through.

    ``machine``: a machine id, a prefix of one, or a host name. ``branch``: the branch the run was made
    on. ``since``: a UTC time in the form ``created`` has; a run passes if its commit is that new, or,
    without a commit time, if it was made since. ``benchmark``: a benchmark name or an fnmatch glob; it
    lets every run through, holding only its benchmarks of that name (so one benchmark's history does
    not read every result of every run). ``suite``: the suite size the run was made with. ``clean``: leave
    out runs of a working tree with uncommitted changes (their code is in no commit). ``not_commit``:
    leave out the runs of this commit (a run is not its own history). ``newest``: of the runs that pass,
    only the N newest by commit time (creation time without one), as a gate against recent history reads.
    """

    machine: str | None = None
    branch: str | None = None
    since: str | None = None
    benchmark: str | None = None
    suite: str | None = None
    clean: bool = False
    not_commit: str | None = None
    newest: int | None = None

    def machine_matches(self, machine_id: str | None, host: str | None) -> bool:
        return self.machine is None or (machine_id or "").startswith(self.machine) or host == self.machine

    def matches(self, run: RunRecord) -> bool:
        env = run.env
        if not self.machine_matches(env.get("machine_id"), env.get("host")):
            return False
        if self.branch is not None and env.get("git_branch") != self.branch:
            return False
        if self.suite is not None and run.suite != self.suite:
            return False
        if (self.clean and env.get("git_dirty")) or (self.not_commit and env.get("git_commit") == self.not_commit):
            return False
        return self.since is None or age(run) >= self.since

    def keep_newest(self, runs: Iterable[RunRecord]) -> Iterable[RunRecord]:
        """``runs`` (oldest first) cut to the ``newest`` N by commit time, still oldest first."""
        if self.newest is None:
            return runs
        runs = list(runs)
        kept = {id(run) for run in sorted(runs, key=age)[-self.newest:]} if self.newest > 0 else set()
        return [run for run in runs if id(run) in kept]

    def wants(self, name: str) -> bool:
        """Whether the benchmark ``name`` is one ``benchmark`` asks for (as `perfwatch history BENCH` matches)."""
        return self.benchmark is None or name == self.benchmark or fnmatchcase(name, self.benchmark)

    def trim(self, run: RunRecord) -> RunRecord:
        """``run`` holding only the benchmarks asked for."""
        if self.benchmark is None:
            return run
        return replace(run, benchmarks=[b for b in run.benchmarks if self.wants(b.name)])

    def describe(self) -> str:
        """The filters in words, as an error message names them."""
        words = [f"of machine {self.machine!r}" if self.machine is not None else "",
                 f"on branch {self.branch!r}" if self.branch is not None else "",
                 f"of the {self.suite} suite" if self.suite is not None else "",
                 "of committed code" if self.clean else "",
                 f"of commits other than {self.not_commit[:10]}" if self.not_commit else "",
                 f"since {self.since}" if self.since is not None else "",
                 f"(the newest {self.newest})" if self.newest is not None else ""]
        return " ".join(w for w in words if w)


@dataclass(frozen=True)
class RunSummary:
    """What `perfwatch runs` lists of a run, without its samples (a database counts them in its query)."""

    run_id: str
    created: str
    suite: str | None
    commit: str | None
    dirty: bool
    benchmarks: int
    failed: int

    @classmethod
    def of(cls, run: RunRecord) -> RunSummary:
        return cls(run.run_id, run.created, run.suite, run.env.get("git_commit"), bool(run.env.get("git_dirty")),
                   len(run.benchmarks), len(run.failed))


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
    """A place runs are kept; ``root`` is how messages name it (a directory, or a URL without its password).

    ``spool`` is where a run waits until a database has committed it (spool.py); a directory store,
    whose save is itself a local atomic write, has nothing waiting there.
    """

    root: object
    backend: str  # directory, sqlite or postgresql
    spool: Spool = Spool()

    @property
    def identity(self) -> str:
        """The store's name, the same from any working directory and without a password: its ``root``,
        a directory or a SQLite file made absolute. The spool (and the runner's journal) names it so."""
        root = str(self.root)
        scheme, sep, rest = root.partition("://")
        if not sep:
            return str(Path(root).resolve())
        if scheme.startswith("sqlite"):  # sqlite:///relative/path, sqlite:////absolute/path
            return f"{scheme}:///{Path(rest[1:]).resolve()}"
        return root

    def ready(self) -> str | None:
        """Open the store now, so that a bad one is an error before a long suite rather than after it;
        returns a note to show when it cannot be reached now and the run will wait in the spool."""
        return None

    @abstractmethod
    def add(self, run: RunRecord) -> object:
        """Store ``run`` at once (never overwriting one of the same id); returns what to show as where it went."""

    def save(self, run: RunRecord) -> object:
        """Store a run just made (``add``, and for a database the spool first, so it is never lost)."""
        return self.add(run)

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

    def summaries(self) -> list[RunSummary]:
        """A line's worth of each readable run, oldest first."""
        return [RunSummary.of(run) for run in self.runs()]

    def select(self, which: RunFilter) -> Iterator[RunRecord]:
        """The readable runs that ``which`` lets through, oldest first, each holding the benchmarks it asks
        for (a database filters in its query)."""
        passing = (run for run in self.runs() if which.matches(run))
        return (which.trim(run) for run in which.keep_newest(passing))

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
        """Store each run whose id is not stored yet (a stored one is left as it is); returns the ids stored.
        The runs come from documents that are kept, so they are added without the spool."""
        present = set(self.ids())
        imported = []
        for run in records:
            if run.run_id in present:
                continue
            present.add(run.run_id)
            try:
                self.add(run)
            except RunExists:  # another process stored it since ids() was read
                continue
            imported.append(run.run_id)
        return imported

    def sync(self) -> Synced:
        """Store each run waiting in the spool for this store, oldest first, dropping each entry once it is
        committed; a run already stored is not stored twice, so a sync cut short is simply run again. Stops
        at the first failure, which leaves that entry and the rest waiting."""
        entries = list(self.spool.entries())
        mine = [entry for entry in entries if entry.store == self.identity]
        synced = Synced()
        for entry in entries:
            if entry.store != self.identity:
                synced.elsewhere[entry.store] = synced.elsewhere.get(entry.store, 0) + 1
        if not mine:
            return synced
        try:
            present = set(self.ids())
        except UserError as exc:
            synced.left, synced.error = len(mine), str(exc)
            return synced
        for i, entry in enumerate(mine):
            stored = entry.run.run_id not in present  # else: stored before its entry was dropped
            try:
                if stored:
                    self.add(entry.run)
            except RunExists:  # by a sync running beside this one
                stored = False
            except UserError as exc:
                synced.left, synced.error = len(mine) - i, str(exc)
                return synced
            (synced.stored if stored else synced.already).append(entry.run.run_id)
            self.spool.done(entry.path)
        return synced

    def info(self) -> dict[str, Any]:
        """What `perfwatch store info` shows: where, which backend, how many runs, the oldest and latest,
        and how many runs wait in the spool for it."""
        pending = len(self.spool.pending(self.identity))
        try:
            ids = self.ids()
        except StoreUnavailable as exc:
            raise StoreUnavailable(f"{exc}; {pending} run{'s' if pending != 1 else ''} of this store wait in "
                                   f"{self.spool.root}", setting=exc.setting) from None
        return {"store": str(self.root), "backend": self.backend, "runs": len(ids),
                "oldest": ids[0] if ids else None, "latest": ids[-1] if ids else None,
                "pending": pending}

    def frame(self) -> pandas.DataFrame:
        """One row per benchmark per run, with summary columns computed from the raw samples."""
        import pandas as pd

        rows = [{"run_id": run.run_id, "created": pd.Timestamp(run.created), "suite": run.suite,
                 "git_commit": run.env.get("git_commit"), "machine": run.env.get("machine_id"), "name": b.name,
                 "kind": b.kind, "unit": b.unit, "higher_is_better": b.higher_is_better, "status": b.status,
                 "n": len(b.samples), "median": stats.median(b.samples), "samples": list(b.samples)}
                for run in self.runs() for b in run.benchmarks]
        return pd.DataFrame(rows, columns=FRAME_COLUMNS)
