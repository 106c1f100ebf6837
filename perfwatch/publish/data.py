"""The store's runs as plain JSON-able data, one dict per page of the site. Pure: runs in, dicts out.

The numbers are regress's: a series per benchmark and machine with a point per commit pooling its
runs' samples, and its change points (regress.history), and the verdict of the latest commit against
the one before it (regress.compare). A page groups a benchmark's series over machines and parameter
combinations (``suite.bench(n=1)`` and ``suite.bench(n=2)`` share the page of ``suite.bench``), on one
commit axis. Strings stay as they came: the pages set them as text, never as markup.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from perfwatch import stats
from perfwatch.display import format_value
from perfwatch.paths import safe_name
from perfwatch.regress.compare import compare_samples
from perfwatch.regress.history import History, RunPoint, analyze, commit_order
from perfwatch.results import RunRecord
from perfwatch.store.base import machine_of
from perfwatch.thresholds import Thresholds

SPARK_POINTS = 60  # the newest points a summary row's sparkline draws
REGRESSED_FIRST = {"regressed": 0, "failed": 1, "too-noisy": 2}  # summary order; the rest after, by name
# The fingerprint fields a machine is shown by, in this order; the rest of the env follows, but not git's.
FINGERPRINT = ("host", "machine_id", "os", "arch", "cpu", "cpu_cores_logical", "cpu_cores_physical", "memory_bytes",
               "gpu", "python", "torch", "numpy", "perfwatch")


@dataclass(frozen=True)
class SiteData:
    """What the pages show: ``pages`` maps a benchmark page's file stem to its data (every page, or on a
    re-publish those that new runs touched); ``notes`` are what the publisher should hear about (an empty store,
    a changed unit, a latest run that failed or has no samples)."""

    summary: dict[str, Any]
    pages: dict[str, dict[str, Any]]
    regressions: list[dict[str, Any]]
    machines: list[dict[str, Any]]
    notes: list[str]


def base_and_params(name: str) -> tuple[str, str]:
    """``suite.bench(n=1,s=a)`` -> (``suite.bench``, ``n=1,s=a``); a name without parameters -> (name, "")."""
    if name.endswith(")") and "(" in name:
        cut = name.index("(")
        return name[:cut], name[cut + 1:-1]
    return name, ""


def page_stem(base: str) -> str:
    """A benchmark page's file stem: the name made safe, and a hash of it when that changed it, so two
    names that differ only in unsafe characters never share a page."""
    safe = safe_name(base, limit=80)
    return safe if safe == base else f"{safe}-{hashlib.sha256(base.encode()).hexdigest()[:8]}"


def number(value: float | None) -> float | None:
    """A float JSON can hold: nan and infinities become null."""
    return value if value is not None and math.isfinite(value) else None


def one_unit(runs: list[RunRecord]) -> tuple[list[RunRecord], dict[tuple[str, str], str]]:
    """``runs`` holding, per benchmark and machine, only the results in the unit of its latest result (a
    history in two units cannot be drawn on one axis), and a note for each one whose unit changed."""
    latest: dict[tuple[str, str], str] = {}
    for run in runs:
        for bench in run.benchmarks:
            latest[bench.name, machine_of(run.env)] = bench.unit
    dropped: dict[tuple[str, str], dict[str, int]] = {}
    kept_runs = []
    for run in runs:
        machine = machine_of(run.env)
        kept = []
        for bench in run.benchmarks:
            unit = latest[bench.name, machine]
            if bench.unit == unit:
                kept.append(bench)
            else:
                counts = dropped.setdefault((bench.name, machine), {})
                counts[bench.unit] = counts.get(bench.unit, 0) + 1
        kept_runs.append(run if len(kept) == len(run.benchmarks) else replace(run, benchmarks=kept))
    notes = {key: f"the unit changed to {latest[key]!r}: " + ", ".join(f"{n} earlier run(s) in {unit!r}"
                                                                   for unit, n in counts.items()) + " left out"
             for key, counts in dropped.items()}
    return kept_runs, notes


def latest_errors(runs: Iterable[RunRecord]) -> dict[tuple[str, str], str]:
    """(benchmark, machine) -> what went wrong in its latest result, where it failed or has no samples."""
    errors: dict[tuple[str, str], str] = {}
    for run in runs:
        for bench in run.benchmarks:
            key = (bench.name, machine_of(run.env))
            if bench.ok and bench.samples:
                errors.pop(key, None)
            elif bench.ok:
                errors[key] = f"run {run.run_id} recorded no samples"
            else:
                errors[key] = f"{bench.status} in run {run.run_id}: {bench.error or 'no error message'}"
    return errors


def point_data(point: RunPoint, x: int) -> dict[str, Any]:
    samples = point.samples
    return {"x": x, "commit": point.commit, "date": point.commit_time or point.created, "run_ids": list(point.run_ids),
            "status": point.status, "n": len(samples), "median": number(point.median),
            "q1": number(stats.quantile(samples, 0.25)), "q3": number(stats.quantile(samples, 0.75)),
            "min": number(min(samples)) if samples else None, "max": number(max(samples)) if samples else None}


def latest_verdict(history: History, threshold: float) -> dict[str, Any]:
    """The latest commit against the one measured before it, judged as `perfwatch compare` judges: ``change`` as
    measured (latest/previous - 1, as a step's), ``worse_by`` direction-normalised with its interval (compare's)."""
    series = history.series
    measured = [p for p in series.points if p.samples]
    last = series.points[-1] if series.points else None
    if last is None or not last.samples:
        status = last.status if last else "none"
        return {"verdict": "failed" if status in ("failed", "timeout", "ok") else status,
                "reason": f"the latest run has no samples ({status})", "change": None}
    if len(measured) < 2:
        return {"verdict": "new", "reason": "the first commit measured", "change": None}
    row = compare_samples(series.name, measured[-2].samples, last.samples, unit=series.unit,
                          higher_is_better=series.higher_is_better, threshold=threshold)
    return {"verdict": row.verdict, "reason": row.reason, "change": number(row.ratio - 1),
            "worse_by": number(row.change), "ci_low": number(row.ci_low), "ci_high": number(row.ci_high),
            "p": number(row.p_value)}


def distribution(history: History) -> dict[str, Any] | None:
    """The raw samples of the latest measured commit and of the one before it, for their distributions side by
    side; None with fewer than two measured commits."""
    measured = [p for p in history.series.points if p.samples]
    if len(measured) < 2:
        return None
    return {side: {"commit": p.commit, "run_id": p.run_id, "samples": [number(v) for v in p.samples]}
            for side, p in (("previous", measured[-2]), ("latest", measured[-1]))}


def step_data(history: History, x_of: Mapping[str, int]) -> list[dict[str, Any]]:
    points = history.series.points
    return [{"x": x_of[axis_key(points[s.index])], "commit": s.commit, "commit_before": s.commit_before,
             "run_id": s.run_id, "date": points[s.index].commit_time or points[s.index].created,
             "before": number(s.before), "after": number(s.after), "change": number(s.change),
             "p": number(s.p_value), "worse": s.worse} for s in history.steps]


def axis_key(point: RunPoint) -> str:
    """What a point is on the commit axis: its commit, else (a run outside git) its run."""
    return point.commit or point.run_id


def commit_axis(histories: list[History], positions: Mapping[str, int] | None) -> list[RunPoint]:
    """Every commit of ``histories`` once, in commit order: the x axis of their page."""
    first: dict[str, RunPoint] = {}
    for h in histories:
        for point in h.series.points:
            first.setdefault(axis_key(point), point)
    return sorted(first.values(), key=lambda p: commit_order(p, positions))


def baseline_verdict(h: History, baseline: RunRecord | None, threshold: float) -> dict[str, Any] | None:
    """The latest commit against the baseline run (``perfwatch baseline save``), judged as `perfwatch compare`
    judges it: unpaired, so only on the machine the baseline was measured on; None without a baseline."""
    if baseline is None:
        return None
    series, said = h.series, {"run_id": baseline.run_id, "change": None}
    measured = next((b for b in baseline.benchmarks if b.name == series.name and b.ok and b.samples), None)
    last = series.points[-1] if series.points else None
    if measured is None:
        return {**said, "verdict": "none", "reason": f"the baseline ({baseline.run_id}) has no result for it"}
    if machine_of(baseline.env) != series.machine:
        return {**said, "verdict": "none", "reason": f"the baseline ({baseline.run_id}) was measured on another "
                                                     "machine; runs of two machines are never compared"}
    if last is None or not last.samples:
        return {**said, "verdict": "none", "reason": "the latest run has no samples"}
    row = compare_samples(series.name, measured.samples, last.samples, unit=series.unit,
                          higher_is_better=series.higher_is_better, threshold=threshold)
    return {**said, "verdict": row.verdict, "reason": row.reason, "change": number(row.ratio - 1)}


def series_data(h: History, page: str, x_of: Mapping[str, int], threshold: float, notes: list[str],
                baseline: RunRecord | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A series' trace on its benchmark's page and its row in the summary; ``notes`` are what went wrong with it,
    ``baseline`` the run its latest commit is also set against."""
    series = h.series
    verdict = latest_verdict(h, threshold)
    steps = step_data(h, x_of)
    trace = {"name": series.name, "params": base_and_params(series.name)[1], "machine": series.machine_label,
             "machine_id": series.machine, "unit": series.unit, "higher_is_better": series.higher_is_better,
             "notes": [n for n in (h.note, *notes) if n], "steps": steps, "verdict": verdict,
             "distribution": distribution(h), "points": [point_data(p, x_of[axis_key(p)]) for p in series.points]}
    last = series.points[-1] if series.points else None
    row = {"name": series.name, "page": page, "suite": series.suite or "", "machine": series.machine_label,
           "unit": series.unit, "latest": number(last.median) if last else None,
           "latest_text": format_value(last.median, series.unit) if last else "-",
           "commit": last.commit if last else None, **verdict, "baseline": baseline_verdict(h, baseline, threshold),
           "notes": notes, "history_note": h.note,
           "steps": [{"change": s["change"], "worse": s["worse"], "commit": s["commit"]} for s in steps],
           "spark": [number(p.median) for p in series.points[-SPARK_POINTS:]]}
    return trace, row


