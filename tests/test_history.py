"""`perfwatch history`: series from literal runs, their steps, and the real command over a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_perfwatch
from PIL import Image

from perfwatch.regress.history import analyze, bisect_command, build_series, fewest_runs, find_steps, matches, plot_name
from perfwatch.results import BenchResult, RunRecord
from perfwatch.store import Store

# Five samples per run, within +-0.3% of the run's level.
JITTER = (1.000, 1.002, 0.998, 1.003, 0.997)
STEP_RUN = 6  # the 7th run is the first after the step


def bench(name: str, level: float, *, unit: str = "seconds", higher_is_better: bool = False,
          status: str = "ok") -> BenchResult:
    samples = [level * j for j in JITTER] if status == "ok" else []
    return BenchResult(name=name, params={}, kind="time" if unit == "seconds" else "track", unit=unit,
                       higher_is_better=higher_is_better, status=status,
                       error=None if status == "ok" else "RuntimeError: boom", samples=samples)


def commit(i: int) -> str:
    return f"{i:02d}" + "c0ffee" * 6 + "00"


def history_runs(count: int = 14, *, step_at: int = STEP_RUN, factor: float = 1.15,
                 failed_at: int | None = None) -> list[RunRecord]:
    """``count`` runs a day apart: a batch time that is ``factor`` times slower from run ``step_at``
    on, a throughput that drops as much, and a steady step time; run ``failed_at`` fails the batch."""
    runs = []
    for i in range(count):
        after = i >= step_at
        batch = bench("loader.time_batch(workers=2)", 0.010 * (factor if after else 1.0),
                      status="failed" if i == failed_at else "ok")
        throughput = bench("loader.track_samples_per_s", 5000 / (factor if after else 1.0), unit="samples/s",
                           higher_is_better=True)
        steady = bench("training.time_step", 0.5 * (1 + 0.001 * (i % 3)))
        day = f"2025-01-{i + 1:02d}"
        runs.append(RunRecord(run_id=f"{day.replace('-', '')}T000000Z-{i:06x}", created=f"{day}T00:00:00+00:00",
                              suite="ci", env={"host": "ci-runner-7", "git_commit": commit(i)},
                              benchmarks=[batch, throughput, steady]))
    return runs


# ---------------------------------------------------------------- pure: series and steps


def test_series_follow_the_runs_and_keep_failed_runs_as_points_without_samples():
    runs = history_runs(failed_at=3)
    runs[0] = RunRecord(run_id=runs[0].run_id, created=runs[0].created, suite="ci", env=runs[0].env,
                        benchmarks=runs[0].benchmarks[:1])  # the other two were added in run 1
    batch, throughput, steady = build_series(runs)
    assert [s.name for s in (batch, throughput, steady)] == [
        "loader.time_batch(workers=2)", "loader.track_samples_per_s", "training.time_step"]
    assert len(batch.points) == 14 and len(throughput.points) == 13
    assert batch.points[3].status == "failed" and batch.points[3].samples == () and batch.measured == 13
    assert batch.points[7].run_id == runs[7].run_id and batch.points[7].label == commit(7)[:7]
    assert batch.points[0].median == pytest.approx(0.010)
    assert (throughput.unit, throughput.higher_is_better) == ("samples/s", True)


def test_a_fifteen_percent_step_is_found_at_the_first_run_after_it():
    (batch, _, steady) = analyze(history_runs())
    (step,) = batch.steps
    assert (step.index, step.run_id, step.commit) == (STEP_RUN, history_runs()[STEP_RUN].run_id, commit(STEP_RUN))
    assert step.before == pytest.approx(0.010) and step.after == pytest.approx(0.0115)
    assert step.change == pytest.approx(0.15) and step.direction == "worse" and step.p_value < 0.01
    assert steady.steps == () and steady.note is None


def test_direction_comes_from_the_metric_a_throughput_drop_is_worse_and_a_speedup_better():
    _, throughput, _ = analyze(history_runs())
    (drop,) = throughput.steps
    assert drop.change == pytest.approx(1 / 1.15 - 1) and drop.worse
    batch, faster, _ = analyze(history_runs(factor=1 / 1.15))
    assert batch.steps[0].direction == "better" and faster.steps[0].direction == "better"


def test_a_failed_run_is_skipped_not_taken_for_a_step():
    (step,) = analyze(history_runs(count=15, failed_at=10))[0].steps
    assert step.index == STEP_RUN


def test_a_slowdown_names_the_commits_around_it_and_the_bisect_command_that_splits_them():
    batch, throughput, _ = analyze(history_runs())
    (step,) = batch.steps
    assert (step.commit_before, step.commit) == (commit(STEP_RUN - 1), commit(STEP_RUN))
    assert bisect_command(batch.series, step) == (f"perfwatch bisect 'loader.time_batch(workers=2)' --good "
                                                  f"{commit(STEP_RUN - 1)} --bad {commit(STEP_RUN)} --suite ci")
    assert bisect_command(batch.series, step, abbreviate=True).split()[3:7] == [
        "--good", commit(STEP_RUN - 1)[:10], "--bad", commit(STEP_RUN)[:10]]
    (drop,) = throughput.steps  # less throughput is a slowdown too
    assert bisect_command(throughput.series, drop).startswith("perfwatch bisect loader.track_samples_per_s --good")


def test_the_commit_before_a_step_is_the_last_one_measured_and_a_speed_up_gets_no_command():
    (step,) = analyze(history_runs(count=15, failed_at=STEP_RUN - 1))[0].steps
    assert (step.commit_before, step.commit) == (commit(STEP_RUN - 2), commit(STEP_RUN))  # its neighbour failed
    faster = analyze(history_runs(factor=1 / 1.15))[0]
    (speed_up,) = faster.steps
    assert speed_up.commit_before == commit(STEP_RUN - 1) and bisect_command(faster.series, speed_up) is None


def test_steps_under_the_benchmarks_threshold_are_dropped():
    runs = history_runs(factor=1.02)
    assert analyze(runs)[0].steps == (), "2% is under the default 3% threshold"
    (step,) = analyze(runs, thresholds={"loader.*": "1%"})[0].steps
    assert step.index == STEP_RUN and step.change == pytest.approx(0.02)


def test_too_few_runs_is_a_note_not_an_error():
    """detect's permutation test cannot reach p < 0.01 in 12 runs, however clean the step."""
    assert fewest_runs() == 13
    (series, *_) = build_series(history_runs(count=12))
    history = find_steps(series, 0.05)
    assert history.steps == () and history.note == "12 runs with results; need at least 13 to find a change"


