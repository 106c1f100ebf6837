"""Atomic file writes, shared by the results directory, baselines, reports and profiles."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from perfwatch.errors import UserError


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same directory plus rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results and reports are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_or_refuse(path: Path, text: str, where: object, what: str, fix: str, setting: str) -> None:
    """``write_atomic``, a failure the one-line UserError ``<where>: cannot write <what> (<why>); <fix>``."""
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise UserError(f"{where}: cannot write {what} ({exc.strerror}); {fix}", setting=setting) from None
