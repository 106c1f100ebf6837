"""Project settings: ``perfwatch.toml`` or ``[tool.perfwatch]`` in ``pyproject.toml``.

Settings are read once into a frozen dataclass. Unknown keys are an error, not
silently ignored, so a typo never quietly changes what CI measures. Two settings are
tables (``[tool.perfwatch.thresholds]`` / ``[thresholds]`` and ``[...alerts]``),
validated here so a bad one fails at start-up, not after a 15-minute suite.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from perfwatch.errors import ThresholdError, UserError
from perfwatch.thresholds import Thresholds, parse_thresholds
from perfwatch.urls import redact

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

URL_SCHEMES = ("http://", "https://")
SIZES = ("quick", "ci", "full")  # suite sizes, smallest first


@dataclass(frozen=True)
class AlertSinks:
    """Where alerts go; a sink left None is not used."""

    webhook: str | None = None  # URL that receives a JSON POST (Slack incoming webhooks work)
    alertmanager: str | None = None  # base URL, e.g. http://127.0.0.1:9093
    pushgateway: str | None = None  # base URL or host:port
    timeout: float = 10.0  # seconds per request


@dataclass(frozen=True)
class Config:
    """Where results live, which suite paths run by default, the default suite size,
    per-benchmark regression thresholds and alert sinks."""

    results_dir: Path = Path(".perfwatch/results")  # a directory store, and the default store's legacy runs
    store: str | None = None  # a store URL or directory; None: results_dir if set, else the SQLite default
    paths: tuple[Path, ...] = ()
    suite: str = "quick"
    thresholds: Thresholds = field(default_factory=Thresholds)
    alerts: AlertSinks = field(default_factory=AlertSinks)
    source: str | None = None  # the file these settings came from, for messages


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc}); fix the file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8, save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None


def find_settings(start: Path) -> tuple[dict[str, Any], Path | None]:
    """The raw settings table and its file: perfwatch.toml wins over pyproject.toml."""
    dedicated = start / "perfwatch.toml"
    if dedicated.is_file():
        return _read_toml(dedicated), dedicated
    pyproject = start / "pyproject.toml"
    if pyproject.is_file():
        tool = _expect(_read_toml(pyproject), "tool", dict, pyproject, "", {})
        if "perfwatch" in tool:
            return _expect(tool, "perfwatch", dict, pyproject, "tool."), pyproject
    return {}, None


def load_config(start: Path | None = None) -> Config:
    """Settings for the project in ``start`` (the working directory by default)."""
    start = Path.cwd() if start is None else start
    table, source = find_settings(start)
    if source is None:
        return Config()
    known = {f.name for f in fields(Config)} - {"source"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(
            f"{source}: unknown perfwatch setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}"
        )
    base = source.parent
    values: dict[str, Any] = {"source": str(source)}
    if "results_dir" in table:
        values["results_dir"] = base / _expect(table, "results_dir", str, source)
        values["store"] = str(values["results_dir"])
    if "store" in table:
        values["store"] = _store_address(_expect(table, "store", str, source), base)
    if "paths" in table:
        paths = _expect(table, "paths", list, source)
        if not all(isinstance(p, str) for p in paths):
            raise UserError(f"{source}: perfwatch setting 'paths' must be a list of strings")
        values["paths"] = tuple(base / p for p in paths)
    if "suite" in table:
        suite = _expect(table, "suite", str, source)
        if suite not in SIZES:
            raise UserError(f"{source}: perfwatch setting suite = {suite!r}; use one of {', '.join(SIZES)}")
        values["suite"] = suite
    if "thresholds" in table:
        try:
            values["thresholds"] = parse_thresholds(_expect(table, "thresholds", dict, source))
        except ThresholdError as exc:
            raise UserError(f"{source}: perfwatch setting 'thresholds': {exc}") from None
    if "alerts" in table:
        values["alerts"] = _alert_settings(_expect(table, "alerts", dict, source), source)
    return Config(**values)


def _store_address(address: str, base: Path) -> str:
    """A store URL or directory, a relative path (also in ``sqlite:///PATH``) taken from the settings file's."""
    if address.startswith("sqlite:///") and not address.startswith("sqlite:////"):
        return f"sqlite:///{base / address.removeprefix('sqlite:///')}"
    return address if "://" in address else str(base / address)


def _alert_settings(table: dict[str, Any], source: Path) -> AlertSinks:
    """The alerts table: known sink names only, each an http(s) URL (the timeout is not a setting)."""
    known = {f.name for f in fields(AlertSinks)} - {"timeout"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"{source}: unknown alert sink {unknown[0]!r} in 'alerts'; "
                        f"known sinks: {', '.join(sorted(known))}")
    for key, url in table.items():
        if not isinstance(url, str):
            raise UserError(f"{source}: alerts.{key} must be an http:// or https:// URL, got {type(url).__name__}")
        if not url.startswith(URL_SCHEMES):
            raise UserError(f"{source}: alerts.{key} = {redact(url)!r} must be an http:// or https:// URL")
    return AlertSinks(**table)


def _expect(table: dict[str, Any], key: str, kind: type, source: Path, prefix: str | None = None,
            default: Any = None) -> Any:
    """``table[key]`` if it is a ``kind`` (or ``default`` when absent); the error names the type found,
    never the value, which may hold a secret. ``prefix`` None means a perfwatch setting, else a TOML key path."""
    value = table.get(key, default)
    if not isinstance(value, kind):
        what = f"perfwatch setting {key!r}" if prefix is None else repr(prefix + key)
        raise UserError(f"{source}: {what} must be a {kind.__name__}, "
                        f"got {type(value).__name__}")
    return value
