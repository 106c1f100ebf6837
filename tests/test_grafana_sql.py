"""The "perfwatch / Benchmark history" dashboard against a real PostgreSQL filled by real runs:
`perfwatch run --store postgresql://...` of a tiny suite at three commits of a throw-away git
repository (the middle one run twice, to be pooled), a second machine's runs imported, then every
variable's, panel's and annotation's SQL filled in as Grafana does and run as a read-only role,
as a team's Grafana would connect."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from grafana_dashboards import (
    GRAFANA,
    SQL_DASHBOARDS,
    SqlQuery,
    format_sql,
    interpolate_sql,
    load,
    resolve_sql_variables,
    rfc3339,
    sql_queries,
    variables,
    with_every_option,
)
from helpers import run_perfwatch, write_suite
from servers import postgres_fixture

pytestmark = pytest.mark.slow  # real benchmark runs in subprocesses

HISTORY = GRAFANA / "dashboards" / "history.json"
QUERIES = [q for path in SQL_DASHBOARDS for q in sql_queries(path)]
READER_PASSWORD = "reader-pw-77c3"
# SIZE sets the work of the time benchmarks, ANSWER the tracked value: commit three makes both 4x and 1.5x.
SUITE = """
from pathlib import Path

SIZE, ANSWER = (int(word) for word in (Path(__file__).resolve().parents[1] / "tiny.txt").read_text().split())


def time_sum():
    sum(range(SIZE))


