"""The HTML shell of every page: a Content-Security-Policy that lets nothing load from outside the site, the
navigation, and the page's data as a JSON block that site.js renders (setting every string as text).

No string from the data is written into the HTML itself but the title, escaped; the data goes into
``<script type="application/json">`` with ``<``, ``>`` and ``&`` as JSON escapes, so nothing in it can
close the block or open a tag, and it never runs: JSON.parse reads it.
"""

from __future__ import annotations

import html
import json
from typing import Any

# Scripts and styles only from the site's own files; plotly.js sets inline styles and draws its icons as
# data: images. No connect, frame, font, object or form target at all.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'")
NAV = (("index.html", "Summary"), ("regressions.html", "Regressions"), ("machines.html", "Machines"),
       ("regressions.xml", "Atom feed"))


def json_block(data: Any) -> str:
    """``data`` as JSON that is safe inside a script element (JSON.parse reads the escapes back)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def page(kind: str, title: str, data: Any, root: str = "", charts: bool = False) -> str:
    """A page of ``kind`` (summary, benchmark, regressions, machines); ``root`` leads back to the site's top
    ("../" from benchmarks/), ``charts`` loads plotly.js."""
    nav = "".join(f'<a href="{root}{href}">{label}</a>' for href, label in NAV)
    # plotly.min.js: plotly.js 4.1.1 (MIT), a partial bundle of the scatter and box traces built from plotly's npm
    # package (static/plotly-bundle.md says how); a classic script, so Chromium compiles it while it streams in.
    scripts = ((f'<script src="{root}plotly.min.js"></script>' if charts else "")
               + f'<script src="{root}site.js"></script>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{html.escape(title)} · perfwatch</title>
<link rel="stylesheet" href="{root}site.css">
<link rel="alternate" type="application/atom+xml" title="perfwatch regressions" href="{root}regressions.xml">
</head>
<body data-page="{kind}" data-root="{root}">
<header><span class="brand">perfwatch</span><nav>{nav}</nav></header>
<main id="app"><noscript>This page draws its tables and charts with JavaScript.</noscript></main>
<script type="application/json" id="perfwatch-data">{json_block(data)}</script>
{scripts}
</body>
</html>
"""
