"""Runs in a SQL database through SQLAlchemy Core: SQLite (the embedded default, no server) or
PostgreSQL (a team's shared server, ``perfwatch[postgres]``), with one schema for both.

A run is one row of ``runs`` (what a history query filters on, plus the whole fingerprint) and
one row of ``results`` per benchmark with its raw samples. ``perfwatch_schema`` holds the schema
version: a database of a newer one is refused, an older one is brought up to date by
``MIGRATIONS``. A run is written in one transaction, so two runs saved at once are both kept.
The URL is shown only through :func:`perfwatch.urls.redact` and its secrets scrubbed from errors.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from perfwatch import stats
from perfwatch.errors import UserError, one_line
from perfwatch.results import FORMAT_VERSION, RunRecord
from perfwatch.store.base import RunFilter, RunStore, machine_of
from perfwatch.store.directory import Store
from perfwatch.urls import redact, scrub

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# N -> the step that turns a version N-1 database into a version N one (none yet: 1 is the first).
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}

metadata = sa.MetaData()
# One row; the key makes a second process that also found the table empty fail, then read the first's row.
schema = sa.Table("perfwatch_schema", metadata, sa.Column("version", sa.Integer, primary_key=True))
runs_table = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # the run id: sorts by time
    sa.Column("created", sa.String(40), nullable=False),
    sa.Column("suite", sa.String(32), nullable=False),
    sa.Column("commit", sa.String(64)),
    sa.Column("commit_time", sa.String(40)),
    sa.Column("branch", sa.Text),
    sa.Column("dirty", sa.Boolean, nullable=False),
    sa.Column("machine_id", sa.String(64)),
    sa.Column("fingerprint", sa.JSON, nullable=False),  # the run's whole env, as in the results document
    sa.Column("load", sa.JSON),
    sa.Index("ix_runs_machine_commit_time", "machine_id", "commit_time"),
)
results_table = sa.Table(
    "results", metadata,
    sa.Column("run", sa.String(64), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),  # the benchmark's place in the document
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("unit", sa.Text, nullable=False),
    sa.Column("higher_is_better", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("samples", sa.JSON, nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),  # n and median, for queries only: reads recompute them
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("warmup_s", sa.Float, nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Index("ix_results_name_run", "name", "run"),
)
BENCH_COLUMNS = ("name", "params", "kind", "unit", "higher_is_better", "status", "error", "samples", "number",
                 "warmup_s", "duration_s")


host_column = runs_table.c.fingerprint["host"].as_string()  # older documents have no machine_id


def condition(which: RunFilter) -> sa.ColumnElement[bool]:
    """RunFilter.matches as a condition on ``runs``, so that only the runs asked for are read."""
    conditions = []
    if which.machine is not None:
        conditions.append(sa.or_(runs_table.c.machine_id.startswith(which.machine, autoescape=True),
                                 host_column == which.machine))
    if which.branch is not None:
        conditions.append(runs_table.c.branch == which.branch)
    if which.since is not None:
        conditions.append(sa.func.coalesce(runs_table.c.commit_time, runs_table.c.created) >= which.since)
    return sa.and_(sa.true(), *conditions)


def engine_url(url: str) -> sa.URL:
    """The SQLAlchemy URL: PostgreSQL through psycopg 3, whatever driver the URL names."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise UserError(f"{redact(url)}: not a database URL; use sqlite:///PATH or postgresql://HOST/DB",
                        setting="store") from None
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        raise UserError(f"{redact(url)}: unsupported store URL; use sqlite:///PATH, postgresql://HOST/DB "
                        "or a directory", setting="store")
    return parsed


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


