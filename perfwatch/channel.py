"""What a StepTimer publishes under ``perfwatch profile``: its exact phase totals, as JSON files.

The training process writes (``publish_timer``); the profiler reads (``read_timer_summaries``).
This module is imported inside the user's training process, so it imports nothing heavy.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perfwatch.store import write_atomic

PROFILE_DIR_ENV = "PERFWATCH_PROFILE_DIR"  # set by `perfwatch profile` for the processes it runs
PUBLISH_EVERY_S = 10.0
INJECTED_SOURCE = "perfwatch-injected"  # the "source" of a summary the injected step timing publishes

log = logging.getLogger(__name__)


_timer_serial = itertools.count()


# id(timer) -> its file. Safe as a key: the atexit hook keeps every published timer alive, so no id is reused.
_published: dict[int, Path] = {}
_sources: dict[int, str] = {}  # id(timer) -> who timed it, when not the script itself
_extras: dict[int, Callable[[], dict[str, Any]]] = {}  # id(timer) -> more fields for its file
_writers: dict[int, Callable[[], None]] = {}  # id(timer) -> what writes its file now


def publish_timer(timer: Any, directory: str | os.PathLike | None = None, every: float = PUBLISH_EVERY_S,
                  clock: Callable[[], float] = time.monotonic, source: str | None = None,
                  extra: Callable[[], dict[str, Any]] | None = None) -> Path | None:
    """Let ``perfwatch profile`` use ``timer``'s exact phase totals instead of estimating them from stacks.

    Writes ``timer.summary()`` as JSON into ``directory`` (default ``$PERFWATCH_PROFILE_DIR``;
    when neither is set this does nothing and returns None) at interpreter exit and, from a
    step listener that reads the clock once per step, at most every ``every`` seconds, so a
    run stopped by ``--duration`` still leaves recent totals. Returns the file it writes.
    A StepTimer calls this itself when ``$PERFWATCH_PROFILE_DIR`` is set; another call for
    the same timer returns the same file, so its steps are never counted twice. ``source``
    (e.g. ``INJECTED_SOURCE``) is written with the totals when the script did not time itself,
    and so are the fields ``extra()`` returns (what the injected timing learnt about the run).
    """
    if source is not None:
        _sources[id(timer)] = source
    if extra is not None:
        _extras[id(timer)] = extra
    if id(timer) in _published:  # the StepTimer publishes itself under `perfwatch profile`: never count it twice
        return _published[id(timer)]
    directory = directory if directory is not None else os.environ.get(PROFILE_DIR_ENV)
    if not directory:
        return None
    path = _published[id(timer)] = Path(directory) / f"steptimer-{os.getpid()}-{next(_timer_serial)}.json"
    due = [clock() + every]

    def write() -> None:
        try:
            summary = timer.summary()
            if id(timer) in _sources:
                summary["source"] = _sources[id(timer)]
            if id(timer) in _extras:
                summary.update(_extras[id(timer)]())
            write_atomic(path, json.dumps(summary))
        except Exception:  # the training must go on whatever happens to the profile directory
            log.debug("perfwatch: could not publish StepTimer totals to %s", path, exc_info=True)

    def on_step(record: Any) -> None:
        if clock() >= due[0]:
            due[0] = clock() + every
            write()

    _writers[id(timer)] = write
    timer.add_listener(on_step)
    atexit.register(write)
    return path


def publish_now(timer: Any) -> None:
    """Write ``timer``'s file at once (when something its ``extra`` reports changed); nothing for a
    timer that does not publish."""
    write = _writers.get(id(timer))
    if write is not None:
        write()


def read_timer_summaries(directory: Path, pid: int | None) -> dict[str, Any] | None:
    """The published StepTimer summaries of ``pid`` (of every process when ``pid`` is None or none
    of its exist), summed: steps, samples, wall and per-phase totals; ``pids``: the processes whose
    timers completed a step. For perfwatch's own injected timing also what it learnt (``injected_facts``)."""
    paths = sorted(directory.glob("steptimer-*.json"))
    own = [p for p in paths if p.name.startswith(f"steptimer-{pid}-")]
    summaries: list[tuple[int, dict[str, Any]]] = []
    for path in own or paths:
        try:
            summaries.append((int(path.name.split("-")[1]), json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    if not summaries:
        return None
    found = [summary for _, summary in summaries]
    totals: Counter[str] = Counter()
    for summary in found:
        totals.update(summary.get("totals", {}))
    return {"timers": len(found), "steps": sum(s.get("steps", 0) for s in found),
            "samples": sum(s.get("samples", 0) for s in found), "wall": sum(s.get("wall", 0.0) for s in found),
            "totals": dict(totals), "device": found[0].get("device"), "mode": found[0].get("mode"),
            "pids": sorted({p for p, s in summaries if s.get("steps")}),
            "injected": all(s.get("source") == INJECTED_SOURCE for s in found), **injected_facts(found)}


def injected_facts(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """What perfwatch's injected timing learnt inside the training processes, merged: the phases it
    timed exactly (data wait through a DataLoader, the optimizer when no closure runs forward and
    backward inside its step; the rest of its step is "other"), the DataLoader workers' pids, the
    steps that ran a closure, the model's dtype and device. None/empty where no summary says."""
    injected = [s for s in summaries if s.get("source") == INJECTED_SOURCE]
    workers = [s["dataloader_worker_pids"] for s in injected if "dataloader_worker_pids" in s]
    return {
        "exact_phases": sorted(set.intersection(*(set(s.get("exact_phases", ())) for s in injected)))
        if injected else None,
        "dataloader_worker_pids": sorted({pid for pids in workers for pid in pids}) if workers else None,
        "closure_steps": sum(s.get("closure_steps", 0) for s in injected),
        "model": next((s["model"] for s in injected if s.get("model")), None),
    }
