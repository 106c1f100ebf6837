"""Baselines and what a candidate run is compared against.

A baseline file (``perfwatch-baseline.json``, meant to be committed) *is* a results
document, so it carries the environment fingerprint of the machine it ran on. Timings
from another machine are not comparable: ``machine_differences`` names what differs and
``compare_against`` refuses such a pair unless the caller allows it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from perfwatch.errors import UserError
from perfwatch.results import RunRecord
from perfwatch.store import Store, write_atomic

DEFAULT_BASELINE = Path("perfwatch-baseline.json")

_SAVE_HINT = ("run `perfwatch baseline save` to write one from the latest stored run "
              "(or let `perfwatch ci --against REF` run a git ref instead)")


def load_baseline(path: Path = DEFAULT_BASELINE) -> RunRecord:
    """The baseline run in ``path``; a missing or corrupt file is a UserError saying what to do."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no baseline file; {_SAVE_HINT}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the baseline ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt baseline (invalid JSON at line {exc.lineno}); "
                        f"restore it from git or {_SAVE_HINT}") from None
    return RunRecord.from_dict(data, f"{path} (baseline)")


def describe_run(run: RunRecord) -> str:
    """``run <id> (<n> benchmarks, commit <short>)``: enough to recognise a run in a message."""
    commit = (run.env.get("git_commit") or "no git")[:10] + ("+dirty" if run.env.get("git_dirty") else "")
    return f"run {run.run_id} ({len(run.benchmarks)} benchmarks, commit {commit})"


def save_baseline(run: RunRecord, path: Path = DEFAULT_BASELINE) -> str | None:
    """Write ``run`` as the baseline (atomically); returns a description of what it replaced, if anything."""
    replaced = None
    if path.exists():
        try:
            replaced = describe_run(load_baseline(path))
        except UserError:
            replaced = "an unreadable baseline file"
    try:
        write_atomic(path, run.to_json() + "\n")
    except OSError as exc:
        raise UserError(f"{path}: cannot write the baseline ({exc.strerror}); pass a writable file",
                        setting="path") from None
    return replaced


def looks_like_file(ref: str) -> bool:
    """Whether a run reference names a file rather than a stored run id (Store.resolve's rule, plus existing files)."""
    return ref.endswith(".json") or os.sep in ref or Path(ref).is_file()


def load_reference(ref: str | None, store: Store) -> RunRecord:
    """A baseline given on the command line: the default file, another file, or a stored run id/prefix/``latest``."""
    if ref is None:
        return load_baseline(DEFAULT_BASELINE)
    if looks_like_file(ref):
        return load_baseline(Path(ref))
    return store.load(ref)


