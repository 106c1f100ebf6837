"""The straggler verdict: which rank slows a data-parallel job, and in which phase of its step.

Every rank waits for the slowest at the gradient all-reduce, so their step times are equal;
what differs is the split (monitoring.collective): the straggler *works* longest between
two all-reduces and *waits* least in them. Its score is its work per step against the
median rank's, and the cause is the StepTimer phase in which it spends the most more than
the median rank does. The wait at the all-reduce happens inside ``loss.backward()``, so it
is taken out of ``backward`` first: backward counts the rank's own compute only. Where
backward is not timed (the zero-code timing of ``perfwatch monitor``/``profile`` times
data wait and the optimizer, and ``loss.backward()`` runs in the untimed ``other``), it is
taken out of ``other``: else the fast ranks' long wait there would hide the straggler's
extra compute, and a phase differing by noise would be named.

Pure: per-rank windows (increases of the counters over the same span) in, a verdict out;
no I/O, tested with literal numbers. Prometheus computes the same over every rank's series
(the recording rules in docs); ``perfwatch profile`` can call ``verdict`` on its own windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from perfwatch.instrument import PHASES
from perfwatch.stats import median

MIN_SCORE = 0.1  # works 10% longer per step than the median rank: below this, nobody is named
UNKNOWN = "unknown"  # the straggler's phases were not timed: the cause is not guessed


@dataclass(frozen=True)
class RankWindow:
    """One rank over a window: how much its collective counters and StepTimer phases grew.

    ``steps``: all-reduce steps timed, with their ``work_seconds`` and ``wait_seconds``;
    ``phase_seconds`` (by ``instrument.PHASES`` name) over ``timer_steps`` StepTimer steps,
    empty when the loop has no StepTimer.
    """

    rank: str
    steps: int
    work_seconds: float
    wait_seconds: float
    phase_seconds: Mapping[str, float] = field(default_factory=dict)
    timer_steps: int = 0
    host: str = ""

    def own_phases(self) -> dict[str, float]:
        """Seconds per step in each phase, the all-reduce wait taken out of backward (of other where
        backward is not timed); {} untimed."""
        if self.timer_steps <= 0 or not self.phase_seconds:
            return {}
        per_step = {phase: self.phase_seconds.get(phase, 0.0) / self.timer_steps for phase in PHASES}
        holder = "backward" if per_step["backward"] > 0 else "other"
        per_step[holder] = max(per_step[holder] - self.wait_seconds / self.steps, 0.0)
        return per_step


@dataclass(frozen=True)
class Verdict:
    """``rank`` (and ``host``) of the straggler and its ``cause`` (a phase, or ``unknown``), None
    when no rank stands out; ``scores``: each rank's work per step over the median rank's, minus 1;
    ``excess``: the cause's seconds per step over the median rank's; ``says``: one line."""

    rank: str | None
    host: str | None
    cause: str | None
    scores: dict[str, float]
    excess: float | None
    says: str


def verdict(windows: Sequence[RankWindow], min_score: float = MIN_SCORE) -> Verdict:
    """The straggler among ``windows`` (one per rank, the same span), if one works ``min_score``
    longer per step than the median rank and waits least; ranks without timed steps sit out."""
    timed = [w for w in windows if w.steps > 0]
    if len(timed) < 2:
        return Verdict(None, None, None, {}, None,
                       f"{len(timed)} rank(s) with timed all-reduces in the window: a straggler needs 2 or more")
    work = {w.rank: w.work_seconds / w.steps for w in timed}
    wait = {w.rank: w.wait_seconds / w.steps for w in timed}
    typical = median(list(work.values()))
    scores = {rank: (seconds / typical - 1.0 if typical > 0 else 0.0) for rank, seconds in work.items()}
    slowest = max(timed, key=lambda w: scores[w.rank])
    score = scores[slowest.rank]
    if score < min_score or wait[slowest.rank] > min(wait.values()):
        return Verdict(None, None, None, scores, None,
                       f"no straggler: the most working rank ({slowest.rank}) works {score:+.0%} per step "
                       f"against the median rank (threshold {min_score:+.0%}) or does not wait least")
    cause, excess = _cause(slowest, timed)
    where = f" (host {slowest.host})" if slowest.host else ""
    why = (f"most of it in {cause} (+{excess * 1000:.3g} ms per step over the median rank)" if cause != UNKNOWN
           else "its phases are not timed (no StepTimer), so the cause is unknown")
    return Verdict(slowest.rank, slowest.host or None, cause, scores, excess,
                   f"rank {slowest.rank}{where} is the straggler: it works {score:+.0%} per step against the "
                   f"median rank and waits least at the all-reduce; {why}")


def _cause(straggler: RankWindow, windows: Sequence[RankWindow]) -> tuple[str, float | None]:
    """The phase where ``straggler`` spends the most over the median of the ranks that timed it."""
    own = straggler.own_phases()
    others = [phases for w in windows if (phases := w.own_phases())]
    if not own or len(others) < 2:
        return UNKNOWN, None
    excess = {phase: own[phase] - median([phases[phase] for phases in others]) for phase in PHASES}
    cause = max(PHASES, key=lambda phase: excess[phase])
    return (cause, excess[cause]) if excess[cause] > 0 else (UNKNOWN, None)
