"""The results document: one run of benchmarks, raw samples, spec and environment.

This is a contract (docs/architecture.md): other tools read these files, so the shape is
versioned. A document of an older ``format_version`` is brought up to date on read, one
``update_to_N`` step at a time, and never refused: runs are kept for years. A newer one is
refused with a message to upgrade perfwatch, never guessed at. Statistics are never stored;
they are computed from the raw samples.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from perfwatch.errors import UserError

FORMAT_VERSION = 1
STATUSES = ("ok", "failed", "timeout", "skipped")

Update = Callable[[dict[str, Any]], dict[str, Any]]

# N -> update_to_N, which turns a version N-1 document into a version N one. Version 1 is the
# first perfwatch wrote (format_version is in the first commit's documents), so there is none
# yet; a change to the document bumps FORMAT_VERSION and adds its update_to_N here.
UPDATES: dict[int, Update] = {}


def upgrade(data: dict[str, Any], source: str, updates: Mapping[int, Update] = UPDATES,
            current: int = FORMAT_VERSION) -> dict[str, Any]:
    """``data`` brought to version ``current`` by the updates after its own version, in order.

    Refuses (UserError naming ``source``) a version that is not a whole number, one newer than
    ``current`` and one older than any perfwatch wrote. The file itself is left as it is.
    """
    version = data["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{source}: format_version {version!r} is not a version number; "
                        "this file was not written by perfwatch")
    if version > current:
        raise UserError(f"{source}: results format_version {version} is newer than this perfwatch, which reads "
                        f"versions up to {current}; upgrade perfwatch to read it")
    oldest = min(updates, default=current + 1) - 1
    if version < oldest:
        raise UserError(f"{source}: results format_version {version} was never written by perfwatch "
                        f"(the oldest is {oldest}); this file was not written by perfwatch")
    for target in range(version + 1, current + 1):
        data = {**updates[target](data), "format_version": target}
    return data


MOVE_IT = "move it out of the results directory or restore it"


class Malformed(ValueError):
    """A field of a results document that is missing or of the wrong type; the message names the field."""

    def __init__(self, field: str, expected: str, value: Any = None, missing: bool = False, got: str = ""):
        super().__init__(f"{field} is missing" if missing else
                         f"{field} must be {expected}, got {got or type(value).__name__}")


_KINDS = {str: "a string", dict: "a table", list: "a list", bool: "true or false", int: "a whole number",
          float: "a number", (str, type(None)): "a string or null"}
_REQUIRED = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, field: str, expected: str, value: Any) -> None:
    if not ok:
        raise Malformed(field, expected, value)


class _Fields:
    """Typed reads of one table of a document: JSON's true is not a number, 1 is not a flag."""

    def __init__(self, data: dict[str, Any], where: str):
        self.data, self.prefix = data, f"{where}." if where else ""

    def get(self, key: str, kind: Any, default: Any = _REQUIRED) -> Any:
        field = self.prefix + key
        if key not in self.data:
            if default is _REQUIRED:
                raise Malformed(field, "", missing=True)
            return default
        value = self.data[key]
        if kind is float:
            ok = _is_number(value)
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        _require(ok, field, _KINDS[kind], value)
        return value


@dataclass(frozen=True)
class BenchResult:
    """One benchmark (one parameter combination) of a run, with every raw sample."""

    name: str
    params: dict[str, Any]
    kind: str  # "time" | "peakmem" | "track"
    unit: str
    higher_is_better: bool
    status: str
    error: str | None = None
    samples: list[float] = field(default_factory=list)
    number: int = 1  # inner calls averaged into one time_ sample
    warmup_s: float = 0.0
    duration_s: float = 0.0  # wall time of the benchmark's process
    version: str | None = None  # asv's: its ``version``, else its code's hash; a new one starts a new history
    pretty_name: str | None = None  # asv's display name, where the benchmark gives one

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_dict(cls, data: Any, where: str = "benchmark") -> BenchResult:
        """One benchmark of a document, each field checked; a wrong one raises Malformed naming ``where.field``."""
        if not isinstance(data, dict):
            raise Malformed(where, "a table", data)
        f = _Fields(data, where)
        status = f.get("status", str)
        if status not in STATUSES:
            raise Malformed(f"{where}.status", f"one of {', '.join(STATUSES)}", status)
        samples = f.get("samples", list, [])
        for i, value in enumerate(samples):
            _require(_is_number(value), f"{where}.samples[{i}]", "a number", value)
            if not math.isfinite(value):  # NaN and Infinity: not strict JSON, and no time or size
                raise Malformed(f"{where}.samples[{i}]", "a finite number", got=str(value))
        return cls(name=f.get("name", str), params=f.get("params", dict), kind=f.get("kind", str),
                   unit=f.get("unit", str), higher_is_better=f.get("higher_is_better", bool), status=status,
                   error=f.get("error", (str, type(None)), None), samples=list(samples),
                   number=f.get("number", int, 1), warmup_s=f.get("warmup_s", float, 0.0),
                   duration_s=f.get("duration_s", float, 0.0), version=f.get("version", (str, type(None)), None),
                   pretty_name=f.get("pretty_name", (str, type(None)), None))


@dataclass(frozen=True)
class RunRecord:
    """A whole run: what was run, where, and every benchmark's result."""

    run_id: str
    created: str
    suite: str
    env: dict[str, Any]
    benchmarks: list[BenchResult]
    format_version: int = FORMAT_VERSION

    @property
    def failed(self) -> list[BenchResult]:
        return [b for b in self.benchmarks if b.status in ("failed", "timeout")]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # Keep the documented key order: version first, benchmarks last.
        return {
            "format_version": data.pop("format_version"),
            "run_id": data.pop("run_id"),
            "created": data.pop("created"),
            "suite": data.pop("suite"),
            "env": data.pop("env"),
            "benchmarks": data.pop("benchmarks"),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> RunRecord:
        """Parse a results document; ``source`` names it in error messages."""
        if not isinstance(data, dict) or "format_version" not in data:
            raise UserError(f"{source}: not a perfwatch results document (no format_version)")
        data = upgrade(data, source)
        try:
            f = _Fields(data, "")
            return cls(run_id=f.get("run_id", str), created=f.get("created", str), suite=f.get("suite", str, ""),
                       env=f.get("env", dict),
                       benchmarks=[BenchResult.from_dict(b, f"benchmarks[{i}]")
                                   for i, b in enumerate(f.get("benchmarks", list))])
        except Malformed as exc:
            raise UserError(f"{source}: malformed results document: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{path}: cannot read results file ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: corrupt results file (not UTF-8 at byte {exc.start}); {MOVE_IT}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: corrupt results file (invalid JSON at line {exc.lineno}); {MOVE_IT}") from None
        except RecursionError:
            raise UserError(f"{path}: corrupt results file (JSON nested too deeply to be a results document); "
                            f"{MOVE_IT}") from None
        return cls.from_dict(data, str(path))


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC timestamp plus a short random suffix."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