@dataclass(frozen=True)
class Page:
    """A benchmark page: ``data`` is what the page itself shows, ``part`` its share of the site-wide pages
    (``base``, its summary ``rows``, its ``regressions``, and ``problems`` as [name, machine id, notes] per
    series), plain JSON so that the publish cache can keep it."""

    data: dict[str, Any]
    part: dict[str, Any]


def benchmark_pages(runs: list[RunRecord], limits: Thresholds, positions: Mapping[str, int] | None = None,
                    baseline: RunRecord | None = None) -> dict[str, Page]:
    """Every benchmark page of ``runs`` (oldest first), by file stem, its summary rows set against ``baseline``
    too. A page reads only its own benchmarks' results and the runs' machines, so runs holding just its
    benchmarks (but every run) give the same page: what lets a re-publish recompute only the pages that new
    runs touch."""
    runs, unit_notes = one_unit(runs)
    errors = latest_errors(runs)
    problems: dict[str, list[list[Any]]] = {}
    for name, machine in sorted({*unit_notes, *errors}):
        notes = [n for n in (unit_notes.get((name, machine)), errors.get((name, machine))) if n]
        problems.setdefault(base_and_params(name)[0], []).append([name, machine, notes])
    groups: dict[str, list[History]] = {}
    for h in analyze(runs, None, limits, positions):
        groups.setdefault(base_and_params(h.series.name)[0], []).append(h)
    pages = {}
    for base, group in groups.items():
        stem = page_stem(base)
        noted = {(name, machine): notes for name, machine, notes in problems.get(base, [])}
        axis = commit_axis(group, positions)
        x_of = {axis_key(p): i for i, p in enumerate(axis)}
        traces, rows, regressions = [], [], []
        for h in group:
            series = h.series
            notes = [n for n in (series.left_out,) if n] + noted.get((series.name, series.machine), [])
            trace, row = series_data(h, f"benchmarks/{stem}.html", x_of, limits.for_name(series.name), notes,
                                     baseline)
            traces.append(trace)
            rows.append(row)
            regressions += [{"name": series.name, "page": row["page"], "machine": series.machine_label,
                             "unit": series.unit, **s} for s in trace["steps"] if s["worse"]]
        data = {"name": base, "traces": traces,
                "axis": [{"commit": p.commit, "run_id": p.run_id, "date": p.commit_time or p.created} for p in axis]}
        pages[stem] = Page(data, {"base": base, "rows": rows, "regressions": regressions,
                                  "problems": problems.get(base, [])})
    return pages


