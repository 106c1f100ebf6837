"""asv's results directory read into perfwatch runs, so a team moving from asv keeps its history.

asv keeps ``RESULTS/MACHINE/machine.json`` (the machine) beside one file per commit and
environment, ``RESULTS/MACHINE/COMMIT8-ENV.json``, and ``RESULTS/benchmarks.json`` (each
benchmark's type, unit and parameter names). A results file is format 2 (one row per benchmark,
its columns named by ``result_columns``) or format 1, which asv migrates on ``asv update``;
both are read here as asv's ``results.py`` reads them, without asv. Each file becomes one run:
the commit and its date, the machine as perfwatch fingerprints it (so that the same machine
gives the same ``machine_id`` under asv and under perfwatch), every sample, and asv's other
statistics, version and timings under ``env["asv"]``. A run's id depends only on the file's
machine, commit, environment and start time, so importing it again changes nothing.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from perfwatch.bench import identity
from perfwatch.env import machine_id
from perfwatch.results import BenchResult, RunRecord

MACHINE_FILE, BENCHMARKS_FILE = "machine.json", "benchmarks.json"
FORMATS = (1, 2)  # asv's results api_version 2, and the 1 it migrates
MACHINE_FORMAT = 1
ASV_TYPES = {"time": "time", "memory": "mem", "peakmemory": "peakmem", "track": "track"}
SUITE = "asv"  # a run's suite: asv has no sizes


class AsvFileError(Exception):
    """An asv file that cannot be read; the message is one line naming it."""


@dataclass
class AsvImport:
    """What a results directory holds: its runs, oldest first, and one line per file left out."""

    runs: list[RunRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files: int = 0  # results files found (read or not)


def read_json(path: Path) -> Any:
    """A JSON file as asv writes it (NaN for a skipped result); AsvFileError naming it when it is not."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AsvFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AsvFileError(f"{path}: not a JSON file ({exc}); restore it or move it out of the results "
                           "directory") from None


def read_results_dir(root: Path) -> AsvImport:
    """Every asv results file under ``root`` as a run; a file that cannot be read (or whose machine file is
    missing or bad) is one line in ``problems`` and the others are still read."""
    found = AsvImport()
    benchmarks: dict[str, Any] = {}
    if (root / BENCHMARKS_FILE).is_file():
        try:
            benchmarks = benchmark_infos(root / BENCHMARKS_FILE)
        except AsvFileError as exc:
            found.problems.append(f"{exc}; units and parameter names are guessed without it")
    for directory, _, names in sorted(os.walk(root)):
        files = sorted(Path(directory) / n for n in names
                       if n.endswith(".json") and n not in (MACHINE_FILE, BENCHMARKS_FILE) and not n.startswith("."))
        if not files:
            continue
        found.files += len(files)
        try:
            machine = read_machine(Path(directory) / MACHINE_FILE)
        except AsvFileError as exc:
            several = len(files) != 1
            found.problems.append(f"{exc}; its {len(files)} results file{'s' if several else ''} "
                                  f"{'are' if several else 'is'} not imported")
            continue
        for path in files:
            try:
                found.runs.append(run_of(path, machine, benchmarks))
            except AsvFileError as exc:
                found.problems.append(str(exc))
    found.runs.sort(key=lambda run: run.run_id)
    return found


def benchmark_infos(path: Path) -> dict[str, Any]:
    """``benchmarks.json``: benchmark name -> what asv knew of it (type, unit, param_names)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise AsvFileError(f"{path}: not an asv benchmarks file (a JSON object)")
    return {name: info for name, info in data.items() if isinstance(info, dict)}


def read_machine(path: Path) -> dict[str, Any]:
    """An asv ``machine.json``; AsvFileError when it is missing or not asv's."""
    if not path.is_file():
        raise AsvFileError(f"{path}: missing; asv writes it with `asv machine`: copy it from the machine that "
                           "ran the benchmarks")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("machine"), str):
        raise AsvFileError(f"{path}: not an asv machine file (it names no machine)")
    if data.get("version") != MACHINE_FORMAT:
        raise AsvFileError(f"{path}: asv machine file version {data.get('version')!r} is unknown; "
                           f"this perfwatch reads version {MACHINE_FORMAT}")
    return data


