"""Detection quality of regression verdicts: injected slowdowns caught, and false alarms on A/A runs.

Method. A throw-away git project holds one benchmark: a perfwatch.pipelines loader
iteration (in-memory synthetic dataset, two decode-like numpy passes per sample, batch
8, no worker processes, one torch thread), ``BATCHES`` batches per call, one call per
sample. The knob is the file ``slowdown.txt`` next to the suite: a call takes
``round(BATCHES * (1 + slowdown))`` batches. Every batch is the same work, so time
scales in proportion, in steps of 1/BATCHES, and the injected work meets the same
noise as the rest (a sleep or spin of fixed length would not). The commit holds 0;
each trial writes the level into the working tree, so the baseline (0%) and the
candidate (level) differ only in that number.

Each trial measures both sides twice, for the two ways perfwatch compares:

* paired: ``perfwatch.bench.paired.run_against("HEAD")``, the engine of ``perfwatch ci
  --against``: one live worker per side, samples taken alternately (ABBA);
* unpaired: all baseline samples, then all candidate samples (``runner.run_one``,
  fresh processes), like a run compared with a stored baseline file.

Every verdict is computed from the same raw samples: perfwatch's
(``compare.compare_samples``, paired or not, at each ``--thresholds`` value), asv's
default rule (``asv continuous``/``asv compare``: ``_is_result_better`` with factor 1.1,
which applies asv's Mann-Whitney test at p < 0.002, on asv_runner's ``compute_stats``),
and pytest-benchmark's ``--benchmark-compare-fail=median:5%`` (candidate median over
baseline median > 1.05). A detection is "regressed"/"worse"/"fails"; on A/A trials
(0%) it is a false alarm. Levels run in a new random order in every round of trials,
so slow drift of the machine hits all levels alike.

Usage::

    python scripts/detection_quality.py --trials 30 --out /tmp/dq.json --markdown /tmp/dq.md
    python scripts/detection_quality.py --summarize /tmp/dq.json --thresholds 5%,3%,4%
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any

from asv_runner.statistics import compute_stats

from perfwatch import stats
from perfwatch.bench import runner
from perfwatch.bench.paired import run_against
from perfwatch.regress.compare import compare_samples
from perfwatch.thresholds import parse_threshold

ASV_P_THRESHOLD = 0.002  # asv's is_different default

SIZE = "ci"
BENCH = "dq.Loader.time_iterate"
ASV_FACTOR = 1.1  # asv continuous / asv compare default
PYTEST_BENCHMARK_LIMIT = 0.05  # --benchmark-compare-fail=median:5%
TARGETS = "A/A false alarms <= 2%; 10% caught >= 95%; 5% caught >= 80%"

SUITE = '''\
"""One loader iteration benchmark whose work is scaled by ../slowdown.txt."""

from pathlib import Path

import torch

from perfwatch.pipelines.datasets import DatasetSpec, open_dataset
from perfwatch.pipelines.loader import EndlessBatches, build_loader

SLOWDOWN = float((Path(__file__).resolve().parent.parent / "slowdown.txt").read_text())
BATCHES = round({batches} * (1 + SLOWDOWN))


class Loader:
    number = 1
    repeat = ({samples}, {samples}, 600.0)
    warmup_time = 1.0
    timeout = 600

    def setup(self):
        torch.set_num_threads(1)
        dataset = open_dataset(DatasetSpec(num_samples=2048, transform_cost=2), "memory")
        self.batches = EndlessBatches(build_loader(dataset, batch_size={batch_size}))

    def time_iterate(self):
        for _ in range(BATCHES):
            next(self.batches)
'''


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def make_project(directory: Path, batches: int, samples: int, batch_size: int) -> Path:
    """A git repository whose commit is the 0% baseline."""
    (directory / "suites").mkdir(parents=True)
    (directory / "suites" / "dq.py").write_text(SUITE.format(batches=batches, samples=samples, batch_size=batch_size))
    set_slowdown(directory, 0.0)
    git(directory, "init", "-q")
    git(directory, "add", "-A")
    git(directory, "-c", "user.name=dq", "-c", "user.email=dq@localhost", "commit", "-q", "-m", "baseline")
    return directory


def set_slowdown(repo: Path, level: float) -> None:
    (repo / "slowdown.txt").write_text(repr(level))


def samples_of(result: Any) -> list[float]:
    if result.status != "ok":
        raise RuntimeError(f"{result.name}: {result.status}: {result.error}")
    return list(result.samples)


def measure_paired(repo: Path, level: float) -> tuple[list[float], list[float]]:
    set_slowdown(repo, level)
    baseline, candidate = run_against("HEAD", SIZE, repo=repo)
    return samples_of(baseline.benchmarks[0]), samples_of(candidate.benchmarks[0])


def measure_unpaired(repo: Path, level: float) -> tuple[list[float], list[float]]:
    (bench,) = runner.select(runner.discover([repo / "suites"], SIZE), SIZE)
    sides = []
    for side_level in (0.0, level):
        set_slowdown(repo, side_level)
        sides.append(samples_of(runner.run_one(bench, SIZE)[0]))
    return sides[0], sides[1]


def method_names(thresholds: list[float]) -> list[str]:
    return [*(f"perfwatch {t:.0%}" for t in thresholds), "asv (x1.1, MWU p<0.002)", "pytest-benchmark median:5%"]


def verdicts(a: list[float], b: list[float], paired: bool, thresholds: list[float]) -> dict[str, dict[str, Any]]:
    """Each method's call on baseline ``a`` vs candidate ``b``; ``detected`` means it flags a slowdown."""
    out: dict[str, dict[str, Any]] = {}
    for t, name in zip(thresholds, method_names(thresholds)):
        v = compare_samples(BENCH, a, b, threshold=t, paired=paired)
        out[name] = {"detected": v.verdict == "regressed", "verdict": v.verdict, "change": v.change,
                     "ci_low": v.ci_low, "ci_high": v.ci_high, "p": v.p_value}
    time_a, stats_a = compute_stats(a, 1)
    time_b, stats_b = compute_stats(b, 1)
    worse = asv_says_worse(time_a, time_b, a, b, stats_a, stats_b)
    out[method_names(thresholds)[-2]] = {"detected": bool(worse), "ratio": time_b / time_a}
    ratio = stats.median(b) / stats.median(a)
    out[method_names(thresholds)[-1]] = {"detected": ratio * 100 - 100 > PYTEST_BENCHMARK_LIMIT * 100, "ratio": ratio}
    return out


