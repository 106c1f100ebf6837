"""diagnose.py rules on literal measurements: each rule fires at its threshold, says why
with numbers, and bounds its gain honestly."""

from __future__ import annotations

import math

import pytest

from perfwatch.profile.diagnose import (
    HIGH_INPUT_SHARE,
    MIN_STACK_SAMPLES,
    MODERATE_INPUT_SHARE,
    SOURCE_WEIGHT,
    Measurements,
    ModelFacts,
    Resources,
    StackEvidence,
    amdahl,
    autocast,
    confidence,
    diagnose,
    gain,
    phase_shares,
    summarize,
)


def evidence(phases: dict[str, int], **kwargs) -> StackEvidence:
    return StackEvidence(rate=100.0, phases=phases, **kwargs)


def resources(**kwargs) -> Resources:
    values = {"seconds": 60.0, "cores": 8, "host_busy_ratio": 0.5, "host_iowait_ratio": 0.0,
              "main_cpu_cores": 1.0, "memory_available_ratio_min": 0.5}
    values.update(kwargs)
    return Resources(**values)


def run(phases: dict[str, int], res: Resources | None = None, **kwargs) -> dict:
    """Diagnose main-thread samples per phase; ``kwargs`` go to StackEvidence or Measurements."""
    stack_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in StackEvidence.__dataclass_fields__}
    return diagnose(Measurements(resources=res or resources(), stacks=evidence(phases=phases, **stack_kwargs),
                                 **kwargs))


def finding(report: dict, id: str) -> dict | None:
    return next((f for f in report["findings"] if f["id"] == id), None)


def recommendation(report: dict, id: str) -> dict | None:
    return next((r for r in report["recommendations"] if r["id"] == id), None)


# ---------------------------------------------------------------- numbers


def test_amdahl_bounds_removing_and_speeding_up_a_fraction():
    assert amdahl(0.4) == pytest.approx(1 / 0.6)  # removing a 40% data wait: <= 1.67x
    assert amdahl(0.5, speedup=2.0) == pytest.approx(1 / 0.75)
    assert amdahl(0.0) == 1.0
    assert amdahl(1.0) == math.inf


def test_gain_states_the_bound_and_its_reasoning_and_caps_cpu_bound_work_by_the_cores():
    g = gain(0.4, "data loading")
    assert g["speedup_at_most"] == 1.67 and g["basis"] == "amdahl" and "1/(1 - 0.40)" in g["reasoning"]
    capped = gain(0.8, "data loading", cpu_cap=2.0)  # Amdahl says 5x; the cores allow 2x
    assert capped["speedup_at_most"] == 2.0 and capped["basis"] == "amdahl+cores"
    assert gain(0.8, "data loading", cpu_cap=9.0)["speedup_at_most"] == 5.0


def test_confidence_falls_to_half_where_the_margin_is_no_larger_than_what_nothing_split():
    shares = {"data_loading": 0.55, "compute": 0.4, "other": 0.05}
    agreed = confidence(shares, 100, "steptimer")
    assert confidence(shares, 100, "steptimer", slack=0.05) < agreed
    assert confidence(shares, 100, "steptimer", slack=0.15) == pytest.approx(SOURCE_WEIGHT["steptimer"] / 2)
    assert confidence(shares, 100, "steptimer", slack=0.45) < 0.01


def test_a_disagreement_between_timing_and_stacks_widens_the_doubt_but_takes_nothing_from_the_margin():
    """The stacks' error, measured where they and the exact timing both saw a phase, counts as a standard
    deviation beside the sampling error: a margin as large as the disagreement is more likely right than not."""
    shares = {"data_loading": 0.55, "compute": 0.4, "other": 0.05}
    agreed, weight = confidence(shares, 100, "steptimer"), SOURCE_WEIGHT["steptimer"]
    assert weight / 2 < confidence(shares, 100, "steptimer", spread=0.15) < confidence(shares, 100, "steptimer",
                                                                                         spread=0.05) < agreed
    assert confidence(shares, 100, "steptimer", spread=50.0) == pytest.approx(weight / 2, abs=0.01)
    tie = {"data_loading": 0.5, "compute": 0.5}
    assert confidence(tie, 100, "steptimer", spread=0.1) == pytest.approx(weight / 2)


