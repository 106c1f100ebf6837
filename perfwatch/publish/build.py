"""The site's files from the store's runs: the pages, the static files (plotly.js among them), the feed, the publish
cache, and how it went. With a cache of the same key (cache.py), only the benchmark pages that new runs touch are
computed and rendered again (incremental.py); the rest of the site is made from the cache, and is what a full
publish makes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from perfwatch.errors import UserError
from perfwatch.publish.cache import CACHE, Cache, cache_key, read_cache
from perfwatch.publish.data import SiteData, benchmark_pages, machines_seen, site_of
from perfwatch.publish.feed import atom_feed
from perfwatch.publish.incremental import Rebuild, in_order, update
from perfwatch.publish.site import Written, digest, intact, write_site
from perfwatch.publish.templates import page as html_page
from perfwatch.regress.history import git_positions
from perfwatch.results import RunRecord
from perfwatch.store.base import RunStore
from perfwatch.thresholds import Thresholds, parse_thresholds

DEFAULT_SITE_DIR = Path("reports/site")
# plotly.min.js is plotly.js 4.1.1 with only the scatter and box traces (MIT, plotly.LICENSE.txt beside it): 1.2 MiB,
# not the 4.6 MiB whole bundle, and compiled as it streams in. How it was built, and why: static/plotly-bundle.md.
STATIC = ("site.js", "site.css", "plotly.min.js", "plotly.LICENSE.txt")


@dataclass(frozen=True)
class Published:
    """A publish: the data shown, what happened to the files, how many benchmark pages were computed and how many
    kept from the cache, and why the site was built from scratch (None when the cache was built on)."""

    data: SiteData
    files: Written
    out: Path
    runs: int
    recomputed: int
    reused: int
    rebuilt: str | None


@dataclass(frozen=True)
class State:
    """What a site is made of: the runs' ids, their commits (in git order when ``git``), the machines, each
    benchmark page's part of the site-wide pages (by stem), the pages computed now, and the digest of each page
    kept as it is."""

    ids: list[str]
    commits: list[str]
    git: bool
    machines: dict[str, dict[str, Any]]
    parts: dict[str, dict[str, Any]]
    pages: dict[str, dict[str, Any]]
    reused: dict[str, str]


def check_commit_url(template: str | None) -> None:
    """A commit URL template is an http(s) URL holding ``{commit}``: the pages link nothing else."""
    if template is None:
        return
    if not template.startswith(("https://", "http://")) or "{commit}" not in template:
        raise UserError(f"{template!r}: a commit URL template is an http(s) URL with {{commit}} in it, "
                        "e.g. https://github.com/ORG/REPO/commit/{commit}", setting="commit_url")


def page_file(stem: str) -> str:
    return f"benchmarks/{stem}.html"


def site_files(data: SiteData, commit_url: str | None, feed_id: str) -> dict[str, str]:
    """Relative path -> text of every file of the site but the benchmark pages not in ``data.pages``."""
    shared = {"commit_url": commit_url}
    files = {"index.html": html_page("summary", "Benchmarks", {**data.summary, **shared}),
             "regressions.html": html_page("regressions", "Regressions", {"rows": data.regressions, **shared}),
             "machines.html": html_page("machines", "Machines", {"machines": data.machines}),
             "regressions.xml": atom_feed(data.regressions, feed_id)}
    for name in STATIC:
        files[name] = resources.files("perfwatch.publish").joinpath("static", name).read_text(encoding="utf-8")
    for stem, page in data.pages.items():
        files[page_file(stem)] = html_page("benchmark", page["name"], {**page, **shared}, root="../", charts=True)
    return files


def from_scratch(store: RunStore, limits: Thresholds, repo: Path | None, baseline: RunRecord | None) -> State:
    """Every page from every run of the store."""
    runs = list(store.runs())
    positions = git_positions(runs, repo)
    pages = benchmark_pages(runs, limits, positions, baseline)
    commits = in_order({c for run in runs if (c := run.env.get("git_commit"))}, positions)
    return State([run.run_id for run in runs], commits, positions is not None, machines_seen(runs),
                 {stem: page.part for stem, page in pages.items()}, {stem: page.data for stem, page in pages.items()},
                 {})


def built_on(store: RunStore, cache: Cache, out: Path, limits: Thresholds, repo: Path | None,
             baseline: RunRecord | None) -> State:
    """The cache's site with the runs stored since: the pages they touch computed again, the others kept (those
    whose file is still as written; any other is computed again too)."""
    files = {stem: page_file(stem) for stem in cache.parts}
    found = intact(out, files.values())
    intact_pages = {stem: found[name] for stem, name in files.items() if found.get(name) == cache.parts[stem]["digest"]}
    changed = update(store, cache, [stem for stem in cache.parts if stem not in intact_pages], limits, repo, baseline)
    reused = {stem: sha for stem, sha in intact_pages.items() if stem not in changed.pages}
    parts = {stem: cache.parts[stem] for stem in reused} | {stem: page.part for stem, page in changed.pages.items()}
    return State([*cache.ids, *(run.run_id for run in changed.new)], changed.commits, cache.git,
                 machines_seen(changed.new, cache.machines), parts,
                 {stem: page.data for stem, page in changed.pages.items()}, reused)


def publish(store: RunStore, out: Path = DEFAULT_SITE_DIR, *,
            thresholds: Thresholds | Mapping[str, object] | None = None, repo: Path | None = None,
            commit_url: str | None = None, full: bool = False, baseline: RunRecord | None = None) -> Published:
    """Write the site of ``store``'s runs into ``out``, building on the cache there unless ``full``; ``repo`` is
    the repository whose git order orders the commits (none: their times); ``baseline`` is the run the summary
    sets each latest commit against, besides the commit before it."""
    check_commit_url(commit_url)
    limits = thresholds if isinstance(thresholds, Thresholds) else parse_thresholds(thresholds)
    source = str(store.root)
    key = cache_key(store.identity, source, limits, commit_url, baseline.to_dict() if baseline else None)
    cache, rebuilt = (None, "asked for") if full else read_cache(out, key)
    state = None
    if cache is not None:
        try:
            state = built_on(store, cache, out, limits, repo, baseline)
            rebuilt = None
        except Rebuild as exc:
            rebuilt = str(exc)
    state = state or from_scratch(store, limits, repo, baseline)
    data = site_of(state.parts, state.machines, len(state.ids), source, state.pages)
    files = site_files(data, commit_url, uuid.uuid5(uuid.NAMESPACE_URL, f"perfwatch-site:{source}").urn)
    digests = {**state.reused, **{stem: digest(files[page_file(stem)]) for stem in state.pages}}
    cache = Cache(key, state.ids, state.commits, state.git, state.machines,
                  {stem: {**part, "digest": digests[stem]} for stem, part in state.parts.items()})
    files[CACHE] = cache.text()
    written = write_site(out, files, {page_file(stem): sha for stem, sha in state.reused.items()})
    return Published(data, written, out, len(state.ids), len(state.pages), len(state.reused), rebuilt)
