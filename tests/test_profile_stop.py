"""``perfwatch profile --duration``: what a finite sampling time means for the command and
everything it started. ``--stop-at-duration`` stops the whole tree (a shell's children, children
in sessions of their own, daemons that forked away) and perfwatch exits with the command's own
code; a command that exits by itself and leaves a process behind gets a warning naming it, not a
kill. Also: py-spy's failures head the report, as a missing py-spy does."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import assert_one_line_error, run_perfwatch

# A process that writes its pid to pids/<role> and runs until a signal ends it. With "daemon" it first
# forks away as daemons do (fork, setsid, fork; the original exits), and the grandchild writes its pid.
# Its input and output go to /dev/null, so no process of it holds the test's pipes open.
LEAF = textwrap.dedent("""
    import os, sys, time
    role = sys.argv[1]
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if role == "daemon":
        if os.fork():
            sys.exit(0)
        os.setsid()
        if os.fork():
            os._exit(0)
    with open(os.path.join(sys.argv[2], role + ".tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.rename(os.path.join(sys.argv[2], role + ".tmp"), os.path.join(sys.argv[2], role))
    while True:
        time.sleep(0.05)
""")


@pytest.fixture
def leaves(tmp_path):
    """Where the leaves write their pids; whatever perfwatch left running is killed afterwards."""
    (tmp_path / "leaf.py").write_text(LEAF)
    pids = tmp_path / "pids"
    pids.mkdir()
    yield pids
    for path in pids.iterdir():
        try:
            process = psutil.Process(int(path.read_text()))
            if str(tmp_path / "leaf.py") in process.cmdline():
                process.kill()
        except (ValueError, psutil.NoSuchProcess):
            pass


def leaf(role: str, pids: Path) -> str:
    return f"{sys.executable} {pids.parent / 'leaf.py'} {role} {pids}"


def running(pids: Path, role: str) -> bool:
    try:
        return psutil.Process(int((pids / role).read_text())).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def profile(tmp_path: Path, *args: str, command: list[str]):
    out = tmp_path / "out"
    result = run_perfwatch("profile", "--no-pyspy", "--out", str(out), *args, "--", *command, cwd=tmp_path,
                           timeout=90)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return result, report


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("perfwatch:")]


def test_stop_at_duration_stops_every_process_the_command_started_and_exits_with_its_code(tmp_path, leaves):
    # A shell script, as `bash run.sh` or `bash -c '...'`: a job in the background (which a
    # non-interactive shell starts with SIGINT ignored), one in a session of its own, a daemon
    # that forked away (its parent is gone), and the foreground process the shell waits for.
    script = tmp_path / "run.sh"
    script.write_text(f"{leaf('background', leaves)} &\nsetsid {leaf('session', leaves)} &\n"
                      f"{leaf('daemon', leaves)}\n{leaf('foreground', leaves)}\necho not reached\n")
    result, report = profile(tmp_path, "--duration", "2", "--stop-at-duration", command=["bash", str(script)])
    roles = ("background", "session", "daemon", "foreground")
    assert sorted(p.name for p in leaves.iterdir()) == sorted(roles)
    assert [role for role in roles if running(leaves, role)] == []
    # The foreground python died of the SIGINT, so the shell did too: 128 + 2, as a shell reports it.
    assert result.returncode == 130, result.stderr
    assert report["run"]["exit_code"] == 130 and report["run"]["stopped_by_perfwatch"] is True
    # The background jobs ignore SIGINT: SIGTERM came after the grace, and the console says whom it was for.
    (escalation,) = [line for line in warnings(result.stderr) if "SIGTERM" in line]
    assert "did not stop within 10 s" in escalation
    assert str((leaves / "background").read_text()) in escalation and "not reached" not in result.stdout


def test_stop_at_duration_exits_with_the_code_the_script_chose_on_sigint(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            print("saving a checkpoint", flush=True)
            sys.exit(1)
    """))
    result, report = profile(tmp_path, "--duration", "1.5", "--stop-at-duration",
                             command=[sys.executable, str(script)])
    assert result.returncode == 1, result.stderr
    assert "saving a checkpoint" in result.stdout
    assert report["run"]["exit_code"] == 1 and report["run"]["ended_by"] == "duration"
    help_text = " ".join(run_perfwatch("profile", "--help", cwd=tmp_path).stdout.split())
    assert "Exits with the command's exit code (128+N if signal N ended it), also after --stop-at-duration" \
        in help_text


