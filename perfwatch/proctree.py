"""A process and everything it started, found and killed through /proc.

Benchmark workers, the runner and ``perfwatch profile`` all end process trees; a worker may
not load psutil (it would count in every ``peakmem_`` sample), so this reads the parent
links in /proc itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

PROC = Path("/proc")


def descendants(pid: int, proc: Path = PROC) -> list[int]:
    """Every live descendant of ``pid``, found through the parent links in /proc (a worker loads no psutil)."""
    children: dict[int, list[int]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """SIGKILL every descendant of a process, then send ``sig`` to the group it leads (if any) and to it.

    The group alone is not enough: torchrun starts its ranks in sessions of their own. Descendants
    are found first, while their parent links still hold, and go first, so a process can end its own tree.
    """
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # not a group leader, or already gone
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
