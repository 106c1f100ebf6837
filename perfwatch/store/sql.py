"""Runs in a SQL database through SQLAlchemy Core: SQLite (the embedded default, no server) or
PostgreSQL (a team's shared server, ``perfwatch[postgres]``), with one schema for both (schema.py):
a database of a newer schema version is refused, an older one is brought up to date. A run is
written in one transaction, so two runs saved at once are both kept and one killed while writing
leaves nothing half-stored; a run just made waits in the local spool (spool.py) until its
transaction is committed, so a server that is down never loses it (StoreUnavailable). SQLite
keeps its rollback journal (not WAL, whose checkpoints write the file under readers) and waits
for another writer (a busy timeout); a damaged file is named and never written to.
The URL is shown only through :func:`perfwatch.urls.redact` and its secrets scrubbed from errors.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from perfwatch.errors import RunExists, StoreUnavailable, UserError, one_line
from perfwatch.results import RunRecord
from perfwatch.store.base import RunFilter, RunStore, RunSummary, machine_of
from perfwatch.store.directory import Store
from perfwatch.store.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    condition,
    document,
    host_column,
    metadata,
    name_condition,
    result_rows,
    results_table,
    run_row,
    runs_table,
    schema,
)
from perfwatch.store.spool import Spool
from perfwatch.urls import redact, scrub

log = logging.getLogger(__name__)

FAILED = ("failed", "timeout")  # the statuses RunRecord.failed counts
SYNC_HINT = "`perfwatch store sync` stores it once the store takes it"

SQLITE_BUSY_TIMEOUT_S = 60  # another process writing: wait this long for it rather than fail
CORRUPT = "not a SQLite database, or a corrupt one"
# Errors of a server that did not answer, or said it cannot serve now: trying later may work.
AWAY = ("connection refused", "timeout expired", "timed out", "could not translate host name", "failed to resolve host",
        "name or service not known", "no route to host", "network is unreachable", "server closed the connection",
        "the database system is starting up", "the database system is shutting down", "too many clients",
        "database is locked", "consuming input failed", "connection reset")
REFUSED = ("password authentication failed", "no password supplied", "role", "pg_hba.conf")


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


def sqlite_damage(path: Path) -> str | None:
    """Why the SQLite file at ``path`` is not a whole database, found before anything writes to it; None
    for a sound one, or none yet (missing or empty: a new database). The header and the size are read
    while a read transaction holds SQLite's shared lock, so no writer is halfway through them."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the shared lock (reads page 1)
        with path.open("rb") as f:
            header, size = f.read(100), os.fstat(f.fileno()).st_size
    except sqlite3.DatabaseError as exc:
        return CORRUPT if "not a database" in str(exc) or "malformed" in str(exc) else None
    finally:
        conn.close()
    page_size = int.from_bytes(header[16:18], "big")
    pages = int.from_bytes(header[28:32], "big")
    expected = pages * (65536 if page_size == 1 else page_size)
    if header[24:28] == header[92:96] and size < expected:  # the page count is valid (sqlite.org/fileformat)
        return f"{CORRUPT}: truncated to {size} of its {expected} bytes"
    return None