def test_confidence_grows_with_the_margin_and_the_samples_and_respects_the_source():
    clear = {"data_loading": 0.7, "compute": 0.25, "other": 0.05}
    close = {"data_loading": 0.45, "compute": 0.42, "other": 0.13}
    assert confidence(clear, 1000, "pyspy") == pytest.approx(SOURCE_WEIGHT["pyspy"], abs=0.001)
    assert confidence(close, 1000, "pyspy") < confidence(clear, 1000, "pyspy")
    assert confidence(close, 100, "pyspy") < confidence(close, 10_000, "pyspy")
    assert confidence(clear, 1000, "steptimer") > confidence(clear, 1000, "pyspy") > confidence(clear, 1000, "collector")
    tie = {"data_loading": 0.5, "compute": 0.5}
    assert confidence(tie, 1000, "pyspy") == pytest.approx(0.5 * SOURCE_WEIGHT["pyspy"], abs=0.001)
    assert confidence(clear, 0, "pyspy") == 0.0


def test_summarize_turns_counters_into_rates_and_measures_workers_only_while_they_exist():
    rows = [
        {"t": 0.0, "cpu_busy": None, "cpu_iowait": None, "main_cpu": 1.0, "workers": 0, "worker_cpu": 0.0,
         "mem_total": 100, "mem_available": 50, "swap_io": 0, "load1": 1.0, "main_read": 0, "main_run_delay": 0.0},
        {"t": 10.0, "cpu_busy": 0.6, "cpu_iowait": 0.1, "main_cpu": 6.0, "workers": 2, "worker_cpu": 0.0,
         "mem_total": 100, "mem_available": 8, "swap_io": 0, "load1": 3.0, "gpu_util": [0.2, None],
         "main_read": 9000, "main_run_delay": 1.0},  # start-up: imports read the libraries
        {"t": 20.0, "cpu_busy": 0.8, "cpu_iowait": 0.3, "main_cpu": 11.0, "workers": 2, "worker_cpu": 18.0,
         "mem_total": 100, "mem_available": 40, "swap_io": 4000, "load1": 2.0, "gpu_util": [0.4],
         "main_read": 10000, "main_run_delay": 3.0},
    ]
    r = summarize(rows, cores=4)
    assert r.seconds == 20.0 and r.cores == 4
    assert r.main_cpu_cores == pytest.approx(0.5)
    assert r.worker_cpu_cores == pytest.approx(1.8)  # 18 s over the 10 s the workers existed
    assert r.cores_per_worker == pytest.approx(0.9) and r.workers_max == 2
    assert r.host_busy_ratio == pytest.approx(0.7) and r.host_iowait_ratio == pytest.approx(0.2)
    assert r.memory_available_ratio_min == pytest.approx(0.08) and r.load1_max == 3.0
    assert r.swap_io_bytes_per_second == pytest.approx(200.0)
    assert r.gpu_utilization_mean == pytest.approx(0.3)
    # the training process's reads and waits over the later half of its rows, past the start-up
    assert r.main_read_bytes_per_second == pytest.approx(100.0) and r.main_run_delay_cores == pytest.approx(0.2)
    assert summarize([], cores=4) == Resources(seconds=0.0, cores=4)


def test_phase_shares_prefer_the_steptimer_then_stacks_then_nothing():
    timer = {"steps": 50, "wall": 10.0, "totals": {"data_wait": 4.0, "h2d": 1.0, "forward": 2.0, "backward": 2.0,
                                                   "optimizer": 0.5, "other": 0.5}}
    st = evidence(phases={"data_loading": 350, "forward": 400, "backward": 250})
    found = phase_shares(Measurements(stacks=st, steptimer=timer))
    assert found.source == "steptimer" and found.observations == 50 and found.phases["data_loading"] == 0.4
    assert found.disagreement == pytest.approx(0.05)  # the script's data wait 40%, the stacks' 35%
    found = phase_shares(Measurements(stacks=st, steptimer={**timer, "steps": 2}))
    assert found.source == "pyspy" and found.observations == 1000 and found.phases["forward"] == pytest.approx(0.4)
    nothing = phase_shares(Measurements(stacks=evidence(phases={"forward": 10})))
    assert (nothing.phases, nothing.source, nothing.observations) == ({}, "collector", 0)


INJECTED = {"steps": 40, "wall": 10.0, "injected": True, "exact_phases": ["data_wait", "optimizer"],
            "totals": {"data_wait": 3.0, "optimizer": 1.0, "other": 6.0}}


def test_the_injected_timings_exact_phases_win_and_the_stacks_split_the_rest():
    st = evidence(phases={"data_loading": 200, "forward": 500, "backward": 200, "optimizer": 100})
    found = phase_shares(Measurements(stacks=st, steptimer=INJECTED))
    assert found.phases["data_loading"] == 0.3 and found.phases["optimizer"] == 0.1  # exact
    assert found.phases["forward"] == pytest.approx(0.6 * 5 / 7)  # the rest, as the stacks split it
    assert found.observations == 40 and found.disagreement == pytest.approx(0.1)  # 30% exact, 20% in the stacks
    # an LBFGS closure: the optimizer step was not timed, so the stacks' split covers it too
    closure = phase_shares(Measurements(stacks=st, steptimer={**INJECTED, "exact_phases": ["data_wait"]}))
    assert closure.phases["optimizer"] == pytest.approx(0.7 * 1 / 8)