def time_join(mode):
    ("," if mode == "fast" else ";").join(map(str, range(SIZE // 10)))


time_join.params = ["fast"]
time_join.param_names = ["mode"]


def peakmem_list():
    [0] * SIZE


def track_answer():
    return float(ANSWER)


track_answer.unit = "answers"
"""
COMMITS = {"c1": ("20000 10", "2026-01-01T00:00:00+00:00"), "c2": ("20000 10", "2026-01-02T00:00:00+00:00"),
           "c3": ("80000 15", "2026-01-03T00:00:00+00:00")}
OTHER_MACHINE, OTHER_HOST = "feedfacecafe", "other-host"
TIME_SUM, JOIN, TRACK = "tiny.time_sum", "tiny.time_join(mode='fast')", "tiny.track_answer"
ALL_TIME = (datetime(2025, 12, 1, tzinfo=timezone.utc), datetime(2026, 2, 1, tzinfo=timezone.utc))


postgres = postgres_fixture()


def git(repo: Path, *args: str, date: str | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", **({"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else {})}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Filled:
    """The store as the runs left it, and how Grafana's read-only role reaches it."""

    reader: str  # the URL of the read-only role the data source uses
    commits: dict[str, str]  # c1.. -> sha
    runs: dict[str, list[dict]]  # c1.. -> the results documents of this machine's runs there
    machine: str  # this machine's id

    def run(self, sql: str) -> tuple[list[str], list[tuple]]:
        with psycopg.connect(self.reader) as conn, conn.cursor() as cursor:
            cursor.execute(sql)
            return [c.name for c in cursor.description], cursor.fetchall()

    def query(self, query: SqlQuery, start: datetime = ALL_TIME[0], end: datetime = ALL_TIME[1],
              every_benchmark: bool = True) -> list[dict]:
        """``query`` run as Grafana would over ``start``..``end`` with the dashboard's default variables, and, with
        ``every_benchmark``, every benchmark selected in ``$benchmark`` (it opens on the first)."""
        chosen, found = resolve_sql_variables(load(GRAFANA / "dashboards" / f"{query.dashboard}.json"), self.run,
                                              start, end)
        if every_benchmark and "benchmark" in chosen:
            chosen = with_every_option(chosen, found, "benchmark")
        columns, rows = self.run(interpolate_sql(query.sql, chosen, start, end))
        return [dict(zip(columns, row)) for row in rows]


@pytest.fixture(scope="module")
def filled(postgres, tmp_path_factory) -> Filled:
    """Runs at c1, c2 (twice) and c3 on main, and the c2 and c3 runs as another machine stored them."""
    store = postgres.new_database()
    repo = tmp_path_factory.mktemp("repo")
    git(repo, "init", "-q", "-b", "main")
    write_suite(repo / "suites", "tiny.py", SUITE)
    commits, runs = {}, {}
    for name, (content, date) in COMMITS.items():
        (repo / "tiny.txt").write_text(content)
        git(repo, "add", "tiny.txt", "suites")
        git(repo, "commit", "-q", "--allow-empty", "-m", name, date=date)
        commits[name] = git(repo, "rev-parse", "HEAD")
        for _ in range(2 if name == "c2" else 1):
            proc = run_perfwatch("run", "--suite", "quick", "--json", "--store", store, cwd=repo)
            assert proc.returncode == 0, proc.stderr
            runs.setdefault(name, []).append(json.loads(proc.stdout))
    for name in ("c2", "c3"):
        doc = runs[name][0]
        other = {**doc, "run_id": doc["run_id"][:-6] + "b0b0b0",
                 "env": {**doc["env"], "machine_id": OTHER_MACHINE, "host": OTHER_HOST}}
        path = tmp_path_factory.mktemp("other") / f"{other['run_id']}.json"
        path.write_text(json.dumps(other))
        imported = run_perfwatch("store", "import", str(path), "--store", store, cwd=repo)
        assert imported.returncode == 0, imported.stderr
    database = store.rsplit("/", 1)[1]  # the role as grafana/README.md tells a team to make it
    postgres.sql(f"CREATE ROLE grafana_reader LOGIN PASSWORD '{READER_PASSWORD}'")
    postgres.sql("GRANT SELECT ON runs, results TO grafana_reader", database)
    reader = f"postgresql://grafana_reader:{READER_PASSWORD}@127.0.0.1:{postgres.port}/{database}"
    return Filled(reader, commits, runs, runs["c1"][0]["env"]["machine_id"])


def at(commit: str) -> datetime:
    return datetime.fromisoformat(COMMITS[commit][1])


def only(where: str) -> SqlQuery:
    (query,) = [q for q in QUERIES if q.where.startswith(where)]
    return query


# ---------------------------------------------------------------- Grafana's interpolation, checked alone


def test_variables_are_formatted_as_grafana_formats_them_for_sql():
    """Grafana's documented outputs; a value with a quote shows why the dashboard writes IN ($var) and
    '$var': its SQL data sources double the quote, while :singlequote escapes it with a backslash, which
    PostgreSQL takes as an ordinary character."""
    multi, single = {"multi": True, "includeAll": True}, {"multi": False}
    names = ["tiny.a(m='x')", "tiny.b"]
    assert format_sql(multi, names) == "'tiny.a(m=''x'')','tiny.b'"
    assert format_sql(single, ["it's"]) == "it''s"
    assert format_sql(multi, names, "sqlstring") == "'tiny.a(m=''x'')','tiny.b'"
    assert format_sql(multi, names, "singlequote") == "'tiny.a(m=\\'x\\')','tiny.b'"
    assert format_sql(multi, names, "doublequote") == '"tiny.a(m=\'x\')","tiny.b"'
    assert format_sql(multi, names, "csv") == "tiny.a(m='x'),tiny.b"
    start, end = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, 0, 0, 0, 250000, timezone.utc)
    chosen = {"benchmark": (multi, names), "suite": (single, ["ci"])}
    sql = "WHERE $__timeFilter(t) AND t < $__timeTo() AND t > $__timeFrom() AND name IN ($benchmark) AND s = '$suite'"
    assert interpolate_sql(sql, chosen, start, end) == (
        "WHERE t BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-02T00:00:00.25Z' AND t < '2026-01-02T00:00:00.25Z' "
        "AND t > '2026-01-01T00:00:00Z' AND name IN ('tiny.a(m=''x'')','tiny.b') AND s = 'ci'")
    assert rfc3339(datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == "2026-01-01T00:00:00Z"
    with pytest.raises(KeyError):
        interpolate_sql("WHERE host = '$host'", chosen, start, end)


# ---------------------------------------------------------------- against the filled store


def test_variables_find_the_suite_both_machines_by_host_the_branch_and_the_benchmarks(filled):
    _, found = resolve_sql_variables(load(HISTORY), filled.run, *ALL_TIME)
    host = filled.runs["c1"][0]["env"]["host"]
    assert found["suite"] == [("quick", "quick")] and found["branch"] == [("main", "main")]
    assert sorted(found["machine"]) == sorted([(host, filled.machine), (OTHER_HOST, OTHER_MACHINE)])
    assert found["benchmark"] == sorted((n, n) for n in (TIME_SUM, JOIN, TRACK, "tiny.peakmem_list"))
    assert ("5%", "0.05") in found["step"]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.id)
def test_every_query_runs_and_returns_rows(filled, query):
    rows = filled.query(query)
    assert rows, f"{query.id}: no rows"
    if query.format == "time_series":
        assert {"time", "metric", "value"} == rows[0].keys()
        assert [r["time"] for r in rows] == sorted(r["time"] for r in rows), "Grafana wants time series sorted"


def test_the_dashboard_opens_on_the_first_benchmark_not_on_all_of_them(filled):
    """Grafana selects All by default where a variable offers it; on a team's store that is a million points
    (docs/performance.md), so $benchmark offers none and Grafana takes its first option."""
    (variable,) = [v for v in variables(load(HISTORY)) if v["name"] == "benchmark"]
    assert variable["multi"] and not variable.get("includeAll")
    chosen, found = resolve_sql_variables(load(HISTORY), filled.run, *ALL_TIME)
    assert chosen["benchmark"][1] == [found["benchmark"][0][1]] == ["tiny.peakmem_list"]
    memory = filled.query(only("panel 'Peak memory per benchmark, by commit'"), every_benchmark=False)
    assert memory and all(r["metric"].startswith("tiny.peakmem_list @ ") for r in memory)
    assert filled.query(only("panel 'Time per benchmark, by commit'"), every_benchmark=False) == []


def series(filled: Filled, panel: str, **window) -> dict[str, dict[datetime, float]]:
    """metric -> time -> value of the panel titled ``panel``."""
    found: dict[str, dict[datetime, float]] = {}
    for row in filled.query(only(f"panel {panel!r}"), **window):
        found.setdefault(row["metric"], {})[row["time"]] = row["value"]
    return found


def test_a_point_per_commit_pools_the_raw_samples_of_its_runs_and_machines_stay_apart(filled):
    time_series = series(filled, "Time per benchmark, by commit")
    host = filled.runs["c1"][0]["env"]["host"]
    here, there = f"{TIME_SUM} @ {host} ({filled.machine})", f"{TIME_SUM} @ {OTHER_HOST} ({OTHER_MACHINE})"
    assert set(time_series) == {f"{name} @ {h} ({m}) {stat}" for name in (TIME_SUM, JOIN)
                                for h, m in ((host, filled.machine), (OTHER_HOST, OTHER_MACHINE))
                                for stat in ("p25", "median", "p75")}
    assert set(time_series[f"{here} median"]) == {at("c1"), at("c2"), at("c3")}
    assert set(time_series[f"{there} median"]) == {at("c2"), at("c3")}
    pooled = [s for doc in filled.runs["c2"] for b in doc["benchmarks"] if b["name"] == TIME_SUM for s in b["samples"]]
    quartiles = statistics.quantiles(pooled, n=4, method="inclusive")  # percentile_cont's interpolation
    assert [time_series[f"{here} {stat}"][at("c2")] for stat in ("p25", "median", "p75")] == pytest.approx(quartiles)
    assert time_series[f"{here} median"][at("c3")] > 2 * time_series[f"{here} median"][at("c2")]  # 4x the work
    tracked = series(filled, "Tracked values, by commit")
    answers = tracked[f"{TRACK} [answers] @ {host} ({filled.machine}) median"]
    assert answers == {at("c1"): 10.0, at("c2"): 10.0, at("c3"): 15.0}


def test_the_time_range_limits_the_points(filled):
    time_series = series(filled, "Time per benchmark, by commit", start=at("c2"), end=at("c3") - timedelta(hours=1))
    assert {t for points in time_series.values() for t in points} == {at("c2")}


def test_the_table_sets_each_machines_latest_commit_against_the_one_before(filled):
    rows = {(r["benchmark"], r["machine"]): r for r in filled.query(only("panel 'Latest commit vs the previous one'"))}
    assert set(rows) == {(name, machine) for name in (TIME_SUM, JOIN, TRACK, "tiny.peakmem_list")
                         for machine in (filled.machine, OTHER_MACHINE)}
    track = rows[TRACK, filled.machine]
    assert (track["previous commit"], track["latest commit"]) == (filled.commits["c2"][:12], filled.commits["c3"][:12])
    assert (track["previous median"], track["latest median"], track["ratio"]) == (10.0, 15.0, 1.5)
    assert track["worse by"] == pytest.approx(0.5), "track_answer is not higher_is_better: a rise is worse"
    assert rows[TIME_SUM, filled.machine]["worse by"] > 1, "4x the work: the worst of the table"
    earlier = filled.query(only("panel 'Latest commit vs the previous one'"), end=at("c3") - timedelta(hours=1))
    assert {(r["previous commit"], r["latest commit"]) for r in earlier if r["machine"] == filled.machine} == {
        (filled.commits["c1"][:12], filled.commits["c2"][:12])}, "latest as of the end of the time range"


def test_steps_between_consecutive_commits_are_annotated_and_say_they_are_not_change_points(filled):
    steps = only("annotation")
    rows = filled.query(steps)
    at_c3 = [r for r in rows if r["time"] == at("c3")]
    assert {r["text"].split(" @ ")[0] for r in at_c3} >= {TIME_SUM, TRACK}
    track = [r["text"] for r in rows if r["text"].startswith(f"{TRACK} @ ")]
    assert len(track) == 2 and all("+50.0%" in text and "not a change point" in text for text in track)
    assert all(r["tags"].split(",")[:2] == ["perfwatch", "step"] for r in rows)
    # c3 alone in the range: its step is still found, against c2 from before the range
    later = filled.query(steps, start=at("c3") - timedelta(hours=1), end=ALL_TIME[1])
    assert {r["text"] for r in later if r["text"].startswith(f"{TRACK} @ ")} == set(track)


def test_the_commits_table_counts_the_runs_each_point_pools(filled):
    rows = filled.query(only("panel 'Commits in the time range'"))
    runs = {(r["machine"], r["commit"]): r["runs"] for r in rows}
    assert runs[filled.machine, filled.commits["c2"][:12]] == 2
    assert runs[OTHER_MACHINE, filled.commits["c3"][:12]] == 1 and len(runs) == 5
