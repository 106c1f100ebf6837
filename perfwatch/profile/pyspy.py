"""The py-spy processes that sample a profiled command, and whether they may attach to it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from perfwatch.profile.stacks import Stack, parse_collapsed

DEFAULT_RATE = 100  # py-spy's own default


STOP_GRACE_S = 10.0  # each of SIGINT and SIGTERM gets this long before the next signal


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
