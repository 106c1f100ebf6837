"""Running a user's command under perfwatch (`monitor`, `profile`): start it, forward
SIGINT/SIGTERM to it, and report its exit status as a shell would."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from perfwatch.errors import UserError


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
