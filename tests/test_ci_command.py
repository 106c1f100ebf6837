"""`perfwatch ci`: a real (tiny) suite run, compared, reported and alerted; plus the report renderers."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from helpers import (
    MACHINE,
    NOISY,
    STEADY,
    assert_one_line_error,
    bench,
    measured_project,
    run_perfwatch,
    scaled,
    write_suite,
)
from servers import free_port

from perfwatch.cli import cli
from perfwatch.publish.build import check_commit_url
from perfwatch.regress import ci_report
from perfwatch.regress.compare import Comparison, compare_runs
from perfwatch.store import DEFAULT_STORE

REPO = Path(__file__).resolve().parent.parent

# track_ benchmarks measure no time, so a ci-size run takes a second and its values are exact:
# ITEMS moves one of them, BREAK makes another raise.
SUITE = """
import os

ITEMS = "100"  # the code measured; a change of the benchmark's own code would start a new version

def track_items():
    return float(os.environ.get("ITEMS", ITEMS))

def track_steady():
    return 5.0

def track_fragile():
    if os.environ.get("BREAK"):
        raise RuntimeError("broken on purpose")
    return 1.0
"""


# --- the renderers, on literal runs ----------------------------------------------------------

def literal_comparison() -> Comparison:
    """One row of each JUnit outcome, with names and errors that need escaping."""
    from perfwatch.results import RunRecord

    base = [bench("t.time_pipe(sep='|', cls=<int>)", scaled(STEADY, 1.0)), bench("t.time_noisy", scaled(NOISY, 1.0)),
            bench("t.time_few", scaled(STEADY, 1.0)), bench("t.time_crash", scaled(STEADY, 1.0)),
            bench("t.time_same*", scaled(STEADY, 1.0))]
    cand = [bench("t.time_pipe(sep='|', cls=<int>)", scaled(STEADY, 1.2)), bench("t.time_noisy", scaled(NOISY, 1.1)),
            bench("t.time_few", [1e-3, 1e-3]), bench("t.time_crash", [], status="failed",
                                                        error="RuntimeError: bad \x1b[31mcolour\x1b[0m & <tag>"),
            bench("t.time_same*", scaled(STEADY, 1.0))]
    runs = [RunRecord(run_id=i, created="2026-01-01T00:00:00+00:00", suite="ci", env=MACHINE, benchmarks=b)
            for i, b in (("base", base), ("cand", cand))]
    return Comparison(runs[0], runs[1], compare_runs(runs[0], runs[1]), ["torch: 2.13.0 vs 2.12.0"])


def test_markdown_escapes_every_user_string():
    text = ci_report.markdown(literal_comparison())
    assert text.startswith("## perfwatch: 1 regressed, 1 unchanged, 1 too-noisy, 1 failed, 1 insufficient\n")
    assert "> [!WARNING]\n> Different machines: torch: 2.13.0 vs 2.12.0." in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 6  # the header and one row per benchmark
    for row in rows:  # no cell can split: 8 cells, 9 unescaped pipes
        assert row.replace("\\|", "").count("|") == 9, row
    pipe = next(r for r in rows if "time_pipe" in r)  # an underscore inside a word starts no emphasis
    assert "sep='\\|', cls=\\<int\\>" in pipe and "🔴" in pipe and "+20.0% \\[" in pipe
    assert "t.time_same\\*" in text and "\x1b" not in text and "\\& \\<tag\\>" in text


def test_junit_has_one_testcase_per_benchmark_with_its_outcome():
    root = ET.fromstring(ci_report.junit_xml(literal_comparison()))  # well formed despite the escape codes
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("5", "1", "1", "2")
    outcome = {case.get("name"): [child.tag for child in case] for case in suite.iter("testcase")}
    assert outcome == {"t.time_pipe(sep='|', cls=<int>)": ["failure"], "t.time_noisy": ["skipped"],
                       "t.time_few": ["skipped"], "t.time_crash": ["error"], "t.time_same*": ["system-out"]}
    crash = suite.find("testcase[@name='t.time_crash']/error")
    assert crash.get("type") == "failed" and "& <tag>" in crash.get("message") and "\x1b" not in crash.get("message")
    few = suite.find("testcase[@name='t.time_few']/skipped")
    assert "need at least 3 each" in few.get("message")
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["candidate_run"] == "cand" and properties["machine_differences"] == "torch: 2.13.0 vs 2.12.0"


def test_report_json_is_strict_json():
    doc = ci_report.report_json(literal_comparison())
    text = json.dumps(doc, allow_nan=False)  # nan became null
    assert doc["exit_code"] == 3 and doc["machine_differences"] == ["torch: 2.13.0 vs 2.12.0"]
    crash = next(v for v in json.loads(text)["verdicts"] if v["name"] == "t.time_crash")
    assert crash["verdict"] == "failed" and crash["change"] is None and crash["p_value"] is None


# --- the command, on a real suite --------------------------------------------------------------

@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    """A project with the tiny suite, one stored ci run of it and that run saved as the baseline."""
    return measured_project(tmp_path_factory.mktemp("measured"), SUITE,
                            settings='store = ".perfwatch/results"  # runs committed as JSON documents\n')


@pytest.fixture
def project(measured, tmp_path) -> Path:
    """A fresh copy of the measured project for one test."""
    return Path(shutil.copytree(measured, tmp_path / "project"))


def stored_runs(project: Path) -> list[Path]:
    return sorted((project / ".perfwatch" / "results").glob("*.json"))


def reports_of(project: Path) -> dict[str, str]:
    [directory] = (project / "reports").iterdir()
    return {p.name: p.read_text() for p in directory.iterdir()}


def verdicts(report: str) -> dict[str, str]:
    return {v["name"]: v["verdict"] for v in json.loads(report)["verdicts"]}


def test_without_a_baseline_or_a_ref_it_says_what_to_do(tmp_path):
    write_suite(tmp_path / "suites", "tiny.py", SUITE)
    assert_one_line_error(run_perfwatch("ci", cwd=tmp_path), "perfwatch-baseline.json: no baseline file",
                          "`perfwatch baseline save`", "--against REF")
    assert not (tmp_path / ".perfwatch").exists()  # nothing stored, no store made


def test_a_regression_exits_1_with_all_reports_and_the_step_summary(project):
    summary = project / "step-summary.md"
    summary.write_text("earlier step\n")
    proc = run_perfwatch("ci", cwd=project, env={"ITEMS": "130", "GITHUB_STEP_SUMMARY": str(summary)})
    assert proc.returncode == 1, proc.stderr
    assert "perfwatch: 1 benchmark(s) regressed: tiny.track_items" in proc.stderr
    assert "✓ tiny.track_items: 130 (" in proc.stderr  # one progress line per benchmark, for CI logs
    latest = stored_runs(project)[-1]
    reports = reports_of(project)
    assert set(reports) == {"report.md", "junit.xml", "report.json"}
    doc = json.loads(reports["report.json"])
    assert doc["candidate"]["run_id"] == latest.stem and doc["paired"] is False and doc["machine_differences"] == []
    assert verdicts(reports["report.json"]) == {"tiny.track_items": "regressed", "tiny.track_steady": "unchanged",
                                                "tiny.track_fragile": "unchanged"}
    junit = ET.fromstring(reports["junit.xml"])
    assert [c.get("name") for c in junit.iter("testcase") if c.find("failure") is not None] == ["tiny.track_items"]
    assert reports["report.md"].startswith("## perfwatch: 1 regressed, 2 unchanged")
    assert summary.read_text() == "earlier step\n" + reports["report.md"] + "\n"


def test_exit_codes_a_failure_wins_over_a_regression_and_a_clean_run_passes(project):
    broken = run_perfwatch("ci", "--report-dir", "reports/broken", cwd=project, env={"ITEMS": "130", "BREAK": "1"})
    assert broken.returncode == 3, broken.stderr
    assert "✗ tiny.track_fragile: failed: RuntimeError: broken on purpose" in broken.stderr
    junit = ET.fromstring((project / "reports/broken/junit.xml").read_text())
    assert junit.get("failures") == "1" and junit.get("errors") == "1"
    clean = run_perfwatch("ci", "--report-dir", "reports/clean", cwd=project)
    assert clean.returncode == 0, clean.stderr
    assert "3 unchanged" in clean.stdout


def test_a_changed_suite_reports_new_and_missing_not_failures(project):
    write_suite(project / "suites", "tiny.py", SUITE.replace("def track_steady", "def track_added"))
    proc = run_perfwatch("ci", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert verdicts(reports_of(project)["report.json"]) == {
        "tiny.track_items": "unchanged", "tiny.track_added": "new", "tiny.track_fragile": "unchanged",
        "tiny.track_steady": "missing"}


def test_a_baseline_from_another_machine_is_refused_before_running(project):
    baseline_file = project / "perfwatch-baseline.json"
    doc = json.loads(baseline_file.read_text())
    doc["env"]["cpu"] = "Imaginary CPU 9000"
    baseline_file.write_text(json.dumps(doc))
    runs_before = stored_runs(project)
    assert_one_line_error(run_perfwatch("ci", cwd=project), "different machines", "CPU: Imaginary CPU 9000 vs",
                          "--allow-machine-mismatch")
    assert stored_runs(project) == runs_before  # refused before the suite ran
    allowed = run_perfwatch("ci", "--allow-machine-mismatch", cwd=project)
    assert allowed.returncode == 0, allowed.stderr
    assert "warning: comparing runs from different machines: CPU: Imaginary CPU 9000 vs" in allowed.stderr
    reports = reports_of(project)
    assert json.loads(reports["report.json"])["machine_differences"][0].startswith("CPU: Imaginary CPU 9000 vs")
    assert "> [!WARNING]" in reports["report.md"]


def test_bad_options_are_refused_before_running(project):
    assert_one_line_error(run_perfwatch("ci", "--threshold", "tiny.*=fast", cwd=project),
                          "--threshold", "'fast' for 'tiny.*' is not a number")
    bad_url = run_perfwatch("ci", "--webhook", "hooks.example.com", cwd=project)
    assert bad_url.returncode == 2 and "'hooks.example.com' must be an http:// or https:// URL" in bad_url.stderr
    assert_one_line_error(run_perfwatch("ci", "--against", "main", "--baseline", "b.json", cwd=project),
                          "--against and --baseline")
    assert len(stored_runs(project)) == 1


class Webhook(BaseHTTPRequestHandler):
    """Records each JSON body POSTed to it."""

    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        Webhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alerts_are_sent_and_a_failed_delivery_changes_nothing(project):
    pytest.importorskip("perfwatch.regress.alerts")
    server = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (project / "perfwatch.toml").write_text(f'[alerts]\nwebhook = "http://127.0.0.1:{server.server_port}/hook"\n')
        nobody = f"http://127.0.0.1:{free_port()}"  # an Alertmanager that is down
        proc = run_perfwatch("ci", "--alertmanager", nobody, cwd=project, env={"ITEMS": "130"})
    finally:
        server.shutdown()
    assert proc.returncode == 1, proc.stderr  # still the regression's exit code
    assert f"warning: the alertmanager alert failed: cannot reach {nobody}" in proc.stderr
    assert "the verdict and the reports are unaffected" in proc.stderr
    [payload] = Webhook.received
    assert "tiny.track_items" in payload["text"]
    assert verdicts(reports_of(project)["report.json"])["tiny.track_items"] == "regressed"


def test_against_a_git_ref_runs_both_sides_interleaved(project):
    pytest.importorskip("perfwatch.bench.paired")
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=project,
                                    check=True, capture_output=True)
    git("init", "-q", "-b", "main")
    git("add", "suites")
    git("commit", "-qm", "suite")
    write_suite(project / "suites", "tiny.py", SUITE.replace('ITEMS = "100"', 'ITEMS = "130"'))  # the working tree regressed
    proc = run_perfwatch("ci", "--against", "main", "--filter", "items", cwd=project)
    assert proc.returncode == 1, proc.stderr
    reports = reports_of(project)
    doc = json.loads(reports["report.json"])
    assert doc["paired"] is True and verdicts(reports["report.json"]) == {"tiny.track_items": "regressed"}
    assert json.loads(reports["baseline-run.json"])["run_id"] == doc["baseline"]["run_id"]  # its samples are kept
    assert len(stored_runs(project)) == 2  # the measured run and this candidate; REF's run is in the reports
    assert_one_line_error(run_perfwatch("ci", "--against", "no-such-branch", cwd=project), "'no-such-branch': no such commit", "(--against)")


# --- the example workflow ----------------------------------------------------------------------

def test_the_example_workflow_runs_real_ci_options():
    workflow = yaml.safe_load((REPO / ".github/workflows/perfwatch.yml").read_text())
    assert {"pull_request", "push"} <= set(workflow[True])  # YAML 1.1 reads the key `on` as True
    steps = workflow["jobs"]["benchmarks"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0
    install = next(s["run"] for s in steps if "pip install" in s.get("run", ""))
    assert "python3 -c 'import torch' 2>/dev/null || python3 -m pip install torch==2.13.0" in install
    commands = [shlex.split(s["run"].replace("${{ github.base_ref }}", "main"))
                for s in steps if s.get("run", "").startswith("perfwatch ci")]
    assert {s["if"] for s in steps if s.get("run", "").startswith("perfwatch ci")} == {
        "github.event_name == 'pull_request'", "github.event_name == 'push'"}
    assert ["perfwatch", "ci", "--against", "origin/main"] in commands
    # pushes are paired too: one unpaired comparison on a shared runner is not a sound gate
    assert ["perfwatch", "ci", "--against", "HEAD^"] in commands
    assert not any("--baseline" in c or "--allow-machine-mismatch" in c for c in commands)
    help_text = run_perfwatch("ci", "--help", cwd=REPO).stdout
    for command in commands:
        assert all(arg in help_text for arg in command[2:] if arg.startswith("--")), command
        cli.commands["ci"].make_context("ci", command[2:])  # parses: every option exists and has its value
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["path"] == "reports/" and uploads[0]["if"] == "always()"
    assert any("junit.xml" in str(s.get("with", {}).get("report_paths")) for s in steps)


def test_the_example_workflow_publishes_main_s_history_from_a_store_kept_between_jobs():
    """Item 6 of the site issue: pushes to main keep the store (actions/cache), publish it and deploy it."""
    workflow = yaml.safe_load((REPO / ".github/workflows/perfwatch.yml").read_text())
    job = workflow["jobs"]["benchmarks"]
    steps = job["steps"]
    store = job["env"]["PERFWATCH_STORE"]
    default = store.split("||")[1].strip(" }'")
    assert default == DEFAULT_STORE
    path = default.removeprefix("sqlite:///")
    named = {s.get("uses", "").split("@")[0]: (i, s) for i, s in enumerate(steps)}
    restore, save = named["actions/cache/restore"], named["actions/cache/save"]
    gate = next(i for i, s in enumerate(steps) if s.get("run") == "perfwatch ci --against HEAD^")
    (publish,) = [(i, s) for i, s in enumerate(steps) if s.get("run", "").startswith("perfwatch publish")]
    assert restore[0] < gate < publish[0] < save[0], "restored before the run is stored, saved after the publish"
    command = shlex.split(publish[1]["run"].replace("${{ github.repository }}", "ORG/REPO"))
    context = cli.commands["publish"].make_context("publish", command[2:])
    check_commit_url(context.params["commit_url"])
    kept = restore[1]["with"]["path"].split()
    assert kept == save[1]["with"]["path"].split() == [path, str(context.params["out"])], \
        "the store, and the site with its publish cache, so that a publish reads only the new run"
    assert restore[1]["with"]["restore-keys"] == "perfwatch-store-" and save[1]["with"]["key"].startswith("perfwatch-store-")
    assert save[1]["if"] == "always() && github.event_name == 'push'"
    publish = publish[1]
    upload = named["actions/upload-pages-artifact"][1]
    assert upload["with"]["path"] == str(context.params["out"]) and publish["if"] == upload["if"]
    deploy = workflow["jobs"]["site"]
    assert deploy["needs"] == "benchmarks" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["steps"][-1]["uses"].startswith("actions/deploy-pages@")
    assert "push" in deploy["if"] and "!cancelled()" in deploy["if"], "the site shows a failed gate too"
