"""The collective timing's counters (monitoring.collective) as Prometheus families, per rank.

``CollectiveMetrics`` is one rank's, registered beside ``PerfwatchMetrics`` on the exporter of a
``perfwatch.monitor()`` given a DDP model. ``PublishedCollective`` is every rank's of the job that
``perfwatch monitor`` launched, from what their injected timing published (monitoring.step_timing),
on the monitor's one exporter per node. Both are absent until a comm hook is installed, and when it
could not be (absent, not zero). The straggler across ranks is computed by Prometheus over every
rank's series.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector as PrometheusCollector

from perfwatch.monitoring.collective import CollectiveTiming, CollectiveTotals
from perfwatch.monitoring.step_timing import read_published

_FAMILIES = (
    ("perfwatch_train_rank_work_seconds_total", "work_seconds",
     "Time this rank worked between two gradient all-reduces (DDP comm hook)."),
    ("perfwatch_train_collective_wait_seconds_total", "wait_seconds",
     "Time this rank waited for its gradient all-reduce to complete (DDP comm hook)."),
    ("perfwatch_train_collective_steps_total", "steps",
     "Steps whose work and wait were timed (gradient all-reduces)."),
)


def families(ranks: Iterable[tuple[str, str, CollectiveTotals]]) -> Iterator[Metric]:
    """The three counters, one series per (rank, host, totals); nothing for no rank."""
    ranks = list(ranks)
    if not ranks:
        return
    for name, field, doc in _FAMILIES:
        family = CounterMetricFamily(name, doc, labels=["rank", "host"])
        for rank, host, totals in ranks:
            family.add_metric([rank, host], getattr(totals, field))
        yield family


class CollectiveMetrics(PrometheusCollector):
    """``timing``'s totals labelled ``rank`` and ``host``; set ``timing`` once the hook is in."""

    def __init__(self, rank: str, host: str, timing: CollectiveTiming | None = None) -> None:
        self.rank, self.host, self.timing = rank, host, timing

    def collect(self) -> Iterator[Metric]:
        timing = self.timing
        if timing is None:
            return
        yield from families([(self.rank, self.host, timing.totals())])  # a lock and three numbers: cannot fail


class PublishedCollective(PrometheusCollector):
    """The ranks' collective totals published into ``directory``, read at scrape time.

    A rank restarted by torchrun publishes from a new process: its processes' totals add up, so
    its counters only grow. A summary without well-formed totals is left out."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        summed: dict[tuple[str, str], CollectiveTotals] = {}
        for summary in read_published(self.directory):
            found = _published_totals(summary.get("collective"))
            if found is not None:
                key, totals = found
                before = summed.get(key, CollectiveTotals(0, 0.0, 0.0))
                summed[key] = CollectiveTotals(before.steps + totals.steps, before.work_seconds + totals.work_seconds,
                                               before.wait_seconds + totals.wait_seconds)
        yield from families((rank, host, totals) for (rank, host), totals in sorted(summed.items()))


def _published_totals(published: object) -> tuple[tuple[str, str], CollectiveTotals] | None:
    """((rank, host), totals) from a summary's ``collective`` field; None when absent or malformed."""
    if not isinstance(published, dict):
        return None
    try:
        return ((str(published["rank"]), str(published["host"])),
                CollectiveTotals(int(published["steps"]), float(published["work_seconds"]),
                                 float(published["wait_seconds"])))
    except (KeyError, TypeError, ValueError):
        return None
