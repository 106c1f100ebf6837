"""Secrets in URL settings (a webhook's ?token=, a Slack path secret, user:password@) through the real commands:
credentials arrive as HTTP Basic auth, and no secret reaches stdout, stderr, a report or a stored run.

Alertmanager and the Pushgateway are the real servers, asking for a password (exporter-toolkit's
--web.config.file); the webhook is a small receiver that records what it was sent.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import measured_project, run_perfwatch
from servers import Alertmanager, Pushgateway, free_port

from perfwatch.urls import redact, scrub, split_credentials

USER, PASSWORD = "perfwatch", "pw-5e1b-not-for-logs"
PASSWORD_BCRYPT = "$2b$04$vru6L91DdNE1jdMasFGPcuUjsTvUh1hVoFP5iUgO0e/ma./mj15UO"  # bcrypt of PASSWORD, cost 4
TOKEN = "tok-9d2c-not-for-logs"  # a webhook's ?token=
SLACK_SECRET = "Zb4CdE1fGh2IjK3lMn4OpQ5r"  # the last segment of hooks.slack.com/services/T../B../<secret>
SECRETS = (PASSWORD, TOKEN, SLACK_SECRET)

SUITE = """
import os

def track_items():
    return float(os.environ.get("ITEMS", "100"))
"""


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- the URL helpers, on literal URLs ----------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("http://127.0.0.1:9/hook?token=SECRET", "http://127.0.0.1:9/hook?***"),
    ("http://admin:pw@host", "http://***@host"),
    ("https://hooks.slack.com/services/T0001/B0002/Zb4CdE1fGh2IjK3lMn4OpQ5r",
     "https://hooks.slack.com/services/T0001/B0002/***"),
    ("https://discord.com/api/webhooks/123456789012345678/aBcD-eFgH_1234567890ijklmnopQRSTuvwx",
     "https://discord.com/api/webhooks/123456789012345678/***"),
    ("http://[::1]:9093/am#frag", "http://[::1]:9093/am#***"),
    ("admin:pw@127.0.0.1:9091", "***@127.0.0.1:9091"),  # a Pushgateway given as host:port
    ("127.0.0.1:9091", "127.0.0.1:9091"),
    ("http://[::1", "***"),  # unparsable: nothing of it is shown
])
def test_redact_keeps_scheme_host_port_and_path_and_hides_the_rest(url, shown):
    assert redact(url) == shown


def test_split_credentials_takes_userinfo_out_of_the_url_percent_decoded():
    assert split_credentials("http://ad%40min:p%3Aw@host:9093/am?x=1") == ("http://host:9093/am?x=1", ("ad@min", "p:w"))
    assert split_credentials("https://TOKEN@host") == ("https://host", ("TOKEN", ""))
    assert split_credentials("admin:pw@127.0.0.1:9091") == ("127.0.0.1:9091", ("admin", "pw"))
    assert split_credentials("http://host/hook") == ("http://host/hook", None)


def test_scrub_hides_a_urls_secrets_in_a_servers_answer_without_mangling_the_rest():
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:9/services/T0001/B0002/{SLACK_SECRET}?token={TOKEN}&v=1"
    answer = f"HTTP 401: no hook /services/T0001/B0002/{SLACK_SECRET}?token={TOKEN}&v=1 for token {TOKEN}"
    assert scrub(answer, url) == "HTTP 401: no hook /services/T0001/B0002/***?*** for token ***"


# --- servers that ask for a password -----------------------------------------------------------

class PasswordProtected:
    """Mixed into a tests/servers.py server: every path asks for USER:PASSWORD as Basic auth."""

    def prepare(self) -> None:
        super().prepare()
        (self.workdir / "web.yml").write_text(yaml.safe_dump({"basic_auth_users": {USER: PASSWORD_BCRYPT}}))

    def arguments(self, port: int) -> list[str]:
        return [*super().arguments(port), f"--web.config.file={self.workdir / 'web.yml'}"]

    def _ready(self) -> bool:
        return self.get_json(self.ready_path, raw=True) is not None

    def get_json(self, path: str, raw: bool = False) -> Any:
        """GET with the password; None while the server does not answer yet."""
        request = urllib.request.Request(self.url + path, headers={"Authorization": basic(USER, PASSWORD)})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = response.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        return body if raw else json.loads(body)

    def with_user(self, user: str = USER, password: str = PASSWORD) -> str:
        return self.url.replace("http://", f"http://{user}:{password}@")


class ProtectedAlertmanager(PasswordProtected, Alertmanager):
    pass


class ProtectedPushgateway(PasswordProtected, Pushgateway):
    pass


@pytest.fixture
def alertmanager(tmp_path) -> Iterator[ProtectedAlertmanager]:
    with ProtectedAlertmanager(tmp_path / "alertmanager") as server:
        yield server


@pytest.fixture
def gateway(tmp_path) -> Iterator[ProtectedPushgateway]:
    with ProtectedPushgateway(tmp_path / "pushgateway") as server:
        yield server


class Receiver:
    """A webhook on 127.0.0.1 keeping (path, Authorization) of each POST. Under /refuse it answers
    403 and echoes the path it was sent, as receivers that name the hook they do not know do."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str | None]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                refused = self.path.startswith("/refuse")
                if not refused:
                    receiver.received.append((self.path, self.headers["Authorization"]))
                self.send_response(403 if refused else 200)
                self.end_headers()
                if refused:
                    self.wfile.write(f"no hook {self.path}".encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()
        thread.join()


# --- a project with a stored run and a baseline --------------------------------------------------

@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    return measured_project(tmp_path_factory.mktemp("measured"), SUITE)


@pytest.fixture
def project(measured, tmp_path) -> Path:
    return Path(shutil.copytree(measured, tmp_path / "project"))


def assert_no_secret(proc, *places: Path) -> None:
    """No secret in the command's output nor in any file under ``places`` (reports, results, the step summary)."""
    texts = {"stdout": proc.stdout, "stderr": proc.stderr}
    for place in places:
        for path in [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file()):
            texts[str(path)] = path.read_text(errors="replace")
    leaks = [f"{secret!r} in {where}" for where, text in texts.items() for secret in SECRETS if secret in text]
    assert leaks == [], f"{leaks}\n--- stderr:\n{proc.stderr}"


# --- perfwatch ci ------------------------------------------------------------------------------

def test_ci_sends_userinfo_as_basic_auth_and_shows_every_url_redacted(project, receiver, alertmanager, gateway):
    (project / "pyproject.toml").write_text(
        f'[tool.perfwatch.alerts]\nalertmanager = "{alertmanager.with_user()}"\npushgateway = "{gateway.with_user()}"\n')
    hook_path = f"/services/T0001/B0002/{SLACK_SECRET}?token={TOKEN}"
    summary = project / "step-summary.md"
    proc = run_perfwatch("ci", cwd=project, env={
        "ITEMS": "130", "GITHUB_STEP_SUMMARY": str(summary),
        "PERFWATCH_WEBHOOK": receiver.url.replace("http://", f"http://hook:{PASSWORD}@") + hook_path})

    assert proc.returncode == 1, proc.stderr  # the regression
    assert receiver.received == [(hook_path, basic("hook", PASSWORD))]
    assert [a["labels"]["benchmark"] for a in alertmanager.get_json("/api/v2/alerts")] == ["tiny.track_items"]
    assert [g["labels"]["job"] for g in gateway.get_json("/api/v1/metrics")["data"]] == ["perfwatch_benchmarks"]
    shown = receiver.url.replace("http://", "http://***@")
    assert f"webhook {shown}/services/T0001/B0002/***?***: sent (HTTP 200)" in proc.stderr
    assert f"alertmanager {redact(alertmanager.with_user())}/api/v2/alerts: sent (HTTP 200)" in proc.stderr
    assert f"pushgateway {redact(gateway.with_user())}: pushed" in proc.stderr
    assert_no_secret(proc, project / "reports", project / ".perfwatch", summary)


def test_ci_failed_deliveries_warn_without_a_secret(project, receiver, alertmanager):
    nobody = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    (project / "perfwatch.toml").write_text(
        f'[alerts]\nwebhook = "{receiver.url}/refuse/{SLACK_SECRET}?token={TOKEN}"\n'
        f'alertmanager = "{alertmanager.with_user("intruder")}"\npushgateway = "{nobody}"\n')
    summary = project / "step-summary.md"
    proc = run_perfwatch("ci", cwd=project, env={"ITEMS": "130", "GITHUB_STEP_SUMMARY": str(summary)})

    assert proc.returncode == 1, proc.stderr  # failed deliveries change no exit code
    warnings = [line for line in proc.stderr.splitlines() if " alert failed: " in line]
    assert len(warnings) == 3, proc.stderr
    assert f"{receiver.url}/refuse/***?*** answered HTTP 403 Forbidden" in warnings[0]
    assert "no hook /refuse/***?***" in warnings[0]  # the receiver's echo of its path, scrubbed
    assert f"{redact(alertmanager.with_user())}/api/v2/alerts answered HTTP 401 Unauthorized" in warnings[1]
    assert f"cannot reach {redact(nobody)}: Connection refused" in warnings[2]
    assert alertmanager.get_json("/api/v2/alerts") == []
    assert_no_secret(proc, project / "reports", project / ".perfwatch", summary)


def test_an_unparsable_webhook_is_a_warning_that_shows_none_of_it(project):
    proc = run_perfwatch("ci", cwd=project, env={"ITEMS": "130", "PERFWATCH_WEBHOOK": f"http://[::1/hook?token={TOKEN}"})
    assert proc.returncode == 1, proc.stderr
    assert "warning: the webhook alert failed: ***: not a usable URL (Invalid IPv6 URL)" in proc.stderr
    assert_no_secret(proc, project / "reports", project / ".perfwatch")


def test_a_bad_url_option_is_refused_without_echoing_its_secret(tmp_path):
    proc = run_perfwatch("ci", "--webhook", f"ftp://{USER}:{PASSWORD}@host/hook", cwd=tmp_path)
    assert proc.returncode == 2 and "'ftp://***@host/hook' must be an http:// or https:// URL" in proc.stderr
    assert_no_secret(proc)


def test_a_bad_alert_url_in_the_config_is_refused_without_echoing_its_secret(tmp_path):
    (tmp_path / "perfwatch.toml").write_text(f'[alerts]\nalertmanager = "htp://{USER}:{PASSWORD}@host:9093"\n')
    proc = run_perfwatch("compare", cwd=tmp_path)
    assert proc.returncode == 2 and "alerts.alertmanager = 'htp://***@host:9093'" in proc.stderr
    assert_no_secret(proc)


# --- perfwatch monitor --push ------------------------------------------------------------------

TRAIN = [sys.executable, "-c", "print('trained')"]


def test_monitor_pushes_with_basic_auth_and_shows_the_gateway_redacted(gateway):
    proc = run_perfwatch("monitor", "--port", "0", "--push", gateway.with_user(), "--", *TRAIN, cwd=Path.cwd())
    assert proc.returncode == 0 and "trained" in proc.stdout, proc.stderr
    (group,) = gateway.get_json("/api/v1/metrics")["data"]
    assert group["labels"] == {"job": "perfwatch", "instance": socket.gethostname()}
    assert f"perfwatch: pushing metrics to {redact(gateway.with_user())} every 15 s" in proc.stderr
    assert "cannot push" not in proc.stderr
    assert_no_secret(proc)


def test_monitor_push_refused_warns_without_the_password(gateway):
    proc = run_perfwatch("monitor", "--port", "0", "--push", gateway.with_user("intruder"), "--", *TRAIN,
                         cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr
    assert f"cannot push metrics to {redact(gateway.with_user())} (HTTP Error 401: Unauthorized)" in proc.stderr
    assert gateway.get_json("/api/v1/metrics")["data"] == []
    assert_no_secret(proc)


@pytest.mark.parametrize("url, shown", [(f"ftp://{USER}:{PASSWORD}@host", "ftp://***@host"),
                                        (f"http://{USER}:{PASSWORD}@[::1", "***")], ids=["ftp", "unclosed-ipv6"])
def test_monitor_refuses_a_bad_push_url_without_echoing_its_secret(url, shown):
    proc = run_perfwatch("monitor", "--push", url, "--", *TRAIN, cwd=Path.cwd())
    assert proc.returncode == 2 and f"Pushgateway URL {shown!r} is not http(s)://host[:port]" in proc.stderr
    assert_no_secret(proc)