def test_bench_is_a_name_or_a_glob():
    assert matches("loader.time_batch(workers=2)", "loader.time_batch(workers=2)")
    assert matches("loader.time_batch(workers=2)", "loader.*") and not matches("training.time_step", "loader.*")
    assert matches("a.time[x]", "a.time[x]"), "an exact name wins even when it reads as a glob"
    assert [s.name for s in build_series(history_runs(), "*samples*")] == ["loader.track_samples_per_s"]


def test_plot_names_are_safe_file_names():
    assert plot_name("loader.time_batch(workers=2, fmt='npy')") == "loader.time_batch_workers_2_fmt_npy.png"


# ---------------------------------------------------------------- the command


def store_runs(directory: Path, runs: list[RunRecord]) -> Path:
    store = Store(directory)
    for run in runs:
        store.save(run)
    return directory


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
        assert image.size[0] >= 600 and image.size[1] >= 400


def test_history_command_names_the_step_and_saves_a_plot_per_benchmark(tmp_path):
    results = store_runs(tmp_path / "results", history_runs())
    proc = run_perfwatch("history", "--results-dir", str(results), "--plot-dir", "plots", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    batch_rows = [line for line in proc.stdout.splitlines() if line.startswith("│ loader.time_batch")]
    assert len(batch_rows) == 1 and commit(STEP_RUN)[:10] in batch_rows[0] and "+15.0% worse" in batch_rows[0]
    assert "10 ms" in batch_rows[0] and "11.5 ms" in batch_rows[0]
    assert "-13.0% worse" in proc.stdout and "no step" in proc.stdout  # the throughput; the steady step time
    assert f"{commit(STEP_RUN - 1)[:10]}..{commit(STEP_RUN)[:10]}" in batch_rows[0]
    commands = [line for line in proc.stdout.splitlines() if line.startswith("to find the commit: ")]
    assert commands == [f"to find the commit: perfwatch bisect {name} --good {commit(STEP_RUN - 1)[:10]} --bad "
                        f"{commit(STEP_RUN)[:10]} --suite ci"
                        for name in ("'loader.time_batch(workers=2)'", "loader.track_samples_per_s")]
    for name in ("loader.time_batch_workers_2.png", "loader.track_samples_per_s.png", "training.time_step.png"):
        assert_png(tmp_path / "plots" / name)


def test_history_json_for_one_benchmark(tmp_path):
    results = store_runs(tmp_path / "results", history_runs())
    proc = run_perfwatch("history", "loader.time_*", "--results-dir", str(results), "--plot-dir", "plots", "--json",
                         cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (batch,) = json.loads(proc.stdout)["benchmarks"]
    assert batch["name"] == "loader.time_batch(workers=2)" and batch["runs"] == 14 and batch["note"] is None
    (step,) = batch["steps"]
    assert (step["index"], step["commit"], step["direction"]) == (STEP_RUN, commit(STEP_RUN), "worse")
    assert step["change"] == pytest.approx(0.15) and step["p_value"] < 0.01
    assert step["commit_before"] == commit(STEP_RUN - 1)
    assert step["bisect"] == (f"perfwatch bisect 'loader.time_batch(workers=2)' --good {commit(STEP_RUN - 1)} "
                              f"--bad {commit(STEP_RUN)} --suite ci")
    assert [p["median"] for p in batch["series"]][STEP_RUN - 1:STEP_RUN + 1] == pytest.approx([0.010, 0.0115])
    assert_png(Path(tmp_path / batch["plot"]))
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["loader.time_batch_workers_2.png"]


def test_too_few_runs_says_so_in_one_line_per_benchmark(tmp_path):
    results = store_runs(tmp_path / "results", history_runs(count=4, failed_at=1))
    proc = run_perfwatch("history", "--results-dir", str(results), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stdout.splitlines() if "need at least 13" in line]
    assert notes == ["loader.time_batch(workers=2): 3 runs with results; need at least 13 to find a change",
                     "loader.track_samples_per_s: 4 runs with results; need at least 13 to find a change",
                     "training.time_step: 4 runs with results; need at least 13 to find a change"]
    assert_png(tmp_path / "reports" / "history" / "loader.time_batch_workers_2.png")


def test_no_stored_runs_is_a_one_line_error(tmp_path):
    proc = run_perfwatch("history", "--results-dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert_one_line_error(proc, str(tmp_path / "empty"), "no stored runs")


def test_a_bench_that_matches_nothing_is_a_one_line_error(tmp_path):
    results = store_runs(tmp_path / "results", history_runs(count=3))
    proc = run_perfwatch("history", "nosuch.*", "--results-dir", str(results), cwd=tmp_path)
    assert_one_line_error(proc, "no benchmark matches 'nosuch.*'", "3 runs", "perfwatch show")


def test_an_unwritable_plot_dir_is_a_one_line_error(tmp_path):
    results = store_runs(tmp_path / "results", history_runs(count=3))
    (tmp_path / "taken").write_text("a file, not a directory")
    proc = run_perfwatch("history", "--results-dir", str(results), "--plot-dir", "taken/plots", cwd=tmp_path)
    assert_one_line_error(proc, "taken/plots: cannot write plots", "--plot-dir")
