"""A benchmark runs with the user's environment, less perfwatch's settings that may hold a password or
a token (the store URL and the alert sinks): a benchmark's code could print them into a CI log. Checked
in `perfwatch run`'s workers and in both sides' workers of `perfwatch ci --against`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import run_perfwatch, write_suite

from perfwatch.bench.runner import SECRET_ENV

TOKEN = "tok-3f7a-not-for-benchmarks"
SECRETS = {
    "PERFWATCH_WEBHOOK": f"http://127.0.0.1:9/hook?token={TOKEN}",
    "PERFWATCH_ALERTMANAGER": f"http://admin:{TOKEN}@127.0.0.1:9",
    "PERFWATCH_PUSHGATEWAY": f"http://admin:{TOKEN}@127.0.0.1:9",
}

# Each worker process that runs it writes what it sees of the environment to seen/PID.json.
SUITE = '''
import json, os
from pathlib import Path

def track_environment():
    seen = Path(os.environ["SEEN_DIR"])
    seen.mkdir(exist_ok=True)
    (seen / f"{os.getpid()}.json").write_text(json.dumps(dict(os.environ)))
    return 1.0
track_environment.repeat = 2
track_environment.warmup_time = 0
track_environment.rounds = 2
'''


@pytest.fixture
def project(tmp_path) -> Path:
    write_suite(tmp_path / "suites", "env.py", SUITE)
    return tmp_path


def environment(project: Path) -> dict[str, str]:
    """The user's environment: the secret settings (a store in the project, the alert sinks) and one of
    the user's own variables that a benchmark may well read."""
    return {**SECRETS, "PERFWATCH_STORE": str(project / "store"), "SEEN_DIR": str(project / "seen"),
            "USERS_OWN": "kept"}


def seen_by_the_workers(project: Path) -> list[dict[str, str]]:
    return [json.loads(path.read_text()) for path in sorted((project / "seen").glob("*.json"))]


def assert_no_secret_seen(environments: list[dict[str, str]]) -> None:
    assert environments
    for env in environments:
        assert env["USERS_OWN"] == "kept"
        assert [name for name in SECRET_ENV if name in env] == []
        assert TOKEN not in json.dumps(env)


def test_the_secret_settings_are_exactly_the_url_settings():
    assert set(SECRET_ENV) == {*SECRETS, "PERFWATCH_STORE"}


def test_run_workers_do_not_see_the_secret_settings(project):
    proc = run_perfwatch("run", cwd=project, env=environment(project))
    assert proc.returncode == 0, proc.stderr
    assert list((project / "store").glob("*.json"))  # the runner itself used PERFWATCH_STORE
    assert_no_secret_seen(seen_by_the_workers(project))


@pytest.mark.slow
def test_paired_workers_of_both_sides_do_not_see_the_secret_settings(project):
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "s"]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)
    proc = run_perfwatch("ci", "--against", "HEAD", "--report-dir", "reports", cwd=project, env=environment(project))
    assert proc.returncode == 0, proc.stderr
    environments = seen_by_the_workers(project)
    assert len(environments) == 4  # two rounds, a worker per side in each
    assert_no_secret_seen(environments)
