"""Results store, project settings and the environment fingerprint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from perfwatch.config import AlertSinks, load_config
from perfwatch.env import fingerprint, git_state
from perfwatch.errors import UserError
from perfwatch.results import BenchResult, RunRecord, new_run_id
from perfwatch.store import Store


def make_run(run_id: str, samples=(1.0, 2.0, 3.0)) -> RunRecord:
    bench = BenchResult(name="s.time_x", params={}, kind="time", unit="seconds", higher_is_better=False,
                        status="ok", samples=list(samples))
    return RunRecord(run_id=run_id, created="2026-01-01T00:00:00+00:00", suite="quick",
                     env={"host": "h", "git_commit": "abc", "machine_id": "m1"}, benchmarks=[bench])


def test_store_round_trip_resolve_and_frame(tmp_path):
    store = Store(tmp_path / "results")
    store.save(make_run("20260101T000000Z-aaaaaa"))
    store.save(make_run("20260102T000000Z-bbbbbb", samples=(4.0, 5.0, 6.0)))
    assert store.load().run_id == "20260102T000000Z-bbbbbb"  # latest
    assert store.load("20260101").benchmarks[0].samples == [1.0, 2.0, 3.0]
    with pytest.raises(UserError, match="ambiguous"):
        store.resolve("2026")
    frame = store.frame()
    assert list(frame["median"]) == [2.0, 5.0] and list(frame["machine"]) == ["m1", "m1"]
    assert not list((tmp_path / "results").glob(".*tmp"))  # no temp files left behind
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in store.paths())  # readable by others, like any file


def test_store_never_overwrites_a_run(tmp_path):
    store = Store(tmp_path)
    path = store.save(make_run("20260101T000000Z-aaaaaa"))
    original = path.read_bytes()
    with pytest.raises(UserError, match="already stored"):
        store.save(make_run("20260101T000000Z-aaaaaa", samples=(9.0,)))
    assert path.read_bytes() == original


def test_run_ids_sort_by_time_and_are_unique():
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50


def test_config_from_pyproject_and_perfwatch_toml(tmp_path):
    assert load_config(tmp_path).results_dir == Path(".perfwatch/results")
    (tmp_path / "pyproject.toml").write_text('[tool.perfwatch]\nresults_dir = "out/runs"\npaths = ["bench"]\nsuite = "ci"\n')
    config = load_config(tmp_path)
    assert (config.results_dir, config.paths, config.suite) == (tmp_path / "out/runs", (tmp_path / "bench",), "ci")
    (tmp_path / "perfwatch.toml").write_text('suite = "full"\n')
    assert load_config(tmp_path).suite == "full"  # perfwatch.toml wins


@pytest.mark.parametrize(
    "text, needle",
    [
        ('resluts_dir = "x"\n', "unknown perfwatch setting 'resluts_dir'"),
        ('suite = "huge"\n', "suite = 'huge'; use one of quick, ci, full"),
        ("paths = 3\n", "'paths' must be a list"),
        ("suite = \n", "invalid TOML"),
        ('[thresholds]\n"loader.*" = "5 percent"\n', "'thresholds': threshold '5 percent' for 'loader.*' is not a number"),
        ('[thresholds]\n"loader.*" = 5\n', "threshold 5 for 'loader.*' is ambiguous"),
        ('thresholds = "5%"\n', "'thresholds' must be a dict"),
        ('[alerts]\nslack = "https://x"\n', "unknown alert sink 'slack' in 'alerts'; known sinks: alertmanager, pushgateway"),
        ('[alerts]\npushgateway = "pgw:9091"\n', "alerts.pushgateway = 'pgw:9091' must be an http:// or https:// URL"),
    ],
)
def test_bad_settings_name_the_file_and_key(tmp_path, text, needle):
    (tmp_path / "perfwatch.toml").write_text(text)
    with pytest.raises(UserError, match="perfwatch.toml") as info:
        load_config(tmp_path)
    assert needle in str(info.value)


def test_thresholds_and_alerts_from_config(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.perfwatch.thresholds]\n"loader.*" = "5%"\n"loader.time_decode*" = 0.12\n"*" = "7%"\n'
        '[tool.perfwatch.alerts]\nwebhook = "https://hooks.example.com/T0"\nalertmanager = "http://am:9093"\n'
    )
    config = load_config(tmp_path)
    assert config.thresholds.for_name("loader.time_decode(workers=4)") == 0.12  # the most specific pattern wins
    assert config.thresholds.for_name("loader.time_read") == 0.05
    assert config.thresholds.for_name("training.time_step") == 0.07
    assert config.alerts == AlertSinks(webhook="https://hooks.example.com/T0", alertmanager="http://am:9093")
    (tmp_path / "perfwatch.toml").write_text('[thresholds]\n"training.*" = "10%"\n')
    assert load_config(tmp_path).thresholds.for_name("training.x") == 0.10
    assert load_config(tmp_path).alerts == AlertSinks()


def test_fingerprint_records_threads_and_git_state(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = fingerprint()
    assert env["thread_env"]["OMP_NUM_THREADS"] == "3"
    assert env["cpu_cores_logical"] >= 1 and env["memory_bytes"] > 0 and len(env["machine_id"]) == 12
    assert env["torch"]  # read from package metadata, without importing torch

    assert git_state(tmp_path) == {"git_commit": None, "git_commit_time": None, "git_branch": None,
                                 "git_dirty": False}
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q", "-b", "main")
    (tmp_path / "f.txt").write_text("1")
    git("add", "f.txt")
    git("commit", "-qm", "one")
    clean = git_state(tmp_path)
    assert len(clean["git_commit"]) == 40 and clean["git_branch"] == "main" and clean["git_dirty"] is False
    (tmp_path / "f.txt").write_text("2")
    assert git_state(tmp_path)["git_dirty"] is True
