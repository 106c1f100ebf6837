"""The Prometheus adapter over real snapshots: real processes, real HTTP on 127.0.0.1,
promtool on real scrapes, a real Pushgateway; NVML stood in for the GPU this machine lacks."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator

import psutil
import pytest
import servers
from helpers import (
    GIB,
    TREE_CHILD,
    StandInNvml,
    assert_promtool_clean,
    documented_metrics,
    samples,
    scrape,
    types,
    value,
    wait_for_scrape,
)
from prometheus_client import CollectorRegistry
from servers import Pushgateway, free_port

from perfwatch.bench.runner import kill_tree
from perfwatch.errors import UserError
from perfwatch.instrument import PHASES, StepRecord
from perfwatch.monitoring.collective import CollectiveTotals
from perfwatch.monitoring.collective_metrics import CollectiveMetrics
from perfwatch.monitoring.collector import Collector
from perfwatch.monitoring.metrics import STEP_BUCKETS, PerfwatchMetrics, TrainingMetrics
from perfwatch.monitoring.serve import MetricsServer, Pusher

# ---------------------------------------------------------------- helpers


@contextmanager
def process_tree() -> Iterator[subprocess.Popen]:
    """A real process with two children, stopped after the block."""
    process = subprocess.Popen([sys.executable, "-c", TREE_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        yield process
    finally:
        kill_tree(process.pid)
        process.wait()


@contextmanager
def serving(*collectors) -> Iterator[str]:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    server = MetricsServer(registry, 0)
    try:
        yield server.url
    finally:
        server.close()


def record(index: int, wall: float, samples: int = 32) -> StepRecord:
    phases = dict.fromkeys(PHASES, 0.0) | {"forward": wall / 2, "backward": wall / 2}
    return StepRecord(index, float(index), wall, phases, samples)


# ---------------------------------------------------------------- tests


def test_scrape_of_a_real_process_tree_parses_and_promtool_is_clean():
    with process_tree() as tree, Collector(tree.pid, interval=0.05) as collector:
        metrics = PerfwatchMetrics(collector, training=TrainingMetrics(rank="0"))
        with serving(metrics) as url:
            text = wait_for_scrape(url, lambda t: value(t, "perfwatch_process_workers") == 2)
    assert_promtool_clean(text)
    kinds = types(text)
    for name in ("perfwatch_host_cpu_seconds", "perfwatch_host_cpu_core_seconds", "perfwatch_host_disk_read_bytes",
                 "perfwatch_host_network_receive_bytes", "perfwatch_host_pressure_stall_seconds",
                 "perfwatch_process_cpu_seconds", "perfwatch_process_context_switches",
                 "perfwatch_train_phase_seconds", "perfwatch_collector_sample_cpu_seconds"):
        assert kinds[name] == "counter", name
    for name in ("perfwatch_host_load_average", "perfwatch_host_memory_bytes", "perfwatch_process_threads",
                 "perfwatch_process_resident_memory_bytes", "perfwatch_process_up", "perfwatch_exporter_info"):
        assert kinds[name] == "gauge", name
    assert kinds["perfwatch_train_step_duration_seconds"] == "histogram"
    assert value(text, "perfwatch_process_up") == 1
    assert value(text, "perfwatch_process_resident_memory_bytes", role="worker") > 0
    assert value(text, "perfwatch_process_cpu_seconds_total", role="main") > 0
    assert value(text, "perfwatch_host_memory_bytes", kind="total") == psutil.virtual_memory().total
    assert value(text, "perfwatch_host_load_average", window="15m") is not None
    assert value(text, "perfwatch_collector_samples_total") >= 1
    assert "perfwatch_process_unique_memory_bytes" not in kinds  # not sampled: absent, not zero
    assert not any(name.startswith("perfwatch_gpu") for name in kinds)  # no GPU here: absent
    # Training metrics before any step: zero counters, no loss, no last-step time.
    assert value(text, "perfwatch_train_steps_total", rank="0") == 0
    assert "perfwatch_train_loss" not in kinds and "perfwatch_train_last_step_timestamp_seconds" not in kinds


@pytest.fixture(scope="module")
def full_scrape() -> str:
    """A scrape with every metric present: training with log(), a tree with USS, NVML stood in."""
    nvml = StandInNvml(watched=(os.getpid(),))
    training = TrainingMetrics(rank="2")
    training.observe(record(0, 0.01))
    training.log(loss=0.5, lr=0.1)
    with Collector(os.getpid(), interval=0.05, uss_interval=0.0, nvml=nvml) as collector:
        metrics = PerfwatchMetrics(collector, training=training, process_labels={"rank": "2"})
        # what monitor(model=ddp_model) registers beside it: the rank's collective timing
        timing = SimpleNamespace(totals=lambda: CollectiveTotals(5, 0.5, 0.25))
        collective = CollectiveMetrics("2", "node-a", timing=timing)
        with serving(metrics, collective) as url:
            return wait_for_scrape(url, lambda t: value(t, "perfwatch_gpu_sm_active_ratio", gpu="0") is not None)


def test_docs_list_every_metric_with_its_type(full_scrape):
    exposed = dict(re.findall(r"^# TYPE (\S+) (\S+)$", full_scrape, re.MULTILINE))
    documented = documented_metrics()
    pushed_by_ci = {name for name in documented if name.startswith("perfwatch_benchmark_")}  # test_alerts checks them
    assert {name: kind for name, kind in documented.items() if name not in pushed_by_ci} == exposed


def test_gpu_metrics_in_base_units_with_roles(full_scrape):
    text = full_scrape
    assert_promtool_clean(text)
    assert value(text, "perfwatch_gpu_info", gpu="0", model="NVIDIA H100 80GB HBM3", uuid="GPU-0000") == 1
    assert value(text, "perfwatch_gpu_utilization_ratio", gpu="0") == pytest.approx(0.87)
    assert value(text, "perfwatch_gpu_memory_total_bytes", gpu="1") == 16 * GIB
    assert value(text, "perfwatch_gpu_power_watts", gpu="0") == pytest.approx(350.123)
    assert value(text, "perfwatch_gpu_power_watts", gpu="1") is None  # unsupported there: absent
    assert value(text, "perfwatch_gpu_energy_joules_total", gpu="0") == pytest.approx(123_456.789)
    assert value(text, "perfwatch_gpu_sm_clock_hertz", gpu="0") == 1980e6
    assert value(text, "perfwatch_gpu_pcie_receive_bytes_per_second", gpu="0") == 2000 * 1024
    assert value(text, "perfwatch_gpu_clock_event_active", gpu="0", reason="sw_power_cap") == 1
    assert value(text, "perfwatch_gpu_clock_event_active", gpu="0", reason="gpu_idle") == 0
    assert value(text, "perfwatch_gpu_ecc_errors_total", gpu="0", kind="corrected") == 3
    assert value(text, "perfwatch_gpu_xid_errors_total", gpu="0") == 1
    assert value(text, "perfwatch_gpu_last_xid", gpu="0") == 79
    assert value(text, "perfwatch_gpu_process_memory_bytes", gpu="0", role="main", rank="2") == GIB
    assert value(text, "perfwatch_gpu_tensor_active_ratio", gpu="0") == pytest.approx(0.225)
    assert value(text, "perfwatch_gpu_dram_active_ratio", gpu="0") == pytest.approx(0.70)
    assert value(text, "perfwatch_process_workers", rank="2") == 0
    assert value(text, "perfwatch_process_unique_memory_bytes", role="main", rank="2") > 0


def test_training_metrics_from_step_records(caplog):
    torch = pytest.importorskip("torch")
    training = TrainingMetrics(rank="3", clock=lambda: 1_700_000_000.0)
    for index, wall in enumerate((0.0005, 0.003, 0.003, 2.0, 90.0)):
        training.observe(record(index, wall))
    metrics = PerfwatchMetrics(training=training)
    with serving(metrics) as url:
        before_log = scrape(url)
        training.log(loss=torch.tensor(0.25, requires_grad=True) * 2, lr=1e-3)
        logged = scrape(url)
        training.log(loss="not a number")
        with caplog.at_level(logging.WARNING, logger="perfwatch"):
            bad = [scrape(url), scrape(url)]
    assert_promtool_clean(logged)
    rank = {"rank": "3"}
    buckets = {le: value(logged, "perfwatch_train_step_duration_seconds_bucket", le=le, **rank)
               for le in ("0.001", "0.0025", "0.005", "2.5", "60.0", "+Inf")}
    assert buckets == {"0.001": 1, "0.0025": 1, "0.005": 3, "2.5": 4, "60.0": 4, "+Inf": 5}
    assert len(STEP_BUCKETS) + 1 == sum(1 for name, _ in samples(logged) if name.endswith("_bucket"))
    assert value(logged, "perfwatch_train_step_duration_seconds_count", **rank) == 5
    assert value(logged, "perfwatch_train_step_duration_seconds_sum", **rank) == pytest.approx(92.0065)
    assert value(logged, "perfwatch_train_phase_seconds_total", phase="forward", **rank) == pytest.approx(46.00325)
    assert value(logged, "perfwatch_train_phase_seconds_total", phase="data_wait", **rank) == 0
    assert value(logged, "perfwatch_train_samples_total", **rank) == 160
    assert value(logged, "perfwatch_train_steps_total", **rank) == 5
    assert value(logged, "perfwatch_train_last_step_timestamp_seconds", **rank) == 1_700_000_000.0
    assert value(before_log, "perfwatch_train_loss", **rank) is None
    assert value(logged, "perfwatch_train_loss", **rank) == 0.5
    assert value(logged, "perfwatch_train_learning_rate", **rank) == 1e-3
    # Garbage given to log(): left out with one warning, the other metrics still served.
    assert all(value(text, "perfwatch_train_loss", **rank) is None for text in bad)
    assert value(bad[1], "perfwatch_train_learning_rate", **rank) == 1e-3
    assert [r.getMessage() for r in caplog.records if "not a number" in r.getMessage()] == [
        "perfwatch: the loss given to log() is not a number (could not convert string to float: "
        "'not a number'); it is not exported"
    ]


def test_a_failing_part_is_left_out_and_the_rest_served(caplog):
    with Collector(os.getpid(), interval=0.05) as collector:
        deadline = time.monotonic() + 10
        while collector.latest() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    broken = dataclasses.replace(collector.latest(), host="not a HostSnapshot")

    class Frozen:  # a collector whose snapshot has a part the exporter cannot read
        def latest(self):
            return broken

        def history(self):
            return (broken,)

    with serving(PerfwatchMetrics(Frozen())) as url, caplog.at_level(logging.WARNING):
        texts = [scrape(url), scrape(url)]
    for text in texts:
        assert value(text, "perfwatch_process_up") == 1
        assert not any(name.startswith("perfwatch_host") for name in types(text))
    assert sum("exporting the host metrics failed" in r.getMessage() for r in caplog.records) == 1


def test_sampler_cpu_is_summed_and_gaps_extrapolated():
    with Collector(interval=0.01, history=4) as collector:
        metrics = PerfwatchMetrics(collector)
        with serving(metrics) as url:
            deadline = time.monotonic() + 10
            while (collector.latest() is None or collector.latest().seq < 10) and time.monotonic() < deadline:
                time.sleep(0.01)
            collector.stop()
            text = scrape(url)
    history = collector.history()
    mean = sum(s.sample_cpu_seconds for s in history) / len(history)
    assert value(text, "perfwatch_collector_sample_cpu_seconds_total") == pytest.approx(mean * history[-1].seq)
    assert value(text, "perfwatch_collector_samples_total") == history[-1].seq


def test_port_in_use_is_a_user_error_naming_the_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as error:
            MetricsServer(CollectorRegistry(), port)
    message = str(error.value)
    assert f"port {port} on 127.0.0.1 is already in use" in message and "--port" in message
    assert "\n" not in message


def test_unusable_bind_address_is_a_user_error():
    with pytest.raises(UserError, match="cannot serve metrics on no-such-host.invalid"):
        MetricsServer(CollectorRegistry(), 0, bind="no-such-host.invalid")


def test_closing_frees_the_port_even_with_forked_children_alive():
    server = MetricsServer(CollectorRegistry(), 0)
    port = server.port
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,), daemon=True)
    child.start()  # inherits the listening socket unless it is closed in the child at fork
    try:
        server.close()
        server.close()  # twice is harmless
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))
            again.listen()
    finally:
        child.kill()
        child.join()


def test_push_to_a_real_pushgateway_and_one_warning_per_failure_burst(tmp_path, monkeypatch, caplog):
    training = TrainingMetrics(rank="1")
    training.observe(record(0, 0.01))
    registry = CollectorRegistry()
    registry.register(PerfwatchMetrics(training=training))
    port = free_port()
    pusher = Pusher(registry, f"127.0.0.1:{port}", job="pwtest", grouping_key={"instance": "box", "rank": "1"},
                    timeout=2)
    with caplog.at_level(logging.INFO, logger="perfwatch"):
        assert not pusher.push() and not pusher.push()  # nothing listens yet: one burst
        monkeypatch.setattr(servers, "free_port", lambda: port)  # the gateway comes up where pushes failed
        with Pushgateway(tmp_path) as gateway:
            assert pusher.push()
            pushed = scrape(f"{gateway.url}/metrics")
        assert not pusher.push()  # a second burst
    assert value(pushed, "perfwatch_train_steps_total", job="pwtest", instance="box", rank="1") == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot push metrics" in m for m in messages) == 2
    assert sum("works again" in m for m in messages) == 1


def test_bad_pushgateway_url_is_a_user_error():
    with pytest.raises(UserError, match="Pushgateway URL"):
        Pusher(CollectorRegistry(), "ftp://example.org")
