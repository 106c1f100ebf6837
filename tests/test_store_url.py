"""A store addressed by a URL: the embedded SQLite default, a directory of results documents, chosen by
--store, PERFWATCH_STORE or `store = ...`; runs imported, exported and listed through the real command."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from helpers import (
    BAD,
    BASELINE,
    CLEAN,
    assert_one_line_error,
    run_perfwatch,
    write_suite,
)
from servers import postgres_fixture

from perfwatch.results import BenchResult, RunRecord
from perfwatch.store import Store, open_store
from perfwatch.store.base import RunFilter
from perfwatch.store.schema import SCHEMA_VERSION

TRACK = '''
def track_answer():
    return 42.0
track_answer.unit = "answers"
'''


def documents(directory, *runs):
    """Results files of ``runs`` in ``directory``, as an older perfwatch stored them."""
    store = Store(directory)
    return [store.save(run) for run in runs]


def stored_ids(db):
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("select id from runs order by id")]


def test_a_new_project_stores_its_runs_in_sqlite_and_show_json_prints_the_document(tmp_path):
    write_suite(tmp_path / "suites", "answers.py", TRACK)
    ran = run_perfwatch("run", "--json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    run_id = json.loads(ran.stdout)["run_id"]
    assert f"stored {run_id} in sqlite:///.perfwatch/perfwatch.db" in ran.stderr  # stdout is the document
    assert stored_ids(tmp_path / ".perfwatch" / "perfwatch.db") == [run_id]
    assert not (tmp_path / ".perfwatch" / "results").exists()
    shown = run_perfwatch("show", run_id[:12], "--json", cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout) == json.loads(ran.stdout)


def test_existing_results_files_are_imported_on_first_use_and_kept(tmp_path):
    files = documents(tmp_path / ".perfwatch" / "results", BASELINE, CLEAN)
    before = {p: p.read_bytes() for p in files}
    listed = run_perfwatch("runs", cwd=tmp_path)
    assert listed.returncode == 0 and BASELINE.run_id in listed.stdout and CLEAN.run_id in listed.stdout
    assert stored_ids(tmp_path / ".perfwatch" / "perfwatch.db") == [BASELINE.run_id, CLEAN.run_id]
    assert {p: p.read_bytes() for p in files} == before  # never deleted nor changed
    documents(tmp_path / ".perfwatch" / "results", BAD)  # pulled later: imported the next time
    exported = run_perfwatch("store", "export", BAD.run_id, cwd=tmp_path)
    assert exported.returncode == 0 and json.loads(exported.stdout) == BAD.to_dict()


def test_store_import_export_and_info_round_trip_a_results_document(tmp_path):
    files = documents(tmp_path / "old", BASELINE, CLEAN)
    imported = run_perfwatch("store", "import", "old", cwd=tmp_path)
    assert imported.returncode == 0 and "imported 2 of 2 runs" in imported.stdout, imported.stderr
    again = run_perfwatch("store", "import", str(files[0]), cwd=tmp_path)
    assert again.returncode == 0 and "imported 0 of 1 runs" in again.stdout and "1 already stored" in again.stdout
    exported = run_perfwatch("store", "export", CLEAN.run_id, "--to", "out.json", cwd=tmp_path)
    assert exported.returncode == 0 and (tmp_path / "out.json").read_text() == files[1].read_text()
    info = run_perfwatch("store", "info", "--json", cwd=tmp_path)
    assert json.loads(info.stdout) == {"store": "sqlite:///.perfwatch/perfwatch.db", "backend": "sqlite", "runs": 2,
                                       "oldest": BASELINE.run_id, "latest": CLEAN.run_id, "pending": 0, "schema_version": SCHEMA_VERSION}


def test_the_store_is_chosen_by_option_environment_or_settings(tmp_path):
    documents(tmp_path / "committed", BASELINE)
    for how in (["--store", "committed"], ["--results-dir", "committed"]):
        listed = run_perfwatch("runs", *how, cwd=tmp_path)
        assert listed.returncode == 0 and BASELINE.run_id in listed.stdout, listed.stderr
    imported = run_perfwatch("store", "import", "committed", "--store", "sqlite:///team.db", cwd=tmp_path)
    assert imported.returncode == 0 and stored_ids(tmp_path / "team.db") == [BASELINE.run_id]
    info = run_perfwatch("store", "info", "--json", cwd=tmp_path, env={"PERFWATCH_STORE": "sqlite:///team.db"})
    assert json.loads(info.stdout)["runs"] == 1
    (tmp_path / "pyproject.toml").write_text('[tool.perfwatch]\nstore = "committed"\n')
    info = run_perfwatch("store", "info", "--json", cwd=tmp_path)
    assert json.loads(info.stdout)["backend"] == "directory" and json.loads(info.stdout)["runs"] == 1
    both = run_perfwatch("runs", "--store", "sqlite:///team.db", "--results-dir", "committed", cwd=tmp_path)
    assert_one_line_error(both, "--store and --results-dir: give one")


def test_a_corrupt_sqlite_file_is_named_and_left_alone(tmp_path):
    (tmp_path / "broken.db").write_bytes(b"not a database, just text" * 100)
    proc = run_perfwatch("runs", "--store", "sqlite:///broken.db", cwd=tmp_path)
    assert_one_line_error(proc, "sqlite:///broken.db: cannot open the store (not a SQLite database, or a corrupt one")
    assert (tmp_path / "broken.db").read_bytes() == b"not a database, just text" * 100


def test_a_store_of_a_newer_schema_is_refused_not_guessed_at(tmp_path):
    assert run_perfwatch("store", "info", cwd=tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / ".perfwatch" / "perfwatch.db") as conn:
        conn.execute("update perfwatch_schema set version = 99")
    assert_one_line_error(run_perfwatch("runs", cwd=tmp_path), "sqlite:///.perfwatch/perfwatch.db: store schema "
                          f"version 99 is newer than this perfwatch, which reads versions up to {SCHEMA_VERSION}; upgrade perfwatch")


@pytest.mark.parametrize("url, words", [
    ("mysql://u:hunter2pass@db/x", "mysql://***@db/x: unknown store URL scheme 'mysql'"),
    ("postgresql://u:hunter2pass@127.0.0.1:1/x", "postgresql://***@127.0.0.1:1/x: cannot open the store"),
])
def test_a_store_url_password_is_never_printed(tmp_path, url, words):
    proc = run_perfwatch("store", "info", "--store", url, cwd=tmp_path)
    assert_one_line_error(proc, words)
    assert "hunter2pass" not in proc.stdout + proc.stderr


def test_two_runs_writing_one_sqlite_file_at_once_are_both_stored(tmp_path):
    write_suite(tmp_path / "suites", "answers.py", TRACK)
    command = [sys.executable, "-m", "perfwatch", "run", "--store", "sqlite:///shared.db", "--json"]
    procs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outputs]
    ids = sorted(json.loads(o)["run_id"] for o, _ in outputs)
    assert len(set(ids)) == 2 and stored_ids(tmp_path / "shared.db") == ids


# --- a shared PostgreSQL server ------------------------------------------------------------------

postgres = postgres_fixture()


def test_a_postgresql_store_keeps_runs_and_never_shows_the_password(tmp_path, postgres):
    url = postgres.new_database()
    files = documents(tmp_path / "old", BASELINE, CLEAN)
    env = {"PERFWATCH_STORE": url}
    imported = run_perfwatch("store", "import", "old", cwd=tmp_path, env=env)
    assert imported.returncode == 0 and "imported 2 of 2 runs into postgresql://***@127.0.0.1" in imported.stdout, \
        imported.stderr
    exported = run_perfwatch("store", "export", CLEAN.run_id[:10], cwd=tmp_path, env=env)
    assert exported.returncode == 0 and exported.stdout == files[1].read_text()
    info = json.loads(run_perfwatch("store", "info", "--json", cwd=tmp_path, env=env).stdout)
    assert info == {"store": postgres.shown(url), "backend": "postgresql", "runs": 2,
                    "oldest": BASELINE.run_id, "latest": CLEAN.run_id, "pending": 0, "schema_version": SCHEMA_VERSION}
    refused = run_perfwatch("runs", "--store", url.replace(postgres.password, "wrong-password-123"), cwd=tmp_path)
    assert_one_line_error(refused, "cannot open the store", "password authentication failed")
    for proc in (imported, exported, refused):
        assert postgres.password not in proc.stdout + proc.stderr and "wrong-password-123" not in proc.stderr


def test_a_run_stored_from_one_checkout_is_in_the_history_read_from_another(tmp_path, postgres):
    """What a shared PostgreSQL store is for: CI's checkout writes, a developer's clone reads."""
    url = postgres.new_database()
    origin = tmp_path / "origin"
    write_suite(origin / "suites", "answers.py", TRACK)
    for args in (["init", "-q", "-b", "main"], ["add", "suites"], ["commit", "-q", "-m", "suite"]):
        subprocess.run(["git", *args], cwd=origin, check=True, capture_output=True,
                       env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})
    ci, laptop = tmp_path / "ci", tmp_path / "laptop"
    for clone in (ci, laptop):
        subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True, capture_output=True)
    stored = run_perfwatch("run", "--suite", "quick", "--json", "--store", url, cwd=ci)
    assert stored.returncode == 0, stored.stderr
    run_id = json.loads(stored.stdout)["run_id"]
    history = run_perfwatch("history", "--json", "--store", url, cwd=laptop)
    assert history.returncode == 0, history.stderr
    (series,) = json.loads(history.stdout)["benchmarks"]
    assert series["name"] == "answers.track_answer" and [p["run_id"] for p in series["series"]] == [run_id]
    assert postgres.password not in stored.stdout + stored.stderr + history.stdout + history.stderr


# Text no database holds as it is: a lone surrogate (no UTF-8), NUL (PostgreSQL refuses it), and a string
# that starts with the mark of an escaped one.
UNHOLDABLE = RunRecord(
    run_id="20260101T000000Z-\udcff", created="2026-01-01T00:00:00+00:00", suite="quick",
    env={"host": "caf\udcff", "git_commit": None, "git_dirty": False, "git_branch": "\uffffmain"},
    benchmarks=[BenchResult(name="caf\udcff.time_x(p='\x00')", params={"p\ud800": "\x00"}, kind="time",
                            unit="caf\udcff", higher_is_better=False, status="failed", error="lone \ud800 high",
                            samples=[1.0]),
                BenchResult(name="cafe.time_y", params={}, kind="time", unit="seconds", higher_is_better=False,
                            status="ok", samples=[2.0])])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_text_no_database_can_hold_is_stored_as_given(tmp_path, request, backend):
    url = f"sqlite:///{tmp_path / 'hostile.db'}" if backend == "sqlite" else request.getfixturevalue("postgres").new_database()
    store = open_store(url)
    store.save(UNHOLDABLE)
    assert open_store(url).load(UNHOLDABLE.run_id).to_dict() == UNHOLDABLE.to_dict()
    for pattern, names in [("caf?.time_x*", ["caf\udcff.time_x(p='\x00')"]), ("caf\udcff.*", ["caf\udcff.time_x(p='\x00')"]),
                           ("cafe.time_y", ["cafe.time_y"]), ("*", ["caf\udcff.time_x(p='\x00')", "cafe.time_y"])]:
        [run] = store.select(RunFilter(benchmark=pattern, branch="\uffffmain"))
        assert [b.name for b in run.benchmarks] == names, pattern


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_counts_the_run_list_in_its_query_as_the_documents_say(tmp_path, request, backend):
    url = f"sqlite:///{tmp_path / 'runs.db'}" if backend == "sqlite" else request.getfixturevalue("postgres").new_database()
    database, directory = open_store(url), Store(tmp_path / "docs")
    for store in (database, directory):
        store.import_runs([BASELINE, BAD, CLEAN])
    assert database.summaries() == directory.summaries()
    assert [(s.benchmarks, s.failed) for s in database.summaries()] == [(6, 0), (6, 0), (6, 1)]  # BAD is the latest
