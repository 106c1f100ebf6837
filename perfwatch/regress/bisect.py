"""The search of `perfwatch bisect`, pure: positions on a first-parent line in, steps and findings out.

Position 0 is GOOD, position ``count`` is BAD, and a caller-supplied ``measure(a, b)`` compares two
positions paired (a the baseline) and returns a Judgement; calling it again for the same pair adds
rounds of fresh processes to the earlier ones. So the rule below is tested with literal verdicts,
and bisect_run.py feeds it real paired measurements.

The rule. The regression is first confirmed between GOOD and BAD (measured again while too noisy; if
it stays so, the search stops "unconfirmed", which is not "no-regression"). Each step then compares the
midpoint with both ends of the range left (asv find's three points, judged by compare's test
instead of a raw difference), and reads the two verdicts:

* one half regressed, the other unchanged (or improved): the change is in the regressed half;
* both halves regressed: two regressions; each half is searched on its own and both are reported;
* a half too noisy: it is measured again, with more rounds, up to ``max_measurements``; if it stays
  noisy, a regressed other half is followed (noting that the noisy one may hide a second change),
  and an unchanged other half leaves the noisy one only by elimination, when the range's own
  interval proves it: its lower bound is above the most the unchanged half could hold;
* neither half regressed, though the range did: both are measured again; if that persists the
  range is reported unresolved (the change may be spread over several commits). Never a guess.

A midpoint that cannot be measured (its suite does not import, the benchmark fails there or does
not exist) is skipped, as ``git bisect skip`` does, and the nearest other commit is tried; a range
whose every inner commit was skipped is reported as a range, not as a commit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field, replace

MAX_MEASUREMENTS = 3  # paired runs pooled per pair at most: a noisy half gets two more tries

# How a half's verdict counts: a step up, flat (no regression over the threshold), or not yet known.
STEP, FLAT, NOISY = "step", "flat", "noisy"
KIND = {"regressed": STEP, "unchanged": FLAT, "improved": FLAT}


@dataclass(frozen=True)
class Judgement:
    """One (pooled) paired comparison of two positions: compare's verdict and direction-normalised change
    (+ is worse) with its interval, or verdict "skip" with the positions that could not be measured."""

    verdict: str
    change: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    reason: str = ""
    broken: tuple[int, ...] = ()
    measurements: int = 1
    inferred: bool = False  # found by elimination (see the module doc), not measured

    @property
    def kind(self) -> str:
        return KIND.get(self.verdict, NOISY)


def skip(broken: tuple[int, ...], reason: str) -> Judgement:
    return Judgement("skip", reason=reason, broken=broken)


@dataclass(frozen=True)
class Decision:
    """Where a step goes: "lower", "upper", "both", "remeasure" (the halves in ``again``) or "unresolved"."""

    go: str
    note: str = ""
    again: tuple[str, ...] = ()
    inferred: Judgement | None = None  # the judgement a half is followed on, when by elimination


def eliminated(whole: Judgement, flat: Judgement) -> Judgement | None:
    """The change the other half must hold when ``flat`` holds none, from ``whole``'s interval: a
    regression only if even the least ``whole`` can be, over the most ``flat`` can be, is above 0."""
    low = (1 + whole.ci_low) / (1 + flat.ci_high) - 1
    if not low > 0:
        return None
    change = (1 + whole.change) / (1 + flat.change) - 1
    high = (1 + whole.ci_high) / (1 + flat.ci_low) - 1
    return Judgement("regressed", change, low, high, reason=f"by elimination: the range changed {whole.change:+.1%} "
                     f"and the other half at most {flat.ci_high:+.1%}", inferred=True)


def decide(whole: Judgement, lower: Judgement, upper: Judgement, more: tuple[bool, bool]) -> Decision:
    """The rule of the module doc for one step: ``whole`` is the range's judgement, ``lower`` and ``upper``
    its halves', ``more`` whether each half may still be measured again."""
    kinds = (lower.kind, upper.kind)
    halves = ("lower", "upper")
    if kinds == (STEP, FLAT):
        return Decision("lower")
    if kinds == (FLAT, STEP):
        return Decision("upper")
    if kinds == (STEP, STEP):
        return Decision("both", "both halves regressed: two regressions, searched one by one")
    wanted = [h for h, k in zip(halves, kinds) if k == NOISY] or list(halves)  # flat and flat: both again
    again = tuple(h for h, m in zip(halves, more) if m and h in wanted)
    if again:
        return Decision("remeasure", again=again)
    if kinds == (NOISY, NOISY):
        return Decision("unresolved", "both halves stayed too noisy to tell which holds the change")
    if kinds == (FLAT, FLAT):
        return Decision("unresolved", "neither half regressed though the range did: the change may be spread "
                                      "over several commits, none over the threshold alone")
    known = kinds.index(NOISY) ^ 1  # the half that is not noisy
    settled, noisy = halves[known], halves[known ^ 1]
    if kinds[known] == STEP:
        return Decision(settled, f"the {noisy} half stayed too noisy to rule out a second change there")
    inferred = eliminated(whole, (lower, upper)[known])
    if inferred is None:
        return Decision("unresolved", f"the {noisy} half stayed too noisy and the {settled} half holds no change; "
                                      "the range's interval is too wide to conclude by elimination")
    return Decision(noisy, f"the {noisy} half stayed too noisy; followed by elimination", inferred=inferred)


