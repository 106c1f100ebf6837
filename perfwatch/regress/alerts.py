"""Alert sinks for a judged benchmark run: a webhook (Slack-compatible), Alertmanager, Pushgateway.

The webhook and Alertmanager hear only about trouble (a confirmed regression or a failed
benchmark); the Pushgateway gets every run, clean or not, so Prometheus keeps the history that the
Grafana "Benchmarks" dashboard charts. A sink that cannot be reached never changes a verdict or a
report: :func:`send_alerts` returns one :class:`Delivery` per configured sink and never raises for
the network or the server's answer. A sink URL's user:password goes as HTTP Basic auth, and a
Delivery shows its URL redacted (perfwatch.urls): tokens and passwords never reach a CI log.
"""

from __future__ import annotations

import base64
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, Callable, Sequence

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from perfwatch import stats
from perfwatch.config import AlertSinks
from perfwatch.regress.compare import Verdict, compare_benchmark, summarize
from perfwatch.results import RunRecord
from perfwatch.urls import redact, scrub, split_credentials

# Alertmanager resolves an alert at endsAt unless it is sent again. A CI run is a one-off event
# with no follow-up to resolve it, so the alert lasts a day: until the next nightly run re-sends
# it (still regressed) or stops sending it (fixed).
ALERT_LIFETIME = timedelta(hours=24)
PUSH_JOB = "perfwatch_benchmarks"
ALERTING_VERDICTS = ("regressed", "failed")
_SHOWN_IN_TEXT = 5  # rows per kind in the webhook's text; the JSON carries them all

# Units with a Prometheus base-unit suffix get a metric of their own; any other unit (samples/s,
# FLOP/s, unitless, ...) goes to the unsuffixed median with a `unit` label.
MEDIAN_METRICS = {
    "seconds": "perfwatch_benchmark_median_seconds",
    "bytes": "perfwatch_benchmark_median_bytes",
    "bytes/s": "perfwatch_benchmark_median_bytes_per_second",
    "ratio": "perfwatch_benchmark_median_ratio",
}
OTHER_MEDIAN_METRIC = "perfwatch_benchmark_median"


@dataclass(frozen=True)
class Delivery:
    """What became of one sink: ``ok`` False means it did not get the alert; ``detail`` says why.
    Both may be printed: neither holds a secret of the URL."""

    sink: str  # "webhook" | "alertmanager" | "pushgateway"
    target: str  # the URL, redacted
    ok: bool
    detail: str


def send_alerts(
    sinks: AlertSinks, run: RunRecord, verdicts: Sequence[Verdict], *, report_url: str | None = None
) -> list[Delivery]:
    """Send ``run`` and its verdict rows to every configured sink; one Delivery each, in sink order."""
    rows = alerting_rows(run, verdicts)
    deliveries = []
    if sinks.webhook:
        deliveries.append(_send_if_alerting(
            "webhook", sinks.webhook, rows,
            lambda: webhook_payload(run, verdicts, rows, report_url), sinks.timeout))
    if sinks.alertmanager:
        deliveries.append(_send_if_alerting(
            "alertmanager", alertmanager_alerts_url(sinks.alertmanager), rows,
            lambda: alertmanager_alerts(run, rows, report_url), sinks.timeout))
    if sinks.pushgateway:
        deliveries.append(push_run(sinks.pushgateway, run, verdicts, sinks.timeout))
    return deliveries


