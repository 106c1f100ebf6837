"""Alert sinks against real servers: a webhook on 127.0.0.1, Debian's Alertmanager and Pushgateway.

The runs and verdicts are literal (compare.compare_runs over made-up samples), so each test knows
which benchmarks regressed or failed; everything past send_alerts is real HTTP.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import (
    BAD,
    BASELINE,
    CLEAN,
    COMMIT,
    STEADY,
    assert_promtool_clean,
    bench,
    documented_metrics,
    run_record,
    scrape,
    value,
)
from servers import Alertmanager, Pushgateway, free_port, wait_until

from perfwatch.config import AlertSinks
from perfwatch.regress.alerts import ALERT_LIFETIME, PUSH_JOB, send_alerts
from perfwatch.regress.compare import compare_runs

REPORT_URL = "https://ci.example.com/builds/42"


@dataclass
class Webhook:
    """A local HTTP server that keeps every JSON body POSTed to it; ``/broken`` answers 500."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/broken":
                self.send_error(500, "receiver is down for maintenance")
                return
            hook.received.append({"path": self.path, "content_type": self.headers["Content-Type"],
                                  "json": json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def alertmanager(tmp_path) -> Iterator[Alertmanager]:
    with Alertmanager(tmp_path / "alertmanager") as server:
        yield server


@pytest.fixture
def gateway(tmp_path) -> Iterator[Pushgateway]:
    with Pushgateway(tmp_path / "pushgateway") as server:
        yield server


def nothing_listens() -> str:
    return f"http://127.0.0.1:{free_port()}"


# ---------------------------------------------------------------- webhook


def test_webhook_gets_a_slack_text_and_the_rows_of_a_regressed_and_a_failed_benchmark(webhook):
    verdicts = compare_runs(BASELINE, BAD)
    (delivery,) = send_alerts(AlertSinks(webhook=webhook.url), BAD, verdicts, report_url=REPORT_URL)

    assert (delivery.sink, delivery.target, delivery.ok) == ("webhook", webhook.url, True), delivery.detail
    (request,) = webhook.received
    assert request["content_type"] == "application/json"
    payload = request["json"]
    text = payload["text"]
    assert text.splitlines()[0] == "perfwatch: 1 regressed, 1 failed of 6 benchmarks"
    assert "loader.time_batch(workers=2): +20.0% worse (CI +" in text
    assert "training.time_step: failed: RuntimeError: CUDA out of memory" in text
    assert BAD.run_id in text and COMMIT[:12] in text and REPORT_URL in text
    assert (payload["run_id"], payload["commit"], payload["host"], payload["suite"]) == (
        BAD.run_id, COMMIT, "ci-runner-7", "ci")
    assert payload["counts"] == {"regressed": 1, "failed": 1, "unchanged": 4}
    regressed, failed = payload["benchmarks"]
    assert (regressed["name"], regressed["verdict"]) == ("loader.time_batch(workers=2)", "regressed")
    assert regressed["change"] == pytest.approx(0.2) and regressed["ci_low"] > 0.1
    assert (failed["name"], failed["verdict"], failed["change"]) == ("training.time_step", "failed", None)


def test_webhook_stays_quiet_on_a_clean_run(webhook):
    (delivery,) = send_alerts(AlertSinks(webhook=webhook.url), CLEAN, compare_runs(BASELINE, CLEAN))
    assert delivery.ok and "nothing sent" in delivery.detail
    assert webhook.received == []


def test_a_failed_benchmark_alerts_even_without_a_baseline_and_slack_markup_is_escaped(webhook):
    broken = run_record("20250104T000000Z-dddddd", "2025-01-04T00:00:00+00:00", [
        bench("loader.time_batch(workers=2)", STEADY),
        bench("loader.time_batch(workers=0)", [], status="failed", error="ValueError: need 0 < batch_size & <= 4096")])
    (delivery,) = send_alerts(AlertSinks(webhook=webhook.url), broken, [])
    assert delivery.ok, delivery.detail
    (request,) = webhook.received
    assert [row["name"] for row in request["json"]["benchmarks"]] == ["loader.time_batch(workers=0)"]
    assert "0 regressed, 1 failed of 2 benchmarks" in request["json"]["text"]
    assert "need 0 &lt; batch_size &amp; &lt;= 4096" in request["json"]["text"], "Slack reads <...> as a link"
    assert request["json"]["benchmarks"][0]["reason"] == "failed: ValueError: need 0 < batch_size & <= 4096"


def test_webhook_error_answer_is_reported_with_the_status_and_the_reason(webhook):
    url = webhook.url.replace("/hook", "/broken")
    (delivery,) = send_alerts(AlertSinks(webhook=url), BAD, compare_runs(BASELINE, BAD))
    assert not delivery.ok
    assert url in delivery.detail and "HTTP 500" in delivery.detail and "down for maintenance" in delivery.detail


# ---------------------------------------------------------------- Alertmanager


def test_alertmanager_receives_one_alert_per_regressed_or_failed_benchmark(alertmanager):
    sinks = AlertSinks(alertmanager=alertmanager.url + "/")  # a trailing slash is fine
    (delivery,) = send_alerts(sinks, BAD, compare_runs(BASELINE, BAD), report_url=REPORT_URL)
    assert delivery.ok and delivery.target == alertmanager.url + "/api/v2/alerts", delivery.detail

    alerts = {a["labels"]["benchmark"]: a for a in alertmanager.alerts()}
    assert set(alerts) == {"loader.time_batch(workers=2)", "training.time_step"}
    regression, failure = alerts["loader.time_batch(workers=2)"], alerts["training.time_step"]
    assert regression["labels"] == {"alertname": "PerfwatchBenchmarkRegression",
                                    "benchmark": "loader.time_batch(workers=2)",
                                    "suite": "ci", "host": "ci-runner-7", "severity": "warning"}
    assert failure["labels"]["alertname"] == "PerfwatchBenchmarkFailed"
    assert failure["labels"]["severity"] == "critical"
    assert regression["annotations"]["summary"].startswith("loader.time_batch(workers=2): +20.0% worse (CI +")
    assert BAD.run_id in regression["annotations"]["description"]
    assert regression["annotations"]["commit"] == COMMIT
    assert regression["generatorURL"] == REPORT_URL
    assert regression["status"]["state"] == "active", "startsAt in the past, endsAt in the future"
    assert regression["startsAt"].startswith("2025-01-03T00:00:00")
    lasts = datetime.fromisoformat(regression["endsAt"].replace("Z", "+00:00")) - datetime.now(timezone.utc)
    assert timedelta(hours=23) < lasts <= ALERT_LIFETIME, "a one-off CI alert resolves itself after a day"


def test_alertmanager_hears_nothing_of_a_clean_run(alertmanager):
    (delivery,) = send_alerts(AlertSinks(alertmanager=alertmanager.url), CLEAN, compare_runs(BASELINE, CLEAN))
    assert delivery.ok and "nothing sent" in delivery.detail
    assert alertmanager.alerts() == []


# ---------------------------------------------------------------- Pushgateway


def test_every_run_is_pushed_in_base_units_and_promtool_is_clean(gateway):
    (delivery,) = send_alerts(AlertSinks(pushgateway=gateway.url), BAD, compare_runs(BASELINE, BAD))
    assert delivery.ok and "job=perfwatch_benchmarks, suite=ci, host=ci-runner-7" in delivery.detail

    (group,) = gateway.metrics()
    assert group["labels"] == {"job": PUSH_JOB, "suite": "ci", "host": "ci-runner-7"}
    text = scrape(f"{gateway.url}/metrics")
    group_labels = {"job": PUSH_JOB, "suite": "ci", "host": "ci-runner-7", "instance": ""}

    def pushed(name: str, **labels: str) -> float | None:
        return value(text, name, **group_labels, **labels)

    batch = "loader.time_batch(workers=2)"
    assert pushed("perfwatch_benchmark_median_seconds", benchmark=batch) == pytest.approx(1.2)
    assert pushed("perfwatch_benchmark_median_bytes", benchmark="training.peakmem_step") == pytest.approx(2e8)
    assert pushed("perfwatch_benchmark_median_bytes_per_second", benchmark="loader.track_bytes_per_s") == \
        pytest.approx(3e8)
    assert pushed("perfwatch_benchmark_median_ratio", benchmark="training.track_mfu") == pytest.approx(0.4)
    assert pushed("perfwatch_benchmark_median", benchmark="loader.track_samples_per_s", unit="samples/s") == \
        pytest.approx(5000)
    assert pushed("perfwatch_benchmark_median_seconds", benchmark="training.time_step") is None, "failed: no median"
    assert pushed("perfwatch_benchmark_samples", benchmark=batch) == 20
    assert pushed("perfwatch_benchmark_samples", benchmark="training.time_step") == 0
    assert pushed("perfwatch_benchmark_change_ratio", benchmark=batch) == pytest.approx(0.2)
    assert pushed("perfwatch_benchmark_regressed", benchmark=batch) == 1
    assert pushed("perfwatch_benchmark_regressed", benchmark="training.peakmem_step") == 0
    assert pushed("perfwatch_benchmark_verdict", benchmark=batch, verdict="regressed") == 1
    assert pushed("perfwatch_benchmark_verdict", benchmark="training.time_step", verdict="failed") == 1
    assert pushed("perfwatch_benchmark_run_timestamp_seconds") == 1735862400  # 2025-01-03T00:00:00Z
    assert pushed("perfwatch_benchmark_run_info", run_id=BAD.run_id, commit=COMMIT) == 1
    assert (pushed("perfwatch_benchmark_run_benchmarks"), pushed("perfwatch_benchmark_run_failed"),
            pushed("perfwatch_benchmark_run_regressed")) == (6, 1, 1)
    ours = [line for line in text.splitlines() if re.match(r"(# (HELP|TYPE) )?perfwatch_benchmark", line)]
    assert_promtool_clean("\n".join(ours) + "\n")
    assert documented_metrics("perfwatch_benchmark_") == dict(re.findall(r"^# TYPE (perfwatch_benchmark\w+) (\S+)$",
                                                                        text, re.MULTILINE))


def test_a_clean_run_is_pushed_too_and_replaces_the_previous_one(gateway):
    sinks = AlertSinks(pushgateway=gateway.url)
    send_alerts(sinks, BAD, compare_runs(BASELINE, BAD))
    (delivery,) = send_alerts(sinks, CLEAN, compare_runs(BASELINE, CLEAN))
    assert delivery.ok, delivery.detail
    text = scrape(f"{gateway.url}/metrics")
    assert value(text, "perfwatch_benchmark_run_regressed", job=PUSH_JOB, suite="ci", host="ci-runner-7",
                 instance="") == 0
    assert "verdict=\"regressed\"" not in text and BAD.run_id not in text


# ---------------------------------------------------------------- sinks that cannot be reached


def test_unreachable_sinks_are_reported_with_their_url_and_nothing_raises():
    sinks = AlertSinks(webhook=nothing_listens() + "/hook", alertmanager=nothing_listens(),
                       pushgateway=nothing_listens(), timeout=5)
    deliveries = send_alerts(sinks, BAD, compare_runs(BASELINE, BAD))
    assert [d.sink for d in deliveries] == ["webhook", "alertmanager", "pushgateway"]
    for delivery, url in zip(deliveries, (sinks.webhook, sinks.alertmanager, sinks.pushgateway)):
        assert not delivery.ok
        assert delivery.detail.startswith(f"cannot reach {url}") and "Connection refused" in delivery.detail
        assert "\n" not in delivery.detail


def test_one_unreachable_sink_does_not_stop_the_others(alertmanager, gateway):
    sinks = AlertSinks(webhook=nothing_listens(), alertmanager=alertmanager.url, pushgateway=gateway.url)
    webhook, manager, push = send_alerts(sinks, BAD, compare_runs(BASELINE, BAD))
    assert not webhook.ok and manager.ok and push.ok
    assert len(wait_until(alertmanager.alerts, timeout=10, what="alerts in Alertmanager")) == 2
    assert gateway.metrics()


def test_a_sink_that_never_answers_times_out_with_a_clear_detail():
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        (delivery,) = send_alerts(AlertSinks(webhook=url, timeout=0.5), BAD, compare_runs(BASELINE, BAD))
    assert not delivery.ok and delivery.detail.startswith(f"{url}: no answer within 0.5 s")


def test_a_url_without_a_scheme_is_reported_not_raised():
    (delivery,) = send_alerts(AlertSinks(webhook="hooks.example.com/perf"), BAD, compare_runs(BASELINE, BAD))
    assert not delivery.ok and "hooks.example.com/perf: not a usable URL" in delivery.detail
