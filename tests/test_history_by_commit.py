"""`perfwatch history` by commit: real `perfwatch run`s at the commits of a throw-away git repository,
made in another order than the commits', a second machine's runs imported, and the filters."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_perfwatch, write_suite

from perfwatch.env import git_state
from perfwatch.regress.history import build_series, git_positions
from perfwatch.results import BenchResult, RunRecord
from perfwatch.store import Store, open_store

pytestmark = pytest.mark.slow  # real benchmark runs in subprocesses

SUITE = """
def time_sum():
    sum(range(200))
"""
NAME = "tiny.time_sum"
OTHER_MACHINE, OTHER_HOST = "feedfacecafe", "other-host"


def git(repo: Path, *args: str, date: str | None = None) -> str:
    """git in ``repo``; ``date`` is the commit's author and committer date."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    if date:
        env |= {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, message: str, date: str) -> str:
    with (repo / "CHANGES").open("a") as changes:
        changes.write(message + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message, date=date)
    return git(repo, "rev-parse", "HEAD")


def perfwatch_run(cwd: Path, *args: str) -> dict:
    proc = run_perfwatch("run", "--suite", "quick", "--json", *args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """main: c1 -> c2 -> c3, where c3 carries an *older* committer date than its parent c2 (clock skew,
    --committer-date-is-author-date), and feature: c2 -> f1. Runs at c3, c1, f1, c2, c1 (in that order),
    one run outside git, and two runs of another machine (at c2 and c3) imported as documents."""
    repo = tmp_path_factory.mktemp("repo")
    git(repo, "init", "-q", "-b", "main")
    write_suite(repo / "suites", "tiny.py", SUITE)
    c1 = commit(repo, "one", "2025-01-01T00:00:00+00:00")
    c2 = commit(repo, "two", "2025-01-03T00:00:00+00:00")
    c3 = commit(repo, "three", "2025-01-02T00:00:00+00:00")
    git(repo, "checkout", "-q", "-b", "feature", c2)
    f1 = commit(repo, "feature", "2025-01-04T00:00:00+00:00")
    runs = {}
    for name, sha, branch in (("c3", c3, "main"), ("c1", c1, "main"), ("f1", f1, "feature"), ("c2", c2, "main"),
                              ("c1 again", c1, "main")):
        git(repo, "checkout", "-q", "-B", branch, sha)
        runs[name] = perfwatch_run(repo)
    store_url = f"sqlite:///{repo / '.perfwatch' / 'perfwatch.db'}"
    elsewhere = tmp_path_factory.mktemp("no-git")
    write_suite(elsewhere / "suites", "tiny.py", SUITE)
    runs["no commit"] = perfwatch_run(elsewhere, "--store", store_url)
    for name in ("c2", "c3"):  # the same documents, as another machine would have stored them
        doc = runs[name]
        other = {**doc, "run_id": doc["run_id"][:-6] + "b0b0b0",
                 "env": {**doc["env"], "machine_id": OTHER_MACHINE, "host": OTHER_HOST}}
        path = elsewhere / f"{other['run_id']}.json"
        path.write_text(json.dumps(other))
        imported = run_perfwatch("store", "import", str(path), cwd=repo)
        assert imported.returncode == 0 and "imported 1 of 1 runs" in imported.stdout, imported.stderr
        runs[f"other {name}"] = other
    return {"repo": repo, "elsewhere": elsewhere, "store": store_url, "runs": runs,
            "commits": {"c1": c1, "c2": c2, "c3": c3, "f1": f1}}


def history_json(project, *args: str, cwd: Path | None = None) -> dict:
    proc = run_perfwatch("history", NAME, "--store", project["store"], "--json", "--plot-dir",
                         str(project["elsewhere"] / "plots"), *args, cwd=cwd or project["repo"])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def by_machine(result: dict) -> dict[str, dict]:
    series = result["benchmarks"]
    assert all(s["name"] == NAME for s in series)
    machines = {s["machine"]: s for s in series}
    assert len(machines) == len(series), "one series per machine"
    return machines


def names(project, series: dict) -> list[str]:
    """The points of a series as the fixture names their commits (runs without a commit: 'no commit')."""
    named = {sha: name for name, sha in project["commits"].items()}
    return [named[p["commit"]] if p["commit"] else "no commit" for p in series["series"]]


def this_machine(project) -> str:
    return project["runs"]["c1"]["env"]["machine_id"]


# ---------------------------------------------------------------- the fingerprint


def test_a_run_records_its_commit_time_and_branch(project):
    env = project["runs"]["c3"]["env"]
    assert env["git_commit"] == project["commits"]["c3"] and env["git_branch"] == "main"
    assert env["git_commit_time"] == "2025-01-02T00:00:00+00:00"  # the committer date, in UTC
    outside = project["runs"]["no commit"]["env"]
    assert (outside["git_commit"], outside["git_commit_time"], outside["git_branch"]) == (None, None, None)


CI_BRANCH_VARIABLES = ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "GITHUB_REF_TYPE", "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME",
                       "CI_COMMIT_BRANCH")


