"""The publish cache, ``.perfwatch-site-cache.json``: a file of the site like any other (in the manifest, never
written over a file perfwatch did not write), holding what a re-publish needs so as not to read the whole
history again: the runs the site was made of, their commits in the order the pages drew them, the machines
page's entries, and each benchmark page's part of the site-wide pages with the digest of the page's file. A
page's own data (its traces) is not kept twice: the page's file holds it, and a page whose file is still as
written (site.intact) is left as it is; any other is computed again.

It is keyed by a digest of everything the site depends on besides the runs (:func:`cache_key`): a cache of
another key, of another format, or one that cannot be read is no cache, and the site is built from scratch.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import perfwatch
from perfwatch.thresholds import Thresholds

CACHE = ".perfwatch-site-cache.json"
FORMAT = 1
DEPENDENCIES = ("numpy",)  # what computes the numbers besides perfwatch's own code
# A perfwatch import statement (a line's, or one in parentheses over several): its module and names, or the module.
IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(perfwatch[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]*)"
                    r"|import[ \t]+(perfwatch[\w.]*))", re.MULTILINE)
STEM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # as data.page_stem makes them: a file name inside benchmarks/


@dataclass(frozen=True)
class Cache:
    """``ids``: the runs included, in the store's order; ``commits``: theirs, in git order when ``git`` (else
    sorted); ``machines``: data.machines_seen's entries; ``parts``: page stem -> data.Page.part, plus ``digest``,
    that of the page's file as written."""

    key: str
    ids: list[str]
    commits: list[str]
    git: bool
    machines: dict[str, dict[str, Any]]
    parts: dict[str, dict[str, Any]]

    def text(self) -> str:
        """The cache file's text: the same for the same content (ASCII JSON: a lone surrogate reads back)."""
        content = {"format": FORMAT, "key": self.key, "ids": self.ids, "commits": self.commits, "git": self.git,
                   "machines": self.machines, "parts": dict(sorted(self.parts.items()))}
        return json.dumps(content, allow_nan=False, separators=(",", ":")) + "\n"


def sources() -> list[Path]:
    """The files of perfwatch.publish and of every perfwatch module they import, transitively (at module level
    or in a function): the code the site is computed and rendered by, and no other."""
    root = Path(perfwatch.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    todo, seen = [name for name in modules if name.startswith("perfwatch.publish")], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for module, names, imported in IMPORT.findall(modules[name].read_text(encoding="utf-8")):
            targets = [imported] if imported else [module, *(f"{module}.{n}" for n in re.findall(r"\w+", names))]
            todo += [target for target in targets if target in modules]
    return sorted(modules[name] for name in seen)


def code_digest() -> str:
    """A digest of :func:`sources`: a checkout keeps its version number from one commit to the next."""
    root = Path(perfwatch.__file__).parent
    sha = hashlib.sha256()
    for path in sources():
        sha.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()


def version_of(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cache_key(identity: str, source: str, limits: Thresholds, commit_url: str | None,
              baseline: dict[str, Any] | None = None) -> str:
    """The digest of what the site depends on besides its runs: the store, how messages name it, the
    thresholds, the commit URL template, the baseline run (its document), and the code that computes and
    renders it."""
    parts = [FORMAT, version_of("perfwatch"), code_digest(), [version_of(n) for n in DEPENDENCIES], identity, source,
             repr(limits), commit_url, baseline]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def read_cache(out: Path, key: str) -> tuple[Cache | None, str]:
    """The cache in ``out`` when it has ``key``, else None and why it cannot be used."""
    try:
        found = json.loads((out / CACHE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no cache yet"
    except (OSError, ValueError) as exc:
        return None, f"the cache cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        return None, "the cache is of another format"
    if found.get("key") != key:
        return None, "the store, the thresholds, the commit URL, the baseline or perfwatch changed"
    try:
        cache = Cache(key, list(found["ids"]), list(found["commits"]), bool(found["git"]), dict(found["machines"]),
                      dict(found["parts"]))
    except (KeyError, TypeError, ValueError):
        return None, "the cache is incomplete"
    if not all(isinstance(stem, str) and STEM.fullmatch(stem) and well_formed(part)
               for stem, part in cache.parts.items()):
        return None, "the cache holds pages that perfwatch does not make"
    return cache, ""


def well_formed(part: Any) -> bool:
    """Whether a cached page part has the fields a re-publish reads."""
    return isinstance(part, dict) and isinstance(part.get("base"), str) and isinstance(part.get("digest"), str) and all(
        isinstance(part.get(field), list) for field in ("rows", "regressions", "problems"))