def test_the_injected_timing_without_enough_stacks_leaves_the_rest_of_the_step_unsplit():
    few = evidence(phases={"forward": 30})
    found = phase_shares(Measurements(stacks=few, steptimer=INJECTED))
    assert found.phases == {"data_loading": 0.3, "optimizer": 0.1} and found.unsplit == pytest.approx(0.6)
    unsure = diagnose(Measurements(resources=resources(), stacks=few, steptimer=INJECTED))
    b = unsure["bottleneck"]
    assert b["primary"] == "unknown" and b["confidence"] == 0.0  # the unsplit 60% could be any category
    assert "the other 60% of the step could be any category" in b["basis"] and "30 taken" in b["basis"]
    assert b["missing"] == {"stack_samples": {"have": 30, "need": MIN_STACK_SAMPLES}}
    waiting = {**INJECTED, "totals": {"data_wait": 9.0, "optimizer": 0.2, "other": 0.8}}
    sure = diagnose(Measurements(resources=resources(), stacks=few, steptimer=waiting))["bottleneck"]
    assert sure["primary"] == "data_loading" and sure["shares"]["unsplit"] == 0.08  # 90% beats anything the rest is
    assert 0.9 < sure["confidence"] <= SOURCE_WEIGHT["steptimer"]


# ---------------------------------------------------------------- the primary bottleneck


def test_primary_is_the_largest_category_with_its_shares_source_and_confidence():
    report = run({"data_loading": 700, "forward": 100, "backward": 100, "optimizer": 50, "other": 50})
    b = report["bottleneck"]
    assert b["primary"] == "data_loading" and b["source"] == "pyspy" and b["samples"] == 1000
    assert b["shares"] == {"data_loading": 0.7, "host_to_device": 0.0, "compute": 0.25, "other": 0.05}
    assert 0.85 <= b["confidence"] <= 0.9
    assert report["phases"]["forward"] == 0.1


def test_syncs_count_as_compute_and_checkpointing_as_other():
    compute = run({"forward": 300, "sync": 300, "checkpoint": 250, "other": 150})
    assert compute["bottleneck"]["primary"] == "compute"  # 0.6 vs 0.4
    other = run({"forward": 300, "checkpoint": 500, "logging": 200})
    assert other["bottleneck"]["primary"] == "other"


def test_without_stacks_a_resource_that_speaks_for_one_category_decides_with_confidence_by_its_margin():
    saturated = diagnose(Measurements(resources=resources(workers_max=4, worker_cpu_cores=3.8)))
    assert saturated["bottleneck"]["primary"] == "data_loading"
    assert saturated["bottleneck"]["shares"] == {} and saturated["bottleneck"]["source"] == "collector"
    barely = diagnose(Measurements(resources=resources(workers_max=4, worker_cpu_cores=3.24)))["bottleneck"]
    assert barely["confidence"] < saturated["bottleneck"]["confidence"] <= SOURCE_WEIGHT["collector"]
    assert barely["confidence"] == pytest.approx(SOURCE_WEIGHT["collector"] * 0.51, abs=0.01)  # 0.81 cores: at the line
    iowait = diagnose(Measurements(resources=resources(host_iowait_ratio=0.4)))
    assert iowait["bottleneck"]["primary"] == "data_loading"
    busy_gpu = diagnose(Measurements(resources=resources(gpu_utilization_mean=0.95), uses_gpu=True))
    assert busy_gpu["bottleneck"]["primary"] == "compute"


def test_too_little_evidence_is_unknown_and_says_what_is_missing_never_a_default_guess():
    # a 5 s run: 46 stack samples, half of them in data loading; the Collector saw nothing telling
    short = diagnose(Measurements(resources=resources(seconds=5.0), stacks=evidence({"data_loading": 23, "forward": 23}),
                                  steptimer={"steps": 2, "wall": 0.5, "totals": {"data_wait": 0.2}}))
    b = short["bottleneck"]
    assert b["primary"] == "unknown" and b["confidence"] == 0.0 and b["shares"] == {}
    assert b["missing"] == {"steps": {"have": 2, "need": 3}, "stack_samples": {"have": 46, "need": MIN_STACK_SAMPLES}}
    assert "2 timed steps (needs 3) and 46 stack samples of the training thread (needs 50)" in b["basis"]
    assert "at 100 Hz, 50 samples take 0.5 s of training" in b["basis"]
    nothing = diagnose(Measurements())
    assert nothing["bottleneck"]["primary"] == "unknown" and nothing["findings"] == []
    assert "and no stack samples of a Python training thread (needs 50)" in nothing["bottleneck"]["basis"]