def alerting_rows(run: RunRecord, verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The regressed and failed rows, worst regression first; a failed benchmark of ``run``
    without a verdict row (nothing to compare against) still counts as failed."""
    judged = {v.name for v in verdicts}
    failed_unjudged = [compare_benchmark(None, b) for b in run.failed if b.name not in judged]
    regressed = sorted((v for v in verdicts if v.verdict == "regressed"), key=lambda v: -v.change)
    failed = [v for v in verdicts if v.verdict == "failed"] + failed_unjudged
    return regressed + failed


def _started(run: RunRecord) -> datetime:
    """The run's creation time; a time without a zone is UTC, as perfwatch writes it."""
    created = datetime.fromisoformat(run.created)
    return created if created.tzinfo else created.replace(tzinfo=timezone.utc)


def _percent(fraction: float) -> str:
    return f"{fraction:+.1%}"


def _row_line(row: Verdict) -> str:
    """One benchmark in a sentence: its change and interval, or why it failed."""
    if row.verdict == "regressed":
        return f"{row.name}: {_percent(row.change)} worse (CI {_percent(row.ci_low)}..{_percent(row.ci_high)})"
    return f"{row.name}: {row.reason}"  # the reason starts with "failed:" or "timeout:"


def _run_line(run: RunRecord) -> str:
    commit = (run.env.get("git_commit") or "no commit")[:12]
    return f"run {run.run_id} · commit {commit} · host {_host(run)} · suite {_suite(run)}"


def _host(run: RunRecord) -> str:
    return str(run.env.get("host") or "unknown")


def _suite(run: RunRecord) -> str:
    return run.suite or "unknown"


def webhook_payload(
    run: RunRecord, verdicts: Sequence[Verdict], rows: Sequence[Verdict], report_url: str | None
) -> dict[str, Any]:
    """Slack's ``text`` (a short summary) plus the same facts as fields for other receivers."""
    counts = {k: n for k, n in summarize(verdicts).counts.items() if n}
    regressed = [r for r in rows if r.verdict == "regressed"]
    failed = [r for r in rows if r.verdict == "failed"]
    headline = f"perfwatch: {len(regressed)} regressed, {len(failed)} failed of {len(run.benchmarks)} benchmarks"
    lines = [headline, _run_line(run)]
    for group in (regressed, failed):
        lines += [f"• {_row_line(r)}" for r in group[:_SHOWN_IN_TEXT]]
        if len(group) > _SHOWN_IN_TEXT:
            lines.append(f"• … and {len(group) - _SHOWN_IN_TEXT} more")
    if report_url:
        lines.append(f"report: {report_url}")
    return {
        "text": _slack_escape("\n".join(lines)),
        "run_id": run.run_id,
        "created": run.created,
        "commit": run.env.get("git_commit"),
        "host": _host(run),
        "suite": _suite(run),
        "report_url": report_url,
        "counts": counts,
        "benchmarks": [_json_row(r) for r in rows],
    }


def _slack_escape(text: str) -> str:
    """Slack reads <...> as links and mentions and & as an entity; the rest of its text is plain."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _json_row(row: Verdict) -> dict[str, Any]:
    """A verdict row as JSON: nan (not applicable) becomes null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(row).items()}


def alertmanager_alerts_url(base: str) -> str:
    """The v2 alerts endpoint under ``base``, given with or without a trailing slash (or whole)."""
    base = base.rstrip("/")
    return base if base.endswith("/api/v2/alerts") else base + "/api/v2/alerts"


