"""Project settings: ``perfwatch.toml`` or ``[tool.perfwatch]`` in ``pyproject.toml``.

Settings are read once into a frozen dataclass. Unknown keys are an error, not
silently ignored, so a typo never quietly changes what CI measures. Two settings are
tables (``[tool.perfwatch.thresholds]`` / ``[thresholds]`` and ``[...alerts]``),
validated here so a bad one fails at start-up, not after a 15-minute suite.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from perfwatch.errors import ThresholdError, UserError
from perfwatch.thresholds import Thresholds, parse_thresholds

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

    results_dir: Path = Path(".perfwatch/results")
    paths: tuple[Path, ...] = ()
    suite: str = "quick"
    thresholds: Thresholds = Thresholds()
    alerts: AlertSinks = AlertSinks()
    source: str | None = None  # the file these settings came from, for messages


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc}); fix the file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None


def find_settings(start: Path) -> tuple[dict[str, Any], Path | None]:
    """The raw settings table and its file: perfwatch.toml wins over pyproject.toml."""
    dedicated = start / "perfwatch.toml"
    if dedicated.is_file():
        return _read_toml(dedicated), dedicated
    pyproject = start / "pyproject.toml"
    if pyproject.is_file():
        table = _read_toml(pyproject).get("tool", {}).get("perfwatch")
        if table is not None:
            return table, pyproject
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


def _alert_settings(table: dict[str, Any], source: Path) -> AlertSinks:
    """The alerts table: known sink names only, each an http(s) URL (the timeout is not a setting)."""
    known = {f.name for f in fields(AlertSinks)} - {"timeout"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"{source}: unknown alert sink {unknown[0]!r} in 'alerts'; "
                        f"known sinks: {', '.join(sorted(known))}")
    for key, url in table.items():
        if not isinstance(url, str) or not url.startswith(URL_SCHEMES):
            raise UserError(f"{source}: alerts.{key} = {url!r} must be an http:// or https:// URL")
    return AlertSinks(**table)


def _expect(table: dict[str, Any], key: str, kind: type, source: Path) -> Any:
    value = table[key]
    if not isinstance(value, kind):
        raise UserError(f"{source}: perfwatch setting {key!r} must be a {kind.__name__}, got {value!r}")
    return value
