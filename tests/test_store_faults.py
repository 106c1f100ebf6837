"""The store under the faults of issue 10, through the real `perfwatch` command: a PostgreSQL server that
is down (the run waits in the spool; `perfwatch store sync` stores it, once), one that refuses the password
or holds a newer schema, several writers at once, writers killed with kill -9 mid-write, and a corrupt
SQLite file. A real PostgreSQL server (servers.Postgres) and real SQLite files."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import assert_one_line_error, bench, run_perfwatch, run_record, write_suite
from servers import postgres_fixture

from perfwatch.store import Store, open_store
from perfwatch.store.schema import SCHEMA_VERSION

pytestmark = pytest.mark.slow

postgres = postgres_fixture()

TRACK = '''
def track_answer():
    return 42.0
track_answer.unit = "answers"
'''
BACKENDS = ["sqlite", "postgresql"]
KILLS = 20
SEED = 10  # the kill times are drawn from it: a failure is replayed by running the test again


def store_url(backend: str, project: Path, postgres) -> str:
    return f"sqlite:///{project / 'shared.db'}" if backend == "sqlite" else postgres.new_database()


def database_of(url: str) -> str:
    return url.rpartition("/")[2]


def spooled(project: Path) -> list[Path]:
    return sorted((project / ".perfwatch" / "spool").glob("*.json"))


def info(project: Path, url: str) -> dict:
    proc = run_perfwatch("store", "info", "--json", "--store", url, cwd=project)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wide_runs(directory: Path, count: int, benchmarks: int = 200, samples: int = 30, first: int = 0) -> list[Path]:
    """``count`` results documents of ``benchmarks`` benchmarks with ``samples`` samples each, as a suite
    of the issue's size stores them."""
    rng = random.Random(first)
    paths = []
    for i in range(first, first + count):
        run = run_record(f"20260101T{i // 60:02d}{i % 60:02d}00Z-{i:06x}", "2026-01-01T00:00:00+00:00",
                         [bench(f"wide.time_{b}", [rng.uniform(0.9, 1.1) for _ in range(samples)])
                          for b in range(benchmarks)])
        paths.append(Store(directory).add(run))
    return paths


