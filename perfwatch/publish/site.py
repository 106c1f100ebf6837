"""Writing the site into its directory: each file atomically, only the files whose content changed, and a
manifest (``.perfwatch-site.json``) of what perfwatch wrote, so that a re-publish removes only its own stale
pages and never touches a file it did not write. A file in the way that perfwatch did not write is an error
before anything is written. The manifest also holds each file's size and modification time as written, so
that a re-publish can leave a page alone without reading it (:func:`intact`): only a page whose size and time
are still those is kept unread, as make and git's index trust a file's stat."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from perfwatch.errors import UserError
from perfwatch.pages import encodable
from perfwatch.store.files import write_atomic

MANIFEST = ".perfwatch-site.json"


@dataclass
class Written:
    """What a publish did to the directory: files written, left as they were, removed, and kept although stale
    (edited since perfwatch wrote them)."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def digest(text: str) -> str:
    """The digest of ``text`` as written (pages.encodable: a lone surrogate as its escape)."""
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def read_manifest(out: Path, part: str = "files") -> dict[str, Any]:
    """A part of the last publish's manifest: ``files`` (relative path -> digest of each file it wrote) or ``stat``
    (relative path -> [size, mtime_ns] as it left them); empty when there is none (or it is unreadable: then every
    file already there counts as someone else's)."""
    try:
        found = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get(part, {})
    except (OSError, ValueError, AttributeError):
        return {}
    kind = str if part == "files" else list
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, kind)} if isinstance(found, dict) \
        else {}


def stat_of(path: Path) -> list[int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return [found.st_size, found.st_mtime_ns]


def intact(out: Path, names: Iterable[str]) -> dict[str, str]:
    """Of ``names``, those whose file is still as the last publish wrote it (same size and modification time),
    each with the digest the manifest gives it."""
    files, stats = read_manifest(out), read_manifest(out, "stat")
    return {name: files[name] for name in names
            if name in files and name in stats and stat_of(out / name) == stats[name]}


def inside(out: Path, name: str) -> Path:
    """``out/name`` for a manifest entry that stays inside ``out`` (a hand-edited manifest cannot point elsewhere)."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts:
        raise UserError(f"{out / MANIFEST}: names {name!r}, outside the site; remove the manifest and publish again")
    return out.joinpath(*parts)


def write_site(out: Path, files: Mapping[str, str], untouched: Mapping[str, str] | None = None) -> Written:
    """Write ``files`` (relative path -> text) into ``out``, leaving ``untouched`` (relative path -> digest, from
    :func:`intact`) as they are; see the module docstring for what else is left alone."""
    texts = {name: encodable(text) for name, text in files.items()}
    untouched = {name: sha for name, sha in (untouched or {}).items() if name not in texts}
    before = read_manifest(out)
    done = Written()
    foreign = [name for name, text in texts.items()
               if name not in before and (out / name).exists() and file_digest(out / name) != digest(text)]
    if foreign:
        raise UserError(f"{out}: holds {foreign[0]}" + (f" and {len(foreign) - 1} more file(s)" if len(foreign) > 1
                                                         else "")
                        + " that perfwatch did not write; publish into another directory or move them away",
                        setting="out")
    stale = {name: inside(out, name) for name in before if name not in texts and name not in untouched}
    try:
        for name, text in texts.items():
            path = out / name
            if file_digest(path) == digest(text):
                done.unchanged.append(name)
            else:
                write_atomic(path, text)
                done.written.append(name)
        for name, path in stale.items():
            if file_digest(path) == before[name]:
                path.unlink()
                done.removed.append(name)
            elif path.exists():
                done.kept.append(name)
        digests = {**untouched, **{name: digest(text) for name, text in texts.items()}}
        done.unchanged += sorted(untouched)
        manifest = {"format": 1, "files": dict(sorted(digests.items())),
                    "stat": {name: stat_of(out / name) for name in sorted(digests)}}
        write_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    except OSError as exc:
        raise UserError(f"{out}: cannot write the site ({exc.strerror}); choose a writable directory",
                        setting="out") from None
    return done