def test_a_command_that_failed_before_training_says_so():
    crashed = diagnose(Measurements(resources=resources(seconds=1.8), stacks=evidence({"other": 180}), exit_code=1))
    b = crashed["bottleneck"]
    assert b["primary"] == "unknown" and "the command failed (exit code 1) before training" in b["basis"]
    (found,) = crashed["findings"]
    assert found["id"] == "command_failed" and found["severity"] == "high" and found["evidence"]["exit_code"] == 1
    # one that trained first is diagnosed, and the finding says until when
    late = diagnose(Measurements(resources=resources(), stacks=evidence({"forward": 900, "other": 100}), exit_code=3,
                                 steptimer={"steps": 2, "wall": 1.0, "totals": {}}))
    assert late["bottleneck"]["primary"] == "compute"
    assert finding(late, "command_failed")["title"].startswith("The command failed with exit code 3 after 2 timed")


# ---------------------------------------------------------------- input-bound and why


@pytest.mark.parametrize("share, severity", [(0.04, None), (MODERATE_INPUT_SHARE, "moderate"), (0.19, "moderate"),
                                             (HIGH_INPUT_SHARE, "high"), (0.6, "high")])
def test_input_bound_thresholds_follow_the_tf_input_pipeline_analyzer(share, severity):
    data = round(share * 1000)
    report = run({"data_loading": data, "forward": 1000 - data}, gil={"data_loading": 0.9})
    found = finding(report, "input_bound")
    assert (found["severity"] if found else None) == severity


def test_inline_cpu_bound_loading_recommends_workers_with_an_amdahl_bound_capped_by_the_cores():
    # 40% data wait on the training thread, GIL held (transforms); the tree uses 1 of 2 cores.
    report = run({"data_loading": 400, "forward": 300, "backward": 300}, gil={"data_loading": 0.85},
                 res=resources(cores=8, main_cpu_cores=1.0))
    assert finding(report, "input_bound")["evidence"]["cause"] == "inline_cpu"
    rec = recommendation(report, "num_workers")
    assert rec["knobs"] == {"num_workers": 1, "persistent_workers": True}  # 0.4/0.6 -> 1 worker keeps pace
    assert rec["expected_gain"]["speedup_at_most"] == 1.67  # 1/(1-0.4); 8 cores allow more
    capped = run({"data_loading": 800, "forward": 200}, gil={"data_loading": 0.85},
                 res=resources(cores=2, main_cpu_cores=1.0))
    rec = recommendation(capped, "num_workers")
    assert rec["knobs"]["num_workers"] == 1 and "capped at cores - 1" in rec["evidence"]
    # Amdahl 5x, 2 cores / 1 core in use 2x, but one worker loads a batch as slowly as the training thread
    # does now: the step shrinks from 1.0 to the worker's 0.8 at best
    assert rec["expected_gain"]["speedup_at_most"] == 1.25 and rec["expected_gain"]["basis"] == "amdahl+cores+workers"
    assert "and 1 worker(s) cannot supply more" in rec["expected_gain"]["reasoning"]


def test_inline_native_decoding_that_releases_the_gil_is_cpu_bound_by_the_process_cpu_not_storage():
    # JPEG decoding in PIL with num_workers=0: the GIL is rarely held, but the process uses 1.41
    # cores with 0.1% iowait, which contradicts storage; the advice is capped by the cores.
    report = run({"data_loading": 660, "forward": 340}, gil={"data_loading": 0.08},
                 res=resources(cores=2, main_cpu_cores=1.41, host_iowait_ratio=0.001))
    assert finding(report, "input_bound")["evidence"]["cause"] == "inline_cpu"
    assert recommendation(report, "num_workers")["knobs"]["num_workers"] == 1  # cores - 1, not 2