class SqlStore(RunStore):
    """Runs in the database at ``url``; ``legacy`` is a results directory whose runs are imported on use."""

    def __init__(self, url: str, legacy: Store | None = None):
        self.url = engine_url(url)
        self.secret_url = url
        self.backend = self.url.get_backend_name()
        self.root = f"sqlite:///{self.url.database}" if self.backend == "sqlite" else redact(url)
        self.legacy = legacy
        self.skipped: list[str] | None = None  # legacy files that could not be imported, once looked at

    @cached_property
    def engine(self) -> sa.Engine:
        """Connected on first use, so a command given a results file never touches the database."""
        if self.backend == "sqlite":
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        with self.errors("cannot open the store"):
            engine = sa.create_engine(self.url, connect_args=self._connect_args())
            self._prepare(engine)
        return engine

    def ready(self) -> None:
        self.engine  # noqa: B018  (opens the database: a bad one is an error now, not after the suite)

    def _connect_args(self) -> dict[str, Any]:
        if self.backend == "sqlite":
            return {"timeout": 60}  # another run writing waits its turn instead of failing
        return {"connect_timeout": 10}

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Database errors as one UserError naming the store, the URL's secrets scrubbed."""
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            text = scrub(one_line(cause), self.secret_url)
            if "file is not a database" in text or "malformed" in text:
                text = "not a SQLite database, or a corrupt one; move it away or restore it"
            raise UserError(f"{self.root}: {what} ({text})", setting="store") from None
        except ModuleNotFoundError as exc:
            raise UserError(f"{self.root}: {exc.name} is not installed; pip install 'perfwatch[postgres]'",
                            setting="store") from None

    def _prepare(self, engine: sa.Engine) -> None:
        """Create the schema if missing (another process may be doing the same) and migrate it."""
        for attempt in range(3):
            try:
                with engine.begin() as conn:
                    metadata.create_all(conn)
                    version = conn.execute(sa.select(schema.c.version)).scalar()
                    if version is None:
                        conn.execute(schema.insert().values(version=SCHEMA_VERSION))
                        return
                    self._migrate(conn, version)
                    return
            except sa.exc.OperationalError as exc:
                if "already exists" not in str(exc) or attempt == 2:
                    raise
            except sa.exc.IntegrityError:  # a concurrent first use: its CREATE TABLE or version row won
                if attempt == 2:
                    raise

    def info(self) -> dict[str, Any]:
        with self.errors("cannot read the store"), self.engine.connect() as conn:
            version = conn.execute(sa.select(schema.c.version)).scalar()
        return {**super().info(), "schema_version": version}

    def _migrate(self, conn: Connection, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise UserError(f"{self.root}: store schema version {version} is newer than this perfwatch, "
                            f"which reads versions up to {SCHEMA_VERSION}; upgrade perfwatch", setting="store")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](conn)
            conn.execute(schema.update().values(version=target))

    def save(self, run: RunRecord) -> str:
        try:
            with self.errors("cannot store the run"), self.engine.begin() as conn:
                conn.execute(runs_table.insert().values(run_row(run)))
                rows = result_rows(run)
                if rows:
                    conn.execute(results_table.insert(), rows)
        except UserError:
            if run.run_id in self._stored_ids():
                raise UserError(f"{self.root}: a run with id {run.run_id} is already stored; "
                                "not overwriting it") from None
            raise
        return f"{run.run_id} in {self.root}"

    def _stored_ids(self) -> list[str]:
        with self.errors("cannot read the store"), self.engine.connect() as conn:
            return list(conn.execute(sa.select(runs_table.c.id).order_by(runs_table.c.id)).scalars())

    def ids(self) -> list[str]:
        self.import_legacy()
        return self._stored_ids()

    def load_id(self, run_id: str) -> RunRecord:
        ((source, doc),) = self._documents(runs_table.c.id == run_id)
        return RunRecord.from_dict(doc, source)

    def runs(self) -> Iterator[RunRecord]:
        return self.select(RunFilter())

    def select(self, which: RunFilter) -> Iterator[RunRecord]:
        for message in self.import_legacy():
            log.warning("skipping %s", message)
        for source, doc in self._documents(condition(which)):
            try:
                yield RunRecord.from_dict(doc, source)
            except UserError as exc:
                log.warning("skipping %s", exc)

    def machines(self) -> dict[str, str | None]:
        self.import_legacy()
        query = sa.select(runs_table.c.machine_id, host_column).distinct()
        with self.errors("cannot read the store"), self.engine.connect() as conn:
            return {machine_of({"machine_id": machine, "host": name}): name for machine, name in conn.execute(query)}

    def commit_times(self, prefix: str) -> dict[str, str | None]:
        self.import_legacy()
        query = (sa.select(runs_table.c.commit, sa.func.max(runs_table.c.commit_time))
                 .where(runs_table.c.commit.startswith(prefix, autoescape=True)).group_by(runs_table.c.commit))
        with self.errors("cannot read the store"), self.engine.connect() as conn:
            return dict(conn.execute(query).all())

    def _documents(self, where: sa.ColumnElement[bool]) -> list[tuple[str, dict[str, Any]]]:
        """(how messages name it, its results document) of each stored run matching ``where``, oldest first."""
        with self.errors("cannot read the store"), self.engine.connect() as conn:
            run_rows = conn.execute(sa.select(runs_table).where(where).order_by(runs_table.c.id)).all()
            results: dict[str, list[sa.Row]] = {r.id: [] for r in run_rows}
            query = (sa.select(results_table).where(results_table.c.run.in_(list(results)))
                     .order_by(results_table.c.run, results_table.c.position))
            for row in conn.execute(query):
                results[row.run].append(row)
        return [(f"{self.root} run {row.id}", document(row, results[row.id])) for row in run_rows]

    def import_legacy(self) -> list[str]:
        """Import the legacy directory's runs not stored yet (its files are kept); returns why files were
        skipped. Done once per process, so files added there later (a pull) are imported the next time."""
        if self.legacy is None or self.skipped is not None:
            return self.skipped or []
        self.skipped = []
        present = set(self._stored_ids())
        loaded = []
        for path in self.legacy.paths():
            if path.stem in present:
                continue
            try:
                loaded.append(RunRecord.load(path))
            except UserError as exc:
                self.skipped.append(str(exc))
        imported = self.import_runs(loaded)
        if imported:
            log.info("imported %d runs from %s into %s (the files are kept)", len(imported), self.legacy.root,
                     self.root)
        return self.skipped
