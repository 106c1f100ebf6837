"""The collective timing's counters (monitoring.collective) as Prometheus families, one rank's.

Registered beside ``PerfwatchMetrics`` on the exporter of a ``perfwatch.monitor()`` given a
DDP model; absent until its comm hook is installed, and when it could not be (absent, not
zero). The straggler across ranks is computed by Prometheus over every rank's series.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector as PrometheusCollector

from perfwatch.monitoring.collective import CollectiveTiming


class CollectiveMetrics(PrometheusCollector):
    """``timing``'s totals labelled ``rank`` and ``host``; set ``timing`` once the hook is in."""

    def __init__(self, rank: str, host: str, timing: CollectiveTiming | None = None) -> None:
        self.rank, self.host, self.timing = rank, host, timing

    def collect(self) -> Iterator[Metric]:
        timing = self.timing
        if timing is None:
            return
        totals = timing.totals()  # a lock and three numbers: nothing here can fail a scrape
        for name, doc, value in (
            ("perfwatch_train_rank_work_seconds_total",
             "Time this rank worked between two gradient all-reduces (DDP comm hook).", totals.work_seconds),
            ("perfwatch_train_collective_wait_seconds_total",
             "Time this rank waited for its gradient all-reduce to complete (DDP comm hook).", totals.wait_seconds),
            ("perfwatch_train_collective_steps_total",
             "Steps whose work and wait were timed (gradient all-reduces).", totals.steps),
        ):
            family = CounterMetricFamily(name, doc, labels=["rank", "host"])
            family.add_metric([self.rank, self.host], value)
            yield family
