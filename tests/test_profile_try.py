"""``perfwatch profile --try``: the top DataLoader recommendation re-run on the unmodified command, in
paired, interleaved windows against the original settings, its steps/s measured exactly; the measured
speedup and its interval stand beside the predicted bound, and a knob that measured slower is dropped.
The statistics on literal rates, the knob injection through the DataLoader constructor in a real
process, and the real command on small input-bound scripts."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import run_perfwatch

from perfwatch.monitoring.step_timing import KNOBS_ENV, install_child_hooks, with_knobs
from perfwatch.profile.trial import pick, speedup, verdict


def test_speedup_is_the_geometric_mean_of_the_pairs_with_a_t_interval():
    measured = speedup([10.0, 11.0, 9.0], [15.0, 16.5, 13.5])  # 1.5x in every pair: no spread
    assert measured["speedup"] == pytest.approx(1.5) and measured["low"] == measured["high"] == pytest.approx(1.5)
    noisy = speedup([10.0, 10.0, 10.0], [14.0, 15.0, 16.0])
    assert noisy["speedup"] == pytest.approx(math.exp(sum(math.log(x) for x in (1.4, 1.5, 1.6)) / 3), abs=1e-4)
    assert noisy["low"] < 1.4 and noisy["high"] > 1.6  # 2 degrees of freedom: wider than the pairs' range
    assert speedup([10.0], [12.0])["low"] is None  # one pair bounds nothing


def test_a_change_that_measured_slower_is_never_recommended():
    assert verdict(speedup([10.0, 10.0], [9.0, 9.8])) == "slower"
    assert verdict(speedup([10.0, 10.0], [9.9, 10.3])) == "unclear"  # the interval holds 1
    assert verdict(speedup([10.0, 10.0, 10.0], [15.0, 15.5, 16.0])) == "faster"
    assert verdict(None) == "inconclusive"


def test_the_top_recommendation_that_sets_dataloader_arguments_is_tried():
    recs = [{"id": "amp_bf16", "knobs": {"autocast": "bfloat16"}},
            {"id": "num_workers", "knobs": {"num_workers": 1, "persistent_workers": True}},
            {"id": "prefetch_factor", "knobs": {"prefetch_factor": 4}}]
    assert pick(recs)["id"] == "num_workers" and pick(recs[:1]) is None


def test_knobs_replace_the_scripts_arguments_however_it_passed_them():
    import torch.utils.data

    signature = inspect.signature(torch.utils.data.DataLoader.__init__)
    positional = with_knobs(signature, ("loader", "dataset", 8, False, None, None, 0), {}, {"num_workers": 2})
    assert positional.arguments["num_workers"] == 2 and positional.arguments["batch_size"] == 8
    inline = with_knobs(signature, ("loader", "dataset"), {"persistent_workers": True},
                        {"num_workers": 0, "prefetch_factor": 4})
    assert "prefetch_factor" not in inline.arguments and "persistent_workers" not in inline.arguments


def test_the_hook_builds_every_dataloader_of_an_unmodified_script_with_the_knobs(tmp_path):
    script = tmp_path / "loaders.py"
    script.write_text(textwrap.dedent("""\
        import torch
        from torch.utils.data import DataLoader
        class Mine(DataLoader):
            pass
        data = torch.arange(16.0)
        for loader in (DataLoader(data, 4, False, None, None, 0), Mine(data, batch_size=4)):
            print(loader.num_workers, loader.persistent_workers, loader.prefetch_factor, sum(map(len, loader)))
    """))
    env = {KNOBS_ENV: json.dumps({"num_workers": 2, "persistent_workers": True, "prefetch_factor": 3})}
    install_child_hooks(tmp_path / "hooks", env)
    done = subprocess.run([sys.executable, str(script)], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["2 True 3 16", "2 True 3 16"]  # what the script computes is the same


# Input-bound on the training thread: each sample burns ~2 ms of Python in __getitem__, the step's
# compute is a third of that per batch, num_workers=0. ``--slow-in-workers`` stands for a dataset whose
# per-process state is costly in worker processes (three times the work there): workers make it slower.
INPUT_BOUND = textwrap.dedent("""\
    import sys, time, torch
    from torch.utils.data import DataLoader, Dataset, get_worker_info
    torch.set_num_threads(1)
    slow_in_workers = "--slow-in-workers" in sys.argv

    def burn(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    class Burning(Dataset):
        def __len__(self):
            return 256
        def __getitem__(self, i):
            burn(0.002 * (3 if slow_in_workers and get_worker_info() is not None else 1))
            return torch.full((64,), float(i))

    model = torch.nn.Linear(64, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    end = time.monotonic() + 4
    while time.monotonic() < end:
        for x in DataLoader(Burning(), batch_size=8, num_workers=0):
            burn(0.006)  # the step's compute
            model(x).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            if time.monotonic() >= end:
                break
""")


def tried(tmp_path, *argv):
    script = tmp_path / "train.py"
    script.write_text(INPUT_BOUND)
    out = tmp_path / "out"
    done = run_perfwatch("profile", "--no-pyspy", "--out", str(out), "--try", "--try-pairs", "2", "--try-seconds",
                         "1.5", "--", sys.executable, str(script), *argv, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    return done, json.loads((out / "report.json").read_text()), out


@pytest.mark.slow
def test_try_measures_the_recommended_workers_on_an_input_bound_script(tmp_path):
    done, report, out = tried(tmp_path)
    t = report["try"]
    assert t["recommendation"] == "num_workers" and t["knobs"]["persistent_workers"] is True
    assert 1 <= t["knobs"]["num_workers"] <= report["measurements"]["resources"]["cores"] - 1  # what the cores allow
    windows = t["windows"]
    assert [w["side"] for w in windows] == ["original", "tried", "tried", "original"]  # interleaved, paired
    assert all(w["steps_per_second"] and w["steps"] >= 3 for w in windows)
    assert all(w["knobbed_loaders"] >= 1 for w in windows if w["side"] == "tried")
    rates = {side: [w["steps_per_second"] for w in windows if w["side"] == side] for side in ("original", "tried")}
    assert t["measured"] == speedup(rates["original"], rates["tried"])  # exactly the windows' rates
    m = t["measured"]
    assert m["low"] <= m["speedup"] <= m["high"] and m["pairs"] == 2
    assert t["predicted_at_most"] > 1.0 and t["verdict"] == verdict(m)
    # a worker loads while the training thread computes: faster where the second core is free (it is on a
    # quiet machine); on one busy with other work the two share a core, and --try says it measured slower
    kept = [r for r in report["recommendations"] if r["id"] == "num_workers"]
    assert len(kept) == (t["verdict"] != "slower")
    for rec in kept:
        assert t["predicted_at_most"] == rec["expected_gain"]["speedup_at_most"] and rec["measured"]["measured"] == m
    assert f"measured {m['speedup']:.2f}x" in done.stderr and "predicted at most" in done.stderr
    assert "Tried (--try)" in (out / "report.md").read_text()
    assert (out / "try" / "window-01-original" / "output.log").exists() and "try/" in report["artifacts"]


@pytest.mark.slow
def test_try_drops_a_knob_that_measured_slower_and_says_so(tmp_path):
    done, report, _ = tried(tmp_path, "--slow-in-workers")
    t = report["try"]
    assert t["verdict"] == "slower" and t["measured"]["speedup"] < 1.0
    assert "num_workers" not in [r["id"] for r in report["recommendations"]]
    assert "measured slower: not recommended" in done.stderr and "measured slower" in t["says"]


@pytest.mark.slow
def test_try_on_a_run_without_a_loader_knob_to_try_says_so_and_runs_nothing_more(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""\
        import time, torch
        model, x = torch.nn.Linear(256, 256), torch.randn(64, 256)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        end = time.monotonic() + 2
        while time.monotonic() < end:
            model(x).sum().backward()
            optimizer.step()
    """))
    out = tmp_path / "out"
    done = run_perfwatch("profile", "--no-pyspy", "--out", str(out), "--try", "--", sys.executable, str(script),
                         cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["try"] == {"recommendation": None, "verdict": "nothing to try",
                             "reason": "no recommendation sets DataLoader arguments (num_workers, pin_memory, "
                                       "prefetch_factor, persistent_workers)"}
    assert "--try: nothing to try: no recommendation sets DataLoader arguments" in done.stderr
    assert not (out / "try").exists() and "Nothing to try" in (out / "report.md").read_text()