def test_a_daemon_the_command_leaves_behind_is_named_and_left_running(tmp_path, leaves):
    script = tmp_path / "start.sh"
    script.write_text(f"{leaf('daemon', leaves)}\nwhile [ ! -e {leaves / 'daemon'} ]; do sleep 0.05; done\n")
    result, report = profile(tmp_path, command=["bash", str(script)])
    assert result.returncode == 0, result.stderr
    assert report["run"]["ended_by"] == "exited"
    assert running(leaves, "daemon")  # the user's command meant it to outlive itself: perfwatch leaves it be
    (left,) = [line for line in warnings(result.stderr) if "left" in line]
    daemon = (leaves / "daemon").read_text()
    assert f"left 1 process running: {daemon} (" in left and "leaf.py daemon" in left
    assert f"kill {daemon}" in left  # what to do about it


def test_workers_that_end_with_the_command_get_no_warning(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, time
        if __name__ == "__main__":  # daemonic workers, as a DataLoader's: terminated when the script exits
            workers = [multiprocessing.Process(target=time.sleep, args=(60,), daemon=True) for _ in range(2)]
            for worker in workers:
                worker.start()
            time.sleep(1)
    """))
    result, _ = profile(tmp_path, command=[sys.executable, str(script)])
    assert result.returncode == 0, result.stderr
    assert [line for line in warnings(result.stderr) if not line.startswith("perfwatch: report:")] == []


@pytest.mark.parametrize("value", ["nan", "inf", "1e309", "0", "-3"])
def test_duration_must_be_a_finite_positive_number_of_seconds(tmp_path, value):
    result = run_perfwatch("profile", "--out", str(tmp_path / "out"), "--duration", value, "--",
                           sys.executable, "-c", "pass", cwd=tmp_path)
    assert_one_line_error(result, "--duration", "finite number of seconds greater than 0")
    assert not (tmp_path / "out").exists()  # refused before anything started


# ---------------------------------------------------------------- py-spy's failures head the report


def the_interpreter_beside(tmp_path: Path, pyspy: str) -> list[str]:
    """``perfwatch`` run by an interpreter whose bin holds a py-spy that fails at once: perfwatch looks
    there first. (A link to the interpreter finds its installation only outside a venv.)"""
    if sys.prefix != sys.base_prefix:
        pytest.skip("a link to a venv's interpreter does not find the venv")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    (bin_dir / "py-spy").write_text(pyspy)
    (bin_dir / "py-spy").chmod(0o755)
    return [str(bin_dir / "python3"), "-m", "perfwatch"]


def a_user_without_ptrace(tmp_path: Path) -> list[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    return ["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", sys.executable, "-m", "perfwatch"]


BROKEN_PYSPY = "#!/bin/sh\necho 'Error: Failed to open process 1: stand-in py-spy' >&2\nexit 1\n"
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    sum(range(10000))\n"
# A process that made itself non-dumpable (as hardened services do): without CAP_SYS_PTRACE not even
# its own user may trace it.
UNDUMPABLE = "import ctypes\nctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\n" + BUSY


@pytest.mark.parametrize("perfwatch, source, status, says", [
    (lambda tmp_path: the_interpreter_beside(tmp_path, BROKEN_PYSPY), BUSY, "failed: ",
     "py-spy stopped (Failed to open process 1: stand-in py-spy)"),
    (a_user_without_ptrace, UNDUMPABLE, "permission denied", "py-spy cannot attach to pid"),
], ids=["failed", "permission-denied"])
def test_a_pyspy_failure_is_the_first_thing_the_report_says(tmp_path, perfwatch, source, status, says):
    argv = perfwatch(tmp_path)
    (tmp_path / "train.py").write_text(source.format(seconds=4))
    out = tmp_path / "out"
    result = subprocess.run([*argv, "profile", "--out", str(out), "--", sys.executable, str(tmp_path / "train.py")],
                            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    (console,) = [line for line in warnings(result.stderr) if "py-spy" in line]
    assert says in console and "collector-only" in console
    report = json.loads((out / "report.json").read_text())
    assert report["pyspy"]["status"].startswith(status)
    assert report["pyspy"]["warning"] == console.removeprefix("perfwatch: ")
    first = (out / "report.md").read_text().split("\n\n")[1]  # after the title
    assert first.startswith("**Warning:**") and says in first
    page = html.unescape((out / "report.html").read_text())
    assert says in page and page.index(says) < page.index("Primary bottleneck")