def site_of(parts: Mapping[str, Mapping[str, Any]], machines: Mapping[str, dict[str, Any]], runs: int,
            source: str, pages: dict[str, dict[str, Any]]) -> SiteData:
    """The site from every benchmark page's part (``parts``, by stem: taken in stem order, so that parts
    computed now and parts kept from an earlier publish make the same site), the machines
    (:func:`machines_seen`) and how many runs there are; ``pages`` are the benchmark pages computed now."""
    rows, regressions, problems = [], [], []
    for stem in sorted(parts):
        rows += parts[stem]["rows"]
        regressions += parts[stem]["regressions"]
        problems += parts[stem]["problems"]
    rows.sort(key=lambda r: (REGRESSED_FIRST.get(r["verdict"], 3), not any(s["worse"] for s in r["steps"][-1:]),
                             r["name"], r["machine"]))
    regressions.sort(key=lambda r: r["date"] or "", reverse=True)
    empty = [] if runs else [f"{source} holds no runs yet: run `perfwatch run` and publish again"]
    said = [f"{name} on {machines.get(machine, {}).get('host') or machine}: {note}"
            for name, machine, notes in sorted(problems) for note in notes]
    summary = {"rows": rows, "runs": runs, "machines": len(machines), "notes": empty}
    return SiteData(summary, pages, regressions, [machines[m] for m in sorted(machines)], empty + said)


