"""The store at a team's scale (issue 10): a generated store of RUNS runs x BENCHMARKS benchmarks x SAMPLES
raw samples, in SQLite, in PostgreSQL and as today's directory of JSON documents, and the time of what
the commands do with it.

Method. Runs are generated with a fixed seed: ``--machines`` machines taking turns, one commit per run
with increasing commit times on ``main``, benchmarks named ``modNN.KIND_bNNN`` in suites (modules) of
``--suite-size``, each with SAMPLES samples: times around 1 ms, except the second of each suite, a
``peakmem`` (bytes), and the third, a ``track`` (a counted value), so that every panel of the Grafana
dashboard has its kind of benchmark. The first benchmark of each suite gets 20% slower from the run
at 90% of the history on: a step for the dashboard's annotation to find. A store that already holds
RUNS runs is reused (the runs that measuring ``save`` added are of a machine of their own), so the
generation (bulk inserts, batches of runs per transaction: setup, not measured) is paid once.
Then each operation runs ``--repeat`` times, each time through a store opened afresh, as a
command opens it (so a database's connection is in the time), and the median and the worst are kept:

* ``save``: store a new run of the same size (SQL: the spool write, the transaction, dropping the entry);
* ``history_one``: one benchmark's history on one machine (``RunFilter(machine, benchmark)``, what
  ``perfwatch history BENCH --machine M`` reads);
* ``history_suite``: one suite's (``modNN.*``) on one machine;
* ``list_runs``: ``RunStore.summaries()``, a line per run (what ``perfwatch runs`` lists);
* ``dashboard``: every SQL text of the Grafana "Benchmark history" dashboard (its variables', its
  annotation's and its panels'), filled in as Grafana fills it (tests/grafana_dashboards.py) in each
  ``--view``: one suite, one machine and one benchmark of each kind over the whole history
  (``all-history``) and over its last 30 days (``last-30-days``), the dashboard as it opens
  (``as-opened``: its default time range and variables as Grafana picks them: every machine, the first
  benchmark) and the same with every benchmark selected (``every-benchmark``); each run through a
  connection of its own, its rows counted, since a query that finds nothing at scale is a bug (as opened,
  the panels of the other kinds of benchmark than the first have nothing to show). A
  store that cannot run a query (SQLite: the dashboard is written for PostgreSQL) gets the
  database's error line for it instead of a time.

Targets (issue 10): history_one < 0.5 s, history_suite < 3 s, save < 0.2 s; the directory is there to
compare with (``dashboard`` skips it: no SQL). Timing numbers are measurements: run on a quiet
machine, and record them in docs/performance.md with the machine's fingerprint.

Usage::

    python scripts/store_scale.py --store sqlite:////tmp/scale.db --store /tmp/scale-dir \\
        --store postgresql://USER:PASSWORD@127.0.0.1:5432/scale --out /tmp/store_scale.json
    python scripts/store_scale.py --runs 50 --benchmarks 20 --samples 5 --repeat 2 --store sqlite:////tmp/s.db
    python scripts/store_scale.py --operation dashboard --store postgresql://USER:PASSWORD@127.0.0.1:5432/scale
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from functools import cache, partial
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa

from perfwatch.env import fingerprint
from perfwatch.results import BenchResult, RunRecord, new_run_id
from perfwatch.store import RunStore, open_store
from perfwatch.store.base import RunFilter
from perfwatch.store.schema import result_rows, results_table, run_row, runs_table
from perfwatch.store.spool import Spool
from perfwatch.store.sql import SqlStore, engine_url
from perfwatch.urls import redact

TARGETS_S = {"history_one": 0.5, "history_suite": 3.0, "save": 0.2}
BATCH = 50  # runs per transaction while generating
SAVER = "f" * 40  # the machine of the runs that measuring save adds
START = 1_767_225_600  # 2026-01-01T00:00:00Z: the first run's commit time
OPERATIONS = ("history_one", "history_suite", "list_runs", "save", "dashboard")
DASHBOARD = Path(__file__).resolve().parents[1] / "grafana" / "dashboards" / "history.json"
# The position in its suite -> a benchmark's kind, unit and typical value; the others are times.
KINDS = {1: ("peakmem", "bytes", 2e8), 2: ("track", "items", 1e4)}
# The dashboard's views: one suite, machine and benchmark of each kind over the whole history and over its
# last 30 days, the dashboard as it opens (its default time range and variables), and that with every benchmark.
VIEWS = ("all-history", "last-30-days", "as-opened", "every-benchmark")
OPENING = re.compile(r"now-(\d+)([dh])$")
STEP = 1.2  # the first benchmark of each suite, from 90% of the runs on


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))


class Shape:
    """The generated store's size, and its runs: the same for a given seed whatever the backend."""

    def __init__(self, args: argparse.Namespace):
        self.runs, self.benchmarks, self.samples = args.runs, args.benchmarks, args.samples
        self.machines, self.suite_size, self.seed = args.machines, args.suite_size, args.seed

    def kind(self, b: int, i: int = 0) -> tuple[str, str, float]:
        """The kind, unit and typical value of benchmark ``b`` in run ``i``."""
        slower = STEP if b % self.suite_size == 0 and i >= self.runs * 9 // 10 else 1.0
        return KINDS.get(b % self.suite_size, ("time", "seconds", 1e-3 * slower))

    def name(self, b: int) -> str:
        return f"mod{b // self.suite_size:02d}.{self.kind(b)[0]}_b{b:03d}"

    def last(self) -> datetime:
        """The generated runs' last commit time."""
        return datetime.fromtimestamp(START + 3600 * (self.runs - 1), timezone.utc)

    def machine(self, i: int) -> str:
        return f"{i % self.machines:02d}" + "5ca1e" * 6

    def run(self, i: int, rng: random.Random) -> RunRecord:
        when = START + 3600 * i
        env = {"host": f"runner-{i % self.machines}", "machine_id": self.machine(i), "git_commit": f"{i:040x}",
               "git_commit_time": iso(when), "git_branch": "main", "git_dirty": False}
        benchmarks = [BenchResult(name=self.name(b), params={}, kind=kind, unit=unit, higher_is_better=False,
                                  status="ok", samples=[rng.gauss(typical, typical / 50) for _ in range(self.samples)])
                      for b, (kind, unit, typical) in ((b, self.kind(b, i)) for b in range(self.benchmarks))]
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
        return RunRecord(run_id=f"{stamp}-{i:06x}", created=iso(when + 60), suite="ci", env=env, benchmarks=benchmarks)