def raw(url: str, statement: str) -> list[tuple]:
    """The rows of ``statement`` read straight from the store's database, not through perfwatch."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(statement)]
    finally:
        engine.dispose()


def write(url: str, statement: str) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def results_per_run(url: str) -> dict[str, int]:
    """Run id -> how many result rows the database holds for it."""
    return dict(raw(url, "select runs.id, count(results.run) from runs left join results on results.run = runs.id "
                         "group by runs.id"))


# --- the run is never lost -------------------------------------------------------------------------

def test_a_run_made_while_postgresql_is_down_waits_in_the_spool_and_sync_stores_it_once(tmp_path, postgres):
    write_suite(tmp_path / "suites", "answers.py", TRACK)
    url = postgres.new_database()
    postgres.stop()
    try:
        ran = run_perfwatch("run", "--json", "--store", url, cwd=tmp_path)
    finally:
        postgres.start()
    assert ran.returncode == 0, ran.stderr
    run = json.loads(ran.stdout)
    shown = postgres.shown(url)
    assert f"warning: {shown}: cannot open the store" in ran.stderr and "measuring anyway" in ran.stderr
    assert f"stored {run['run_id']} in the spool" in ran.stderr and "perfwatch store sync" in ran.stderr
    [entry] = spooled(tmp_path)
    assert postgres.password not in ran.stdout + ran.stderr + entry.read_text()
    assert info(tmp_path, url) | {"pending": 1, "runs": 0} == info(tmp_path, url)

    kept = entry.read_bytes()
    synced = run_perfwatch("store", "sync", "--store", url, cwd=tmp_path)
    assert synced.returncode == 0 and f"stored 1 waiting run in {shown}" in synced.stdout, synced.stderr
    assert spooled(tmp_path) == []
    entry.write_bytes(kept)  # as if a sync had been killed after its commit, before it dropped the entry
    again = run_perfwatch("store", "sync", "--store", url, cwd=tmp_path)
    assert again.returncode == 0 and "stored 0 waiting runs" in again.stdout and "(1 already stored)" in again.stdout
    assert spooled(tmp_path) == [] and info(tmp_path, url) | {"pending": 0, "runs": 1} == info(tmp_path, url)
    exported = run_perfwatch("store", "export", run["run_id"], "--store", url, cwd=tmp_path)
    assert json.loads(exported.stdout) == run


def test_a_sync_while_the_server_is_still_down_keeps_every_run_waiting(tmp_path, postgres):
    url = postgres.new_database()
    postgres.stop()
    try:
        write_suite(tmp_path / "suites", "answers.py", TRACK)
        assert run_perfwatch("run", "--store", url, cwd=tmp_path).returncode == 0
        synced = run_perfwatch("store", "sync", "--store", url, cwd=tmp_path)
        shown_info = run_perfwatch("store", "info", "--store", url, cwd=tmp_path)
    finally:
        postgres.start()
    assert_one_line_error(synced, f"{postgres.shown(url)}: cannot open the store", "1 run still waits in .perfwatch/spool")
    assert_one_line_error(shown_info, "cannot open the store", "1 run of this store wait in .perfwatch/spool")
    assert len(spooled(tmp_path)) == 1
    elsewhere = run_perfwatch("store", "sync", cwd=tmp_path)  # the default store: the run is not its
    assert elsewhere.returncode == 0 and f"1 run waits for another store: {postgres.shown(url)}" in elsewhere.stdout


def test_a_refused_password_stops_the_run_before_the_suite_and_is_never_printed(tmp_path, postgres):
    write_suite(tmp_path / "suites", "answers.py", TRACK)
    url = postgres.new_database().replace(postgres.password, "wrong-pass-4242")
    proc = run_perfwatch("run", "--store", url, cwd=tmp_path)
    assert_one_line_error(proc, f"{postgres.shown(url.replace('wrong-pass-4242', postgres.password))}: cannot open "
                          "the store", "password authentication failed", "check the user and password in the store URL")
    assert "wrong-pass-4242" not in proc.stdout + proc.stderr and "answers" not in proc.stdout  # nothing ran
    assert spooled(tmp_path) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_of_a_newer_schema_is_never_written(tmp_path, postgres, backend):
    url = store_url(backend, tmp_path, postgres)
    assert info(tmp_path, url)["schema_version"] == SCHEMA_VERSION
    newer = SCHEMA_VERSION + 1
    write(url, f"update perfwatch_schema set version = {newer}")
    write_suite(tmp_path / "suites", "answers.py", TRACK)
    [document] = wide_runs(tmp_path / "docs", 1, benchmarks=2)
    for command in (["run"], ["store", "import", str(document)]):
        proc = run_perfwatch(*command, "--store", url, cwd=tmp_path)
        assert_one_line_error(proc, f"store schema version {newer} is newer than this perfwatch", "upgrade perfwatch")
    assert spooled(tmp_path) == []
    assert raw(url, "select count(*) from runs") == [(0,)]
    assert raw(url, "select version from perfwatch_schema") == [(newer,)]


# --- several writers at once ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_runs_and_imports_writing_one_store_at_once_store_each_run_once(tmp_path, postgres, backend):
    url = store_url(backend, tmp_path, postgres)
    write_suite(tmp_path / "suites", "answers.py", TRACK)
    wide_runs(tmp_path / "batch_a", 6, benchmarks=20)
    wide_runs(tmp_path / "batch_b", 6, benchmarks=20, first=3)  # its first three are batch_a's last three
    commands = [["run", "--json"]] * 3 + [["store", "import", "batch_a"], ["store", "import", "batch_b"]]
    procs = [subprocess.Popen([sys.executable, "-m", "perfwatch", *command, "--store", url], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for command in commands]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * len(procs), [err for _, err in outputs]
    made = [json.loads(out)["run_id"] for out, _ in outputs[:3]]
    imported = [int(out.split()[1]) for out, _ in outputs[3:]]  # "imported N of 6 runs into ..."
    assert sum(imported) == 9
    expected = sorted(made + [path.stem for path in sorted((tmp_path / "batch_a").glob("*.json"))]
                      + [path.stem for path in sorted((tmp_path / "batch_b").glob("*.json"))[3:]])
    stored = results_per_run(url)
    assert sorted(stored) == expected and len(set(made)) == 3
    assert all(stored[run_id] == 20 for run_id in expected if run_id not in made)


# --- a writer killed mid-write --------------------------------------------------------------------

def stored_runs(url: str) -> int:
    """How many runs the store holds; 0 before its first writer made the tables."""
    try:
        return raw(url, "select count(*) from runs")[0][0]
    except sa.exc.DatabaseError:  # no such table yet
        return 0


def wait_for_a_write(url: str, before: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the store holds more than ``before`` runs (the writer is under way) or ``proc`` ends."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and stored_runs(url) <= before:
        time.sleep(0.02)


def other_sessions(url: str) -> set[int]:
    """The server processes of the other clients of a PostgreSQL store's database; none for SQLite."""
    if not url.startswith("postgresql"):
        return set()
    return {pid for (pid,) in raw(url, "select pid from pg_stat_activity "
                                       "where datname = current_database() and pid <> pg_backend_pid()")}


