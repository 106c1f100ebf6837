"""Running a user's command under perfwatch (`monitor`, `profile`): start it, forward
SIGINT/SIGTERM to it, report its exit status as a shell would, and find, stop or kill every
process it started."""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psutil

from perfwatch.errors import UserError

PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37  # <linux/prctl.h>


def terminal_sent(signum: int) -> bool:
    """Whether a SIGINT most likely came from the terminal, which sends it to the whole
    foreground process group: the command got it too and must not get it twice."""
    if signum != signal.SIGINT:
        return False
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


def exit_code(returncode: int) -> int:
    """A command killed by signal N exits 128 + N, as in a shell."""
    return 128 - returncode if returncode < 0 else returncode


def launch(command: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """The command with perfwatch's stdin, stdout and stderr; UserError when it cannot start."""
    try:
        return subprocess.Popen(list(command), env=env)
    except FileNotFoundError:
        raise UserError(f"command not found: {command[0]}") from None
    except PermissionError:
        raise UserError(f"cannot execute {command[0]}: permission denied") from None
    except OSError as exc:
        raise UserError(f"cannot start {command[0]}: {exc.strerror or exc}") from None


class ForwardedSignals:
    """SIGINT/SIGTERM handlers for the time a command runs under perfwatch: remember the signal, and forward
    it to the launched command if any. Handlers only assign and forward: they may run in
    the middle of any main-thread code, so they take no lock."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> ForwardedSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum
        child = self.child
        if child is not None and child.returncode is None and not terminal_sent(signum):
            try:
                child.send_signal(signum)
            except ProcessLookupError:  # exited a moment ago
                pass


@contextmanager
def adopting_orphans() -> Iterator[None]:
    """While the block runs, this process is the child subreaper (Linux) of what it launches: a process
    whose parent exits (a daemon forking away, a job the shell running it left behind) becomes this
    process's child instead of init's, so ``CommandTree`` still finds it. Elsewhere nothing changes."""
    prctl = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform.startswith("linux") else None
    previous = ctypes.c_int(0)
    adopted = prctl is not None and prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(previous), 0, 0, 0) == 0 \
        and prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), 0, 0, 0) == 0
    try:
        yield
    finally:
        if adopted:
            prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(previous.value), 0, 0, 0)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _send(processes: Iterable[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)  # psutil checks first that the pid is still that process
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def describe(processes: Iterable[psutil.Process], width: int = 60) -> str:
    """``pid (command line)`` of each process for a one-line message, absolute paths by their last part
    (``python3 train.py``, not the interpreter's and the script's full paths)."""
    parts = []
    for process in processes:
        try:
            argv = process.cmdline() or [process.name()]
        except psutil.Error:
            argv = ["gone"]
        line = shlex.join(os.path.basename(arg) if arg.startswith("/") else arg for arg in argv)
        parts.append(f"{process.pid} ({line if len(line) <= width else line[:width - 3] + '...'})")
    return ", ".join(parts)


class CommandTree:
    """Every process a launched command started: the command, its descendants (in sessions of their
    own too) and, inside ``adopting_orphans``, those whose parent exited before them. Make it right
    after ``launch``: children this process had then are not the command's. Ask it once this process's
    own helpers (py-spy) have exited: they are its children too."""

    def __init__(self, child: subprocess.Popen) -> None:
        self.child = child
        self._others = {process.pid for process in psutil.Process().children()} - {child.pid}
        self._seen: dict[int, psutil.Process] = {}

    def running(self) -> list[psutil.Process]:
        """The command's processes still running (zombies are not), including any seen before that
        has left the tree since."""
        self.child.poll()
        for root in psutil.Process().children():
            if root.pid not in self._others:
                try:
                    self._seen.update((p.pid, p) for p in (root, *root.children(recursive=True)))
                except psutil.NoSuchProcess:
                    continue
        return [process for process in self._seen.values() if _running(process)]

    def stop(self, grace: float, say: Callable[[str], None]) -> None:
        """Stop them all as a Ctrl-C would, then harder: SIGINT to each (a clean KeyboardInterrupt),
        SIGTERM to those still running ``grace`` s later, SIGKILL after another ``grace`` s."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            running = self.running()
            if not running:
                return
            if signum != signal.SIGINT:
                say(f"process{'es' if len(running) > 1 else ''} {describe(running)} did not stop within {grace:g} s; "
                    f"sending {signal.Signals(signum).name}")
            _send(running, signum)
            self.settle(grace)

    def settle(self, timeout: float) -> list[psutil.Process]:
        """Wait up to ``timeout`` s for the command's processes to end; those still running."""
        deadline = time.monotonic() + timeout
        while (running := self.running()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return running
