"""The "perfwatch / Benchmarks" dashboard against real data: two runs pushed through send_alerts to a
real Pushgateway, scraped by a real Prometheus with grafana/prometheus.yml's pushgateway job
(honor_labels), then every panel query evaluated as Grafana would send it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from grafana_dashboards import PanelQueries, Target, prometheus_config, targets
from helpers import BAD, BASELINE, CLEAN
from servers import Prometheus, Pushgateway

from perfwatch.config import AlertSinks
from perfwatch.regress.alerts import send_alerts
from perfwatch.regress.compare import compare_runs

BENCHMARK_TARGETS = [t for t in targets() if t.dashboard == "benchmarks"]
BATCH_MEDIAN = 'perfwatch_benchmark_median_seconds{benchmark="loader.time_batch(workers=2)"}'


@dataclass
class PushedRuns:
    """The dashboard's queries just after the second push was scraped, and when the first was."""

    queries: PanelQueries
    first_seen: float


def push_and_wait(prometheus: Prometheus, gateway: Pushgateway, run, verdicts) -> float:
    """Push ``run`` and return once Prometheus has scraped it (the Unix time it saw it)."""
    (delivery,) = send_alerts(AlertSinks(pushgateway=gateway.url), run, verdicts)
    assert delivery.ok, delivery.detail
    prometheus.wait_for(f'perfwatch_benchmark_run_info{{run_id="{run.run_id}"}}', timeout=30)
    return time.time()


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Iterator[PushedRuns]:
    """A clean run, then one with a regression and a failure, as the gateway's latest."""
    with Pushgateway(tmp_path_factory.mktemp("pushgateway")) as gateway:
        config = prometheus_config([], pushgateway=gateway.address)
        with Prometheus(tmp_path_factory.mktemp("prometheus"), config) as prometheus:
            first_seen = push_and_wait(prometheus, gateway, CLEAN, compare_runs(BASELINE, CLEAN))
            second_seen = push_and_wait(prometheus, gateway, BAD, compare_runs(BASELINE, BAD))
            yield PushedRuns(PanelQueries(prometheus, second_seen), first_seen)


def test_the_dashboard_has_panels_for_history_the_latest_change_and_what_regressed_or_failed():
    titles = {t.panel["title"] for t in BENCHMARK_TARGETS}
    assert {"Median time per benchmark", "Change vs baseline (latest run)", "Regressed or failed benchmarks",
            "Benchmarks failed"} <= titles


def test_variables_find_the_pushed_suite_host_and_benchmarks(pushed):
    _, found = pushed.queries.variables("benchmarks")
    assert found["suite"] == ["ci"] and found["host"] == ["ci-runner-7"]
    assert found["benchmark"] == sorted(b.name for b in BAD.benchmarks)


@pytest.mark.parametrize("target", BENCHMARK_TARGETS, ids=lambda t: t.id)
def test_panel_query_returns_data(pushed, target: Target):
    failure = pushed.queries.failure(target)
    assert failure is None, failure


def test_prometheus_keeps_each_runs_medians_as_history(pushed):
    prometheus = pushed.queries.prometheus
    (before,) = prometheus.query(BATCH_MEDIAN, at=pushed.first_seen)
    (after,) = prometheus.query(BATCH_MEDIAN, at=pushed.queries.at)
    assert (float(before["value"][1]), float(after["value"][1])) == pytest.approx((1.0, 1.2))
    assert {k: after["metric"][k] for k in ("job", "suite", "host")} == {
        "job": "perfwatch_benchmarks", "suite": "ci", "host": "ci-runner-7"}, "honor_labels keeps the grouping key"
