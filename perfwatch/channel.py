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


def publish_timer(timer: Any, directory: str | os.PathLike | None = None, every: float = PUBLISH_EVERY_S,
                  clock: Callable[[], float] = time.monotonic, source: str | None = None) -> Path | None:
    """Let ``perfwatch profile`` use ``timer``'s exact phase totals instead of estimating them from stacks.

    Writes ``timer.summary()`` as JSON into ``directory`` (default ``$PERFWATCH_PROFILE_DIR``;
    when neither is set this does nothing and returns None) at interpreter exit and, from a
    step listener that reads the clock once per step, at most every ``every`` seconds, so a
    run stopped by ``--duration`` still leaves recent totals. Returns the file it writes.
    A StepTimer calls this itself when ``$PERFWATCH_PROFILE_DIR`` is set; another call for
    the same timer returns the same file, so its steps are never counted twice. ``source``
    (e.g. ``INJECTED_SOURCE``) is written with the totals when the script did not time itself.
    """
    if source is not None:
        _sources[id(timer)] = source
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
            write_atomic(path, json.dumps({**summary, "source": _sources[id(timer)]} if id(timer) in _sources else summary))
        except Exception:  # the training must go on whatever happens to the profile directory
            log.debug("perfwatch: could not publish StepTimer totals to %s", path, exc_info=True)

    def on_step(record: Any) -> None:
        if clock() >= due[0]:
            due[0] = clock() + every
            write()

    timer.add_listener(on_step)
    atexit.register(write)
    return path


def read_timer_summaries(directory: Path, pid: int | None) -> dict[str, Any] | None:
    """The published StepTimer summaries of ``pid`` (of every process when none of ``pid``'s
    exist), summed: steps, samples, wall and per-phase totals."""
    paths = sorted(directory.glob("steptimer-*.json"))
    own = [p for p in paths if p.name.startswith(f"steptimer-{pid}-")]
    summaries = []
    for path in own or paths:
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if not summaries:
        return None
    totals: Counter[str] = Counter()
    for summary in summaries:
        totals.update(summary.get("totals", {}))
    return {"timers": len(summaries), "steps": sum(s.get("steps", 0) for s in summaries),
            "samples": sum(s.get("samples", 0) for s in summaries), "wall": sum(s.get("wall", 0.0) for s in summaries),
            "totals": dict(totals), "device": summaries[0].get("device"), "mode": summaries[0].get("mode"),
            # perfwatch's own timing injected into an unmodified script measures data wait and the
            # optimizer exactly but nothing else: the rest of its step is "other"
            "injected": all(s.get("source") == INJECTED_SOURCE for s in summaries)}
