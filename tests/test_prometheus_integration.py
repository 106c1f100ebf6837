"""perfwatch's live monitoring against a real Prometheus, Pushgateway and Alertmanager.

A real training process (tests/monitored_training.py: an MLP fed by a DataLoader
with worker processes, under ``perfwatch.monitor``) is scraped every
second by Prometheus running grafana/prometheus.yml and its rules, retargeted to
this test's ports. Then:

- every query of every dashboard panel, with its variables filled as Grafana would,
  returns data at an instant when training ran (one test per query, so a query
  that needs what this machine lacks, a GPU or PSI, shows up as a skip with the
  reason, and is counted in pytest's summary); with NVML stood in, the GPU queries
  still meet real exporter output here;
- the alert rules evaluate without error against the real series;
- a two-rank torchrun job is seen as rank 0 and rank 1, on port and port + 1;
- a push reaches a real Pushgateway, and Prometheus scrapes it keeping its labels;
- a stalled pushed run fires its alert through Prometheus into Alertmanager.
"""

from __future__ import annotations

import calendar
import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from grafana_dashboards import DASHBOARDS, SCRAPE_INTERVAL_S, PanelQueries, Target, prometheus_config, targets
from helpers import StandInNvml
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from servers import Alertmanager, Prometheus, Pushgateway, free_port, free_ports, wait_until

from perfwatch.monitoring.collector import Collector
from perfwatch.monitoring.metrics import PerfwatchMetrics, TrainingMetrics
from perfwatch.monitoring.serve import Exporter

pytestmark = pytest.mark.slow

TRAIN_SECONDS = 15.0  # enough scrapes for every $__rate_interval window, with time to spare on 2 loaded cores
START_TIMEOUT_S = 90.0  # importing torch and forking workers on a busy CI machine
SCRIPT = Path(__file__).with_name("monitored_training.py")

# The dashboards of live training; benchmarks.json charts pushed benchmark runs (tests/test_benchmarks_dashboard.py).
LIVE_DASHBOARDS = [path for path in DASHBOARDS if path.stem != "benchmarks"]
# The straggler panels need two DDP ranks: tests/test_straggler_ddp.py runs them against a real 2-rank job.
LIVE_TARGETS = [target for target in targets() if target.dashboard != "benchmarks" and "perfwatch:train_" not in target.expr]

# A query that reads one of these needs what the machine may lack: (pattern, feature, why skipped).
REQUIREMENTS = (
    (r"perfwatch_gpu_", "gpu", "GPU panel: needs an NVIDIA GPU, and NVML finds none on this machine"),
    (r"perfwatch_gpu_(sm|tensor|dram)_active_ratio", "gpm", "needs NVML GPM metrics (a Hopper or later GPU)"),
    (r"perfwatch_gpu_ecc_errors_total", "ecc", "needs a GPU with ECC memory enabled"),
    (r"perfwatch_gpu_xid_errors_total", "xid", "needs NVML XID error events on this GPU"),
    (r"perfwatch_host_pressure_", "psi", "needs Linux PSI; this kernel has no readable /proc/pressure"),
)


@functools.cache
def machine_features() -> frozenset[str]:
    """What this machine offers, asked of the kernel and of NVML directly, not of the
    exporter under test (whose missing metric would otherwise excuse itself)."""
    features = set()
    with contextlib.suppress(OSError):
        Path("/proc/pressure/cpu").read_text()
        features.add("psi")
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver
        return frozenset(features)
    try:
        if pynvml.nvmlDeviceGetCount() > 0:
            features.add("gpu")
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            probes = {
                "gpm": lambda: pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice,
                "ecc": lambda: pynvml.nvmlDeviceGetEccMode(handle)[0] == pynvml.NVML_FEATURE_ENABLED,
                "xid": lambda: pynvml.nvmlDeviceGetSupportedEventTypes(handle) & pynvml.nvmlEventTypeXidCriticalError,
            }
            for feature, probe in probes.items():
                with contextlib.suppress(pynvml.NVMLError, AttributeError):
                    if probe():
                        features.add(feature)
    finally:
        pynvml.nvmlShutdown()
    return frozenset(features)


def missing_requirement(expr: str) -> str | None:
    for pattern, feature, why in REQUIREMENTS:
        if re.search(pattern, expr) and feature not in machine_features():
            return why
    return None


