"""``regressions.xml``: an Atom feed (RFC 4287) of the change points that made things worse, newest first, for
feed readers and chat integrations. Links are relative to the feed, so the site works from any host; each
entry's id is derived from its benchmark, machine and commits, so a re-publish never announces it again."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from perfwatch.display import format_value

FEED_ENTRIES = 100  # the newest regressions a feed holds; the site's regressions page lists them all
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # no XML 1.0 document may hold these, escaped or not


def text(value: str) -> str:
    """``value`` as XML character data: escaped, and the characters XML cannot hold as U+FFFD."""
    return escape(NOT_XML.sub("\ufffd", value))


def entry_id(regression: Mapping[str, Any]) -> str:
    parts = (regression["name"], regression["machine"], regression["commit_before"] or "",
             regression["commit"] or regression["run_id"])
    return uuid.uuid5(uuid.NAMESPACE_URL, "perfwatch-regression:" + "\x00".join(parts)).urn


def atom_time(value: str | None) -> str:
    """An ISO 8601 time as Atom wants it (with a zone; UTC where the data has none)."""
    try:
        moment = datetime.fromisoformat((value or "").replace("Z", "+00:00"))
    except ValueError:
        moment = datetime(1970, 1, 1)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return moment.isoformat(timespec="seconds")


def title_of(r: Mapping[str, Any]) -> str:
    commit = (r["commit"] or r["run_id"])[:10]
    return f"{r['name']} on {r['machine']}: {r['change']:+.1%} at {commit}" if r["change"] is not None \
        else f"{r['name']} on {r['machine']}: worse at {commit}"


def summary_of(r: Mapping[str, Any]) -> str:
    return (f"{format_value(r['before'], r['unit'])} -> {format_value(r['after'], r['unit'])} "
            f"between {(r['commit_before'] or '-')[:10]} and {(r['commit'] or r['run_id'])[:10]}"
            + (f" (p={r['p']:.2g})" if r["p"] is not None else ""))


def atom_feed(regressions: Sequence[Mapping[str, Any]], feed_id: str) -> str:
    """The feed of ``regressions`` (newest first, as site data orders them); every string escaped."""
    entries = regressions[:FEED_ENTRIES]
    updated = atom_time(entries[0]["date"]) if entries else atom_time(None)
    lines = ['<?xml version="1.0" encoding="utf-8"?>', '<feed xmlns="http://www.w3.org/2005/Atom">',
             "<title>perfwatch regressions</title>", f"<id>{text(feed_id)}</id>", f"<updated>{updated}</updated>",
             '<link rel="alternate" type="text/html" href="regressions.html"/>',
             "<author><name>perfwatch</name></author>"]
    for r in entries:
        lines += ["<entry>", f"<title>{text(title_of(r))}</title>", f"<id>{entry_id(r)}</id>",
                  f"<updated>{atom_time(r['date'])}</updated>",
                  f'<link rel="alternate" type="text/html" href={quoteattr(r["page"])}/>',
                  f"<summary>{text(summary_of(r))}</summary>", "</entry>"]
    return "\n".join([*lines, "</feed>"]) + "\n"
