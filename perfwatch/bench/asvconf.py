"""asv.conf.json: where an asv project keeps its benchmarks, read as asv reads it.

asv looks for ``asv.conf.json`` (or ``asv.conf.jsonc``) in the current directory and reads it as
JSON5 (comments, trailing commas, single quotes...); its ``benchmark_dir`` (default ``benchmarks``)
is relative to that directory. perfwatch reads the same file the same way, so that
``perfwatch run`` in an asv project runs its suite with no argument, and so that a file or a
subdirectory inside that suite is named as asv names it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from perfwatch.bench.package import shown
from perfwatch.errors import UserError

CONFIG_NAMES = ("asv.conf.json", "asv.conf.jsonc")
DEFAULT_BENCHMARK_DIR = "benchmarks"  # asv's default
COMMENT = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*|/\*.*?\*/', re.DOTALL)
TRAILING_COMMA = re.compile(r'"(?:[^"\\]|\\.)*"|,(?=\s*[}\]])')
JSON5_ERROR = re.compile(r"^<string>:(?P<line>\d+) (?P<message>.*) at column (?P<column>\d+)$")


def find_config(directory: Path) -> Path | None:
    """The asv config file in ``directory``, None if there is none; two of them is an error, as in asv."""
    found = [directory / name for name in CONFIG_NAMES if (directory / name).is_file()]
    if len(found) > 1:
        raise UserError(f"{shown(directory)}: both asv.conf.json and asv.conf.jsonc are here; keep one, as asv requires")
    return found[0] if found else None


def without_comments(text: str) -> str:
    """JSON text with comments and trailing commas blanked out (strings untouched, lines and columns kept)."""
    def blank(match: re.Match[str]) -> str:
        token = match.group(0)
        return token if token.startswith('"') else re.sub(r"[^\n]", " ", token)

    return TRAILING_COMMA.sub(blank, COMMENT.sub(blank, text))


def parse(text: str, path: Path) -> Any:
    """The config's JSON as asv reads it: JSON5 (asv's own reader, there wherever asv is), else JSON with the
    comments and trailing commas asv's configs usually hold."""
    try:
        import json5  # asv's dependency; perfwatch does without it
    except ImportError:
        try:
            return json.loads(without_comments(text))
        except json.JSONDecodeError as exc:
            raise UserError(f"{shown(path)}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); comments and trailing "
                            "commas are allowed, and the rest of JSON5 once json5 is installed (as asv has it)") from None
    try:
        return json5.loads(text)
    except ValueError as exc:
        where = JSON5_ERROR.match(str(exc))
        at, message = (f":{where['line']}:{where['column']}", where["message"]) if where else ("", str(exc))
        raise UserError(f"{shown(path)}{at}: not valid JSON5 ({message}), as asv reads it; fix the file") from None


def load(path: Path) -> dict[str, Any]:
    """The settings of an asv config file; one line naming the file, line and column when it is not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{shown(path)}: cannot read the asv config ({exc}); fix or remove it") from None
    data = parse(text, path)
    if not isinstance(data, dict):
        raise UserError(f"{shown(path)}: an asv config must be a JSON object, not {type(data).__name__}")
    return data


def benchmark_dir(config: Path) -> Path:
    """The (absolute) ``benchmark_dir`` an asv config names, relative to the config's own directory."""
    value = load(config).get("benchmark_dir", DEFAULT_BENCHMARK_DIR)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{shown(config)}: benchmark_dir = {value!r} is not valid; it must be a directory name")
    return (config.parent / value).resolve()


def suite_of(directory: Path) -> Path | None:
    """The benchmark directory of the asv project in ``directory``, None if it has no asv config."""
    config = find_config(directory)
    if config is None:
        return None
    path = benchmark_dir(config)
    if not path.is_dir():
        raise UserError(f"{shown(config)}: benchmark_dir {shown(path)} does not exist; fix benchmark_dir or pass a suite directory")
    return path


def configured_paths(configured: tuple[Path, ...], cwd: Path) -> tuple[Path, ...]:
    """The suite paths set in perfwatch's settings, else the benchmark_dir of an asv project in ``cwd``."""
    if configured:
        return configured
    asv_suite = suite_of(cwd)
    return (asv_suite,) if asv_suite is not None else ()


def enclosing_suite(path: Path) -> Path | None:
    """The asv benchmark_dir that holds ``path`` (a file or directory inside it, or itself), found through the
    nearest asv config above it; None when there is none, or when ``path`` lies outside its benchmark_dir."""
    for directory in (path, *path.parents):
        config = find_config(directory) if directory.is_dir() else None
        if config is not None:
            suite = benchmark_dir(config)
            return suite if path == suite or suite in path.parents else None
    return None