class SqlStore(RunStore):
    """Runs in the database at ``url``; ``legacy`` is a results directory whose runs are imported on use."""

    def __init__(self, url: str, legacy: Store | None = None, spool: Spool | None = None):
        self.url = engine_url(url)
        self.secret_url = url
        self.backend = self.url.get_backend_name()
        self.root = f"sqlite:///{self.url.database}" if self.backend == "sqlite" else redact(url)
        self.legacy = legacy
        self.spool = spool or Spool()
        self.skipped: list[str] | None = None  # legacy files that could not be imported, once looked at

    @cached_property
    def engine(self) -> sa.Engine:
        """Connected on first use, so a command given a results file never touches the database."""
        if self.backend == "sqlite":
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            damage = sqlite_damage(Path(self.url.database))
            if damage:
                raise UserError(f"{self.root}: cannot open the store ({damage}; move it away or restore it)",
                                setting="store")
        with self.errors("cannot open the store"):
            engine = sa.create_engine(self.url, connect_args=self._connect_args())
            self._prepare(engine)
        return engine

    def ready(self) -> str | None:
        try:
            self.engine  # noqa: B018  (opens the database: a bad one is an error now, not after the suite)
        except StoreUnavailable as exc:
            return f"{exc}; measuring anyway: the run will wait in {self.spool.root} until `perfwatch store sync`"
        return None

    def _connect_args(self) -> dict[str, Any]:
        if self.backend == "sqlite":
            return {"timeout": SQLITE_BUSY_TIMEOUT_S}
        return {"connect_timeout": 10}

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Database errors as one UserError naming the store, the URL's secrets scrubbed."""
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            text = scrub(one_line(cause), self.secret_url)
            lowered = text.lower()
            if "file is not a database" in text or "malformed" in text:
                text = f"{CORRUPT}; move it away or restore it"
            elif isinstance(exc, sa.exc.OperationalError) and any(words in lowered for words in AWAY):
                raise StoreUnavailable(f"{self.root}: {what} ({text})", setting="store") from None
            elif "fatal:" in lowered and any(words in lowered for words in REFUSED):
                text += "; check the user and password in the store URL"
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
        shown = super().info()  # first: a store that cannot be reached says how many runs wait for it
        with self.errors("cannot read the store"), self.engine.connect() as conn:
            version = conn.execute(sa.select(schema.c.version)).scalar()
        return {**shown, "schema_version": version}

    def _migrate(self, conn: Connection, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise UserError(f"{self.root}: store schema version {version} is newer than this perfwatch, "
                            f"which reads versions up to {SCHEMA_VERSION}; upgrade perfwatch", setting="store")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](conn)
            conn.execute(schema.update().values(version=target))

    def save(self, run: RunRecord) -> str:
        """The run is written to the spool first and dropped from it once committed. A store that cannot
        be reached now leaves it there: returned is where it waits; any other refusal is an error that
        says so."""
        try:
            kept = self.spool.put(self.identity, run)
        except OSError as exc:
            log.warning("%s: cannot keep run %s in the spool (%s); storing it directly", self.spool.root,
                        run.run_id, exc.strerror)
            kept = None
        try:
            where = self.add(run)
        except StoreUnavailable as exc:
            if kept is None:
                raise
            return f"{run.run_id} in the spool ({kept}), not in the store: {exc}; {SYNC_HINT}"
        except RunExists:
            if kept is not None:
                self.spool.done(kept)
            raise
        except UserError as exc:
            if kept is None:
                raise
            raise type(exc)(f"{exc}; the run waits in {kept}: {SYNC_HINT}", setting=exc.setting) from None
        if kept is not None:
            self.spool.done(kept)
        return where

    def add(self, run: RunRecord) -> str:
        try:
            with self.errors("cannot store the run"), self.engine.begin() as conn:
                conn.execute(runs_table.insert().values(run_row(run)))
                rows = result_rows(run)
                if rows:
                    conn.execute(results_table.insert(), rows)
        except StoreUnavailable:
            raise
        except UserError:
            if run.run_id in self._stored_ids():
                raise RunExists(f"{self.root}: a run with id {run.run_id} is already stored; "
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
        self.import_legacy_saying()
        for source, doc in self._documents(condition(which), name_condition(which)):
            try:
                yield which.trim(RunRecord.from_dict(doc, source))
            except UserError as exc:
                log.warning("skipping %s", exc)

    def summaries(self) -> list[RunSummary]:
        self.import_legacy_saying()
        failed = sa.func.sum(sa.case((results_table.c.status.in_(FAILED), 1), else_=0))
        query = (sa.select(runs_table.c.id, runs_table.c.created, runs_table.c.suite, runs_table.c.commit,
                           runs_table.c.dirty, sa.func.count(results_table.c.run), sa.func.coalesce(failed, 0))
                 .outerjoin(results_table, results_table.c.run == runs_table.c.id)
                 .group_by(runs_table.c.id).order_by(runs_table.c.id))
        with self.errors("cannot read the store"), self.engine.connect() as conn:
            return [RunSummary(*row) for row in conn.execute(query)]

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

    def _documents(self, where: sa.ColumnElement[bool], names: sa.ColumnElement[bool] | None = None
                   ) -> list[tuple[str, dict[str, Any]]]:
        """(how messages name it, its results document) of each stored run matching ``where``, oldest first,
        holding the benchmarks that ``names`` lets through. A run's rows are committed together, before its
        run row is read here, so none is read half-stored."""
        with self.errors("cannot read the store"), self.engine.connect() as conn:
            run_rows = conn.execute(sa.select(runs_table).where(where).order_by(runs_table.c.id)).all()
            results: dict[str, list[sa.Row]] = {r.id: [] for r in run_rows}
            query = (sa.select(results_table).join(runs_table, results_table.c.run == runs_table.c.id)
                     .where(where, sa.true() if names is None else names).order_by(results_table.c.run, results_table.c.position))
            for row in conn.execute(query):
                if row.run in results:  # a run committed between the two queries is read the next time
                    results[row.run].append(row)
        return [(f"{self.root} run {row.id}", document(row, results[row.id])) for row in run_rows]

    def import_legacy_saying(self) -> None:
        """import_legacy for a listing, which names each legacy file it skipped."""
        for message in self.import_legacy():
            log.warning("skipping %s", message)

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
