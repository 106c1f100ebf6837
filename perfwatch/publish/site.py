"""Writing the site into its directory: each file atomically, only the files whose content changed, and a
manifest (``.perfwatch-site.json``) of what perfwatch wrote, so that a re-publish removes only its own stale
pages and never touches a file it did not write. A file in the way that perfwatch did not write is an error
before anything is written."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

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
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def read_manifest(out: Path) -> dict[str, str]:
    """Relative path -> digest of each file the last publish wrote; empty when there is none (or it is unreadable:
    then every file already there counts as someone else's)."""
    try:
        files = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(files, dict) \
        else {}


def inside(out: Path, name: str) -> Path:
    """``out/name`` for a manifest entry that stays inside ``out`` (a hand-edited manifest cannot point elsewhere)."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts:
        raise UserError(f"{out / MANIFEST}: names {name!r}, outside the site; remove the manifest and publish again")
    return out.joinpath(*parts)


def write_site(out: Path, files: Mapping[str, str]) -> Written:
    """Write ``files`` (relative path -> text) into ``out``; see the module docstring for what is left alone."""
    texts = {name: encodable(text) for name, text in files.items()}
    before = read_manifest(out)
    done = Written()
    foreign = [name for name, text in texts.items()
               if name not in before and (out / name).exists() and file_digest(out / name) != digest(text)]
    if foreign:
        raise UserError(f"{out}: holds {foreign[0]}" + (f" and {len(foreign) - 1} more file(s)" if len(foreign) > 1
                                                         else "")
                        + " that perfwatch did not write; publish into another directory or move them away",
                        setting="out")
    stale = {name: inside(out, name) for name in before if name not in texts}
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
        manifest = {"format": 1, "files": {name: digest(text) for name, text in sorted(texts.items())}}
        write_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    except OSError as exc:
        raise UserError(f"{out}: cannot write the site ({exc.strerror}); choose a writable directory",
                        setting="out") from None
    return done
