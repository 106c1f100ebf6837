"""The store at a team's scale (issue 10): a generated store of RUNS runs x BENCHMARKS benchmarks x SAMPLES
raw samples, in SQLite, in PostgreSQL and as today's directory of JSON documents, and the time of what
the commands do with it.

Method. Runs are generated with a fixed seed: ``--machines`` machines taking turns, one commit per run
with increasing commit times on ``main``, benchmarks named ``modNN.time_bNNN`` in suites (modules) of
``--suite-size``, each with SAMPLES samples around 1 ms. A store that already holds RUNS runs is reused
(the runs that measuring ``save`` added are of a machine of their own),
so the generation (bulk inserts, batches of runs per transaction: setup, not measured) is paid once.
Then each operation runs ``--repeat`` times, each time through a store opened afresh, as a
command opens it (so a database's connection is in the time), and the median and the worst are kept:

* ``save``: store a new run of the same size (SQL: the spool write, the transaction, dropping the entry);
* ``history_one``: one benchmark's history on one machine (``RunFilter(machine, benchmark)``, what
  ``perfwatch history BENCH --machine M`` reads);
* ``history_suite``: one suite's (``modNN.*``) on one machine;
* ``list_runs``: ``RunStore.summaries()``, a line per run (what ``perfwatch runs`` lists).

Targets (issue 10): history_one < 0.5 s, history_suite < 3 s, save < 0.2 s; the directory is there to
compare with. Timing numbers are measurements: run on a quiet machine, and record them in
docs/performance.md with the machine's fingerprint.

Usage::

    python scripts/store_scale.py --store sqlite:////tmp/scale.db --store /tmp/scale-dir \\
        --store postgresql://USER:PASSWORD@127.0.0.1:5432/scale --out /tmp/store_scale.json
    python scripts/store_scale.py --runs 50 --benchmarks 20 --samples 5 --repeat 2 --store sqlite:////tmp/s.db
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from perfwatch.env import fingerprint
from perfwatch.results import BenchResult, RunRecord, new_run_id
from perfwatch.store import RunStore, open_store
from perfwatch.store.base import RunFilter
from perfwatch.store.schema import result_rows, results_table, run_row, runs_table
from perfwatch.store.spool import Spool
from perfwatch.store.sql import SqlStore
from perfwatch.urls import redact

TARGETS_S = {"history_one": 0.5, "history_suite": 3.0, "save": 0.2}
BATCH = 50  # runs per transaction while generating
SAVER = "f" * 40  # the machine of the runs that measuring save adds
START = 1_767_225_600  # 2026-01-01T00:00:00Z: the first run's commit time


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))


class Shape:
    """The generated store's size, and its runs: the same for a given seed whatever the backend."""

    def __init__(self, args: argparse.Namespace):
        self.runs, self.benchmarks, self.samples = args.runs, args.benchmarks, args.samples
        self.machines, self.suite_size, self.seed = args.machines, args.suite_size, args.seed

    def name(self, b: int) -> str:
        return f"mod{b // self.suite_size:02d}.time_b{b:03d}"

    def machine(self, i: int) -> str:
        return f"{i % self.machines:02d}" + "5ca1e" * 6

    def run(self, i: int, rng: random.Random) -> RunRecord:
        when = START + 3600 * i
        env = {"host": f"runner-{i % self.machines}", "machine_id": self.machine(i), "git_commit": f"{i:040x}",
               "git_commit_time": iso(when), "git_branch": "main", "git_dirty": False}
        benchmarks = [BenchResult(name=self.name(b), params={}, kind="time", unit="seconds", higher_is_better=False,
                                  status="ok", samples=[rng.gauss(1e-3, 2e-5) for _ in range(self.samples)])
                      for b in range(self.benchmarks)]
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


def measure(address: str, shape: Shape, repeat: int, scratch: Path, log: Callable[[str], None]) -> dict:
    generate(open_for_measuring(address, scratch / "spool"), shape, log)
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

    results = {"history_one": timed(repeat, history(one)), "history_suite": timed(repeat, history(suite)),
               "list_runs": timed(repeat, lambda _: fresh().summaries())}
    results["save"] = timed(repeat, save)
    backend = fresh().backend
    return {"store": redact(address) if "://" in address else address, "backend": backend, "operations": results}


def markdown(report: dict) -> str:
    lines = ["| store | operation | median | worst | target |", "|---|---|---|---|---|"]
    for entry in report["stores"]:
        for name, t in entry["operations"].items():
            target = TARGETS_S.get(name)
            verdict = "" if target is None else f"< {target:g} s: {'met' if t['median_s'] < target else 'missed'}"
            lines.append(f"| {entry['backend']} | {name} | {t['median_s']:.3f} s | {t['max_s']:.3f} s | {verdict} |")
    return "\n".join(lines)


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
    parser.add_argument("--out", type=Path, help="Write the report as JSON here.")
    args = parser.parse_args(argv)
    shape = Shape(args)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="perfwatch-scale-") as scratch:
        report = {"shape": {k: getattr(shape, k) for k in ("runs", "benchmarks", "samples", "machines", "suite_size")},
                  "machine": fingerprint(), "targets_s": TARGETS_S,
                  "stores": [measure(address, shape, args.repeat, Path(scratch), log) for address in args.store]}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
