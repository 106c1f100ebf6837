"""The site's files from the store's runs: the pages, plotly.js bundled once, the feed, and how it went."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from perfwatch.errors import UserError
from perfwatch.publish import feed, templates
from perfwatch.publish.data import SiteData, site_data
from perfwatch.publish.site import Written, write_site
from perfwatch.results import RunRecord
from perfwatch.thresholds import Thresholds

DEFAULT_SITE_DIR = Path("reports/site")
STATIC = ("site.js", "site.css")


@dataclass(frozen=True)
class Published:
    """A publish: the data shown, and what happened to the files."""

    data: SiteData
    files: Written
    out: Path


def check_commit_url(template: str | None) -> None:
    """A commit URL template is an http(s) URL holding ``{commit}``: the pages link nothing else."""
    if template is None:
        return
    if not template.startswith(("https://", "http://")) or "{commit}" not in template:
        raise UserError(f"{template!r}: a commit URL template is an http(s) URL with {{commit}} in it, "
                        "e.g. https://github.com/ORG/REPO/commit/{commit}", setting="commit_url")


def plotly_js() -> str:
    """plotly.js as plotly's Python package ships it (the whole bundle, offline)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def site_files(data: SiteData, commit_url: str | None, feed_id: str) -> dict[str, str]:
    """Relative path -> text of every file of the site."""
    shared = {"commit_url": commit_url}
    files = {"index.html": templates.page("summary", "Benchmarks", {**data.summary, **shared}),
             "regressions.html": templates.page("regressions", "Regressions", {"rows": data.regressions, **shared}),
             "machines.html": templates.page("machines", "Machines", {"machines": data.machines}),
             "regressions.xml": feed.atom_feed(data.regressions, feed_id),
             "plotly.min.js": plotly_js()}
    for name in STATIC:
        files[name] = resources.files("perfwatch.publish").joinpath("static", name).read_text(encoding="utf-8")
    for stem, page in data.pages.items():
        files[f"benchmarks/{stem}.html"] = templates.page("benchmark", page["name"], {**page, **shared}, root="../",
                                                          charts=True)
    return files


def publish(runs: list[RunRecord], out: Path = DEFAULT_SITE_DIR, *, source: str = "the store",
            thresholds: Thresholds | Mapping[str, object] | None = None, positions: Mapping[str, int] | None = None,
            commit_url: str | None = None) -> Published:
    """Write the site of ``runs`` (oldest first) into ``out``; ``source`` names the store (and the feed's id)."""
    check_commit_url(commit_url)
    data = site_data(runs, thresholds, positions, source)
    feed_id = uuid.uuid5(uuid.NAMESPACE_URL, f"perfwatch-site:{source}").urn
    return Published(data, write_site(out, site_files(data, commit_url, feed_id)), out)