def open_for_measuring(address: str, spool: Path) -> RunStore:
    """The store at ``address`` as a command opens it, its spool in a scratch directory."""
    if "://" in address:
        return SqlStore(address, spool=Spool(spool))
    return open_store(address)


def generate(store: RunStore, shape: Shape, log: Callable[[str], None]) -> None:
    """Fill ``store`` with the shape's runs unless it holds them already (then it is reused)."""
    held = len(store.ids())
    if held >= shape.runs:  # the generated runs, and those that earlier measurements of save added
        log(f"{store.root}: reusing its {held} runs")
        return
    if held:
        sys.exit(f"{store.root}: holds {held} runs, not {shape.runs}; give an empty store or one made with "
                 "the same --runs")
    rng = random.Random(shape.seed)
    started = time.perf_counter()
    for first in range(0, shape.runs, BATCH):
        batch = [shape.run(i, rng) for i in range(first, min(first + BATCH, shape.runs))]
        if isinstance(store, SqlStore):
            with store.engine.begin() as conn:
                conn.execute(runs_table.insert(), [run_row(run) for run in batch])
                conn.execute(results_table.insert(), [row for run in batch for row in result_rows(run)])
        else:
            for run in batch:
                store.add(run)
        log(f"{store.root}: {first + len(batch)}/{shape.runs} runs generated "
            f"({time.perf_counter() - started:.0f} s)")


def timed(repeat: int, operation: Callable[[int], object]) -> dict[str, float]:
    """The median and the worst wall time of ``operation(k)`` over ``repeat`` calls."""
    times = []
    for k in range(repeat):
        started = time.perf_counter()
        operation(k)
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "max_s": max(times), "repeat": repeat}