def asv_mann_whitney_p(a: list[float], b: list[float]) -> float:
    """asv's two-sided Mann-Whitney p ('auto'): exact up to 20 samples a side (perfwatch.stats
    computes the same exact values as asv, tests/test_stats.py checks it), above that the plain
    normal approximation without tie or continuity correction, as asv does."""
    m, n = len(a), len(b)
    if max(m, n) <= 20:
        return stats.mann_whitney_p(a, b)
    u = sum(1 for x in a for y in b if x > y)
    ties = sum(1 for x in a for y in b if x == y)
    if u <= m * n // 2 <= u + ties:  # ties broken the least significant way, as asv does
        ties = m * n // 2 - u
    ux = max(min(u, m * n - u), min(u + ties, m * n - u - ties))
    return min(1.0, 2 * NormalDist().cdf((ux - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12)))


def asv_says_worse(time_a: float, time_b: float, a: list[float], b: list[float], stats_a: dict, stats_b: dict) -> bool:
    """asv's rule for 'b is worse than a' (asv.commands.compare's result comparison, rewritten
    here because it is private): the medians differ by more than ASV_FACTOR and asv's
    significance check agrees: a Mann-Whitney U test at p < 0.002 when the samples are large
    enough for it to reach that, else the 99% intervals of asv_runner's compute_stats must
    not overlap."""
    if math.comb(len(a) + len(b), min(len(a), len(b))) > 1 / ASV_P_THRESHOLD:
        different = asv_mann_whitney_p(a, b) < ASV_P_THRESHOLD
    else:
        different = stats_a["ci_99_b"] < stats_b["ci_99_a"] or stats_b["ci_99_b"] < stats_a["ci_99_a"]
    return different and time_a < time_b / ASV_FACTOR


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cell(k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"{k}/{n} ({k / n:.0%}, {low:.0%}–{high:.0%})" if n else "–"


def summarize(doc: dict[str, Any], thresholds: list[float]) -> str:
    """The Markdown report: detection table, verdict breakdown, method and machine."""
    trials = [t for t in doc["trials"] if t["status"] == "ok"]
    levels = sorted({t["level"] for t in doc["trials"]})
    methods = method_names(thresholds)
    for t in trials:
        t["verdicts"] = verdicts(t["baseline"], t["candidate"], t["mode"] == "paired", thresholds)

    def chosen(mode: str, level: float) -> list[dict[str, Any]]:
        return [t for t in trials if t["mode"] == mode and t["level"] == level]

    head = ["mode", "method", *(("0% (false alarms)" if lv == 0 else f"{lv:.0%}") for lv in levels)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode in ("paired", "unpaired"):
        for method in methods:
            row = [mode, method]
            for level in levels:
                group = chosen(mode, level)
                row.append(cell(sum(t["verdicts"][method]["detected"] for t in group), len(group)))
            lines.append("| " + " | ".join(row) + " |")

    lines += ["", "perfwatch verdicts (regressed / too-noisy / unchanged / improved), and the measured "
              "candidate/baseline ratio of medians (median over trials):", ""]
    head = ["mode", "threshold", *(("0%" if lv == 0 else f"{lv:.0%}") for lv in levels)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode in ("paired", "unpaired"):
        for method in methods[: len(thresholds)]:
            row = [mode, method.split()[-1]]
            for level in levels:
                counts = [sum(t["verdicts"][method]["verdict"] == v for t in chosen(mode, level))
                          for v in ("regressed", "too-noisy", "unchanged", "improved")]
                row.append(" / ".join(map(str, counts)))
            lines.append("| " + " | ".join(row) + " |")
        ratios = [stats.median([stats.median(t["candidate"]) / stats.median(t["baseline"]) for t in chosen(mode, lv)])
                  if chosen(mode, lv) else math.nan for lv in levels]
        lines.append("| " + " | ".join([mode, "measured ratio", *(f"{r:.3f}" for r in ratios)]) + " |")

    failed = [t for t in doc["trials"] if t["status"] != "ok"]
    loads = [t["load_1min"] for t in doc["trials"]]
    per_side = [stats.median([sum(t["baseline"]), sum(t["candidate"])]) for t in trials]
    setup = doc["setup"]
    lines += [
        "",
        f"Targets (issue #4): {TARGETS}. Cells: detected/trials (rate, Wilson 95% interval).",
        "",
        f"Method: {setup['batches']} loader batches of {setup['batch_size']} per call (the knob moves in steps of "
        f"{100 / setup['batches']:g}%), one call per "
        f"sample, {setup['samples']} samples per side (median {stats.median(per_side):.1f} s of measurement per "
        f"side and trial), {len(trials)} trials ({len(failed)} failed and left out), levels in random order. "
        "Paired: `perfwatch ci --against HEAD`'s engine (live workers, ABBA). Unpaired: all baseline samples, "
        "then all candidate samples, each side in a fresh process. Every rule judges the same samples; see "
        "scripts/detection_quality.py for the details.",
        "",
        f"Machine: {setup['cpu']}, nproc {setup['nproc']}, shared with other jobs; 1-minute load average during "
        f"the run: median {stats.median(loads):.2f}, min {min(loads):.2f}, max {max(loads):.2f}. "
        f"Run time: {doc.get('wall_s', 0) / 60:.0f} min.",
    ]
    return "\n".join(lines)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def run(args: argparse.Namespace, thresholds: list[float]) -> dict[str, Any]:
    from perfwatch.env import cpu_model

    doc: dict[str, Any] = {
        "setup": {"batches": args.batches, "batch_size": args.batch_size, "samples": args.samples, "levels": args.levels, "trials": args.trials,
                  "seed": args.seed, "nproc": os.cpu_count(), "cpu": cpu_model()},
        "trials": [],
    }
    rng = random.Random(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="perfwatch-dq-") as tmp:
        repo = make_project(Path(tmp) / "project", args.batches, args.samples, args.batch_size)
        for round_ in range(args.trials):
            for level in rng.sample(args.levels, len(args.levels)):
                modes = ["paired", "unpaired"][:: 1 if len(doc["trials"]) // 2 % 2 == 0 else -1]  # alternate first
                for mode in modes:
                    record: dict[str, Any] = {"round": round_, "level": level, "mode": mode,
                                              "load_1min": os.getloadavg()[0], "status": "ok"}
                    t0 = time.perf_counter()
                    try:
                        a, b = (measure_paired if mode == "paired" else measure_unpaired)(repo, level)
                        record.update(baseline=a, candidate=b)
                    except Exception as exc:  # a failed trial is reported, not fatal
                        record.update(status="error", error=f"{type(exc).__name__}: {exc}")
                    record["wall_s"] = time.perf_counter() - t0
                    doc["trials"].append(record)
                    doc["wall_s"] = time.perf_counter() - started
                    write_json(args.out, doc)
                    ratio = (stats.median(record["candidate"]) / stats.median(record["baseline"])
                             if record["status"] == "ok" else math.nan)
                    print(f"round {round_ + 1}/{args.trials} level {level:.0%} {mode}: {record['status']} "
                          f"ratio {ratio:.3f} in {record['wall_s']:.0f} s, load {record['load_1min']:.2f}", flush=True)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per level and mode")
    parser.add_argument("--levels", type=lambda s: [parse_threshold(x) if x.strip() not in ("0", "0%") else 0.0
                                                    for x in s.split(",")],
                        default=[0.0, 0.03, 0.05, 0.10, 0.20], help="injected slowdowns, e.g. 0,3%%,5%%,10%%,20%%")
    parser.add_argument("--thresholds", default="5%,3%", help="perfwatch thresholds to evaluate, e.g. 5%%,3%%")
    parser.add_argument("--batches", type=int, default=100, help="loader batches per call (the work unit)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per loader batch")
    parser.add_argument("--samples", type=int, default=30, help="samples per side and trial")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("detection_quality.json"), help="raw per-trial results")
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    parser.add_argument("--summarize", type=Path, metavar="JSON", help="only report on a saved --out file")
    args = parser.parse_args(argv)
    thresholds = [parse_threshold(t) for t in args.thresholds.split(",")]

    doc = json.loads(args.summarize.read_text()) if args.summarize else run(args, thresholds)
    report = summarize(doc, thresholds)
    if not args.summarize:
        write_json(args.out, doc)  # now with every trial's verdicts
    if args.markdown:
        args.markdown.write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