def alertmanager_alerts(
    run: RunRecord, rows: Sequence[Verdict], report_url: str | None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """One Alertmanager v2 alert per regressed or failed benchmark."""
    now = now or datetime.now(timezone.utc)
    alerts = []
    for row in rows:
        regressed = row.verdict == "regressed"
        alert = {
            "labels": {
                "alertname": "PerfwatchBenchmarkRegression" if regressed else "PerfwatchBenchmarkFailed",
                "benchmark": row.name,
                "suite": _suite(run),
                "host": _host(run),
                "severity": "warning" if regressed else "critical",
            },
            "annotations": {
                "summary": _row_line(row) if regressed else f"{row.name} failed",
                "description": f"{row.reason} ({_run_line(run)})",
                "run_id": run.run_id,
                "commit": run.env.get("git_commit") or "",
                **({"report_url": report_url} if report_url else {}),
            },
            "startsAt": _started(run).isoformat(timespec="seconds"),
            "endsAt": (now + ALERT_LIFETIME).isoformat(timespec="seconds"),
        }
        if report_url and urllib.parse.urlsplit(report_url).netloc:  # Alertmanager wants a URL there
            alert["generatorURL"] = report_url
        alerts.append(alert)
    return alerts


def _send_if_alerting(
    sink: str, url: str, rows: Sequence[Verdict], payload: Callable[[], Any], timeout: float
) -> Delivery:
    if not rows:
        return Delivery(sink, redact(url), True, "nothing sent: no regression and no failed benchmark")
    return _post_json(sink, url, payload(), timeout)


def _post_json(sink: str, url: str, payload: Any, timeout: float) -> Delivery:
    try:
        bare, credentials = split_credentials(url)
        request = urllib.request.Request(bare, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        if credentials:  # unredirected: a redirect to another host does not get the password
            request.add_unredirected_header("Authorization", _basic_auth(*credentials))
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Delivery(sink, redact(url), True, f"sent (HTTP {response.status})")
    except urllib.error.HTTPError as exc:
        return Delivery(sink, redact(url), False, _refused(sink, url, exc))
    except (OSError, ValueError) as exc:
        return Delivery(sink, redact(url), False, _unreachable(sink, url, exc, timeout))


def _basic_auth(user: str, password: str) -> str:
    """An Authorization header's value, UTF-8 as RFC 7617 and prometheus_client's basic_auth_handler write it."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _refused(sink: str, url: str, exc: urllib.error.HTTPError) -> str:
    """One line for an HTTP error answer, with the start of its body (servers say why there)."""
    answer = scrub(" ".join(exc.read().decode(errors="replace").split()), url)[:200]
    return (f"{redact(url)} answered HTTP {exc.code} {exc.reason}" + (f": {answer}" if answer else "")
            + f"; check the {sink} URL and its log")


def _unreachable(sink: str, url: str, exc: BaseException, timeout: float) -> str:
    """One line for a request that got no HTTP answer: refused, unresolvable, timed out, bad URL."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    shown = redact(url)
    if isinstance(reason, TimeoutError):
        return f"{shown}: no answer within {timeout:g} s; check that the {sink} is up and reachable from here"
    if isinstance(exc, ValueError):
        return f"{shown}: not a usable URL ({scrub(str(exc), url)}); give the {sink} as http://host:port"
    why = getattr(reason, "strerror", None) or str(reason)
    return f"cannot reach {shown}: {scrub(why, url)}; check that the {sink} runs and the URL is right"


def benchmark_registry(run: RunRecord, verdicts: Sequence[Verdict]) -> CollectorRegistry:
    """The run as Prometheus gauges, in base units (docs/metrics.md, "Benchmarks")."""
    registry = CollectorRegistry()

    def gauge(name: str, documentation: str, labels: Sequence[str] = ("benchmark",)) -> Gauge:
        return Gauge(name, documentation, labels, registry=registry)

    medians = {unit: gauge(name, f"Median of the benchmark's samples in its latest run, in {unit}.")
               for unit, name in MEDIAN_METRICS.items()}
    other_median = gauge(OTHER_MEDIAN_METRIC, "Median of the benchmark's samples in its latest run, "
                                              "for units without a base-unit metric (unit label).",
                         ("benchmark", "unit"))
    samples = gauge("perfwatch_benchmark_samples", "Raw samples the benchmark took in its latest run.")
    change = gauge("perfwatch_benchmark_change_ratio",
                   "Change against the baseline as a fraction, direction-normalised: +0.1 is 10% worse.")
    regressed = gauge("perfwatch_benchmark_regressed", "1 if the benchmark regressed against the baseline, else 0.")
    verdict = gauge("perfwatch_benchmark_verdict", "1, labelled with the benchmark's verdict against the baseline.",
                    ("benchmark", "verdict"))

    for bench in run.benchmarks:
        samples.labels(bench.name).set(len(bench.samples))
        if bench.ok and bench.samples:
            value = stats.median(bench.samples)
            if bench.unit in medians:
                medians[bench.unit].labels(bench.name).set(value)
            else:
                other_median.labels(bench.name, bench.unit).set(value)
    rows = {v.name: v for v in verdicts}
    for name in {b.name for b in run.benchmarks} | rows.keys():
        regressed.labels(name).set(int(name in rows and rows[name].verdict == "regressed"))
    for row in rows.values():
        verdict.labels(row.name, row.verdict).set(1)
        if math.isfinite(row.change):
            change.labels(row.name).set(row.change)

    gauge("perfwatch_benchmark_run_timestamp_seconds", "Unix time the run started.", ()).set(_started(run).timestamp())
    gauge("perfwatch_benchmark_run_info", "1, labelled with the latest run's id and git commit.",
          ("run_id", "commit")).labels(run.run_id, run.env.get("git_commit") or "").set(1)
    gauge("perfwatch_benchmark_run_benchmarks", "Benchmarks in the run.", ()).set(len(run.benchmarks))
    gauge("perfwatch_benchmark_run_failed", "Benchmarks of the run that failed or timed out.", ()).set(len(run.failed))
    gauge("perfwatch_benchmark_run_regressed", "Benchmarks of the run that regressed against the baseline.",
          ()).set(summarize(verdicts).counts["regressed"])
    return registry


def push_grouping_key(run: RunRecord) -> dict[str, str]:
    """Besides job: one group per suite and host, so each keeps its own latest run."""
    return {"suite": _suite(run), "host": _host(run)}


def push_run(gateway: str, run: RunRecord, verdicts: Sequence[Verdict], timeout: float) -> Delivery:
    """Replace the run's group on the Pushgateway (PUT: benchmarks no longer run disappear)."""
    registry = benchmark_registry(run, verdicts)
    key = push_grouping_key(run)
    group = ", ".join(f"{k}={v}" for k, v in {"job": PUSH_JOB, **key}.items())
    try:
        bare, credentials = split_credentials(gateway)
        handler = partial(basic_auth_handler, username=credentials[0], password=credentials[1]) if credentials \
            else default_handler
        push_to_gateway(bare, job=PUSH_JOB, registry=registry, grouping_key=key, timeout=timeout, handler=handler)
    except urllib.error.HTTPError as exc:
        return Delivery("pushgateway", redact(gateway), False, _refused("pushgateway", gateway, exc))
    except (OSError, ValueError) as exc:
        return Delivery("pushgateway", redact(gateway), False, _unreachable("pushgateway", gateway, exc, timeout))
    series = sum(len(family.samples) for family in registry.collect())
    return Delivery("pushgateway", redact(gateway), True, f"pushed {series} series to group {group}")