def grafana_sql() -> ModuleType:
    """tests/grafana_dashboards.py, where Grafana's filling in of the dashboard's SQL is written (and checked
    against Grafana's documented outputs); no public module holds it, so it is imported from the tests."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import grafana_dashboards

    return grafana_dashboards


def opening_range(dashboard: dict) -> timedelta:
    """The time range the dashboard opens with, ``now-Nd`` or ``now-Nh`` to now."""
    found = OPENING.match(dashboard["time"]["from"])
    if found is None or dashboard["time"]["to"] != "now":
        sys.exit(f"{DASHBOARD}: opens at {dashboard['time']}; this script knows now-Nd and now-Nh to now")
    return timedelta(**{{"d": "days", "h": "hours"}[found.group(2)]: int(found.group(1))})


def picked_variables(grafana: ModuleType, dashboard: dict, shape: Shape) -> dict[str, tuple[dict, list[str]]]:
    """Each variable with its value in a user's view: the first suite and machine, ``main``, one benchmark of
    each kind in the middle suite, a custom variable's default."""
    first = shape.benchmarks // 2 // shape.suite_size * shape.suite_size
    values = {"suite": ["ci"], "machine": [shape.machine(0)], "branch": ["main"],
              "benchmark": [shape.name(b) for b in range(first, min(first + 1 + len(KINDS), shape.benchmarks))]}
    chosen = {}
    for variable in grafana.variables(dashboard):
        if variable["type"] == "custom":
            chosen[variable["name"]] = (variable, [variable["current"]["value"]])
        elif variable["type"] == "query":
            if variable["name"] not in values:
                sys.exit(f"{DASHBOARD}: variable {variable['name']!r} is new to this script; give it a value in "
                         "picked_variables")
            chosen[variable["name"]] = (variable, values[variable["name"]])
    return chosen


def dashboard_views(grafana: ModuleType, shape: Shape, engine: sa.Engine, names: list[str]) -> dict[str, tuple]:
    """The views ``names`` as (start, end, variables), ending an hour after the last run (see VIEWS)."""
    dashboard, end = grafana.load(DASHBOARD), shape.last() + timedelta(hours=1)
    picked = picked_variables(grafana, dashboard, shape)
    views = {"all-history": lambda: (datetime.fromtimestamp(START, timezone.utc) - timedelta(days=1), end, picked),
             "last-30-days": lambda: (end - timedelta(days=30), end, picked)}
    opened = end - opening_range(dashboard)
    resolved = cache(lambda: grafana.resolve_sql_variables(dashboard, partial(fetch, engine), opened, end))
    views["as-opened"] = lambda: (opened, end, resolved()[0])
    views["every-benchmark"] = lambda: (opened, end, grafana.with_every_option(*resolved(), "benchmark"))
    return {name: views[name]() for name in VIEWS if name in names}


def fetch(engine: sa.Engine, sql: str) -> tuple[list[str], list[tuple]]:
    """The columns and rows of ``sql``, run through a new connection."""
    connection = engine.raw_connection()  # the driver's own: the SQL goes as it is, its % untouched
    try:
        cursor = connection.cursor()
        cursor.execute(sql)
        return [column[0] for column in cursor.description], cursor.fetchall()
    finally:
        connection.close()


def count_rows(engine: sa.Engine, sql: str, counts: list[int], _: int) -> None:
    counts.append(len(fetch(engine, sql)[1]))


def dashboard(address: str, shape: Shape, repeat: int, views: list[str], log: Callable[[str], None]) -> list[dict]:
    """Each of the dashboard's queries in each view: median and worst time and the rows, or the error line."""
    grafana = grafana_sql()
    engine = sa.create_engine(engine_url(address), poolclass=sa.pool.NullPool)  # a new connection per query
    entries = []
    try:
        shown = dashboard_views(grafana, shape, engine, views)
    except engine.dialect.dbapi.Error as error:  # a variable's query failed: as-opened runs them to fill it in
        sys.exit(f"{redact(address)}: the dashboard's variables cannot be filled in: {one_line(error)}")
    for query in grafana.sql_queries(DASHBOARD):
        for view, (start, end, chosen) in shown.items():
            sql, rows = grafana.interpolate_sql(query.sql, chosen, start, end), []
            entry = {"query": query.where, "view": view}
            try:
                entries.append({**entry, **timed(repeat, partial(count_rows, engine, sql, rows)), "rows": rows[-1]})
            except engine.dialect.dbapi.Error as error:
                entries.append({**entry, "error": one_line(error)})
            log(f"{redact(address)}: {query.where}, {view}: " + (
                f"{entries[-1]['median_s']:.3f} s, {entries[-1]['rows']} rows" if "rows" in entries[-1]
                else entries[-1]["error"]))
    engine.dispose()
    return entries


