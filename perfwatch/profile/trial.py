"""``perfwatch profile --try``: the top DataLoader recommendation, tried and measured.

The command runs again, unmodified, in windows of fresh processes: with its own settings
("original") and with the recommended DataLoader knobs ("tried"), which the step-timing hook sets
in every DataLoader the script constructs, through the constructor (``monitoring.step_timing``).
The windows are paired and interleaved (original then tried, then tried then original, ...), so
that the drift of a shared machine hits both halves of a pair and cancels in its ratio.

Each window's steps/s is exact: the injected step timing counts the steps and notes the end of the
warm-up (``WARMUP_S`` after the first step: interpreter, imports and worker start-up are behind),
and the rate is the steps after it over the time they took. The speedup is the geometric mean of
the pairs' ratios, with a t-interval over the pairs: each pair is two fresh processes, and the
process, not the step, is what varies. The script is never changed, and a knob whose measured
speedup is below 1 is never recommended: the report says it measured slower and drops it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from perfwatch.channel import PROFILE_DIR_ENV
from perfwatch.launch import CommandTree, ForwardedSignals, adopting_orphans
from perfwatch.monitoring.step_timing import (
    KNOBS_ENV,
    LOADER_KNOBS,
    MARK_AFTER_ENV,
    STEP_DIR_ENV,
    install_child_hooks,
    read_published,
)
from perfwatch.stats import t_quantile

TRY_PAIRS = 3
TRY_SECONDS = 10.0  # measured per window, after the warm-up
WARMUP_S = 1.0  # after the first step: workers started, caches warm
START_LIMIT_S = 120.0  # how long a window waits for its warm-up to end before it gives up
MIN_WINDOW_STEPS = 3  # a window's rate needs at least this many steps after the warm-up
TRY_ALPHA = 0.05
POLL_S = 0.1


def loader_knobs(recommendation: dict[str, Any]) -> dict[str, Any]:
    """The DataLoader arguments among a recommendation's knobs."""
    return {name: value for name, value in recommendation.get("knobs", {}).items() if name in LOADER_KNOBS}


