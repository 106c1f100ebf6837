"""What a re-publish recomputes: the runs stored since the cache was written, the benchmark pages they touch
(and any page whose file is no longer as written), and those pages' history read back from the store, only
their benchmarks where the store filters in its query. Whatever it cannot vouch for is a :class:`Rebuild`
(a run gone from the store, a run stored before runs already published, commits whose git order changed, the
store changing while it is read), and the site is built from scratch: the result is always the one a full
publish makes."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from perfwatch.errors import UserError
from perfwatch.publish.cache import Cache
from perfwatch.publish.data import Page, base_and_params, benchmark_pages, page_stem
from perfwatch.regress.history import git_positions
from perfwatch.results import RunRecord
from perfwatch.store.base import RunFilter, RunStore
from perfwatch.thresholds import Thresholds

log = logging.getLogger(__name__)

FILTERING = ("sqlite", "postgresql")  # backends whose query reads only the benchmarks a RunFilter names
PER_PAGE = 4  # read each touched page's history on its own while at most one page in this many is touched


class Rebuild(Exception):
    """Why the cache cannot be built on: the site is published from scratch."""


@dataclass(frozen=True)
class Update:
    """The runs stored since the cache (in the store's order), every commit (in_order), the pages computed."""

    new: list[RunRecord]
    commits: list[str]
    pages: dict[str, Page]


def commit_positions(commits: Iterable[str], repo: Path | None) -> dict[str, int] | None:
    """regress.history.git_positions of these commits (it reads nothing of a run but its commit)."""
    return git_positions([RunRecord("", "", "", {"git_commit": c}, []) for c in commits], repo)


def in_order(commits: Iterable[str], positions: Mapping[str, int] | None) -> list[str]:
    """``commits`` as the cache keeps them: in git order when known, else sorted."""
    return sorted(commits, key=positions.__getitem__) if positions is not None else sorted(commits)


def new_runs(store: RunStore, cache: Cache) -> list[RunRecord]:
    """The readable runs stored since ``cache`` was made, which must all come after its runs (an unreadable one
    is skipped with a warning, as a full publish skips it)."""
    ids = store.ids()
    place = {run_id: i for i, run_id in enumerate(ids)}
    gone = [run_id for run_id in cache.ids if run_id not in place]
    if gone:
        raise Rebuild(f"{len(gone)} published run(s) are no longer in the store")
    last = max((place[run_id] for run_id in cache.ids), default=-1)
    included = set(cache.ids)
    new = []
    for run_id in ids:
        if run_id in included:
            continue
        try:
            run = store.load_id(run_id)
        except UserError as exc:
            log.warning("skipping %s", exc)
            continue
        if place[run_id] < last:
            raise Rebuild(f"run {run_id} is stored before runs already published")
        if run.run_id != run_id:
            raise Rebuild(f"the stored run {run_id} calls itself {run.run_id}")
        new.append(run)
    return new


def glob_literal(text: str) -> str:
    """An fnmatch pattern that matches ``text`` itself (``*``, ``?`` and ``[`` each in brackets)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def only(runs: Iterable[RunRecord], bases: set[str], expected: list[str]) -> list[RunRecord]:
    """``runs`` holding only the benchmarks of the pages ``bases``; they must be the runs ``expected``."""
    runs = list(runs)
    if [run.run_id for run in runs] != expected:
        raise Rebuild("the store changed while it was read")
    trimmed = []
    for run in runs:
        kept = [b for b in run.benchmarks if base_and_params(b.name)[0] in bases]
        trimmed.append(run if len(kept) == len(run.benchmarks) else replace(run, benchmarks=kept))
    return trimmed


def read_pages(store: RunStore, bases: Mapping[str, str], expected: list[str], pages: int, limits: Thresholds,
               positions: Mapping[str, int] | None, baseline: RunRecord | None = None) -> dict[str, Page]:
    """The pages ``bases`` (stem -> benchmark base name) from their history in ``store``: one query per page
    where the store filters and few pages are touched, else one read of every run. Every run is read, with
    only those benchmarks, so each run's machine counts as in a full publish."""
    if not bases:
        return {}
    if store.backend not in FILTERING or len(bases) * PER_PAGE > pages:
        return benchmark_pages(only(store.runs(), set(bases.values()), expected), limits, positions, baseline)
    computed: dict[str, Page] = {}
    for base in bases.values():
        runs = store.select(RunFilter(benchmark=glob_literal(base) + "*"))  # the names base and base(...)
        computed.update(benchmark_pages(only(runs, {base}, expected), limits, positions, baseline))
    return computed


def update(store: RunStore, cache: Cache, unwritten: Iterable[str], limits: Thresholds,
           repo: Path | None, baseline: RunRecord | None = None) -> Update:
    """What changed since ``cache`` and the pages to compute again: those of the new runs' benchmarks and
    ``unwritten`` (stems of pages whose file is not as the cache saw it)."""
    new = new_runs(store, cache)
    commits = {*cache.commits, *(c for run in new if (c := run.env.get("git_commit")))}
    positions = commit_positions(sorted(commits), repo)
    if (positions is not None) != cache.git:
        raise Rebuild("the commits' git order " + ("is known now" if positions is not None else "is no longer known"))
    if positions is not None and in_order(cache.commits, positions) != cache.commits:
        raise Rebuild("new commits change the git order of published ones")
    bases = {stem: cache.parts[stem]["base"] for stem in unwritten}
    bases.update({page_stem(base): base for run in new for b in run.benchmarks
                  for base in (base_and_params(b.name)[0],)})
    expected = [*cache.ids, *(run.run_id for run in new)]
    pages = read_pages(store, bases, expected, len({*cache.parts, *bases}), limits, positions, baseline)
    missing = set(bases) - set(pages)
    if missing:
        raise Rebuild(f"{len(missing)} page(s) of the cache have no results in the store")
    return Update(new, in_order(commits, positions), pages)
