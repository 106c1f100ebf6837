"""Which processes of the profiled command are the training process's DataLoader workers.

Only DataLoader workers count as workers (their CPU, reads and memory are the input pipeline's, and
the rules judge them as such); the command's other processes do not: a data generator that
``bash -c "python gen.py && python train.py"`` runs first, the shell itself, a compiler, a logger.
The best evidence wins:

1. ``published``: perfwatch's injected step timing, inside the training process, publishes the pids
   of the worker processes its DataLoader iterators started (``channel.injected_facts``). Exact; an
   empty list means the loop had no workers, whatever else the command started.
2. ``stacks``: py-spy (``--subprocesses``) saw torch's ``_worker_loop`` in a process's main thread.
   When py-spy ran and saw none, there were none.
3. ``heuristic``, only without either (``--no-pyspy`` and a script that times itself, or the timing
   off): a process is taken for a worker when it is a multiprocessing child of the training process:
   forked (a DataLoader's default start method on Linux: the child keeps its parent's command line),
   started by ``spawn`` (its command line runs ``multiprocessing.spawn``'s ``spawn_main``) or forked by
   the ``forkserver`` the training process started. multiprocessing's resource tracker and the
   forkserver itself are not workers. A ``multiprocessing.Pool`` of the script's own is taken for
   workers too: the heuristic cannot tell them apart, which is why it comes last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from perfwatch.monitoring.collector import ProcessStats

_SPAWNED = "multiprocessing.spawn import spawn_main"
_FORKSERVER = "multiprocessing.forkserver import main"
_HELPERS = ("multiprocessing.resource_tracker", _FORKSERVER)


def dataloader_workers(training_pid: int, processes: Mapping[int, ProcessStats],
                       published: Sequence[int] | None, stacks: Sequence[int] | None) -> tuple[tuple[int, ...], str]:
    """(the worker pids, how they were found: "published", "stacks", "heuristic").

    ``processes``: the command's process tree as the Collector last saw each process; ``published``:
    the injected timing's pids (None where it published none); ``stacks``: the pids py-spy saw in
    ``_worker_loop`` (None where py-spy did not run)."""
    if published is not None:
        return tuple(sorted(published)), "published"
    if stacks is not None:
        return tuple(sorted(stacks)), "stacks"
    return multiprocessing_children(training_pid, processes), "heuristic"


def multiprocessing_children(pid: int, processes: Mapping[int, ProcessStats]) -> tuple[int, ...]:
    """The heuristic of the module docstring: ``pid``'s forked or spawned children, and the children
    of a forkserver it started."""
    parent = processes.get(pid)
    children = [p for p in processes.values() if p.ppid == pid]
    servers = {p.pid for p in children if _runs(p, _FORKSERVER)}
    found = [p.pid for p in processes.values() if p.ppid in servers]  # forked by the forkserver: its command line
    for child in children:
        if any(_runs(child, helper) for helper in _HELPERS):
            continue
        forked = parent is not None and bool(parent.cmdline) and child.cmdline == parent.cmdline
        if forked or _runs(child, _SPAWNED):
            found.append(child.pid)
    return tuple(sorted(found))


def _runs(process: ProcessStats, code: str) -> bool:
    return any(code in arg for arg in process.cmdline)
