"""The per-rank table and the straggler verdict in the profile report of a torchrun command.

Under ``perfwatch profile -- torchrun ...`` every rank's injected timing publishes its StepTimer
totals, its collective timing (work before and wait in each gradient all-reduce:
``monitoring.collective.Injected``) and its rank and host into the profile's steptimer folder.
Over the whole run, each rank's totals make one row and a ``straggler.RankWindow``; the
monitoring wing's ``verdict`` over them names the straggler, as Prometheus's rules do live.
Nothing at all where no rank timed an all-reduce (no torchrun, no DDP model, a comm hook of the
script's own): the report of such a run is unchanged.

Pure: published summaries in, the report's ``ranks`` section out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from perfwatch.instrument import PHASES
from perfwatch.monitoring.straggler import RankWindow, verdict


def rank_windows(summaries: Iterable[Mapping[str, Any]]) -> list[RankWindow]:
    """One window per (rank, host) from the summaries that carry collective timing, in rank order.
    A rank that torchrun restarted published from several processes: their totals add up."""
    summed: dict[tuple[str, str], dict[str, Any]] = {}
    for summary in summaries:
        timed = summary.get("collective")
        if not isinstance(timed, Mapping):
            continue
        key = (str(timed.get("rank")), str(timed.get("host", "")))
        into = summed.setdefault(key, {"steps": 0, "work": 0.0, "wait": 0.0, "timer_steps": 0,
                                       "phases": dict.fromkeys(PHASES, 0.0)})
        into["steps"] += int(timed.get("steps", 0))
        into["work"] += float(timed.get("work_seconds", 0.0))
        into["wait"] += float(timed.get("wait_seconds", 0.0))
        into["timer_steps"] += int(summary.get("steps", 0))
        for phase, seconds in (summary.get("totals") or {}).items():
            if phase in into["phases"]:
                into["phases"][phase] += float(seconds)
    windows = [RankWindow(rank=rank, host=host, steps=t["steps"], work_seconds=t["work"], wait_seconds=t["wait"],
                          phase_seconds=t["phases"], timer_steps=t["timer_steps"])
               for (rank, host), t in summed.items()]
    return sorted(windows, key=_rank_order)


def _rank_order(window: RankWindow) -> tuple[int, int | str, str]:
    return (0, int(window.rank), window.host) if window.rank.isdigit() else (1, window.rank, window.host)


def ranks_section(summaries: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The report's ``ranks``: a row per rank (its steps, work and wait per all-reduce step, the time
    per step of each phase timed on some rank, with the all-reduce wait taken out of the phase that
    holds it, and its straggler score) and the verdict; None when no rank timed an all-reduce."""
    windows = rank_windows(summaries)
    if not windows:
        return None
    judged = verdict(windows)
    own = {w.rank: w.own_phases() if w.steps else {} for w in windows}  # no all-reduce timed: no wait to take out
    timed = [p for p in PHASES if any(phases.get(p, 0.0) > 0 for phases in own.values())]
    rows = [{"rank": w.rank, "host": w.host, "steps": w.timer_steps, "collective_steps": w.steps,
             "work_seconds_per_step": w.work_seconds / w.steps if w.steps else None,
             "wait_seconds_per_step": w.wait_seconds / w.steps if w.steps else None,
             "phase_seconds_per_step": {p: own[w.rank][p] for p in timed if own[w.rank]},
             "straggler_score": judged.scores.get(w.rank)} for w in windows]
    return {"window": "the whole run: each rank's totals as it last published them",
            "phases": timed, "rows": rows,
            "straggler": {"rank": judged.rank, "host": judged.host, "cause": judged.cause,
                          "excess_seconds_per_step": judged.excess, "says": judged.says}}