def pick(recommendations: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest-ranked recommendation that sets DataLoader arguments (the only kind --try can inject)."""
    return next((rec for rec in recommendations if loader_knobs(rec)), None)


@dataclass(frozen=True)
class Window:
    """One run of the command: which side, its exact rate after the warm-up (None: why in ``note``)."""

    side: str  # "original" or "tried"
    steps_per_second: float | None
    steps: int = 0  # after the warm-up
    seconds: float = 0.0
    exit_code: int | None = None
    note: str = ""
    knobbed_loaders: int | None = None  # tried side: DataLoaders built with the knobs


def window_rate(summary: dict[str, Any] | None) -> tuple[int, float]:
    """(steps, seconds) after the warm-up mark of a published injected-timing summary; (0, 0.0) before it."""
    if not summary or summary.get("mark_unix") is None or summary.get("last_step_unix") is None:
        return 0, 0.0
    return summary["steps"] - summary["mark_steps"], summary["last_step_unix"] - summary["mark_unix"]


def _latest(directory: Path) -> dict[str, Any] | None:
    found = [s for s in read_published(directory) if s.get("source")]
    return max(found, key=lambda s: s.get("steps", 0), default=None)


def run_window(command: Sequence[str], env: dict[str, str], directory: Path, side: str, seconds: float,
               stop_grace: float, signals: ForwardedSignals) -> Window:
    """Run ``command`` once into ``directory`` (its output in output.log): wait for the warm-up to end,
    measure ``seconds`` more, stop it and everything it started, and read its exact rate."""
    directory.mkdir(parents=True)
    env = {**env, STEP_DIR_ENV: str(directory)}
    with open(directory / "output.log", "wb") as output:
        signals.child = child = subprocess.Popen(list(command), env=env, stdin=subprocess.DEVNULL, stdout=output,
                                                 stderr=subprocess.STDOUT)
    tree = CommandTree(child)
    give_up, end = time.monotonic() + START_LIMIT_S, None
    try:
        while child.poll() is None and signals.received is None:
            now = time.monotonic()
            if end is None and window_rate(_latest(directory))[1] > 0:
                end = now + seconds
            if now >= (end or give_up):
                break
            time.sleep(POLL_S)
    finally:
        if child.poll() is None:
            tree.stop(stop_grace, lambda line: None)
        code = child.wait()
        signals.child = None
    summary = _latest(directory)
    steps, took = window_rate(summary)
    knobbed = (summary or {}).get("loader_knobs", {}).get("loaders") if side == "tried" else None
    rate = steps / took if steps >= MIN_WINDOW_STEPS and took > 0 else None
    note = "" if rate is not None else (
        f"{steps} steps after a {WARMUP_S:g} s warm-up (needs {MIN_WINDOW_STEPS})" if summary
        else "no step timed (no optimizer step or DataLoader seen, or the script times itself)")
    return Window(side, rate, steps, round(took, 3), code, note, knobbed)


def speedup(original: Sequence[float], tried: Sequence[float], alpha: float = TRY_ALPHA) -> dict[str, Any]:
    """tried/original over pairs of rates: the geometric mean of the pairs' ratios and its t-interval
    (None bounds with a single pair)."""
    logs = [math.log(t / o) for o, t in zip(original, tried)]
    n = len(logs)
    mean = math.fsum(logs) / n
    if n < 2:
        return {"speedup": round(math.exp(mean), 4), "low": None, "high": None, "confidence": 1 - alpha, "pairs": n}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in logs) / (n - 1))
    half = t_quantile(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    return {"speedup": round(math.exp(mean), 4), "low": round(math.exp(mean - half), 4),
            "high": round(math.exp(mean + half), 4), "confidence": 1 - alpha, "pairs": n}


def verdict(measured: dict[str, Any] | None) -> str:
    """"faster" (the interval is above 1), "slower" (the estimate is below 1: never recommended),
    "unclear" (the interval holds 1) or "inconclusive" (no pair measured)."""
    if measured is None:
        return "inconclusive"
    if measured["speedup"] < 1.0:
        return "slower"
    return "faster" if measured["low"] is not None and measured["low"] > 1.0 else "unclear"


def _summary_line(tried: dict[str, Any]) -> str:
    knobs = ", ".join(f"{k}={v}" for k, v in tried["knobs"].items())
    predicted = tried["predicted_at_most"]
    said = f"predicted at most {predicted:.2f}x" if predicted else "no predicted bound"
    m = tried["measured"]
    if m is None:
        return f"tried {knobs}: nothing measured ({tried['reason']})"
    interval = (f" ({m['confidence']:.0%} interval {m['low']:.2f}-{m['high']:.2f}x)" if m["low"] is not None
                else " (one pair: no interval)")
    outcome = {"faster": "faster: recommended",
               "slower": "measured slower: not recommended, dropped from the recommendations",
               "unclear": "no clear gain: the interval holds 1, so it stays a suggestion, not confirmed"}
    return (f"tried {knobs} in {m['pairs']} paired windows: measured {m['speedup']:.2f}x{interval}, {said}; "
            f"{outcome[tried['verdict']]}")


def _untriable(report: dict[str, Any], rec: dict[str, Any] | None) -> str:
    """Why ``rec`` cannot be tried on this command ("" when it can): the windows measure steps/s with
    perfwatch's injected timing, which must have timed the profiled run."""
    if rec is None:
        return "no recommendation sets DataLoader arguments (" + ", ".join(LOADER_KNOBS) + ")"
    timer = report.get("steptimer")
    if timer and not timer.get("injected"):
        return ("the script times itself with a StepTimer, and perfwatch's injected timing, which --try measures "
                "steps/s with, steps aside for it")
    if not timer or not timer.get("steps"):
        return "the profiled run timed no step (no optimizer step seen), so no window could measure steps/s"
    return ""


def try_top(command: Sequence[str], report: dict[str, Any], out: Path, pairs: int, seconds: float,
            stop_grace: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Try the top DataLoader recommendation of ``report`` (see the module docstring): adds ``report["try"]``,
    the measurement to the recommendation, and drops it when it measured slower. Returns ``report["try"]``."""
    rec = pick(report["recommendations"])
    reason = _untriable(report, rec)
    if reason:
        report["try"] = {"recommendation": None, "verdict": "nothing to try", "reason": reason}
        say(f"--try: nothing to try: {reason}")
        return report["try"]
    knobs = loader_knobs(rec)
    directory = out / "try"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (PROFILE_DIR_ENV, KNOBS_ENV)}
    install_child_hooks(directory / ".hooks", env)
    env[MARK_AFTER_ENV] = str(WARMUP_S)
    sides = {"original": env, "tried": {**env, KNOBS_ENV: json.dumps(knobs)}}
    say(f"--try: {pairs} pairs of windows ({seconds:g} s each after a {WARMUP_S:g} s warm-up), original "
        f"against {', '.join(f'{k}={v}' for k, v in knobs.items())}; the command's output goes to {directory}")
    windows: list[Window] = []
    with ForwardedSignals() as signals, adopting_orphans():
        for pair in range(pairs):
            order = ("original", "tried") if pair % 2 == 0 else ("tried", "original")
            for side in order:
                if signals.received is None:
                    windows.append(run_window(command, sides[side], directory / f"window-{len(windows) + 1:02d}-{side}",
                                              side, seconds, stop_grace, signals))
    shutil.rmtree(directory / ".hooks", ignore_errors=True)
    by_pair = [windows[i:i + 2] for i in range(0, len(windows) - 1, 2)]
    rated = [{w.side: w.steps_per_second for w in pair} for pair in by_pair
             if all(w.steps_per_second is not None for w in pair)]
    unset = any(w.side == "tried" and w.knobbed_loaders == 0 for w in windows)  # both sides ran the same
    measured = speedup([r["original"] for r in rated], [r["tried"] for r in rated]) if rated and not unset else None
    reason = "" if measured else ("the tried windows built no DataLoader to set the knobs in" if unset
                                  else next((w.note for w in windows if w.note), "interrupted"))
    tried = {"recommendation": rec["id"], "knobs": knobs, "verdict": verdict(measured), "measured": measured,
             "predicted_at_most": rec["expected_gain"].get("speedup_at_most"), "reason": reason,
             "window_seconds": seconds, "warmup_seconds": WARMUP_S, "windows": [asdict(w) for w in windows]}
    tried["says"] = _summary_line(tried)
    report["try"] = tried
    rec["measured"] = {key: tried[key] for key in ("verdict", "measured", "says")}
    if tried["verdict"] == "slower":
        report["recommendations"] = [r for r in report["recommendations"] if r is not rec]
    say(tried["says"])
    return tried