def midpoint(lo: int, hi: int, skipped: Container[int]) -> int | None:
    """The inner position nearest the middle of lo..hi that is not skipped (the lower on a tie), or None."""
    inner = [p for p in range(lo + 1, hi) if p not in skipped]
    return min(inner, key=lambda p: (abs(2 * p - lo - hi), p)) if inner else None


def steps_needed(lo: int, hi: int) -> int:
    """Bisection steps a range of hi - lo commits takes with no skips: ceil(log2(hi - lo))."""
    return math.ceil(math.log2(hi - lo)) if hi - lo > 1 else 0


@dataclass(frozen=True)
class Step:
    """One midpoint tried: its judgements against both ends (None where not measured) and where it went.
    Progress is told each one when done, and step 0, the confirmation: ``lower`` is GOOD vs BAD, no ``mid``."""

    number: int
    lo: int
    mid: int | None
    hi: int
    lower: Judgement | None
    upper: Judgement | None
    go: str  # a Decision's, or "skip" (step 0: "confirm" or "stop")
    note: str
    seconds: float


@dataclass(frozen=True)
class Finding:
    """What a range came to: "culprit" (``hi`` is the first bad commit), "range" (skipped commits leave
    lo+1..hi unsplit), "unresolved" (see ``note``) or "unfinished" (the budget or the steps ran out)."""

    kind: str
    lo: int
    hi: int
    judgement: Judgement
    note: str = ""


@dataclass(frozen=True)
class Progress:
    """Told before each step: its number, the midpoint of lo..hi, the other ranges waiting, and the seconds
    the steps left should take (their ceil(log2) at the mean step time so far). Step 0 is the confirmation
    of GOOD..BAD: no midpoint, no estimate yet."""

    step: int
    mid: int | None
    lo: int
    hi: int
    ranges: tuple[tuple[int, int], ...] = ()
    eta_s: float | None = None


@dataclass
class Bisection:
    """The whole search. ``outcome``: "no-regression" (GOOD..BAD unchanged or faster), "unconfirmed" (it
    stayed too noisy to tell), "failed" (an end could not be measured), or the findings' kind ("culprit",
    "range", "unresolved", "unfinished"), "several" when there are more."""

    count: int
    confirmation: Judgement
    findings: list[Finding] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    measurements: int = 0
    seconds: float = 0.0
    stopped: str = ""  # why the search stopped early, if it did

    @property
    def outcome(self) -> str:
        if self.confirmation.verdict == "skip":
            return "failed"
        if self.confirmation.kind == NOISY:
            return "unconfirmed"
        if self.confirmation.kind != STEP:
            return "no-regression"
        kinds = {f.kind for f in self.findings}
        return kinds.pop() if len(self.findings) == 1 else "several"


Measure = Callable[[int, int], Judgement]