def fingerprint(env: Mapping[str, Any]) -> list[list[str]]:
    """A machine's fingerprint as (field, text) rows: the known fields first, then the rest but git's and the load."""
    rest = sorted(k for k in env if k not in FINGERPRINT and not k.startswith("git_") and k != "load_average")
    rows = []
    for field in (*FINGERPRINT, *rest):
        value = env.get(field)
        if field == "gpu" and field in env and not value:
            rows.append([field, "none"])
        elif value not in (None, "", {}, []):
            rows.append([field, format_value(value, "bytes") if field == "memory_bytes" else str(value)])
    return rows


def machines_seen(runs: Iterable[RunRecord], machines: Mapping[str, dict[str, Any]] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """Machine id -> its entry on the machines page: its latest run's fingerprint and medians (to set two
    machines side by side), how many runs it has, and when they were made; ``machines`` as an earlier call
    left them, for ``runs`` made after those (the publish cache adds new runs so)."""
    seen = {machine: dict(entry) for machine, entry in (machines or {}).items()}
    for run in runs:
        entry = seen.setdefault(machine_of(run.env), {"id": machine_of(run.env), "runs": 0, "first": run.created})
        entry.update(host=run.env.get("host"), runs=entry["runs"] + 1, last=run.created, latest_run=run.run_id,
                     fingerprint=fingerprint(run.env),
                     latest={b.name: {"median": number(stats.median(b.samples)), "unit": b.unit,
                                      "higher_is_better": b.higher_is_better, "status": b.status}
                             for b in run.benchmarks})
    return seen
