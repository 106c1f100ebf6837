"""The "perfwatch / Benchmarks" dashboard against real data: two runs pushed through send_alerts to a
real Pushgateway, scraped by a real Prometheus with grafana/prometheus.yml's pushgateway job
(honor_labels), then every panel query evaluated as Grafana would send it. The dashboard shows the
latest run only; history by commit is the SQL dashboard's (tests/test_grafana_sql.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from grafana_dashboards import GRAFANA, PanelQueries, Target, load, prometheus_config, targets
from helpers import BAD, BASELINE, CLEAN
from servers import Prometheus, Pushgateway

from perfwatch.config import AlertSinks
from perfwatch.regress.alerts import send_alerts
from perfwatch.regress.compare import compare_runs

BENCHMARK_TARGETS = [t for t in targets() if t.dashboard == "benchmarks"]
BATCH_MEDIAN = 'perfwatch_benchmark_median_seconds{benchmark="loader.time_batch(workers=2)"}'


def push_and_wait(prometheus: Prometheus, gateway: Pushgateway, run, verdicts) -> float:
    """Push ``run`` and return once Prometheus has scraped it (the Unix time it saw it)."""
    (delivery,) = send_alerts(AlertSinks(pushgateway=gateway.url), run, verdicts)
    assert delivery.ok, delivery.detail
    prometheus.wait_for(f'perfwatch_benchmark_run_info{{run_id="{run.run_id}"}}', timeout=30)
    return time.time()


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Iterator[PanelQueries]:
    """A clean run, then one with a regression and a failure, as the gateway's latest; the dashboard's
    queries just after the second push was scraped."""
    with Pushgateway(tmp_path_factory.mktemp("pushgateway")) as gateway:
        config = prometheus_config([], pushgateway=gateway.address)
        with Prometheus(tmp_path_factory.mktemp("prometheus"), config) as prometheus:
            push_and_wait(prometheus, gateway, CLEAN, compare_runs(BASELINE, CLEAN))
            second_seen = push_and_wait(prometheus, gateway, BAD, compare_runs(BASELINE, BAD))
            yield PanelQueries(prometheus, second_seen)


def test_the_dashboard_shows_the_latest_run_and_links_to_the_sql_history():
    """Pushed values carry Prometheus's scrape time, not their commit's: history by commit is the
    Benchmark history dashboard's, over the results store."""
    titles = {t.panel["title"] for t in BENCHMARK_TARGETS}
    assert {"Change vs baseline (latest run)", "Regressed or failed benchmarks", "Benchmarks failed"} <= titles
    dashboard = load(GRAFANA / "dashboards" / "benchmarks.json")
    assert "History" not in {panel["title"] for panel in dashboard["panels"]}
    history = load(GRAFANA / "dashboards" / "history.json")
    assert any(link.get("url", "").startswith(f"/d/{history['uid']}/") for link in dashboard["links"])


def test_variables_find_the_pushed_suite_host_and_benchmarks(pushed):
    _, found = pushed.variables("benchmarks")
    assert found["suite"] == ["ci"] and found["host"] == ["ci-runner-7"]
    assert found["benchmark"] == sorted(b.name for b in BAD.benchmarks)


@pytest.mark.parametrize("target", BENCHMARK_TARGETS, ids=lambda t: t.id)
def test_panel_query_returns_data(pushed, target: Target):
    failure = pushed.failure(target)
    assert failure is None, failure


def test_the_latest_push_replaces_the_last_under_its_grouping_key(pushed):
    (latest,) = pushed.prometheus.query(BATCH_MEDIAN, at=pushed.at)
    assert float(latest["value"][1]) == pytest.approx(1.2), "the second run's median, not the first's 1.0"
    assert {k: latest["metric"][k] for k in ("job", "suite", "host")} == {
        "job": "perfwatch_benchmarks", "suite": "ci", "host": "ci-runner-7"}, "honor_labels keeps the grouping key"
