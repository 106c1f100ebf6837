"""``perfwatch profile`` finds py-spy where it was installed with perfwatch, not only on PATH:
run as ``/path/to/venv/bin/perfwatch`` without activating the venv (or from pipx, which puts
only perfwatch itself on PATH), py-spy sits beside it. When py-spy is truly missing, the
console and the top of the report say the diagnosis is collector-only and how to get py-spy."""

from __future__ import annotations

import html
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from perfwatch.pages import md_escape
from perfwatch.profile.pyspy import find_pyspy

ZOO = Path(__file__).parent / "zoo"
BARE_PATH = "/usr/bin:/bin"  # the system's own directories: no venv, no pyenv, no ~/.local/bin
BIN = Path(sys.executable).parent  # where pip put perfwatch's console script and py-spy beside it
PYSPY = shutil.which("py-spy", path=str(BIN))


def profile(perfwatch: list[str], tmp_path: Path, command: list[str], wrap: list[str] = ()):
    """Run ``perfwatch profile`` as ``perfwatch`` (an absolute path) with PATH=/usr/bin:/bin."""
    out = tmp_path / "out"
    result = subprocess.run([*wrap, *perfwatch, "profile", "--out", str(out), "--", *command], check=False,
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PATH": BARE_PATH, "COLUMNS": "200"})
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return result, report, out


def console(result: subprocess.CompletedProcess, word: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("perfwatch:") and word in line]


def the_console_script(tmp_path: Path) -> list[str]:
    """``<bin>/perfwatch``: its shebang names the interpreter in that same bin."""
    return [str(BIN / "perfwatch")]


def a_venv_seeing_the_system_site(tmp_path: Path, name: str = "venv") -> list[str]:
    """``<venv>/bin/python -m perfwatch`` of a venv made with --system-site-packages: perfwatch
    and py-spy are installed in the base interpreter's site, whose bin is not on PATH."""
    if sys.prefix != sys.base_prefix:
        pytest.skip("the tests run in a venv: perfwatch is not installed in the base interpreter's site")
    venv = tmp_path / name
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    assert shutil.which("py-spy", path=str(venv / "bin")) is None  # not beside the venv's interpreter
    return [str(venv / "bin" / "python"), "-m", "perfwatch"]


@pytest.mark.skipif(PYSPY is None or not (BIN / "perfwatch").exists(),
                    reason="needs perfwatch and py-spy installed beside the interpreter running the tests")
@pytest.mark.parametrize("perfwatch", [the_console_script, a_venv_seeing_the_system_site])
def test_run_by_absolute_path_without_its_bin_on_path_it_finds_pyspy_and_the_bottleneck(tmp_path, perfwatch):
    assert shutil.which("py-spy", path=BARE_PATH) is None  # on PATH alone, py-spy is not installed
    command = [sys.executable, str(ZOO / "storage_bound.py"), "--steps", "25"]
    subprocess.run([*command[:2], "--steps", "1"], check=True, capture_output=True)  # writes its dataset files
    result, report, out = profile(perfwatch(tmp_path), tmp_path, command)
    assert result.returncode == 0, result.stderr
    assert console(result, "py-spy") == []
    assert report["pyspy"]["status"] == "ok" and report["pyspy"]["executable"] == PYSPY
    b = report["bottleneck"]
    assert b["primary"] == "data_loading", b  # the injected step timing measures the wait exactly...
    assert sum(report["measurements"]["stacks"]["phases"].values()) > 0  # ... and py-spy gives the cause
    assert next(f for f in report["findings"] if f["id"] == "input_bound")["evidence"]["cause"] == "storage"
    assert "py-spy not found" not in (out / "report.md").read_text()


def hide_pyspy() -> list[str]:
    """A private mount namespace in which py-spy's file is /dev/null (not executable): py-spy is
    truly absent for perfwatch, and for nothing outside. Skips where namespaces are not allowed."""
    wrap = ["unshare", "--mount", *([] if os.geteuid() == 0 else ["--map-root-user"]),
            "sh", "-c", 'mount --bind /dev/null "$0" && exec "$@"', PYSPY]
    probe = shutil.which("unshare") and subprocess.run([*wrap, "true"], check=False, capture_output=True)
    if not probe or probe.returncode != 0:
        pytest.skip("cannot make a private mount namespace here (unshare --mount)")
    return wrap


@pytest.mark.skipif(PYSPY is None or not (BIN / "perfwatch").exists(),
                    reason="needs perfwatch and py-spy installed beside the interpreter running the tests")
def test_without_pyspy_anywhere_the_console_and_the_top_of_the_report_say_collector_only(tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(textwrap.dedent("""\
        import time
        end = time.monotonic() + 1
        while time.monotonic() < end:
            sum(range(10000))
    """))
    venv = tmp_path / "v<b>&'\"x"  # the warning names the venv's interpreter: escaped like any other string
    perfwatch = a_venv_seeing_the_system_site(tmp_path, venv.name)
    result, report, out = profile(perfwatch, tmp_path, [sys.executable, str(script)], wrap=hide_pyspy())
    assert result.returncode == 0, result.stderr
    install = shlex.join([str(venv / "bin" / "python"), "-m", "pip", "install", "py-spy"])
    (line,) = console(result, "py-spy")
    assert line.startswith(f"perfwatch: py-spy not found (looked in {venv / 'bin'}, {BIN} and on PATH): "
                           "the diagnosis is collector-only and less reliable")
    assert f"install py-spy with {install} and profile again" in line
    assert report["pyspy"]["status"] == "not installed" and report["pyspy"]["executable"] is None
    assert report["bottleneck"]["source"] == "collector"
    markdown = (out / "report.md").read_text().splitlines()
    assert markdown[0].startswith("# perfwatch profile:")
    assert markdown[2].startswith("**Warning:** py-spy not found") and md_escape(install) in markdown[2]
    assert "collector-only and less reliable" in markdown[2] and "<b>" not in markdown[2]
    assert markdown[4].startswith("**Primary bottleneck:")  # the warning comes before the verdict
    page = (out / "report.html").read_text()
    first = page[page.index("</h1>"):].split("<p", 2)[1]
    assert first.startswith(' class="summary"><strong>Warning:</strong> py-spy not found')
    assert "collector-only and less reliable" in first and html.escape(install) in first and "<b>" not in page


def test_find_pyspy_looks_in_the_installation_first_then_on_path(tmp_path):
    installed, on_path, empty = tmp_path / "venv-bin", tmp_path / "path-bin", tmp_path / "empty"
    for directory in (installed, on_path, empty):
        directory.mkdir()
    for directory in (installed, on_path):
        (directory / "py-spy").write_text("#!/bin/sh\n")
        (directory / "py-spy").chmod(0o755)
    (empty / "py-spy").write_text("not executable")
    assert find_pyspy([empty, installed], path=str(on_path)) == str(installed / "py-spy")
    assert find_pyspy([empty], path=str(on_path)) == str(on_path / "py-spy")
    assert find_pyspy([empty], path=str(empty)) is None
