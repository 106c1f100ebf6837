"""Where py-spy is, the py-spy processes that sample a profiled command, and whether they may attach to it."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

from perfwatch.profile.stacks import Stack, parse_collapsed

DEFAULT_RATE = 100  # py-spy's own default
EXECUTABLE = "py-spy"


STOP_GRACE_S = 10.0  # each of SIGINT and SIGTERM gets this long before the next signal


def install_dirs() -> list[Path]:
    """Where pip put py-spy when it installed it with perfwatch, which need not be on PATH (a venv's
    bin when perfwatch runs as venv/bin/perfwatch unactivated; a pipx venv, of which only perfwatch
    is on PATH; ~/.local/bin after pip install --user): the directory of the interpreter running
    perfwatch (not resolved: a venv's python is a link to the base one), then the scripts directory
    of each installation scheme whose site-packages holds perfwatch."""
    dirs = [Path(sys.executable).parent] if sys.executable else []
    # Every perfwatch metadata on sys.path: the first may be a stale egg-info in a source tree.
    sites = {Path(dist.locate_file("")).resolve() for dist in metadata.distributions(name="perfwatch")}
    dirs += [Path(paths["scripts"]) for paths in _scheme_paths()
             if {Path(paths["purelib"]).resolve(), Path(paths["platlib"]).resolve()} & sites]
    return list(dict.fromkeys(dirs))


def _scheme_paths() -> Iterator[dict[str, str]]:
    """sysconfig's paths of every scheme, for this environment's prefix and, in a venv, the base
    interpreter's (whose site a --system-site-packages venv sees)."""
    prefixes = {(sys.prefix, sys.exec_prefix), (sys.base_prefix, sys.base_exec_prefix)}
    for scheme in sysconfig.get_scheme_names():
        for base, platbase in prefixes:
            yield sysconfig.get_paths(scheme, vars={"base": base, "platbase": platbase})


def find_pyspy(search: Sequence[Path], path: str | None = None) -> str | None:
    """py-spy's executable: in the ``search`` directories first (``install_dirs()``), then on
    ``path`` (default: PATH); None when there is none."""
    for directory in search:
        found = shutil.which(EXECUTABLE, path=str(directory))
        if found:
            return found
    return shutil.which(EXECUTABLE, path=path)


def missing_warning(searched: Sequence[Path]) -> str:
    """What the console and the top of the report say when py-spy is nowhere: what that costs
    the diagnosis and how to install py-spy where this perfwatch will find it."""
    install = shlex.join([sys.executable or "python3", "-m", "pip", "install", EXECUTABLE])
    places = ", ".join(map(str, searched))
    return (f"py-spy not found (looked in {places + ' and ' if places else ''}on PATH): the diagnosis is "
            f"collector-only and less reliable (no stacks, so no phase shares); install py-spy with "
            f"{install} and profile again")


class PySpyRecorder:
    """One ``py-spy record`` process writing collapsed stacks of ``pid`` (of its whole tree
    with ``--subprocesses``) to ``output``; its complaints go to ``output``.log.

    It runs in its own session, so a Ctrl-C in the terminal reaches the command, not
    py-spy; ``stop()`` sends it SIGINT, on which it writes its file.
    """

    def __init__(self, executable: str, pid: int, output: Path, rate: int, flags: Sequence[str]) -> None:
        self.output = output
        self.errors = output.with_suffix(".log")
        self._argv = [executable, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                      "--output", str(output), "--threads", "--full-filenames", "--nonblocking", *flags]
        self.attempts = 0
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.attempts += 1
        with open(self.errors, "w") as errors:
            self.process = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=errors, start_new_session=True,
                                            env={**os.environ, "RUST_BACKTRACE": "0"})

    def exited(self) -> bool:
        return self.process.poll() is not None

    def error(self) -> str:
        """py-spy's first error line, with the OS error that caused it when it gave one."""
        try:
            text = self.errors.read_text(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        first = next((line.removeprefix("Error: ") for line in lines if line.startswith("Error")),
                     lines[-1] if lines else "")
        cause = next((line.split(": ", 1)[-1] for line in lines if "os error" in line), "")
        return f"{first} ({cause})" if cause and cause not in first else first

    def stop(self, wait: float) -> None:
        """Let py-spy finish on its own for ``wait`` s (it stops when the command exits), then SIGINT, then kill."""
        for step in (None, signal.SIGINT, signal.SIGKILL):
            if step is not None and self.process.poll() is None:
                self.process.send_signal(step)
            try:
                self.process.wait(wait if step is None else STOP_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                continue

    def stacks(self) -> list[Stack]:
        try:
            return parse_collapsed(self.output.read_text(errors="replace"))
        except OSError:
            return []


def may_trace(pid: int) -> bool:
    """Whether this process may read ``pid``'s memory, as py-spy must. Opening /proc/PID/mem
    passes the kernel's ptrace access check (same user and dumpable, or CAP_SYS_PTRACE, and
    Yama's ptrace_scope) that process_vm_readv applies. With --subprocesses py-spy reports
    a denied attach only as "no python processes found"."""
    try:
        os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))
        return True
    except PermissionError:
        return False
    except OSError:
        return True  # gone, or no /proc: not a permission problem