def test_inline_loading_that_releases_the_gil_and_reads_storage_is_storage_and_needs_no_core_per_worker():
    reading = resources(cores=2, main_cpu_cores=0.3, host_busy_ratio=0.15, main_read_bytes_per_second=40e6)
    report = run({"data_loading": 800, "forward": 200}, gil={"data_loading": 0.05}, res=reading)
    assert finding(report, "input_bound")["evidence"]["cause"] == "inline_storage"
    assert "waits on storage" in finding(report, "input_bound")["title"]
    rec = recommendation(report, "num_workers")
    assert rec["knobs"]["num_workers"] == 4  # 0.8/0.2: latency-bound workers need no core each
    assert rec["expected_gain"]["speedup_at_most"] == 5.0  # 1.7 idle cores + the 0.3 in use: Amdahl's 5x fits
    iowait = run({"data_loading": 800, "forward": 200}, gil={"data_loading": 0.05},
                 res=resources(cores=2, main_cpu_cores=0.3, host_iowait_ratio=0.3))
    assert finding(iowait, "input_bound")["evidence"]["cause"] == "inline_storage"
    busy = run({"data_loading": 800, "forward": 200}, gil={"data_loading": 0.05},
               res=resources(cores=2, main_cpu_cores=0.99, main_read_bytes_per_second=26e6))
    assert finding(busy, "input_bound")["evidence"]["cause"] == "inline_cpu"  # a thread that busy is not waiting


def test_inline_loading_blocked_on_neither_cpu_nor_storage_says_so_and_counts_every_core_it_could_ask_for():
    # the GIL released, 0.3 cores used, no iowait, no local reads: remote storage, the network or a lock
    report = run({"data_loading": 800, "forward": 200}, gil={"data_loading": 0.05},
                 res=resources(cores=2, main_cpu_cores=0.3, host_busy_ratio=0.5))
    found = finding(report, "input_bound")
    assert found["evidence"]["cause"] == "inline_blocked" and "not reading local storage" in found["title"]
    expected = recommendation(report, "num_workers")["expected_gain"]
    # waiting needs no core: though other processes keep 0.7 cores busy, the bound is Amdahl's 5x (0.8
    # of the time waiting), not the 4.33x of the cores they leave (1.3 / 0.3); 2 / 0.3 cores is above it
    assert expected["speedup_at_most"] == 5.0, expected
    assert "(Amdahl)" in expected["reasoning"] and "kept" not in expected["reasoning"]


def test_cpu_bound_inline_loading_counts_only_the_cores_other_processes_leave():
    report = run({"data_loading": 800, "forward": 200}, gil={"data_loading": 0.9},
                 res=resources(cores=2, main_cpu_cores=0.99, host_busy_ratio=0.75))
    expected = recommendation(report, "num_workers")["expected_gain"]
    assert expected["speedup_at_most"] < 1.6 and "other processes kept" in expected["reasoning"], expected


def test_inline_loading_starved_of_cpu_is_cpu_bound_not_blocked():
    # decoding that releases the GIL on a host other work keeps busy: 0.39 cores used, 0.5 waited for
    starved = resources(cores=2, main_cpu_cores=0.39, main_run_delay_cores=0.5, host_busy_ratio=0.99)
    report = run({"data_loading": 900, "forward": 100}, gil={"data_loading": 0.07}, res=starved)
    assert finding(report, "input_bound")["evidence"]["cause"] == "inline_cpu"
    rec = recommendation(report, "num_workers")
    assert rec["knobs"]["num_workers"] == 1 and rec["expected_gain"]["speedup_at_most"] == 1.05  # no core to give
    # without schedstat a full host is taken for starvation; with it, a thread that did not wait is blocked
    unread = resources(cores=2, main_cpu_cores=0.39, host_busy_ratio=0.99)
    assert finding(run({"data_loading": 900, "forward": 100}, gil={"data_loading": 0.07}, res=unread),
                   "input_bound")["evidence"]["cause"] == "inline_cpu"
    waited_not = resources(cores=2, main_cpu_cores=0.39, main_run_delay_cores=0.01, host_busy_ratio=0.99)
    assert finding(run({"data_loading": 900, "forward": 100}, gil={"data_loading": 0.07}, res=waited_not),
                   "input_bound")["evidence"]["cause"] == "inline_blocked"


def test_workers_waiting_for_a_core_are_cpu_bound_not_storage():
    starved = resources(cores=2, workers_max=2, worker_cpu_cores=0.6, worker_run_delay_cores=1.2, host_busy_ratio=0.99)
    report = run({"data_loading": 700, "forward": 300}, res=starved,
                 workers={"fetch": 900, "waiting_for_indices": 100})
    found = finding(report, "input_bound")
    assert found["evidence"]["cause"] == "workers_cpu_saturated" and found["evidence"]["worker_run_delay_cores"] == 1.2
    assert "each use 0.30 cores and wait 0.60 for one" in recommendation(report, "cheaper_transforms")["evidence"]
    blocked = resources(cores=2, workers_max=2, worker_cpu_cores=0.6, worker_run_delay_cores=0.02)
    assert finding(run({"data_loading": 700, "forward": 300}, res=blocked, workers={"fetch": 900}),
                   "input_bound")["evidence"]["cause"] == "storage"


