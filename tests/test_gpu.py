"""GPU sampling: the real answer on this machine, and NVML stood in for the GPU it lacks.

The stand-in (tests/helpers.py) answers only the calls into the driver; constants, error classes and
ctypes structures are the real nvidia-ml-py bindings', so unit conversions and
"not supported" handling run exactly as they would against a driver.
"""

from __future__ import annotations

import logging
import os
import time
from types import SimpleNamespace

import pynvml
import pytest
from helpers import GIB, OTHER_WATCHED, WATCHED, StandInNvml

from perfwatch.gpu import GpuSampler, gpu_inventory
from perfwatch.monitoring.collector import Collector


def test_no_gpu_here_means_absent_metrics_and_one_info_line(caplog):
    caplog.set_level(logging.DEBUG, logger="perfwatch")
    assert GpuSampler.open() is None
    records = [r for r in caplog.records if r.name == "perfwatch.gpu" and r.levelno >= logging.INFO]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "GPU metrics absent" in records[0].getMessage()


def test_collector_without_gpu_samples_everything_else(caplog):
    caplog.set_level(logging.INFO, logger="perfwatch")
    with Collector(interval=0.05) as collector:
        deadline = time.monotonic() + 10
        while (collector.latest() is None or collector.latest().seq < 3) and time.monotonic() < deadline:
            time.sleep(0.02)
    snapshot = collector.latest()
    assert snapshot.seq >= 3 and snapshot.gpus == () and snapshot.host is not None
    gpu_lines = [r for r in caplog.records if r.name == "perfwatch.gpu"]
    assert len(gpu_lines) == 1 and gpu_lines[0].levelno == logging.INFO


@pytest.mark.parametrize(
    "nvml, reason",
    [(StandInNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED), "NVML unavailable"), (StandInNvml(count=0), "no GPU")],
)
def test_no_driver_or_no_device_is_one_info_line(nvml, reason, caplog):
    caplog.set_level(logging.DEBUG, logger="perfwatch")
    assert GpuSampler.open(nvml) is None
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.levelno for r in records] == [logging.INFO] and reason in records[0].getMessage()


def test_readings_in_base_units():
    sampler = GpuSampler.open(StandInNvml())
    hopper, old = sampler.sample(pids=[WATCHED, OTHER_WATCHED])
    assert (hopper.index, hopper.name, hopper.uuid) == (0, "NVIDIA H100 80GB HBM3", "GPU-0000")
    assert hopper.utilization_ratio == pytest.approx(0.87)
    assert hopper.memory_utilization_ratio == pytest.approx(0.40)
    assert (hopper.memory_used_bytes, hopper.memory_total_bytes) == (10 * GIB, 80 * GIB)
    assert hopper.power_watts == pytest.approx(350.123)
    assert hopper.energy_joules_total == pytest.approx(123_456.789)
    assert hopper.temperature_celsius == 61
    assert hopper.sm_clock_hz == pytest.approx(1.98e9)
    assert hopper.memory_clock_hz == pytest.approx(2.619e9)
    assert hopper.pcie_tx_bytes_per_second == 1000 * 1024
    assert hopper.pcie_rx_bytes_per_second == 2000 * 1024
    assert hopper.clock_event_reasons == {"sw_power_cap", "hw_thermal_slowdown"}
    assert (hopper.ecc_corrected_errors_total, hopper.ecc_uncorrected_errors_total) == (3, 0)
    assert (hopper.xid_errors_total, hopper.last_xid) == (1, 79)
    assert hopper.process_memory_bytes == ((WATCHED, GIB),)  # strangers and unknown amounts left out
    sampler.close()


def test_gpm_ratios_need_two_readings():
    sampler = GpuSampler.open(StandInNvml())
    first = sampler.sample()[0]
    assert (first.sm_active_ratio, first.tensor_active_ratio, first.dram_bandwidth_ratio) == (None, None, None)
    second = sampler.sample()[0]
    assert second.sm_active_ratio == pytest.approx(0.55)
    assert second.tensor_active_ratio == pytest.approx(0.225)
    assert second.dram_bandwidth_ratio == pytest.approx(0.70)
    sampler.close()


def test_unsupported_readings_are_absent_and_not_asked_again(caplog):
    nvml = StandInNvml()
    sampler = GpuSampler.open(nvml)
    for _ in range(3):
        old = sampler.sample(pids=[WATCHED])[1]
    assert (old.utilization_ratio, old.temperature_celsius, old.sm_clock_hz) == (pytest.approx(0.05), 45, 1.38e9)
    absent = [
        old.power_watts, old.energy_joules_total, old.pcie_tx_bytes_per_second, old.pcie_rx_bytes_per_second,
        old.clock_event_reasons, old.ecc_corrected_errors_total, old.xid_errors_total, old.last_xid,
        old.sm_active_ratio, old.tensor_active_ratio, old.dram_bandwidth_ratio,
    ]
    assert absent == [None] * len(absent)
    assert old.process_memory_bytes == ()
    assert nvml.calls["power:1"] == nvml.calls["energy:1"] == nvml.calls["reasons:1"] == 1
    assert nvml.calls["utilization:1"] == 3
    assert nvml.calls["gpm_sample:1"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_xid_counter_keeps_count_between_samples():
    nvml = StandInNvml()
    sampler = GpuSampler.open(nvml)
    assert sampler.sample()[0].xid_errors_total == 1
    assert sampler.sample()[0].xid_errors_total == 1
    nvml.xid_queue += [SimpleNamespace(device=0, eventData=48), SimpleNamespace(device=0, eventData=63)]
    hopper = sampler.sample()[0]
    assert (hopper.xid_errors_total, hopper.last_xid) == (3, 63)


def test_close_releases_nvml_once():
    nvml = StandInNvml()
    sampler = GpuSampler.open(nvml)
    sampler.close()
    sampler.close()
    assert nvml.calls["gpm_free"] == nvml.calls["gpm_alloc"] == 2
    assert nvml.calls["event_set_free"] == 1 and nvml.calls["shutdown"] == 1


def test_collector_reports_gpu_memory_of_the_watched_tree():
    nvml = StandInNvml(watched=(os.getpid(),))
    with Collector(os.getpid(), interval=0.05, nvml=nvml) as collector:
        deadline = time.monotonic() + 10
        while (collector.latest() is None or collector.latest().seq < 2) and time.monotonic() < deadline:
            time.sleep(0.02)
    snapshot = collector.latest()
    assert [gpu.index for gpu in snapshot.gpus] == [0, 1]
    assert snapshot.gpus[0].process_memory_bytes == ((os.getpid(), GIB),)
    assert nvml.calls["shutdown"] == 1  # the sampler thread released NVML on stop


def test_inventory_from_the_stand_in():
    inventory = gpu_inventory(StandInNvml())
    assert inventory["count"] == 2 and inventory["model"] == "NVIDIA H100 80GB HBM3"
    assert inventory["cuda_driver"] == "12.4" and inventory["devices"][1]["memory_total_bytes"] == 16 * GIB