def test_a_detached_head_has_no_branch(tmp_path, monkeypatch):
    for name in CI_BRANCH_VARIABLES:  # as outside CI
        monkeypatch.delenv(name, raising=False)
    git(tmp_path, "init", "-q", "-b", "main")
    sha = commit(tmp_path, "one", "2025-01-01T12:00:00+02:00")
    git(tmp_path, "checkout", "-q", "--detach")
    assert git_state(tmp_path) == {"git_commit": sha, "git_commit_time": "2025-01-01T10:00:00+00:00",
                                   "git_branch": None, "git_dirty": False}


@pytest.mark.parametrize(("ci", "branch"), [
    ({"GITHUB_HEAD_REF": "feature/fast", "GITHUB_REF_NAME": "17/merge", "GITHUB_REF_TYPE": "branch"}, "feature/fast"),
    ({"GITHUB_HEAD_REF": "", "GITHUB_REF_NAME": "main", "GITHUB_REF_TYPE": "branch"}, "main"),
    ({"GITHUB_REF_NAME": "v1.0", "GITHUB_REF_TYPE": "tag"}, None),
    ({"CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "mr-branch", "CI_COMMIT_BRANCH": ""}, "mr-branch"),
])
def test_a_ci_checkout_on_a_detached_head_records_the_branch_the_ci_names(tmp_path, ci, branch):
    """actions/checkout of a pull request leaves HEAD detached; the run still belongs to its branch."""
    git(tmp_path, "init", "-q", "-b", "main")
    write_suite(tmp_path / "suites", "tiny.py", SUITE)
    commit(tmp_path, "one", "2025-01-01T12:00:00+02:00")
    git(tmp_path, "checkout", "-q", "--detach")
    env = {**dict.fromkeys(CI_BRANCH_VARIABLES, ""), **ci}
    proc = run_perfwatch("run", "--suite", "quick", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["env"]["git_branch"] == branch


# ---------------------------------------------------------------- order, pooling, machines


def test_in_the_repository_points_follow_git_order_one_series_per_machine(project):
    result = history_json(project)
    assert result["order"] == "git order"
    mine, other = by_machine(result)[this_machine(project)], by_machine(result)[OTHER_MACHINE]
    order = names(project, mine)
    # parents before children although c3's date is older than c2's; f1 and c3 are siblings
    assert order[:2] == ["c1", "c2"] and sorted(order[2:4]) == ["c3", "f1"] and order[4] == "no commit"
    assert names(project, other) == ["c2", "c3"] and other["host"] == OTHER_HOST
    (pooled,) = [p for p in mine["series"] if p["commit"] == project["commits"]["c1"]]
    runs = project["runs"]
    assert pooled["run_ids"] == [runs["c1"]["run_id"], runs["c1 again"]["run_id"]]
    assert pooled["samples"] == len(runs["c1"]["benchmarks"][0]["samples"]) + len(runs["c1 again"]["benchmarks"][0]["samples"])
    assert (mine["runs"], mine["points"]) == (6, 5) and mine["note"].startswith("5 commits with results")


def test_outside_the_repository_points_follow_commit_time(project):
    result = history_json(project, cwd=project["elsewhere"])
    assert result["order"] == "commit time"
    machines = by_machine(result)
    assert names(project, machines[this_machine(project)]) == ["c1", "c3", "c2", "f1", "no commit"]
    assert names(project, machines[OTHER_MACHINE]) == ["c3", "c2"]


def test_one_plot_per_benchmark_and_machine(project):
    result = history_json(project)
    plots = sorted(Path(s["plot"]).name for s in result["benchmarks"])
    assert plots == sorted([f"{NAME}.{this_machine(project)}.png", f"{NAME}.{OTHER_MACHINE}.png"])
    assert all(Path(s["plot"]).read_bytes()[:4] == b"\x89PNG" for s in result["benchmarks"])


def test_the_table_names_the_order_and_each_machine(project):
    proc = run_perfwatch("history", "--store", project["store"], "--plot-dir", str(project["elsewhere"] / "p"),
                         cwd=project["repo"])
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stdout.splitlines() if "need at least" in line]
    assert sorted(notes) == sorted([
        f"{NAME} on {OTHER_HOST} ({OTHER_MACHINE}): 2 runs with results; need at least 13 to find a change",
        (f"{NAME} on {project['runs']['c1']['env']['host']} ({this_machine(project)}): "
         "5 commits with results; need at least 13 to find a change")])  # 6 runs, c1's two pooled
    assert "steps in stored runs" not in proc.stdout  # no series is long enough to judge


# ---------------------------------------------------------------- filters, in SQL and in a directory


@pytest.fixture(scope="module", params=["sqlite", "directory"])
def stored(request, project):
    """The project's runs in its SQLite store, or copied into a directory of results documents."""
    if request.param == "sqlite":
        return project
    directory = project["elsewhere"] / "results"
    if not directory.exists():
        for run in open_store(project["store"]).runs():
            Store(directory).save(run)
    return {**project, "store": str(directory)}


@pytest.mark.parametrize(("args", "expected"), [
    (("--machine", OTHER_MACHINE[:6]), {OTHER_MACHINE: ["c3", "c2"]}),
    (("--machine", OTHER_HOST), {OTHER_MACHINE: ["c3", "c2"]}),
    (("--branch", "main"), {"mine": ["c1", "c3", "c2"], OTHER_MACHINE: ["c3", "c2"]}),
    (("--branch", "feature"), {"mine": ["f1"]}),
    (("--since", "2025-01-02"), {"mine": ["c3", "c2", "f1", "no commit"], OTHER_MACHINE: ["c3", "c2"]}),
    (("--since", "2025-01-03T00:00:00Z", "--branch", "main"), {"mine": ["c2"], OTHER_MACHINE: ["c2"]}),
])
def test_filters(stored, args, expected):
    """Outside the repository (commit-time order); a run without a commit passes --since by its creation time."""
    machines = by_machine(history_json(stored, *args, cwd=stored["elsewhere"]))
    assert {("mine" if m == this_machine(stored) else m): names(stored, s) for m, s in machines.items()} == expected


def test_since_a_commit_means_since_its_commit_time(stored):
    """A ref the repository knows, or (elsewhere) a prefix of a stored commit; c3's older date leaves it out."""
    in_repo = by_machine(history_json(stored, "--since", "feature~1", "--machine", OTHER_HOST))  # c2
    elsewhere = by_machine(history_json(stored, "--since", stored["commits"]["c2"][:8], cwd=stored["elsewhere"]))
    assert names(stored, in_repo[OTHER_MACHINE]) == ["c2"]
    assert names(stored, elsewhere[this_machine(stored)]) == ["c2", "f1", "no commit"]


def test_a_machine_that_matches_nothing_lists_the_stores_machines(stored):
    proc = run_perfwatch("history", "--store", stored["store"], "--machine", "nosuch", cwd=stored["repo"])
    assert_one_line_error(proc, "--machine 'nosuch'", f"{OTHER_MACHINE} ({OTHER_HOST})", this_machine(stored),
                          "host name")


@pytest.mark.parametrize(("args", "needles"), [
    (("--branch", "nosuch"), ("no stored run on branch 'nosuch'", "perfwatch runs")),
    (("--branch", "feature", "--machine", OTHER_HOST), (f"of machine '{OTHER_HOST}' on branch 'feature'",)),
    (("--since", "2025-02-30"), ("--since '2025-02-30': not a date", "YYYY-MM-DD")),
    (("--since", "nosuch-ref"), ("--since 'nosuch-ref': neither a date", "nor a commit")),
])
def test_bad_filter_values_are_one_line_errors(stored, args, needles):
    proc = run_perfwatch("history", "--store", stored["store"], *args, cwd=stored["repo"])
    assert_one_line_error(proc, *needles)


# ---------------------------------------------------------------- pure: literal runs


def literal_run(run_id: str, commit: str | None, *, machine: str = "m1", when: str | None = None,
                samples: tuple[float, ...] = (1.0,)) -> RunRecord:
    env = {"host": "h", "machine_id": machine, "git_commit": commit, "git_commit_time": when}
    bench = BenchResult(name="b.time_x", params={}, kind="time", unit="seconds", higher_is_better=False,
                        status="ok", samples=list(samples))
    return RunRecord(run_id=run_id, created=f"2026-01-0{run_id[-1]}T00:00:00+00:00", suite="quick", env=env,
                     benchmarks=[bench])


def test_an_older_document_without_a_commit_time_takes_its_creation_time():
    runs = [literal_run("r1", "b" * 40, when="2026-01-05T00:00:00+00:00"), literal_run("r2", "a" * 40),
            literal_run("r3", None)]
    (series,) = build_series(runs)
    assert [p.run_id for p in series.points] == ["r2", "r1", "r3"]  # r2 was made on 01-02, before r1's commit


def test_git_order_needs_every_commit_in_the_repository(project):
    runs = [literal_run("r1", project["commits"]["c2"]), literal_run("r2", project["commits"]["c1"])]
    positions = git_positions(runs, project["repo"])
    assert positions[project["commits"]["c1"]] < positions[project["commits"]["c2"]]
    assert git_positions([*runs, literal_run("r3", "0" * 40)], project["repo"]) is None
    assert git_positions(runs, project["elsewhere"]) is None  # not a repository


def test_series_keep_machines_apart_and_pool_a_commits_samples():
    runs = [literal_run("r1", "a" * 40, samples=(1.0, 2.0)), literal_run("r2", "a" * 40, samples=(3.0,)),
            literal_run("r3", "a" * 40, machine="m2")]
    one, two = build_series(runs)
    assert (one.machine, [p.samples for p in one.points]) == ("m1", [(1.0, 2.0, 3.0)])
    assert (two.machine, [p.run_ids for p in two.points]) == ("m2", [("r3",)])
