"""Publishing again builds on the cache the last publish left in the site: only the benchmark pages that new runs
touch are read from the store and computed, and the site is byte for byte the one a full publish writes. Runs are
added in steps to real stores (a directory and SQLite) holding several machines, parameterised benchmarks, names
that are globs and SQL wildcards, a unit that changes, failures, a dirty run and a run of an older commit; after
each step the incremental site is compared with a full one. What the cache cannot vouch for (a run removed, a run
stored before published ones, another threshold or commit URL, git order that changed, an edited page) rebuilds."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import STEADY, assert_one_line_error, bench, run_perfwatch

import perfwatch
from perfwatch.publish import publish
from perfwatch.publish.cache import CACHE, sources
from perfwatch.publish.site import MANIFEST
from perfwatch.regress.history import git_positions
from perfwatch.results import RunRecord
from perfwatch.store import Store, open_store

M1 = {"host": "ci-1", "machine_id": "0123456789ab", "cpu": "AMD EPYC 7763", "gpu": None, "python": "3.11.7"}
M2 = {**M1, "host": "gpu-box", "machine_id": "fedcba987654", "cpu": "Intel Xeon 8480"}
M3 = {**M1, "host": "arm-1", "machine_id": "a4a4a4a4a4a4", "cpu": "Neoverse-V2"}
ODD = "odd.time_[x]*?%_"  # a glob and SQL LIKE wildcards in one page name
STEP_AT = 8  # loader.time_batch(workers=2) and the odd page are slower on ci-1 from this commit on


def samples(factor: float) -> list[float]:
    return [round(v * factor, 6) * 1e-3 for v in STEADY]


def run(machine: dict, i: int, benchmarks: list, *, day: int | None = None, suffix: str = "", **env) -> RunRecord:
    """A run of commit ``i`` (its commit time on day ``day``, by default its own number) on ``machine``."""
    when = f"2026-03-{(day or i) + 1:02d}T12:00:00+00:00"
    full_env = {**machine, "git_commit": f"{i + 1:040x}", "git_dirty": False, "git_branch": "main",
                "git_commit_time": when, **env}
    return RunRecord(run_id=f"2026-{i:03d}-{machine['machine_id'][:4]}{suffix}", created=when, suite="quick",
                     env=full_env, benchmarks=benchmarks)


def everything(i: int, machine: dict) -> list:
    slower = 1.25 if machine is M1 and i >= STEP_AT else 1.0
    return [bench("loader.time_batch(workers=2)", samples(10 * slower)),
            bench("loader.time_batch(workers=4)", samples(6)),
            bench("loader.time_batch2", samples(3)),  # shares the literal prefix of the page above
            bench("b.track_y", [v * 50 for v in STEADY], unit="items", higher_is_better=True),
            bench(f"{ODD}(p=1)", samples(2 * (1.3 if machine is M1 and i >= STEP_AT else 1.0))),
            bench(f"{ODD}(p=[2])", samples(2)),
            bench("odd.time_x", samples(4))]  # what ODD would match if its brackets were read as a glob


def history() -> list[RunRecord]:
    return [run(M1, i, everything(i, M1)) for i in range(16)] + [run(M2, i, everything(i, M2)) for i in range(6)]


STEPS = [  # (what the step adds, how many pages it touches); run ids sort by commit, as real ones sort by time
    ([run(M1, 16, [bench("loader.time_batch(workers=2)", samples(12.5))])], 1),
    ([run(M2, 17, [bench("b.track_y", [v * 3 for v in STEADY], unit="samples/s", higher_is_better=True)])], 1),
    ([run(M3, 18, [bench(f"{ODD}(p=1)", samples(2)), bench(f"{ODD}(p=[2])", samples(2))])], 1),
    ([run(M1, 19, [bench("new.time_z", samples(1))])], 1),
    ([run(M1, 20, everything(20, M1))], 5),
    ([run(M1, 21, [bench("odd.time_x", [], status="failed", error="RuntimeError: boom")]),
      run(M2, 21, [bench("loader.time_batch2", samples(9))], git_dirty=True)], 2),
    ([run(M2, 22, [bench("b.track_y", [v * 3.3 for v in STEADY], unit="samples/s", higher_is_better=True)], day=3)], 1),
    ([run(M3, 23, [])], 0),  # a run without results: the machines page and the run count only
]


def make_store(kind: str, where: Path):
    return Store(where / "runs") if kind == "directory" else open_store(f"sqlite:///{where / 'runs.db'}")


def files_of(site: Path) -> dict[str, bytes]:
    """Every file of the site but the manifest, whose file times differ; its digests are compared instead."""
    files = {str(p.relative_to(site)): p.read_bytes() for p in site.rglob("*") if p.is_file() and p.name != MANIFEST}
    files[MANIFEST] = json.dumps(json.loads((site / MANIFEST).read_text())["files"]).encode()
    return files


def assert_same_site(incremental: Path, full: Path) -> None:
    mine, theirs = files_of(incremental), files_of(full)
    assert sorted(mine) == sorted(theirs)
    differ = [name for name in mine if mine[name] != theirs[name]]
    assert differ == [], differ


@pytest.mark.parametrize("kind", ["directory", "sqlite"])
def test_publishing_after_each_new_run_computes_only_its_pages_and_equals_a_full_publish(tmp_path, kind):
    store = make_store(kind, tmp_path)
    for r in history():
        store.add(r)
    site, full = tmp_path / "site", tmp_path / "full"
    first = publish(store, site)
    assert first.rebuilt == "no cache yet" and first.recomputed == 5 and first.reused == 0
    assert (site / CACHE).is_file() and CACHE in json.loads((site / MANIFEST).read_text())["files"]
    regressions = [(r["name"], r["date"]) for r in first.data.regressions]
    assert sorted(regressions) == [("loader.time_batch(workers=2)", "2026-03-09T12:00:00+00:00"),
                                   (f"{ODD}(p=1)", "2026-03-09T12:00:00+00:00")]  # two pages, one date

    again = publish(store, site)
    assert (again.rebuilt, again.recomputed, again.reused, again.files.written) == (None, 0, 5, [])
    for step, (runs, touched) in enumerate(STEPS):
        for r in runs:
            store.add(r)
        done = publish(store, site)
        assert done.rebuilt is None and done.recomputed == touched, (step, done.rebuilt, done.recomputed)
        assert done.reused == len(json.loads((site / CACHE).read_text())["parts"]) - touched
        publish(store, full, full=True)
        assert_same_site(site, full)
    summary = done.data.summary
    assert summary["runs"] == len(history()) + sum(len(runs) for runs, _ in STEPS) and summary["machines"] == 3
    rows = {(r["name"], r["machine"]): r for r in summary["rows"]}
    assert rows["odd.time_x", "ci-1 (0123456789ab)"]["verdict"] == "failed"
    assert any("unit changed to 'samples/s'" in n for n in rows["b.track_y", "gpu-box (fedcba987654)"]["notes"])
    odd = rows[f"{ODD}(p=[2])", "arm-1 (a4a4a4a4a4a4)"]
    assert odd["latest"] == pytest.approx(2e-3, rel=0.02)  # the odd page's name matched exactly, on the new machine


def test_the_command_says_what_it_reused_and_rebuilds_what_the_cache_cannot_vouch_for(tmp_path):
    store = make_store("directory", tmp_path)
    for r in history():
        store.add(r)

    def published(*args: str) -> str:
        proc = run_perfwatch("publish", "--store", "runs", "--out", "site", *args, cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "(5 pages: all computed: no cache yet)" in published()
    store.add(run(M1, 16, [bench("b.track_y", [v * 50 for v in STEADY], unit="items", higher_is_better=True)]))
    assert "(5 pages: 1 recomputed, 4 reused from the cache)" in published()
    (tmp_path / "perfwatch.toml").write_text('[thresholds]\n"loader.*" = "10%"\n')
    assert "all computed: the store, the thresholds, the commit URL, the baseline or perfwatch changed" in published()

    page = tmp_path / "site" / "benchmarks" / "loader.time_batch.html"
    page.write_text(page.read_text().replace("loader", "edited"))  # a page edited by hand is computed again
    out = published()
    assert "1 recomputed, 4 reused" in out and "1 files written" in out, out
    assert "edited" not in page.read_text()

    (tmp_path / "runs" / f"{history()[3].run_id}.json").unlink()
    assert "all computed: 1 published run(s) are no longer in the store" in published()
    store.add(run(M2, 0, everything(0, M2), suffix="-early"))  # its id sorts before published runs
    assert "all computed: run 2026-000-fedc-early is stored before runs already published" in published()
    assert "all computed: asked for" in published("--full")
    assert "(5 pages: 0 recomputed, 5 reused from the cache)" in published()
    (tmp_path / "site" / CACHE).write_text("{not json")
    assert "all computed: the cache cannot be read" in published()
    assert "(5 pages: 0 recomputed, 5 reused from the cache)" in published()


def test_a_cache_file_that_perfwatch_did_not_write_is_left_alone(tmp_path):
    store = make_store("directory", tmp_path)
    for r in history()[:3]:
        store.add(r)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / CACHE).write_text('{"the team": "its own file"}')
    proc = run_perfwatch("publish", "--store", "runs", "--out", "site", cwd=tmp_path, timeout=120)
    assert_one_line_error(proc, f"holds {CACHE}", "perfwatch did not write", "(--out)")
    assert (tmp_path / "site" / CACHE).read_text() == '{"the team": "its own file"}'
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == [CACHE]


def git(repo: Path, *args: str, date: str | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", **({"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else {})}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, message: str, day: int) -> str:
    with (repo / "CHANGES").open("a") as changes:
        changes.write(message + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message, date=f"2026-03-{day:02d}T12:00:00+00:00")
    return git(repo, "rev-parse", "HEAD")


def test_a_commit_that_changes_the_git_order_of_published_commits_rebuilds(tmp_path):
    """Two branches from one root: git lists a1 before b1 until a2, a child of a1, is among the commits."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    root = commit(repo, "root", 1)
    a1, a2 = commit(repo, "a1", 2), commit(repo, "a2", 5)
    git(repo, "checkout", "-q", "-b", "other", root)
    b1 = commit(repo, "b1", 3)

    def at(commit_: str, i: int, factor: float) -> RunRecord:
        return run(M1, i, [bench("a.time_x", samples(factor)), bench("b.time_y", samples(2))], git_commit=commit_)

    def git_order(runs: list[RunRecord]) -> list[str]:
        return sorted({r.env["git_commit"] for r in runs}, key=git_positions(runs, repo).__getitem__)

    store = make_store("directory", tmp_path)
    before = [at(a1, 0, 1.0), at(b1, 1, 1.1)]
    assert git_order(before) == [a1, b1] and git_order([*before, at(a2, 2, 1.2)]) == [b1, a1, a2]  # the premise
    for r in before:
        store.add(r)
    site = tmp_path / "site"
    assert publish(store, site, repo=repo).rebuilt == "no cache yet"
    assert publish(store, site).rebuilt == "the commits' git order is no longer known"  # published outside the repo
    assert publish(store, site, repo=repo).rebuilt == "the commits' git order is known now"
    store.add(at(a2, 2, 1.2))
    done = publish(store, site, repo=repo)
    assert done.rebuilt == "new commits change the git order of published ones"
    publish(store, tmp_path / "full", repo=repo, full=True)
    assert_same_site(site, tmp_path / "full")
    assert json.loads((site / CACHE).read_text())["commits"] == [b1, a1, a2]


def test_the_cache_key_follows_the_code_that_computes_and_renders_the_site_and_no_other():
    names = {str(p.relative_to(Path(perfwatch.__file__).parent)) for p in sources()}
    assert {"publish/data.py", "publish/templates.py", "regress/history.py", "regress/detect.py", "stats.py",
            "thresholds.py"} <= names  # the change points, the verdicts, the pages
    assert not [n for n in names if n.startswith(("monitoring/", "profile/", "cli/", "bench/"))], names
