"""The SQL schema of a store, one for SQLite and PostgreSQL: ``runs`` (what a history query filters
on, plus the whole fingerprint), ``results`` (one row per benchmark, with its raw samples) and
``perfwatch_schema`` (the version; MIGRATIONS bring an older database up to it), and the mapping
between a run and its rows.

Text is stored as given (Exact): a string a database cannot hold as text (a lone surrogate, which is
no UTF-8; NUL, which PostgreSQL refuses) is kept escaped, losslessly, and read back as it was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from perfwatch import stats
from perfwatch.results import FORMAT_VERSION, RunRecord
from perfwatch.store.base import RunFilter

SCHEMA_VERSION = 2
ESCAPED = "\uffff"  # a Unicode noncharacter: starts an escaped string, and no real text starts with it


def holdable(text: str) -> bool:
    """Whether both databases hold ``text`` as it is (and reading it back cannot mistake it for an escape)."""
    if "\x00" in text or text.startswith(ESCAPED):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, as a file name read with surrogateescape may hold
        return False
    return True


class Exact(sa.TypeDecorator):
    """A string column that gives back exactly the string it was given: one that is not ``holdable`` is
    stored as ESCAPED followed by its JSON form (ASCII), which no holdable string looks like."""

    impl = sa.String
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine:
        return dialect.type_descriptor(sa.Text() if self.impl.length is None else self.impl)

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return value if value is None or holdable(value) else ESCAPED + json.dumps(value)

    def process_result_value(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return json.loads(value[1:]) if value is not None and value.startswith(ESCAPED) else value


def add_benchmark_identity(conn: Connection) -> None:
    """2: asv's ``version`` and ``pretty_name`` of each result (null in the runs stored before)."""
    for column in ("version", "pretty_name"):
        conn.execute(sa.text(f"ALTER TABLE results ADD COLUMN {column} TEXT"))


# N -> the step that turns a version N-1 database into a version N one (1 is the first).
MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: add_benchmark_identity}

metadata = sa.MetaData()
# One row; the key makes a second process that also found the table empty fail, then read the first's row.
schema = sa.Table("perfwatch_schema", metadata, sa.Column("version", sa.Integer, primary_key=True))
runs_table = sa.Table(
    "runs", metadata,
    sa.Column("id", Exact(64), primary_key=True),  # the run id: sorts by time
    sa.Column("created", Exact(40), nullable=False),
    sa.Column("suite", Exact(32), nullable=False),
    sa.Column("commit", Exact(64)),
    sa.Column("commit_time", Exact(40)),
    sa.Column("branch", Exact()),
    sa.Column("dirty", sa.Boolean, nullable=False),
    sa.Column("machine_id", Exact(64)),
    sa.Column("fingerprint", sa.JSON, nullable=False),  # the run's whole env, as in the results document
    sa.Column("load", sa.JSON),
    sa.Index("ix_runs_machine_commit_time", "machine_id", "commit_time"),
)
results_table = sa.Table(
    "results", metadata,
    sa.Column("run", Exact(64), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),  # the benchmark's place in the document
    sa.Column("name", Exact(), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("kind", Exact(16), nullable=False),
    sa.Column("unit", Exact(), nullable=False),
    sa.Column("higher_is_better", sa.Boolean, nullable=False),
    sa.Column("status", Exact(16), nullable=False),
    sa.Column("error", Exact()),
    sa.Column("samples", sa.JSON, nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),  # n and median, for queries only: reads recompute them
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("warmup_s", sa.Float, nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("version", Exact()),
    sa.Column("pretty_name", Exact()),
    sa.Index("ix_results_name_run", "name", "run"),
)
BENCH_COLUMNS = ("name", "params", "kind", "unit", "higher_is_better", "status", "error", "samples", "number",
                 "warmup_s", "duration_s", "version", "pretty_name")


host_column = runs_table.c.fingerprint["host"].as_string()  # older documents have no machine_id
age_column = sa.func.coalesce(runs_table.c.commit_time, runs_table.c.created)  # base.age, in SQL


def condition(which: RunFilter) -> sa.ColumnElement[bool]:
    """RunFilter.matches as a condition on ``runs``, so that only the runs asked for are read."""
    conditions = []
    if which.machine is not None:
        conditions.append(sa.or_(runs_table.c.machine_id.startswith(which.machine, autoescape=True),
                                 host_column == which.machine))
    if which.branch is not None:
        conditions.append(runs_table.c.branch == which.branch)
    if which.suite is not None:
        conditions.append(runs_table.c.suite == which.suite)
    if which.clean:
        conditions.append(runs_table.c.dirty == sa.false())
    if which.not_commit:
        conditions.append(sa.or_(runs_table.c.commit.is_(None), runs_table.c.commit != which.not_commit))
    if which.since is not None:
        conditions.append(age_column >= which.since)
    passing = sa.and_(sa.true(), *conditions)
    if which.newest is None:
        return passing
    newest = (sa.select(runs_table.c.id).where(passing)
              .order_by(age_column.desc(), runs_table.c.id.desc()).limit(max(which.newest, 0)))
    return runs_table.c.id.in_(newest.scalar_subquery())


def name_condition(which: RunFilter) -> sa.ColumnElement[bool]:
    """RunFilter.benchmark as a condition on ``results`` that lets at least the names it wants through
    (a glob: the names starting with its literal part, and every escaped name, whose stored form LIKE
    cannot read; RunFilter.trim then keeps the exact ones)."""
    pattern = which.benchmark
    if pattern is None:
        return sa.true()
    literal = pattern
    for mark in "*?[":
        literal = literal.partition(mark)[0]
    if literal == pattern:
        return results_table.c.name == pattern  # Exact escapes both sides alike
    stored = sa.type_coerce(results_table.c.name, sa.Text())  # the name as stored, escaped or not
    conditions = [results_table.c.name == pattern, stored.startswith(ESCAPED, autoescape=True)]
    if holdable(literal):
        conditions.append(stored.startswith(literal, autoescape=True))
    return sa.or_(*conditions)


def run_row(run: RunRecord) -> dict[str, Any]:
    env = run.env
    return {"id": run.run_id, "created": run.created, "suite": run.suite, "commit": env.get("git_commit"),
            "commit_time": env.get("git_commit_time"), "branch": env.get("git_branch"),
            "dirty": bool(env.get("git_dirty")), "machine_id": env.get("machine_id"), "fingerprint": env,
            "load": env.get("load_average")}


def result_rows(run: RunRecord) -> list[dict[str, Any]]:
    rows = []
    for position, b in enumerate(run.benchmarks):
        median = stats.median(b.samples)
        summary = {"n": len(b.samples), "median": None if math.isnan(median) else median}
        rows.append({"run": run.run_id, "position": position, "summary": summary,
                     **{c: getattr(b, c) for c in BENCH_COLUMNS}})
    return rows


def document(run: sa.Row, results: list[sa.Row]) -> dict[str, Any]:
    """The results document of a stored run, as `perfwatch show --json` prints it."""
    return {"format_version": FORMAT_VERSION, "run_id": run.id, "created": run.created, "suite": run.suite,
            "env": run.fingerprint, "benchmarks": [{c: getattr(r, c) for c in BENCH_COLUMNS} for r in results]}