def test_workers_saturated_by_transforms_get_more_workers_only_with_idle_cores():
    saturated = {"workers_max": 2, "worker_cpu_cores": 1.9, "main_cpu_cores": 0.5}
    busy = run({"data_loading": 500, "forward": 500}, res=resources(cores=4, host_busy_ratio=0.95, **saturated))
    assert finding(busy, "input_bound")["evidence"]["cause"] == "workers_cpu_saturated"
    assert recommendation(busy, "num_workers") is None and recommendation(busy, "cheaper_transforms")
    idle = run({"data_loading": 500, "forward": 500}, res=resources(cores=8, host_busy_ratio=0.3, **saturated))
    assert recommendation(idle, "num_workers")["knobs"] == {"num_workers": 4}  # 2 / (1 - 0.5)


def test_blocked_workers_point_at_storage_with_workers_prefetch_and_format():
    report = run({"data_loading": 800, "forward": 200}, workers={"fetch": 900, "waiting_for_indices": 100},
                 res=resources(cores=2, workers_max=2, worker_cpu_cores=0.1, host_busy_ratio=0.4))
    found = finding(report, "input_bound")
    assert found["evidence"]["cause"] == "storage" and found["evidence"]["worker_busy_share"] == 0.9
    rec = recommendation(report, "num_workers")  # 2 / (1 - 0.8) = 10 keep pace; 4 per core on 2 cores
    assert rec["knobs"] == {"num_workers": 8} and "10 would hide all of it" in rec["evidence"]
    assert recommendation(report, "prefetch_factor") and recommendation(report, "storage_format")


def test_high_iowait_means_storage_even_when_workers_use_some_cpu():
    report = run({"data_loading": 500, "forward": 500},
                 res=resources(workers_max=2, worker_cpu_cores=1.2, host_iowait_ratio=0.25))
    assert finding(report, "input_bound")["evidence"]["cause"] == "storage"


def test_idle_cores_and_unsaturated_workers_mean_too_few_workers():
    report = run({"data_loading": 300, "forward": 700},
                 workers={"fetch": 700, "waiting_for_indices": 300},
                 res=resources(cores=8, workers_max=2, worker_cpu_cores=1.4, host_busy_ratio=0.3))
    assert finding(report, "input_bound")["evidence"]["cause"] == "too_few_workers"
    assert recommendation(report, "num_workers")["knobs"]["num_workers"] > 2


def test_worker_start_up_each_epoch_recommends_persistent_workers():
    report = run({"data_loading": 300, "forward": 700}, data_detail={"worker_startup": 100, "waiting_for_workers": 200},
                 res=resources(workers_max=2, worker_cpu_cores=1.9))
    rec = recommendation(report, "persistent_workers")
    assert rec["knobs"] == {"persistent_workers": True} and rec["expected_gain"]["speedup_at_most"] == 1.11


# ---------------------------------------------------------------- the other rules


def test_host_to_device_copies_recommend_pinned_memory_and_non_blocking():
    report = run({"host_to_device": 250, "forward": 750}, uses_gpu=True)
    assert finding(report, "host_to_device")["severity"] == "high"
    rec = recommendation(report, "pin_memory")
    assert rec["knobs"] == {"pin_memory": True, "non_blocking": True}
    assert rec["expected_gain"]["speedup_at_most"] == 1.33
    assert finding(run({"host_to_device": 50, "forward": 950}, uses_gpu=True), "host_to_device") is None


def test_without_a_gpu_copies_are_host_memory_copies_and_no_device_knob_is_advised():
    report = run({"host_to_device": 250, "sync": 200, "forward": 550}, model=ModelFacts("float32", "cpu"))
    assert report["phases"]["copy"] == 0.25 and "host_to_device" not in report["phases"]
    assert report["bottleneck"]["shares"]["host_to_device"] == 0.0 and report["bottleneck"]["shares"]["other"] == 0.25
    ids = {r["id"] for r in report["recommendations"]}
    assert not ids & {"pin_memory", "avoid_item", "batch_size"}
    # no GPU memory held and no injected timing: the same
    assert recommendation(run({"host_to_device": 250, "forward": 750}), "pin_memory") is None


