"""What `perfwatch bisect` says: the headline, a line per step as it goes, the JSON document and the
Markdown/HTML report (pages.py's document model). Pure but for ``write_report``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from perfwatch.pages import Document, Heading, Table, Text, write_pages
from perfwatch.regress.bisect import Finding, Judgement, Progress, Step, steps_needed
from perfwatch.regress.bisect_run import BisectRun, Commit, Target
from perfwatch.store import write_atomic

FINDING_TITLE = {"culprit": "first bad commit", "range": "not split (skipped commits)",
                 "unresolved": "unresolved", "unfinished": "unfinished"}


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def ratio_interval(j: Judgement, higher_is_better: bool) -> tuple[float, float, float]:
    """candidate/baseline as measured, with its interval, from the direction-normalised change (+ worse)."""
    if higher_is_better:
        return 1 - j.change, 1 - j.ci_high, 1 - j.ci_low
    return 1 + j.change, 1 + j.ci_low, 1 + j.ci_high


def change_text(j: Judgement, higher_is_better: bool) -> str:
    """``+12.0% [+8.1%, +15.3%] (ratio 1.120 [1.081, 1.153])``: + is worse; ``-`` when not measured."""
    if math.isnan(j.change):
        return "-"
    ratio, low, high = ratio_interval(j, higher_is_better)
    return f"{j.change:+.1%} [{j.ci_low:+.1%}, {j.ci_high:+.1%}] (ratio {ratio:.3f} [{low:.3f}, {high:.3f}])"


def verdict_text(j: Judgement | None, higher_is_better: bool) -> str:
    if j is None:
        return "not measured"
    if j.verdict == "skip":
        return "could not be measured"
    how = " (by elimination)" if j.inferred else f" ({j.measurements} measurement(s))" if j.measurements > 1 else ""
    return f"{j.verdict} {change_text(j, higher_is_better)}{how}"


def commit_text(c: Commit) -> str:
    return f"{c.short} {c.subject!r} ({c.date})"


def finding_text(run: BisectRun, f: Finding) -> str:
    lo, hi = run.commit(f.lo), run.commit(f.hi)
    change = change_text(f.judgement, run.higher_is_better)
    if f.kind == "culprit":
        return f"first bad commit {commit_text(hi)}: {change}"
    span = f"{f.hi - f.lo} commits after {lo.short} up to {hi.short}"
    if f.kind == "range":
        return f"the change is in one of the {span} ({f.note}): {change}"
    return f"{FINDING_TITLE[f.kind]}: the change is in the {span}: {f.note}"


def headline(run: BisectRun) -> str:
    """One line: what the bisection found."""
    r, good, bad = run.result, run.commits[0], run.commits[-1]
    span = f"{good.short}..{bad.short}"
    if r.outcome == "failed":
        return f"{run.name} could not be measured at GOOD or BAD ({span}): {r.confirmation.reason}"
    if r.outcome == "unconfirmed":
        return (f"no regression of {run.name} confirmed in {span}, nor ruled out: "
                f"{verdict_text(r.confirmation, run.higher_is_better)}; nothing bisected (try a quieter machine "
                f"or a larger --suite)")
    if r.outcome == "no-regression":
        return (f"no regression of {run.name} confirmed in {span}: {verdict_text(r.confirmation, run.higher_is_better)}"
                f"; nothing to bisect")
    if r.outcome == "several":
        return f"{len(r.findings)} changes of {run.name} in {span}: " + "; ".join(finding_text(run, f) for f in r.findings)
    return finding_text(run, r.findings[0])


def progress_line(event: Progress | Step, target: Target) -> str:
    """A line for the terminal before (Progress) and after (Step) each step; step 0 is the confirmation."""
    commits, higher_is_better = target.commits, target.bench.higher_is_better
    if isinstance(event, Progress):
        if event.mid is None:
            return f"confirming: {commits[0].short} (GOOD) against {commits[-1].short} (BAD), paired"
        left = event.hi - event.lo + sum(b - a for a, b in event.ranges)  # commits that may be the first bad
        todo = steps_needed(event.lo, event.hi) + sum(steps_needed(a, b) for a, b in event.ranges)
        eta = f"ETA ~{duration(event.eta_s)}" if event.eta_s is not None else "ETA unknown"
        return (f"step {event.step}: testing {commit_text(commits[event.mid])}; {left} candidate(s) left "
                f"({commits[event.lo].short}..{commits[event.hi].short}), ~{todo} step(s), {eta}")
    if event.mid is None:
        then = f"bisecting {event.hi} commit(s)" if event.go == "confirm" else "stopping"
        return f"GOOD..BAD: {verdict_text(event.lower, higher_is_better)}; {then}"
    halves = (f"vs older end: {verdict_text(event.lower, higher_is_better)}; "
              f"vs newer end: {verdict_text(event.upper, higher_is_better)}")
    went = {"lower": "the change is at or before it", "upper": "the change is after it",
            "both": "changes on both sides", "skip": "skipped", "unresolved": "unresolved"}[event.go]
    return f"  {halves} -> {went}" + (f" ({event.note})" if event.note else "") + f" [{duration(event.seconds)}]"


def duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def judgement_json(j: Judgement | None) -> dict[str, Any] | None:
    if j is None:
        return None
    return {"verdict": j.verdict, "change": finite(j.change), "ci_low": finite(j.ci_low),
            "ci_high": finite(j.ci_high), "p_value": finite(j.p_value), "reason": j.reason,
            "measurements": j.measurements, "inferred": j.inferred}


def commit_json(c: Commit) -> dict[str, str]:
    return {"commit": c.sha, "subject": c.subject, "date": c.date}


def to_json(run: BisectRun) -> dict[str, Any]:
    """The whole bisection as plain JSON data (nan -> null), raw samples of every pair included."""
    r = run.result

    def finding(f: Finding) -> dict[str, Any]:
        ratio = ratio_interval(f.judgement, run.higher_is_better)
        return {"kind": f.kind, "first_bad": commit_json(run.commit(f.hi)) if f.kind == "culprit" else None,
                "after": commit_json(run.commit(f.lo)), "through": commit_json(run.commit(f.hi)),
                "commits": [c.sha for c in run.commits[f.lo + 1:f.hi + 1]],
                **judgement_json(f.judgement), "ratio": finite(ratio[0]), "ratio_low": finite(ratio[1]),
                "ratio_high": finite(ratio[2]), "note": f.note}

    def step(s: Step) -> dict[str, Any]:
        return {"step": s.number, "commit": commit_json(run.commit(s.mid)) if s.mid is not None else None,
                "range": [run.commit(s.lo).sha, run.commit(s.hi).sha], "vs_older": judgement_json(s.lower),
                "vs_newer": judgement_json(s.upper), "went": s.go, "note": s.note, "seconds": round(s.seconds, 3)}

    return {
        "benchmark": run.name, "unit": run.target.bench.unit, "higher_is_better": run.higher_is_better,
        "suite": run.target.size, "threshold": run.target.threshold, "started": run.started,
        "good": commit_json(run.commits[0]), "bad": commit_json(run.commits[-1]), "commits": r.count,
        "outcome": r.outcome, "message": headline(run), "confirmation": judgement_json(r.confirmation),
        "findings": [finding(f) for f in r.findings], "steps": [step(s) for s in r.steps],
        "skipped": [{**commit_json(run.commit(p)), "reason": why} for p, why in sorted(r.skipped.items())],
        "steps_taken": len(r.steps), "steps_expected": steps_needed(0, r.count), "measurements": r.measurements,
        "seconds": round(r.seconds, 3), "stopped": r.stopped or None,
        "samples": [{"baseline": run.commit(a).sha, "candidate": run.commit(b).sha, "rounds": pool.rounds,
                     "baseline_samples": pool.baseline, "candidate_samples": pool.candidate}
                    for (a, b), pool in run.samples.items()],
    }


def json_text(run: BisectRun) -> str:
    return json.dumps(to_json(run), indent=1, allow_nan=False, ensure_ascii=False)


def document(run: BisectRun) -> Document:
    r = run.result
    blocks: list = [
        Text(headline(run), lead=r.outcome, highlight=True),
        Text(f"{run.name} in the {run.target.size} suite, regression threshold {run.target.threshold:.1%}; "
             f"{r.count} commit(s) "
             f"on the first-parent line after GOOD {commit_text(run.commits[0])} up to BAD "
             f"{commit_text(run.commits[-1])}. {len(r.steps)} step(s) (ceil(log2 {r.count}) = "
             f"{steps_needed(0, r.count)}), {r.measurements} paired measurement(s), {duration(r.seconds)}."
             + (f" {r.stopped}." if r.stopped else "")),
        Text(verdict_text(r.confirmation, run.higher_is_better) + f": {r.confirmation.reason}", lead="GOOD..BAD:"),
    ]
    if r.findings:
        blocks += [Heading("Findings"), Table(
            ("finding", "commits", "subject", "date", "change [CI] (ratio)", "note"),
            [(FINDING_TITLE[f.kind], f"{run.commit(f.hi).short}" if f.kind == "culprit"
              else f"{run.commit(f.lo).short}..{run.commit(f.hi).short}", run.commit(f.hi).subject,
              run.commit(f.hi).date, change_text(f.judgement, run.higher_is_better), f.note) for f in r.findings],
            code=frozenset({1}))]
    if r.steps:
        blocks += [Heading("Steps"), Table(
            ("step", "commit tested", "range", "vs older end", "vs newer end", "went", "note", "time"),
            [(str(s.number), run.commit(s.mid).short if s.mid is not None else "-",
              f"{run.commit(s.lo).short}..{run.commit(s.hi).short}", verdict_text(s.lower, run.higher_is_better),
              verdict_text(s.upper, run.higher_is_better), s.go, s.note, duration(s.seconds)) for s in r.steps],
            numeric=frozenset({0, 7}), code=frozenset({1, 2}))]
    if r.skipped:
        blocks += [Heading("Skipped commits"), Table(
            ("commit", "subject", "why"),
            [(run.commit(p).short, run.commit(p).subject, why) for p, why in sorted(r.skipped.items())],
            code=frozenset({0}))]
    return Document(f"bisect {run.name}: {run.commits[0].short}..{run.commits[-1].short}", blocks)


def write_report(run: BisectRun, out: Path) -> dict[str, Path]:
    """report.md, report.html and report.json in ``out`` (created), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    write_pages(document(run), out)
    write_atomic(out / "report.json", json_text(run) + "\n")
    return {"markdown": out / "report.md", "html": out / "report.html", "json": out / "report.json"}
