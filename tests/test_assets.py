"""The reference suites and the Grafana assets, found from any directory: `perfwatch list` without a
suites/ of its own, and `perfwatch grafana export DIR` for users who never cloned the repo.

The same commands from a built wheel in a fresh virtualenv are tests/test_wheel.py's job.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from helpers import run_perfwatch, write_suite
from servers import binary

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
SHIPPED = sorted(p.relative_to(GRAFANA) for p in GRAFANA.rglob("*") if p.is_file())


def test_a_directory_without_suites_gets_the_reference_suites(tmp_path):
    listed = run_perfwatch("list", "--suite", "quick", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "training.Step.time_step(model='mlp')" in listed.stdout


def test_a_suite_may_use_the_standard_librarys_profile_module(tmp_path):
    # The workers' PYTHONPATH holds the directory above perfwatch/, so perfwatch's own
    # subpackages (profile, bench, ...) never shadow top-level modules of the same name.
    suite = write_suite(tmp_path / "suites", "uses_profile.py", """
        from profile import Profile

        def time_make_a_profiler():
            Profile()
    """)
    done = run_perfwatch("run", str(suite), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "uses_profile.time_make_a_profiler" in done.stdout


def test_export_writes_the_dashboards_provisioning_rules_and_prometheus_config(tmp_path):
    done = run_perfwatch("grafana", "export", "monitoring", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "monitoring"
    for rel in SHIPPED:
        assert (out / rel).read_bytes() == (GRAFANA / rel).read_bytes(), rel
        assert f"wrote     monitoring/{rel}" in done.stdout
    assert {p.stem for p in (out / "dashboards").glob("*.json")} == {"training", "host", "benchmarks", "history"}
    assert all(json.loads(p.read_text())["uid"].startswith("perfwatch-") for p in (out / "dashboards").glob("*.json"))
    providers = yaml.safe_load((out / "provisioning/dashboards/perfwatch.yml").read_text())["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards/perfwatch"  # Grafana's side: see README
    assert "prometheus --config.file=monitoring/prometheus.yml" in done.stdout


def test_the_exported_prometheus_config_finds_its_rules_and_targets_beside_it(tmp_path):
    assert run_perfwatch("grafana", "export", str(tmp_path / "out"), cwd=tmp_path).returncode == 0
    # promtool resolves rule_files and file_sd globs relative to the config, as Prometheus does.
    checked = subprocess.run([binary("promtool"), "check", "config", str(tmp_path / "out" / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout + checked.stderr


def test_export_again_leaves_identical_files_alone(tmp_path):
    assert run_perfwatch("grafana", "export", "out", cwd=tmp_path).returncode == 0
    again = run_perfwatch("grafana", "export", "out", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "wrote " not in again.stdout
    assert "unchanged out/prometheus.yml" in again.stdout


def test_export_refuses_to_overwrite_an_edited_file_unless_forced(tmp_path):
    assert run_perfwatch("grafana", "export", "out", cwd=tmp_path).returncode == 0
    edited = tmp_path / "out" / "provisioning" / "datasources" / "perfwatch.yml"
    edited.write_text(edited.read_text().replace("http://localhost:9090", "http://prometheus:9090"))
    (tmp_path / "out" / "rules" / "perfwatch.rules.yml").unlink()

    refused = run_perfwatch("grafana", "export", "out", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("perfwatch: error: out/provisioning/datasources/perfwatch.yml differs from "
                                      "perfwatch's copy; force the export to overwrite it (--force)")
    assert "prometheus:9090" in edited.read_text()
    assert not (tmp_path / "out" / "rules" / "perfwatch.rules.yml").exists()  # nothing written when refused

    forced = run_perfwatch("grafana", "export", "out", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "replaced  out/provisioning/datasources/perfwatch.yml" in forced.stdout
    assert "wrote     out/rules/perfwatch.rules.yml" in forced.stdout
    assert edited.read_bytes() == (GRAFANA / "provisioning" / "datasources" / "perfwatch.yml").read_bytes()