def machine_env(machine: dict[str, Any]) -> dict[str, Any]:
    """perfwatch's fingerprint fields from asv's machine file (asv's defaults are the same facts)."""
    def whole(value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    env = {"host": machine["machine"], "os": machine.get("os"), "arch": machine.get("arch"),
           "cpu": machine.get("cpu"), "cpu_cores_logical": whole(machine.get("num_cpu")),
           "memory_bytes": whole(machine.get("ram")), "gpu": None}
    return {**env, "machine_id": machine_id(env)}


def iso(milliseconds: Any) -> str | None:
    """asv's JavaScript timestamp (milliseconds since the epoch) as perfwatch's UTC ISO 8601."""
    if isinstance(milliseconds, bool) or not isinstance(milliseconds, (int, float)) or not math.isfinite(milliseconds):
        return None
    return datetime.fromtimestamp(milliseconds / 1000, timezone.utc).isoformat(timespec="seconds")


# --- a results file, as rows -------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One benchmark of a results file, whatever the format: one entry per parameter combination."""

    result: list[Any]
    params: list[list[str]]
    version: Any = None
    started_at: Any = None
    duration: Any = None
    stats: list[dict[str, Any] | None] | None = None
    samples: list[Any] | None = None


def rows_v2(data: dict[str, Any], path: Path) -> dict[str, Row]:
    """Format 2: ``results`` maps a name to a list of values in ``result_columns`` order (trailing nulls cut)."""
    columns = data.get("result_columns")
    if not isinstance(columns, list) or not isinstance(data.get("results"), dict):
        raise AsvFileError(f"{path}: asv results format 2 without result_columns or results; the file is damaged")
    stats_keys = [c for c in columns if isinstance(c, str) and c.startswith("stats_")]
    rows = {}
    for name, values in data["results"].items():
        entry = dict(itertools.zip_longest(columns, values if isinstance(values, list) else []))
        rows[name] = Row(result=listed(entry.get("result")), params=entry.get("params") or [],
                         version=entry.get("version"), started_at=entry.get("started_at"),
                         duration=entry.get("duration"),
                         stats=stats_by_combination({k[len("stats_"):]: entry.get(k) for k in stats_keys}),
                         samples=entry.get("samples"))
    return rows


def stats_by_combination(columns: dict[str, Any]) -> list[dict[str, Any] | None] | None:
    """Format 2's stats columns (one list per statistic) turned into one dict per parameter combination."""
    present = {k: v for k, v in columns.items() if isinstance(v, list)}
    if not present:
        return None
    count = max(len(v) for v in present.values())
    combos = [{k: v[j] for k, v in present.items() if j < len(v) and v[j] is not None} for j in range(count)]
    return [c or None for c in combos]


def rows_v1(data: dict[str, Any], path: Path) -> dict[str, Row]:
    """Format 1 (asv before 0.4), as asv's ``update_to_2`` reads it: a value, or a dict of result, params,
    stats and samples, per benchmark, and started_at, duration and benchmark_version beside."""
    if not isinstance(data.get("results"), dict):
        raise AsvFileError(f"{path}: asv results format 1 without results; the file is damaged")
    side = {key: data.get(key) if isinstance(data.get(key), dict) else {}
            for key in ("started_at", "duration", "benchmark_version")}
    rows = {}
    for name, value in data["results"].items():
        if not isinstance(value, dict):
            value = {"result": [value], "samples": None, "stats": None, "params": []}
        result = listed(value.get("result"))
        stats = value.get("stats")
        stats = [stats] if isinstance(stats, dict) else stats
        samples = value.get("samples")
        if not value.get("params") and isinstance(samples, list) and samples and not isinstance(samples[0], list):
            samples = [samples]  # an unparametrized benchmark's samples, unwrapped in format 1
        rows[name] = Row(result=result, params=value.get("params") or [], version=side["benchmark_version"].get(name),
                         started_at=side["started_at"].get(name), duration=side["duration"].get(name),
                         stats=[flat_stats(s) for s in stats] if isinstance(stats, list) else None, samples=samples)
    return rows


def flat_stats(stats: Any) -> dict[str, Any] | None:
    """A format-1 stats dict with its ``ci_99`` pair split as format 2 names it (ci_99_a, ci_99_b)."""
    if not isinstance(stats, dict):
        return None
    flat = {k: v for k, v in stats.items() if k != "ci_99"}
    if isinstance(stats.get("ci_99"), list) and len(stats["ci_99"]) == 2:
        flat["ci_99_a"], flat["ci_99_b"] = stats["ci_99"]
    return flat


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- a results file, as a run --------------------------------------------------------------

def run_of(path: Path, machine: dict[str, Any], benchmarks: dict[str, Any]) -> RunRecord:
    """One asv results file as a perfwatch run; AsvFileError naming the file when it is not one."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise AsvFileError(f"{path}: not an asv results file (a JSON object)")
    version = data.get("version")
    if version is None:
        raise AsvFileError(f"{path}: no format version in it, so not an asv results file (asv refuses it too)")
    if version not in FORMATS or isinstance(version, bool):
        raise AsvFileError(f"{path}: asv results format {version!r} is unknown; this perfwatch reads formats "
                           f"{' and '.join(map(str, FORMATS))} (asv 0.3 to 0.6): run `asv update` with the asv "
                           "that wrote it")
    missing = [key for key in ("commit_hash", "date", "results") if key not in data]
    if missing:
        raise AsvFileError(f"{path}: asv results file without {', '.join(missing)}; the file is damaged")
    rows = (rows_v2 if version == 2 else rows_v1)(data, path)
    try:
        results = [b for name, row in sorted(rows.items()) for b in bench_results(name, row, benchmarks.get(name, {}))]
    except (TypeError, ValueError, IndexError) as exc:
        raise AsvFileError(f"{path}: a benchmark's entry is not asv's ({exc}); the file is damaged") from None
    starts = [s for row in rows.values() if (s := iso(row.started_at))]
    commit_time = iso(data["date"])
    created = min(starts) if starts else commit_time
    if created is None:
        raise AsvFileError(f"{path}: its date {data['date']!r} is no asv timestamp; the file is damaged")
    env = {**machine_env(machine), "python": data.get("python"), "git_commit": data["commit_hash"],
           "git_commit_time": commit_time, "git_branch": None, "git_dirty": False,
           "asv": {"file": str(path.name), "env_name": data.get("env_name"), "params": data.get("params"),
                   "requirements": data.get("requirements"), "env_vars": data.get("env_vars"),
                   "durations": data.get("durations"), "benchmarks": extras(rows)}}
    return RunRecord(run_id=run_id(created, machine["machine"], data), created=created, suite=SUITE, env=env,
                     benchmarks=results)


def run_id(created: str, machine: str, data: dict[str, Any]) -> str:
    """perfwatch's sortable id shape, its suffix fixed by the file's machine, commit and environment."""
    key = "\0".join(str(x) for x in ("asv", machine, data["commit_hash"], data.get("env_name"), created))
    return f"{datetime.fromisoformat(created):%Y%m%dT%H%M%SZ}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"


def extras(rows: dict[str, Row]) -> dict[str, Any]:
    """What asv kept per benchmark beyond the values: its version, start, duration, and the statistics per
    parameter combination (ci_99_a/b, q_25, q_75, number, repeat, ...)."""
    return {name: {"version": row.version, "started_at": iso(row.started_at), "duration_s": row.duration,
                   "stats": row.stats} for name, row in sorted(rows.items())}


def param_value(label: str) -> Any:
    """A parameter as perfwatch keeps it: a plain value as itself, anything else by its asv label."""
    try:
        value = ast.literal_eval(label)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return label
    plain = isinstance(value, (str, int, float, bool, type(None))) and not (isinstance(value, float)
                                                                           and not math.isfinite(value))
    return value if plain else label


def bench_results(name: str, row: Row, info: dict[str, Any]) -> list[BenchResult]:
    """One BenchResult per parameter combination of an asv benchmark, named as perfwatch names it."""
    kind = identity.kind_of(name.rsplit(".", 1)[-1]) or ASV_TYPES.get(info.get("type", ""), "track")
    unit = info.get("unit") if isinstance(info.get("unit"), str) else identity.DEFAULT_UNITS[kind]
    labels = [[str(v) for v in values] for values in row.params]
    names = [str(n) for n in info.get("param_names") or []][: len(labels)]
    names += [f"param{k + 1}" for k in range(len(names), len(labels))]
    results = []
    for j, chosen in enumerate(itertools.product(*labels)):
        value = row.result[j] if j < len(row.result) else None
        stats = (row.stats[j] if row.stats and j < len(row.stats) else None) or {}
        samples = row.samples[j] if isinstance(row.samples, list) and j < len(row.samples) else None
        if value is None:
            status, error, kept = "failed", "failed under asv (it recorded no result)", []
        elif isinstance(value, float) and math.isnan(value):
            status, error, kept = "skipped", "skipped under asv", []
        else:
            status, error = "ok", None
            kept = [float(s) for s in samples] if isinstance(samples, list) and samples else [float(value)]
        number = stats.get("number")
        args = ", ".join(f"{n}={label}" for n, label in zip(names, chosen))
        results.append(BenchResult(
            name=f"{name}({args})" if names else name, params={n: param_value(v) for n, v in zip(names, chosen)},
            kind=kind, unit=unit, higher_is_better=False, status=status, error=error, samples=kept,
            number=int(number) if isinstance(number, (int, float)) and number >= 1 else 1,
            version=None if row.version is None else str(row.version),
            pretty_name=info["pretty_name"] if isinstance(info.get("pretty_name"), str) else None))
    return results
