"""A wheel that works for users who never cloned the repo: built from the sources, installed into a
fresh virtualenv, it runs the reference suites from an empty directory and exports the Grafana assets.

The virtualenv sees this interpreter's site-packages (torch and the other dependencies, and pip),
so nothing is downloaded, but not this checkout's editable install: the perfwatch it runs is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# What the build reads; copied so that the build leaves no build/ or egg-info in the checkout, and
# a stale build/lib there cannot put a deleted module into the wheel.
SOURCES = ("pyproject.toml", "README.md", "perfwatch", "suites", "grafana")
ONE_FAST_BENCHMARK = r"^training\.Step\.time_step\(model='mlp'\)$"

pytestmark = pytest.mark.slow  # builds a wheel and a virtualenv (about 10 s)


def shipped(directory: str) -> set[str]:
    return {p.relative_to(ROOT / directory).as_posix() for p in (ROOT / directory).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def run(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "COLUMNS": "200"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src], cwd=tmp)
    (built,) = (tmp / "dist").glob("perfwatch-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv)
    # This interpreter's site-packages, as plain path entries: their .pth files (this checkout's
    # editable install among them) are not run, so a module missing from the wheel cannot be found here.
    purelib = run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=venv)
    Path(purelib.stdout.strip(), "system-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # The system's pip, run by the venv's interpreter, installs into the venv.
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", wheel], cwd=venv)
    return venv


def test_the_wheel_holds_every_package_the_reference_suites_and_the_grafana_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "perfwatch").rglob("__init__.py")}
    assert packages - names == set()  # pyproject.toml lists the packages by hand
    assert {f"perfwatch/_suites/{f}" for f in shipped("suites")} - names == set()
    assert {f"perfwatch/_grafana/{f}" for f in shipped("grafana")} - names == set()
    assert {name.split("/")[0] for name in names} == {"perfwatch", wheel.name.split("-py3")[0] + ".dist-info"}


def test_the_installed_wheel_runs_the_reference_suites_from_an_empty_directory(venv, tmp_path):
    done = run([venv / "bin" / "perfwatch", "run", "--suite", "quick", "--filter", ONE_FAST_BENCHMARK], cwd=tmp_path)
    stored = json.loads(run([venv / "bin" / "perfwatch", "store", "export", "latest"], cwd=tmp_path).stdout)
    assert f"stored {stored['run_id']} in sqlite:///.perfwatch/perfwatch.db" in done.stdout
    (result,) = stored["benchmarks"]
    assert (result["name"], result["status"]) == ("training.Step.time_step(model='mlp')", "ok") and result["samples"]

    probe = "import perfwatch, perfwatch.assets as a; print(perfwatch.__file__, a.SUITES, a.GRAFANA)"
    where = run([venv / "bin" / "python", "-c", probe], cwd=tmp_path)
    assert all(Path(p).is_relative_to(venv) for p in where.stdout.split()), where.stdout


def test_the_installed_wheel_exports_the_grafana_assets(venv, tmp_path):
    run([venv / "bin" / "perfwatch", "grafana", "export", "monitoring"], cwd=tmp_path)
    out = tmp_path / "monitoring"
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == shipped("grafana")
    assert {p.stem for p in (out / "dashboards").glob("*.json")} == {"training", "host", "benchmarks", "history"}
    for dashboard in (out / "dashboards").glob("*.json"):
        assert json.loads(dashboard.read_text())["title"].startswith("perfwatch / ")
    prometheus = yaml.safe_load((out / "prometheus.yml").read_text())
    assert all((out / rules).is_file() for rules in prometheus["rule_files"])  # relative to the config, as in grafana/
    assert yaml.safe_load((out / "rules" / "perfwatch.rules.yml").read_text())["groups"]
    for kind in ("datasources", "dashboards"):
        assert yaml.safe_load((out / "provisioning" / kind / "perfwatch.yml").read_text())["apiVersion"] == 1