def one_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def measure(address: str, shape: Shape, args: argparse.Namespace, scratch: Path, log: Callable[[str], None]) -> dict:
    generate(open_for_measuring(address, scratch / "spool"), shape, log)
    operations, repeat = args.operation or list(OPERATIONS), args.repeat
    machine, one, suite = shape.machine(0), shape.name(shape.benchmarks // 2), f"{shape.name(0).split('.')[0]}.*"
    rng = random.Random(shape.seed + 1)

    def fresh() -> RunStore:
        return open_for_measuring(address, scratch / "spool")

    def history(pattern: str) -> Callable[[int], object]:
        def read(_: int) -> None:
            runs = list(fresh().select(RunFilter(machine=machine, benchmark=pattern)))
            assert len(runs) == len(range(0, shape.runs, shape.machines)), (pattern, len(runs))
        return read

    def save(k: int) -> None:
        run = shape.run(shape.runs + k, rng)  # of a machine of its own, so a store reused reads as before
        fresh().save(replace(run, run_id=new_run_id(), env={**run.env, "machine_id": SAVER, "host": "saver"}))

    measured = {"history_one": lambda: timed(repeat, history(one)),
                "history_suite": lambda: timed(repeat, history(suite)),
                "list_runs": lambda: timed(repeat, lambda _: fresh().summaries()),
                "save": lambda: timed(repeat, save)}
    results = {name: measured[name]() for name in OPERATIONS if name in operations and name in measured}
    entry = {"store": redact(address) if "://" in address else address, "backend": fresh().backend,
             "operations": results}
    if "dashboard" in operations and "://" in address:
        log(f"{entry['store']}: timing the dashboard's queries")
        entry["dashboard"] = dashboard(address, shape, repeat, args.view or list(VIEWS), log)
    return entry


def seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def markdown(report: dict) -> str:
    """A table of the operations timed and one of the dashboard's queries, each if there is something in it."""
    operations = [f"| {entry['backend']} | {name} | {seconds(t['median_s'])} | {seconds(t['max_s'])} | "
                  f"{verdict(name, t)} |" for entry in report["stores"] for name, t in entry["operations"].items()]
    queries = [f"| {entry['backend']} | {q['query']} | {q['view']} | " + (
        f"{seconds(q['median_s'])} | {seconds(q['max_s'])} of {q['repeat']} | {q['rows']} |" if "error" not in q
        else f"does not run: {q['error']} | | |") for entry in report["stores"] for q in entry.get("dashboard", ())]
    tables = [["| store | operation | median | worst | target |", "|---|---|---|---|---|", *operations],
              ["| store | dashboard query | view | median | worst | rows |", "|---|---|---|---|---|---|", *queries]]
    return "\n\n".join("\n".join(table) for table in tables if len(table) > 2)


def verdict(name: str, times: dict[str, float]) -> str:
    target = TARGETS_S.get(name)
    return "" if target is None else f"< {target:g} s: {'met' if times['median_s'] < target else 'missed'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", action="append", required=True, metavar="URL",
                        help="A store to generate and measure (sqlite:///PATH, postgresql://..., or a directory); "
                             "repeat it for several.")
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--benchmarks", type=int, default=200)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--machines", type=int, default=2, help="Machines taking turns (default 2).")
    parser.add_argument("--suite-size", type=int, default=20, help="Benchmarks per suite module (default 20).")
    parser.add_argument("--repeat", type=int, default=5, help="Times each operation is measured (default 5).")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--operation", action="append", choices=OPERATIONS,
                        help="An operation to time; repeat it for several (default: all).")
    parser.add_argument("--view", action="append", choices=VIEWS,
                        help="A view of the dashboard to time its queries in; repeat it for several (default: all).")
    parser.add_argument("--out", type=Path, help="Write the report as JSON here.")
    args = parser.parse_args(argv)
    shape = Shape(args)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="perfwatch-scale-") as scratch:
        report = {"shape": {k: getattr(shape, k) for k in ("runs", "benchmarks", "samples", "machines", "suite_size")},
                  "machine": fingerprint(), "targets_s": TARGETS_S,
                  "stores": [measure(address, shape, args, Path(scratch), log) for address in args.store]}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
