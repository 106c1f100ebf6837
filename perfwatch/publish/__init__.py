"""``perfwatch publish``: the store's history as a static site that opens from disk or any static host.

data.py turns runs into each page's data (regress's series, change points and verdicts), templates.py
wraps it in HTML whose only scripts are the site's own (static/site.js renders, plotly.js draws),
feed.py writes the Atom feed of regressions, site.py writes the files, and build.py ties them together.
cache.py keeps what a re-publish needs in the site, and incremental.py finds what new runs touched, so that
publishing again reads and computes only those benchmarks.
"""

from perfwatch.publish.build import DEFAULT_SITE_DIR, Published, publish

__all__ = ["DEFAULT_SITE_DIR", "Published", "publish"]