def wait_for_the_server_to_forget(url: str, before: set[int], timeout: float = 60) -> None:
    """Until the sessions of a killed client have ended on the server. A client killed right after it sent
    COMMIT leaves a server process that still commits; reading before it ends sees the store change under
    the reader, a run at a time, which is no half-stored run."""
    deadline = time.monotonic() + timeout
    while other_sessions(url) - before and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_writer_killed_mid_write_leaves_no_half_stored_run_and_a_readable_store(tmp_path, postgres, backend,
                                                                                 record_property):
    url = store_url(backend, tmp_path, postgres)
    documents = wide_runs(tmp_path / "docs", 120)  # 200 benchmarks x 30 samples each
    rng = random.Random(SEED)
    store = open_store(url)
    kills = 0
    for _ in range(KILLS):
        before, sessions = stored_runs(url), other_sessions(url)
        proc = subprocess.Popen([sys.executable, "-m", "perfwatch", "store", "import", "docs", "--store", url],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_a_write(url, before, proc)
        time.sleep(rng.uniform(0.0, 0.15))  # a few runs' transactions long: lands inside one, or between two
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(60)
        wait_for_the_server_to_forget(url, sessions)
        stored = results_per_run(url)
        assert set(stored.values()) <= {200}, f"a half-stored run: {stored}"
        assert store.ids() == sorted(stored)  # readable through perfwatch
        if backend == "sqlite":
            assert raw(url, "pragma integrity_check") == [("ok",)]
        if len(stored) == len(documents):
            break
    record_property("store_kills", f"{backend}: {kills} kill -9 mid-write")
    assert kills >= KILLS // 2, f"only {kills} writers were killed before the import finished"
    finished = run_perfwatch("store", "import", "docs", "--store", url, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    stored = results_per_run(url)
    assert sorted(stored) == sorted(p.stem for p in documents) and set(stored.values()) == {200}
    assert store.load(documents[-1].stem).to_dict() == Store(tmp_path / "docs").load_id(documents[-1].stem).to_dict()


# --- a corrupt SQLite file ------------------------------------------------------------------------

def damaged_copies(project: Path) -> dict[str, bytes]:
    """A sound store of three runs, and copies of it damaged three ways: name -> the file's bytes."""
    wide_runs(project / "docs", 3, benchmarks=50)
    assert run_perfwatch("store", "import", "docs", "--store", "sqlite:///sound.db", cwd=project).returncode == 0
    sound = (project / "sound.db").read_bytes()
    return {"truncated.db": sound[:len(sound) // 2],
            "header.db": b"\0" * 100 + sound[100:],
            "text.db": b"results, not a database\n" * 200}


def test_a_corrupt_sqlite_file_is_named_in_one_line_and_nothing_is_written(tmp_path):
    write_suite(tmp_path / "suites", "answers.py", TRACK)
    for name, data in damaged_copies(tmp_path).items():
        (tmp_path / name).write_bytes(data)
        before = sorted(p.name for p in tmp_path.iterdir())
        for command in (["run"], ["store", "import", "docs"], ["runs"], ["store", "info"]):
            proc = run_perfwatch(*command, "--store", f"sqlite:///{name}", cwd=tmp_path)
            assert_one_line_error(proc, f"sqlite:///{name}: cannot open the store (not a SQLite database, or a "
                                  "corrupt one", "move it away or restore it")
        assert (tmp_path / name).read_bytes() == data, f"{name} was written to"
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no journal, no new file beside it
        assert spooled(tmp_path) == []