class Training:
    """tests/monitored_training.py as a process group of its own (under torchrun for
    ``nproc`` > 1), with the same start/stop shape as the servers."""

    def __init__(self, *args: str, nproc: int = 1) -> None:
        launcher = [sys.executable]
        if nproc > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        self.command = [*launcher, str(SCRIPT), *args]
        self.process: subprocess.Popen | None = None

    def start(self) -> Training:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # ranks, workers and Prometheus share 2 cores
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, start_new_session=True,
        )
        return self

    def result(self, timeout: float = TRAIN_SECONDS + START_TIMEOUT_S) -> dict[str, Any]:
        """Wait for the run to end; rank 0's JSON line (last_step, steps, port)."""
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"training did not finish within {timeout:g} s: {' '.join(self.command)}")
        assert self.process.returncode == 0, f"training failed (exit {self.process.returncode}):\n{stderr[-3000:]}"
        return json.loads(stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        """Kill the whole group (torchrun, its ranks, their DataLoader workers) if still running."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.communicate()


Startable = TypeVar("Startable", Prometheus, Pushgateway, Alertmanager, Training)


@pytest.fixture
def started() -> Iterator[Callable[[Startable], Startable]]:
    """``started(thing)`` starts a server or training run; all are stopped after the test."""
    with contextlib.ExitStack() as stack:
        def start(thing: Startable) -> Startable:
            stack.callback(thing.stop)
            return thing.start()

        yield start


def value(series: dict[str, Any]) -> float:
    return float(series["value"][1])


# ---------------------------------------------------------------- one scraped run, every panel


def rules_evaluated_after(prometheus: Prometheus, moment: float) -> list[dict[str, Any]]:
    """The rules if every one was last evaluated at or after Unix time ``moment``
    (to the second), else an empty list."""
    rules = prometheus.rules()
    times = [calendar.timegm(time.strptime(rule["lastEvaluation"][:19], "%Y-%m-%dT%H:%M:%S")) for rule in rules]
    return rules if rules and min(times) >= moment else []


@dataclass
class ScrapedRun:
    """A finished monitored training run in Prometheus: its queries at the last step, and
    the rules as they were evaluated over its live series."""

    queries: PanelQueries
    rules: list[dict[str, Any]]


@pytest.fixture(scope="module")
def scraped_run(tmp_path_factory) -> Iterator[ScrapedRun]:
    """One monitored training run scraped by Prometheus, shared by the per-query tests
    (a run per query would take an hour). The rules are read while the run's series
    are live, after two evaluations that saw them."""
    port = free_port()
    config = prometheus_config([f"127.0.0.1:{port}"])
    with Prometheus(tmp_path_factory.mktemp("prometheus"), config) as prometheus:
        run = Training("--port", str(port), "--seconds", str(TRAIN_SECONDS), "--workers", "2").start()
        try:
            prometheus.wait_for("perfwatch_train_steps_total > 0", timeout=START_TIMEOUT_S)
            live_since = time.time() + 2 * SCRAPE_INTERVAL_S
            rules = wait_until(lambda: rules_evaluated_after(prometheus, live_since),
                               timeout=30, what="two rule evaluations over live series")
            result = run.result()
        finally:
            run.stop()
        yield ScrapedRun(PanelQueries(prometheus, result["last_step"]), rules)


@pytest.mark.parametrize("path", LIVE_DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_variables_find_the_run(scraped_run, path):
    _, found = scraped_run.queries.variables(path.stem)
    assert found and all(found.values()), f"a variable query found nothing: {found}"
    assert found["job"] == ["perfwatch"]
    if "rank" in found:
        assert found["rank"] == ["0"]


@pytest.mark.parametrize("target", LIVE_TARGETS, ids=lambda t: t.id)
def test_panel_query_returns_data(scraped_run, target: Target):
    """What the panel would show while training ran: at least one finite value."""
    why = missing_requirement(target.expr)
    if why:
        pytest.skip(why)
    failure = scraped_run.queries.failure(target)
    assert failure is None, failure


def test_alert_rules_evaluate_cleanly_on_real_series(scraped_run):
    """Label matching errors (many-to-many, ...) appear only with real series."""
    assert {rule["name"] for rule in scraped_run.rules} >= {"PerfwatchInputBound", "PerfwatchExporterDown"}
    broken = {rule["name"]: rule.get("lastError") for rule in scraped_run.rules if rule["health"] != "ok"}
    assert not broken


def test_gpu_panel_queries_return_data_with_nvml_stood_in(tmp_path, started):
    """Where there is no GPU the GPU queries are skipped above. Here NVML, the one
    thing this machine lacks, is stood in (tests/helpers.py: a Hopper-like GPU 0 and
    an old GPU 1, this process holding memory on GPU 0), so every GPU query still
    meets real exporter output in a real Prometheus: names, labels, the per-host dedup."""
    collector = Collector(os.getpid(), interval=0.5, nvml=StandInNvml(watched=(os.getpid(),)))
    exporter = Exporter(PerfwatchMetrics(collector, training=TrainingMetrics("0"), process_labels={"rank": "0"}),
                        port=0)
    with collector, contextlib.closing(exporter.start()):
        prometheus = started(Prometheus(tmp_path / "prometheus",
                                        prometheus_config([f"127.0.0.1:{exporter.server.port}"])))
        prometheus.wait_for("perfwatch_gpu_sm_active_ratio", timeout=30)  # GPM needs two samples
        queries = PanelQueries(prometheus, time.time())
        gpu_targets = [target for target in LIVE_TARGETS if "perfwatch_gpu_" in target.expr]
        failures = [failure for target in gpu_targets if (failure := queries.failure(target))]
    assert len(gpu_targets) >= 10
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- DDP, Pushgateway, Alertmanager


def test_each_ddp_rank_serves_on_its_port_with_its_rank(tmp_path, started):
    base = free_ports(2)
    instances = {"0": f"127.0.0.1:{base}", "1": f"127.0.0.1:{base + 1}"}
    prometheus = started(Prometheus(tmp_path / "prometheus", prometheus_config(list(instances.values()))))
    run = started(Training("--port", str(base), "--seconds", "6", "--workers", "0", nproc=2))
    at = run.result()["last_step"]

    steps = prometheus.query("perfwatch_train_steps_total", at=at)
    assert {s["metric"]["rank"]: s["metric"]["instance"] for s in steps} == instances
    assert all(value(s) > 0 for s in steps)
    main_cpu = prometheus.query('perfwatch_process_cpu_seconds_total{role="main"}', at=at)
    assert {s["metric"]["rank"]: s["metric"]["instance"] for s in main_cpu} == instances


def test_monitor_pushes_to_a_pushgateway_that_prometheus_scrapes(tmp_path, started):
    gateway = started(Pushgateway(tmp_path / "pushgateway"))
    prometheus = started(Prometheus(tmp_path / "prometheus", prometheus_config([], pushgateway=gateway.address)))
    result = started(Training("--port", "0", "--push", gateway.url, "--seconds", "3", "--workers", "0")).result()

    grouping = {"job": "perfwatch", "instance": socket.gethostname(), "rank": "0"}
    (group,) = [g for g in gateway.metrics() if g["labels"] == grouping]
    (steps,) = group["perfwatch_train_steps_total"]["metrics"]
    assert float(steps["value"]) == result["steps"], "the final push on exit carries the last step"
    assert "perfwatch_host_cpu_seconds_total" in group and "perfwatch_process_workers" in group

    # The shipped pushgateway job keeps the pushed job, instance and rank (honor_labels).
    (scraped,) = prometheus.wait_for("perfwatch_train_steps_total", timeout=30)
    assert {k: scraped["metric"][k] for k in grouping} == grouping
    assert value(scraped) == result["steps"]


def test_a_stalled_pushed_run_alerts_through_alertmanager(tmp_path, started):
    """Shipped rules and alerting end to end. A hung CI run keeps pushing while its
    last step ages; an hour-old last step stands in for the wait. PerfwatchTrainingStalled
    has no ``for``, so it fires on the first evaluation."""
    alertmanager = started(Alertmanager(tmp_path / "alertmanager"))
    gateway = started(Pushgateway(tmp_path / "pushgateway"))
    started(Prometheus(tmp_path / "prometheus", prometheus_config(
        [], pushgateway=gateway.address, alertmanager=alertmanager.address)))
    registry = CollectorRegistry()
    last_step = Gauge("perfwatch_train_last_step_timestamp_seconds", "Unix time when the last step completed.",
                      ["rank"], registry=registry)
    last_step.labels("0").set(time.time() - 3600)
    push_to_gateway(gateway.address, job="perfwatch", registry=registry, grouping_key={"instance": "ci-7", "rank": "0"})

    def stalled() -> list[dict[str, Any]]:
        return [a for a in alertmanager.alerts() if a["labels"]["alertname"] == "PerfwatchTrainingStalled"]

    (alert,) = wait_until(stalled, timeout=60, what="PerfwatchTrainingStalled in Alertmanager")
    assert {k: alert["labels"][k] for k in ("job", "instance", "rank", "severity")} == {
        "job": "perfwatch", "instance": "ci-7", "rank": "0", "severity": "critical"}
    assert alert["annotations"]["summary"].startswith("No training step for 1h ")