def test_an_underused_gpu_recommends_a_larger_batch_only_when_the_training_uses_it():
    report = run({"forward": 1000}, res=resources(gpu_utilization_mean=0.3), uses_gpu=True)
    assert finding(report, "gpu_underused")["evidence"]["gpu_utilization"] == 0.3
    assert recommendation(report, "batch_size")
    assert finding(run({"forward": 1000}, res=resources(gpu_utilization_mean=0.3)), "gpu_underused") is None
    assert finding(run({"forward": 1000}, res=resources(gpu_utilization_mean=0.7), uses_gpu=True),
                   "gpu_underused") is None


def test_syncs_every_step_are_a_finding_with_their_own_recommendation():
    report = run({"forward": 800, "sync": 200}, uses_gpu=True)
    assert finding(report, "host_device_syncs")["evidence"]["sync_share"] == 0.2
    assert recommendation(report, "avoid_item")["expected_gain"]["speedup_at_most"] == 1.25
    assert finding(run({"forward": 960, "sync": 40}, uses_gpu=True), "host_device_syncs") is None


@pytest.mark.parametrize("available, swap_io, severity", [(0.5, 0.0, None), (0.08, 0.0, "moderate"),
                                                          (0.04, 0.0, "high"), (0.5, 1e6, "high")])
def test_memory_pressure(available, swap_io, severity):
    report = run({"forward": 1000}, res=resources(memory_available_ratio_min=available,
                                                  swap_io_bytes_per_second=swap_io))
    found = finding(report, "memory_pressure")
    assert (found["severity"] if found else None) == severity


def test_cpu_oversubscription_needs_more_threads_than_cores_and_a_saturated_host():
    over = resources(cores=4, host_busy_ratio=0.97, workers_max=3, worker_cpu_cores=2.5)
    report = run({"forward": 1000}, res=over, intra_op_threads=4, intra_op_threads_source="OMP_NUM_THREADS")
    found = finding(report, "cpu_oversubscribed")
    assert found["evidence"]["intra_op_threads"] == 4 and found["evidence"]["worker_cpu_cores"] == 2.5
    assert recommendation(report, "torch_threads")["knobs"] == {"torch.set_num_threads": 1}
    assert recommendation(report, "torch_threads")["expected_gain"]["speedup_at_most"] is None
    calm = resources(cores=4, host_busy_ratio=0.6, workers_max=3, worker_cpu_cores=2.5)
    assert finding(run({"forward": 1000}, res=calm, intra_op_threads=4), "cpu_oversubscribed") is None
    fits = resources(cores=4, host_busy_ratio=0.97, workers_max=1, worker_cpu_cores=0.2)
    assert finding(run({"forward": 1000}, res=fits, intra_op_threads=4), "cpu_oversubscribed") is None


def test_checkpointing_and_logging_are_named_from_the_stacks_even_under_a_steptimer():
    report = diagnose(Measurements(
        resources=resources(),
        stacks=evidence(phases={"forward": 300, "checkpoint": 500, "logging": 200}),
        steptimer={"steps": 100, "wall": 10.0, "totals": {"forward": 3.0, "other": 7.0}},
    ))
    assert report["bottleneck"]["source"] == "steptimer" and report["bottleneck"]["primary"] == "other"
    assert finding(report, "checkpoint_time")["evidence"]["checkpoint_share"] == 0.5
    assert recommendation(report, "checkpoint_less_often")["expected_gain"]["speedup_at_most"] == 2.0
    assert recommendation(report, "log_less_often")


def test_the_optimizers_python_loop_and_zero_grad():
    report = run({"forward": 400, "backward": 300, "optimizer": 300}, single_tensor_optimizer=250, zero_grad=40)
    assert finding(report, "optimizer_python_loop") and recommendation(report, "foreach_optimizer")["knobs"] == {
        "foreach": True}
    assert recommendation(report, "zero_grad_set_to_none")["knobs"] == {"set_to_none": True}
    quiet = run({"forward": 400, "backward": 300, "optimizer": 300}, single_tensor_optimizer=10, zero_grad=5)
    assert finding(quiet, "optimizer_python_loop") is None and finding(quiet, "zero_grad") is None


def test_compute_bound_loops_get_compute_knobs_and_healthy_ones_say_so():
    report = run({"data_loading": 20, "forward": 500, "backward": 450, "other": 30}, convolution=True, uses_gpu=True)
    found = finding(report, "compute_bound")
    assert found["severity"] == "info" and found["evidence"]["healthy"] is True
    ids = [r["id"] for r in report["recommendations"]]
    assert {"amp_bf16", "channels_last", "torch_compile"} <= set(ids)
    assert recommendation(report, "amp_bf16")["expected_gain"]["speedup_at_most"] == pytest.approx(
        round(amdahl(0.95, 2.0), 2))
    compiled = run({"forward": 500, "backward": 500}, compiled=True)
    assert recommendation(compiled, "torch_compile") is None and recommendation(compiled, "channels_last") is None
    half = run({"data_loading": 300, "forward": 700})
    assert finding(half, "compute_bound")["evidence"]["healthy"] is False