@dataclass
class Search:
    """The state of one bisection: the measurements so far per pair, the clock and the limits."""

    count: int
    measure: Measure
    max_steps: int | None = None
    budget_s: float | None = None
    max_measurements: int = MAX_MEASUREMENTS
    clock: Callable[[], float] = time.monotonic
    progress: Callable[[Progress | Step], None] | None = None
    taken: dict[tuple[int, int], int] = field(default_factory=dict)

    def judge(self, a: int, b: int) -> Judgement:
        self.taken[a, b] = self.taken.get((a, b), 0) + 1
        return replace(self.measure(a, b), measurements=self.taken[a, b])

    def judged(self, a: int, b: int) -> Judgement:
        """A pair measured until its verdict is not noisy or it may not be measured again."""
        judgement = self.judge(a, b)
        while judgement.kind == NOISY and judgement.verdict != "skip" and self.taken[a, b] < self.max_measurements:
            judgement = self.judge(a, b)
        return judgement

    def tell(self, news: Progress | Step) -> None:
        if self.progress:
            self.progress(news)

    def run(self) -> Bisection:
        start = self.clock()
        self.tell(Progress(0, None, 0, self.count))
        result = Bisection(self.count, self.judged(0, self.count))
        confirmed = result.confirmation
        per_measurement = (self.clock() - start) / self.taken[0, self.count]
        self.tell(Step(0, 0, None, self.count, confirmed, None, "confirm" if confirmed.kind == STEP else "stop",
                       confirmed.reason, self.clock() - start))
        queue = [(0, self.count, result.confirmation)] if result.confirmation.kind == STEP else []
        while queue:
            lo, hi, whole = queue.pop(0)
            mid = midpoint(lo, hi, result.skipped)
            if hi - lo == 1 or mid is None:
                kind = "culprit" if hi - lo == 1 else "range"
                note = "" if kind == "culprit" else f"{hi - lo - 1} commit(s) inside could not be measured"
                result.findings.append(Finding(kind, lo, hi, whole, note))
                continue
            timed = [s.seconds for s in result.steps]
            per_step = sum(timed) / len(timed) if timed else 2 * per_measurement  # a step measures two pairs
            elapsed = self.clock() - start
            stop = self.stop_reason(len(result.steps), elapsed, per_step)
            if stop:
                result.stopped = stop
                result.findings += [Finding("unfinished", a, b, j, stop) for a, b, j in [(lo, hi, whole), *queue]]
                break
            left = sum(steps_needed(a, b) for a, b, _ in [(lo, hi, whole), *queue])
            self.tell(Progress(len(result.steps) + 1, mid, lo, hi, tuple((a, b) for a, b, _ in queue), left * per_step))
            began = self.clock()
            step, follow = self.step(len(result.steps) + 1, lo, mid, hi, whole, result.skipped)
            step = replace(step, seconds=self.clock() - began)
            result.steps.append(step)
            self.tell(step)
            if step.go == "skip":
                queue.insert(0, (lo, hi, whole))
            elif step.go == "unresolved":
                result.findings.append(Finding("unresolved", lo, hi, whole, step.note))
            queue[:0] = follow
        result.measurements = sum(self.taken.values())
        result.seconds = self.clock() - start
        return result

    def stop_reason(self, steps: int, elapsed: float, per_step: float) -> str:
        if self.max_steps is not None and steps >= self.max_steps:
            return f"stopped after {steps} step(s) (the step limit)"
        if self.budget_s is not None and elapsed + per_step > self.budget_s:
            return (f"stopped after {elapsed:.0f} s: another step (~{per_step:.0f} s) would exceed "
                    f"the {self.budget_s:g} s budget")
        return ""

    def step(self, number: int, lo: int, mid: int, hi: int, whole: Judgement,
             skipped: dict[int, str]) -> tuple[Step, list[tuple[int, int, Judgement]]]:
        """One step: both halves measured (again where the rule says) until the rule decides."""
        lower = self.judge(lo, mid)
        upper = None if lower.verdict == "skip" else self.judge(mid, hi)
        while True:
            broken = next((j for j in (lower, upper) if j is not None and j.verdict == "skip"), None)
            if broken is not None:
                if set(broken.broken) - {mid}:  # an end that measured before fails now: not the midpoint's fault
                    return Step(number, lo, mid, hi, lower, upper, "unresolved", broken.reason, 0.0), []
                skipped[mid] = broken.reason
                return Step(number, lo, mid, hi, lower, upper, "skip", broken.reason, 0.0), []
            assert upper is not None
            more = (self.taken[lo, mid] < self.max_measurements, self.taken[mid, hi] < self.max_measurements)
            decision = decide(whole, lower, upper, more)
            if decision.go != "remeasure":
                break
            if "lower" in decision.again:
                lower = self.judge(lo, mid)
            if "upper" in decision.again:
                upper = self.judge(mid, hi)
        halves = {"lower": (lo, mid, decision.inferred or lower), "upper": (mid, hi, decision.inferred or upper)}
        follow = [halves[h] for h in ("lower", "upper") if decision.go in (h, "both")]
        return Step(number, lo, mid, hi, lower, upper, decision.go, decision.note, 0.0), follow


def bisect(count: int, measure: Measure, **limits) -> Bisection:
    """Search positions 0 (GOOD) .. ``count`` (BAD) with ``measure``; ``limits`` are Search's
    (max_steps, budget_s, max_measurements, clock, progress)."""
    if count < 1:
        raise ValueError("bisect needs at least one commit after GOOD")
    return Search(count, measure, **limits).run()
