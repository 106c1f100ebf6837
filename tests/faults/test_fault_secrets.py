"""A secret in every URL setting perfwatch has, each where nothing answers (the failure path, whose
warning names the URL): the webhook, Alertmanager and the Pushgateway in pyproject.toml, perfwatch.toml
and the environment, `monitor --push`, and a PostgreSQL store URL by flag, setting and environment. In
hostile shapes too: percent-encoded, holding `@` and `:`, in the query, the fragment. The secret
is never in stdout, stderr, the reports, the stored results or the step summary.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from helpers import measured_project, run_perfwatch
from servers import free_port

pytestmark = pytest.mark.fault("secrets")

SECRET = "s3cr3t-f4ult"  # each case's URL holds it, in the place and shape the case says
SUITE = """
import os

def track_items():
    return float(os.environ.get("ITEMS", "100"))
"""


def shapes(port: int) -> dict[str, str]:
    """A URL with the secret in each place and shape; nothing listens on ``port``."""
    host = f"127.0.0.1:{port}"
    return {
        "userinfo": f"http://admin:{SECRET}@{host}",
        "user-only": f"http://{SECRET}@{host}",
        "percent-encoded": f"http://admin:{SECRET}%40%3A@{host}",
        "query": f"http://{host}/hook?token={SECRET}&v=1",
        "fragment": f"http://{host}/hook#{SECRET}",
    }  # a path is shown (scheme://host[:port]/path): only known hooks' paths are secrets (test_secrets.py)


# (the setting, how it is given): perfwatch ci reads each; the regression makes ci send to every sink.
SINK_SETTINGS = {
    "pyproject webhook": ("pyproject.toml", "[tool.perfwatch.alerts]\nwebhook = \"{url}\"\n"),
    "perfwatch.toml alertmanager": ("perfwatch.toml", "[alerts]\nalertmanager = \"{url}\"\n"),
    "perfwatch.toml pushgateway": ("perfwatch.toml", "[alerts]\npushgateway = \"{url}\"\n"),
    "PERFWATCH_WEBHOOK": ("env", "PERFWATCH_WEBHOOK"),
    "PERFWATCH_ALERTMANAGER": ("env", "PERFWATCH_ALERTMANAGER"),
    "PERFWATCH_PUSHGATEWAY": ("env", "PERFWATCH_PUSHGATEWAY"),
}
SHAPES = list(shapes(0))


def assert_no_secret(proc, *places: Path) -> None:
    texts = {"stdout": proc.stdout, "stderr": proc.stderr}
    for place in places:
        texts |= {str(p): p.read_text(errors="replace") for p in place.rglob("*") if p.is_file()}
    assert [where for where, text in texts.items() if SECRET in text] == [], proc.stderr


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    return measured_project(tmp_path_factory.mktemp("measured"), SUITE)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("setting", SINK_SETTINGS)
def test_a_secret_in_an_alert_or_push_url_is_never_shown_nor_stored(measured, tmp_path, setting, shape):
    project = Path(shutil.copytree(measured, tmp_path / "project"))
    url = shapes(free_port())[shape]
    where, text = SINK_SETTINGS[setting]
    env = {"ITEMS": "130", "GITHUB_STEP_SUMMARY": str(project / "summary" / "step-summary.md")}
    (project / "summary").mkdir()
    if where == "env":
        env[text] = url
    else:
        (project / where).write_text(text.format(url=url))
    proc = run_perfwatch("ci", cwd=project, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr  # the regression; sinks fail quietly
    assert "127.0.0.1" in proc.stderr  # the failed delivery was reported, redacted
    assert_no_secret(proc, project / "reports", project / ".perfwatch", project / "summary")


@pytest.mark.parametrize("shape", SHAPES)
def test_a_secret_in_monitor_push_is_never_shown(tmp_path, shape):
    proc = run_perfwatch("monitor", "--port", "0", "--push", shapes(free_port())[shape], "--",
                         sys.executable, "-c", "print('trained')", cwd=tmp_path)
    assert proc.returncode == 0 and "trained" in proc.stdout and "cannot push" in proc.stderr, proc.stderr
    assert_no_secret(proc)


STORE_SETTINGS = {
    "--store": lambda url: (["runs", "--store", url], {}, None),
    "PERFWATCH_STORE": lambda url: (["runs"], {"PERFWATCH_STORE": url}, None),
    "perfwatch.toml store": lambda url: (["runs"], {}, f'store = "{url}"\n'),
}


@pytest.mark.parametrize("shape", ["userinfo", "percent-encoded", "query"])
@pytest.mark.parametrize("setting", STORE_SETTINGS)
def test_a_password_in_a_postgresql_store_url_is_never_shown(tmp_path, setting, shape):
    url = shapes(free_port())[shape].replace("http://", "postgresql://").replace("/hook", "/perfwatch")
    args, env, settings = STORE_SETTINGS[setting](url)
    if settings is not None:
        (tmp_path / "perfwatch.toml").write_text(settings)
    proc = run_perfwatch(*args, cwd=tmp_path, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "127.0.0.1" in lines[0], proc.stderr  # cannot connect
    assert_no_secret(proc)