def test_gil_contention_from_other_threads():
    report = run({"forward": 1000}, gil_other_threads=0.35)
    assert finding(report, "gil_contention")["evidence"]["other_threads_gil_share"] == 0.35
    assert finding(run({"forward": 1000}, gil_other_threads=0.05), "gil_contention") is None


def test_recommendations_are_ordered_by_expected_gain_and_each_knob_appears_once():
    report = run({"data_loading": 300, "host_to_device": 150, "forward": 300, "checkpoint": 250},
                 gil={"data_loading": 0.9})
    bounds = [r["expected_gain"]["speedup_at_most"] or 1.0 for r in report["recommendations"]]
    assert bounds == sorted(bounds, reverse=True)
    ids = [r["id"] for r in report["recommendations"]]
    assert len(ids) == len(set(ids))
    for rec in report["recommendations"]:
        assert set(rec) == {"id", "title", "evidence", "expected_gain", "finding", "knobs"}
        assert any(f["id"] == rec["finding"] for f in report["findings"])


def test_other_made_of_unrecognized_code_halves_the_confidence():
    named = run({"forward": 200, "checkpoint": 800})
    unnamed = run({"forward": 200, "other": 800})
    assert unnamed["bottleneck"]["primary"] == named["bottleneck"]["primary"] == "other"
    assert unnamed["bottleneck"]["confidence"] == pytest.approx(named["bottleneck"]["confidence"] / 2, abs=0.001)
    assert "no rule recognizes" in unnamed["bottleneck"]["basis"]


@pytest.mark.parametrize("model, gpu, cpu_bf16, expected", [
    (ModelFacts("float32", "cuda", "8.0"), True, (), "bfloat16"),
    (ModelFacts("float32", "cuda", "7.0"), True, (), "float16"),  # Volta: fp16 tensor cores, no bf16
    (ModelFacts("float32", "cuda", "6.1"), True, (), None),  # Pascal: no tensor cores
    (ModelFacts("float64", "cuda", "9.0"), True, (), None),  # autocast leaves float64 alone
    (ModelFacts("bfloat16", "cuda", "9.0"), True, (), None),  # already there
    (ModelFacts("float32", "cpu"), False, ("avx512_bf16",), "bfloat16"),
    (ModelFacts("float32", "cpu"), False, (), None),  # a CPU without bf16 instructions emulates them
    (ModelFacts("float64", "cpu"), False, ("amx_bf16",), None),  # an LBFGS model in float64
    (None, True, (), "bfloat16"),  # not measured: said so
])
def test_mixed_precision_is_advised_only_where_its_premise_holds(model, gpu, cpu_bf16, expected):
    m = Measurements(model=model, uses_gpu=gpu, cpu_bf16=cpu_bf16)
    fit = autocast(m)
    assert (fit[0] if fit else None) == expected
    report = run({"forward": 600, "backward": 400}, model=model, uses_gpu=gpu, cpu_bf16=cpu_bf16)
    ids = {r["id"] for r in report["recommendations"]}
    assert ("amp_bf16" in ids) == (expected == "bfloat16") and ("amp_fp16" in ids) == (expected == "float16")
    if model is None:
        assert "its dtype was not measured" in recommendation(report, "amp_bf16")["evidence"]


def test_every_loading_gain_is_capped_by_the_cores_with_the_cpu_per_step_in_its_reasoning():
    # storage-bound workers: Amdahl allows 5x, but the tree already uses 1.0 of 2 cores
    report = diagnose(Measurements(
        resources=resources(cores=2, main_cpu_cores=0.4, workers_max=2, worker_cpu_cores=0.6, host_busy_ratio=0.5),
        stacks=evidence({"data_loading": 800, "forward": 200}, workers={"fetch": 900, "waiting_for_indices": 100}),
        steptimer={"steps": 100, "wall": 10.0, "totals": {"data_wait": 8.0, "forward": 2.0}}))
    for id in ("num_workers", "prefetch_factor", "storage_format"):
        expected = recommendation(report, id)["expected_gain"]
        assert expected["speedup_at_most"] == 2.0 and expected["basis"] == "amdahl+cores"
    reasoning = recommendation(report, "num_workers")["expected_gain"]["reasoning"]
    assert "use 1.00 of 2 cores (100 ms of CPU per step, 60 ms of it in the workers: 2 cores sustain at most 20 " \
           "steps/s against 10 now)" in reasoning
