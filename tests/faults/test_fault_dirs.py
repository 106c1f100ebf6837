"""Directories perfwatch cannot write: a results directory, a store or a report directory that is a
file, sits under a file, or is on a read-only file system, given by a flag or by a setting. Each is
found before the suite runs (the suite leaves a file if it runs), in one line naming the path and,
when a flag gave it, the flag.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_perfwatch

pytestmark = pytest.mark.fault("dirs")


# (the command's arguments, or a perfwatch.toml, with "{dir}" where the unwritable directory goes; what it writes)
WHERE = {
    "run --results-dir": (["run", "--results-dir", "{dir}"], None, "results", "--results-dir"),
    "run --store": (["run", "--store", "{dir}"], None, "results", "--store"),
    "results_dir setting": (["run"], 'results_dir = "{dir}"\n', "results", None),
    "ci --report-dir": (["ci", "--against", "HEAD", "--report-dir", "{dir}"], None, "reports", "--report-dir"),
}
# How the directory is unwritable: set up under the project, and why perfwatch must say it cannot write.
HOW = {
    "is-a-file": ("blocked", "blocked is a file, not a directory"),
    "under-a-file": ("blocked/inner", "blocked is a file, not a directory"),
    "read-only": ("ro/inner", "Read-only file system"),
}

CLICK_CHECKED = {"--results-dir", "--report-dir"}  # click refuses a file there itself, with its usage error


def can_mount_read_only(tmp_path: Path) -> bool:
    """Permission bits do not stop root; a read-only mount does, made in a mount namespace of the
    perfwatch process's own (unshare), so nothing outside it sees it."""
    (tmp_path / "probe").mkdir()
    probe = shutil.which("unshare") and subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {tmp_path / 'probe'}"], capture_output=True,
        check=False)
    return bool(probe) and probe.returncode == 0


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("where", WHERE)
def test_an_unwritable_directory_is_refused_before_anything_runs(first_benchmark, where, how):
    project = first_benchmark
    args, settings, what, flag = WHERE[where]
    directory, why = HOW[how]
    args = [arg.format(dir=directory) for arg in args]
    if settings is not None:
        (project / "perfwatch.toml").write_text(settings.format(dir=directory))
    if how == "read-only":
        if not can_mount_read_only(project):
            pytest.skip("cannot mount a read-only file system here (needs unshare and CAP_SYS_ADMIN)")
        (project / "ro").mkdir()
        command = f"mount -t tmpfs -o ro tmpfs ro && exec {sys.executable} -m perfwatch {' '.join(args)}"
        proc = subprocess.run(["unshare", "-m", "sh", "-c", command], cwd=project, capture_output=True, text=True,
                              timeout=120, check=False)
    else:
        (project / "blocked").write_text("a file where a directory should be")
        proc = run_perfwatch(*args, cwd=project)
    assert not (project / "first-ran").exists()
    if how == "is-a-file" and flag in CLICK_CHECKED:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.splitlines()[-1] == f"Error: Invalid value for '{flag}': Directory '{directory}' is a file."
        return
    # A setting's path is shown as it resolves, from the settings file's directory.
    assert_one_line_error(proc, f"{directory}: cannot write {what} (", why, *([f"({flag})"] if flag else []))
