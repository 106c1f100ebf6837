"""Detection quality of regression verdicts on several kinds of benchmark: injected slowdowns caught, and false alarms.

Method. A throw-away git project holds one benchmark of each kind (``KINDS``): a pure-Python
integer loop, an allocation-heavy one (many small dicts and tuples), a numpy kernel (sorting
an array) and a perfwatch.pipelines DataLoader iteration (in-memory synthetic dataset, two
decode-like numpy passes per sample, batch 2, no worker processes, one torch thread). Each runs
``UNITS`` units of the same work per call; the knob is the file ``slowdown.txt`` next to the
suites: a call runs ``round(UNITS * (1 + slowdown))`` units, so time scales in proportion, in
steps of 1/UNITS, and the injected work meets the same noise as the rest (a sleep or spin
of fixed length would not). The commit holds 0; each trial writes the level into the
working tree, so the baseline (0%) and the candidate (level) differ only in that number.
None of the benchmarks sets ``repeat`` or ``rounds``: they are measured with the suite
size's budget (``--size``, default ci), as a user's would be.

Each trial measures one benchmark at one level in one mode:

* paired: ``perfwatch.bench.paired.run_against("HEAD")``, the engine of ``perfwatch ci
  --against``: rounds of fresh worker pairs, ABBA inside each round, the first side
  alternating between rounds; its verdict is tested over the rounds;
* unpaired: all baseline samples, then all candidate samples, one fresh process per side
  (``runner.run_one``), like a run compared with a stored baseline (``compare``,
  ``ci --baseline``);
* history: one fresh process at the level, judged as ``perfwatch ci --history`` judges it
  (``recent_runs.judge_benchmark``) against the kind's last ``--history-runs`` A/A runs of this
  mode, made earlier in the same study between the other trials (so their spread is the
  machine's between-run drift over the study); A/A runs join that history after being judged,
  slowed ones do not (as if reverted). ``--history-runs`` A/A runs per kind come first, as warm-up,
  unjudged. asv's and pytest-benchmark's rules judge the run against the newest history run.

Every verdict is computed from the same raw samples: perfwatch's (``compare.compare_samples``
with the rounds, at each ``--thresholds`` value), asv's default rule (``asv continuous``/``asv
compare``: ``_is_result_better`` with factor 1.1, which applies asv's Mann-Whitney test at
p < 0.002, on asv_runner's ``compute_stats``), and pytest-benchmark's
``--benchmark-compare-fail=median:5%`` (candidate median over baseline median > 1.05). A
detection is "regressed"/"worse"/"fails"; on A/A trials (0%) it is a false alarm, and so is
any *significant* perfwatch verdict there (regressed or improved). The trials of
every (kind, level, mode) are spread evenly over the run, interleaved at random, so slow drift
of the machine hits all of them alike and a run stopped early keeps the proportions.

Usage::

    python scripts/detection_quality.py --out /tmp/dq.json --markdown /tmp/dq.md
    python scripts/detection_quality.py --kinds python_loop --aa-trials 40 --trials 10 --out /tmp/dq.json
    python scripts/detection_quality.py --summarize /tmp/dq.json --thresholds 3%,5%
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
from perfwatch.regress.recent_runs import DEFAULT_RUNS, judge_benchmark
from perfwatch.results import BenchResult
from perfwatch.thresholds import parse_threshold

ASV_P_THRESHOLD = 0.002  # asv's is_different default
ASV_FACTOR = 1.1  # asv continuous / asv compare default
PYTEST_BENCHMARK_LIMIT = 0.05  # --benchmark-compare-fail=median:5%
UNITS = 100  # units of work per call at 0%: the knob moves in steps of 1%
TARGETS = ("A/A: at most 1 significant verdict in 40 for the pure-Python loop, none in 20 for the other kinds; "
           "CPU kinds: 10% caught >= 95%, 5% caught >= 80%")
CPU_KINDS = ("python_loop", "allocation", "numpy_kernel")
MODES = ("paired", "unpaired", "history")

PREAMBLE = f'''\
from pathlib import Path

SLOWDOWN = float((Path(__file__).resolve().parent.parent / "slowdown.txt").read_text())
UNITS = round({UNITS} * (1 + SLOWDOWN))
'''

# kind -> (benchmark name, suite module body after PREAMBLE)
KINDS: dict[str, tuple[str, str]] = {
    "python_loop": ("dq_python_loop.PythonLoop.time_loop", '''
class PythonLoop:
    def time_loop(self):
        total = 0
        for i in range(UNITS * 1400):
            total += i * i % 7
        return total
'''),
    "allocation": ("dq_allocation.Allocation.time_small_objects", '''
class Allocation:
    def time_small_objects(self):
        for _ in range(UNITS):
            kept = [{"i": i, "pair": (i, i + 1)} for i in range(800)]
        return len(kept)
'''),
    "numpy_kernel": ("dq_numpy_kernel.NumpyKernel.time_sort", '''
import numpy


class NumpyKernel:
    def setup(self):
        self.values = numpy.random.default_rng(0).random(10_000)

    def time_sort(self):
        for _ in range(UNITS):
            numpy.sort(self.values)
'''),
    "loader": ("dq_loader.Loader.time_iterate", '''
import torch

from perfwatch.pipelines.datasets import DatasetSpec, open_dataset
from perfwatch.pipelines.loader import EndlessBatches, build_loader


class Loader:
    def setup(self):
        torch.set_num_threads(1)
        dataset = open_dataset(DatasetSpec(num_samples=2048, transform_cost=2), "memory")
        self.batches = EndlessBatches(build_loader(dataset, batch_size=2))

    def time_iterate(self):
        for _ in range(UNITS):
            next(self.batches)
'''),
}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def make_project(directory: Path) -> Path:
    """A git repository whose commit is the 0% baseline of every kind."""
    (directory / "suites").mkdir(parents=True)
    for kind, (name, body) in KINDS.items():
        (directory / "suites" / f"{name.split('.')[0]}.py").write_text(f'"""Detection study: {kind}."""\n'
                                                                       + PREAMBLE + body)
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


def measure_paired(repo: Path, kind: str, level: float, size: str) -> dict[str, Any]:
    name = KINDS[kind][0]
    set_slowdown(repo, level)
    baseline, candidate = run_against("HEAD", size, repo=repo, pattern=name)
    return {"baseline": samples_of(baseline.benchmarks[0]), "candidate": samples_of(candidate.benchmarks[0]),
            "baseline_rounds": baseline.env["rounds"].get(name, []),
            "candidate_rounds": candidate.env["rounds"].get(name, [])}


def measure_unpaired(repo: Path, kind: str, level: float, size: str) -> dict[str, Any]:
    (bench,) = runner.select(runner.discover([repo / "suites"], size), size, KINDS[kind][0])
    sides = []
    for side_level in (0.0, level):
        set_slowdown(repo, side_level)
        sides.append(samples_of(runner.run_one(bench, size)[0]))
    return {"baseline": sides[0], "candidate": sides[1], "baseline_rounds": [], "candidate_rounds": []}


class RecentRuns:
    """History mode's memory: per kind, the A/A runs made so far (newest last), as the store would hold them."""

    def __init__(self, runs: int):
        self.runs = runs
        self.by_kind: dict[str, list[list[float]]] = {}

    def measure(self, repo: Path, kind: str, level: float, size: str) -> dict[str, Any]:
        (bench,) = runner.select(runner.discover([repo / "suites"], size), size, KINDS[kind][0])
        set_slowdown(repo, level)
        candidate = samples_of(runner.run_one(bench, size)[0])
        earlier = self.by_kind.setdefault(kind, [])
        recent = earlier[-self.runs:]
        if level == 0:
            earlier.append(candidate)
        return {"candidate": candidate, "baseline": recent[-1] if recent else [],
                "history_medians": [stats.median(run) for run in recent],
                "baseline_rounds": [], "candidate_rounds": []}


def method_names(thresholds: list[float]) -> list[str]:
    return [*(f"perfwatch {t:.0%}" for t in thresholds), "asv (x1.1, MWU p<0.002)", "pytest-benchmark median:5%"]


def verdicts(trial: dict[str, Any], thresholds: list[float]) -> dict[str, dict[str, Any]]:
    """Each method's call on the trial's baseline vs candidate; ``detected`` means it flags a slowdown."""
    a, b = trial["baseline"], trial["candidate"]
    out: dict[str, dict[str, Any]] = {}
    for t, name in zip(thresholds, method_names(thresholds)):
        if trial["mode"] == "history":
            history = [BenchResult(trial["kind"], {}, "time", "seconds", False, "ok", None, [m])
                       for m in trial["history_medians"]]
            v = judge_benchmark(history, BenchResult(trial["kind"], {}, "time", "seconds", False, "ok", None, b), t)
        else:
            v = compare_samples(trial["kind"], a, b, threshold=t, paired=trial["mode"] == "paired",
                                baseline_rounds=trial["baseline_rounds"], candidate_rounds=trial["candidate_rounds"])
        out[name] = {"detected": v.verdict == "regressed", "verdict": v.verdict, "change": v.change,
                     "ci_low": v.ci_low, "ci_high": v.ci_high, "p": v.p_value, "rounds": v.rounds,
                     "spread_between": v.spread_between, "spread_within": v.spread_within}
    time_a, stats_a = compute_stats(a, 1)
    time_b, stats_b = compute_stats(b, 1)
    out[method_names(thresholds)[-2]] = {"detected": bool(asv_says_worse(time_a, time_b, a, b, stats_a, stats_b)),
                                         "ratio": time_b / time_a}
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


def flagged(trial: dict[str, Any], method: str) -> bool:
    """A detection; on an A/A trial perfwatch's 'improved' is a false alarm too (it is significant)."""
    verdict = trial["verdicts"][method]
    return verdict["detected"] or (trial["level"] == 0 and verdict.get("verdict") == "improved")


def table(trials: list[dict[str, Any]], kinds: list[str], levels: list[float], methods: list[str]) -> list[str]:
    head = ["kind", "mode", "method", *(("0% (false alarms)" if lv == 0 else f"{lv:.0%}") for lv in levels)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in kinds:
        for mode in MODES:
            for method in methods:
                row = [kind, mode, method]
                for level in levels:
                    group = [t for t in trials if (t["kind"], t["mode"], t["level"]) == (kind, mode, level)]
                    row.append(cell(sum(flagged(t, method) for t in group), len(group)))
                if any(c != "–" for c in row[3:]):
                    lines.append("| " + " | ".join(row) + " |")
    return lines


def breakdown(trials: list[dict[str, Any]], kinds: list[str], levels: list[float], method: str) -> list[str]:
    """perfwatch's verdict counts, the measured ratio, the spreads and the wall time per comparison."""
    head = ["kind", "mode", *(("0%" if lv == 0 else f"{lv:.0%}") for lv in levels),
            "spread between / within rounds (A/A, median)", "wall s per comparison (median, range)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in kinds:
        for mode in MODES:
            mine = [t for t in trials if (t["kind"], t["mode"]) == (kind, mode)]
            if not mine:
                continue
            row = [kind, mode]
            for level in levels:
                group = [t for t in mine if t["level"] == level]
                counts = [sum(t["verdicts"][method]["verdict"] == v for t in group)
                          for v in ("regressed", "too-noisy", "unchanged", "improved")]
                ratio = stats.median([stats.median(t["candidate"]) / stats.median(t["baseline"]) for t in group]) \
                    if group else math.nan
                row.append(" / ".join(map(str, counts)) + f" (x{ratio:.3f})")
            aa = [t["verdicts"][method] for t in mine if t["level"] == 0]
            between = [v["spread_between"] for v in aa if not math.isnan(v["spread_between"])]
            within = [v["spread_within"] for v in aa if not math.isnan(v["spread_within"])]
            row.append(f"{stats.median(between):.2%} / {stats.median(within):.2%}" if between and within
                       else f"{stats.median(between):.2%} between runs" if between else "–")
            walls = [t["wall_s"] for t in mine]
            row.append(f"{stats.median(walls):.0f} ({min(walls):.0f}–{max(walls):.0f})")
            lines.append("| " + " | ".join(row) + " |")
    return lines


def summarize(doc: dict[str, Any], thresholds: list[float]) -> str:
    """The Markdown report: detection table, verdict breakdown, method and machine."""
    trials = [t for t in doc["trials"] if t["status"] == "ok" and t["mode"] != "history-warmup"]
    levels = sorted({t["level"] for t in doc["trials"]})
    kinds = [k for k in KINDS if any(t["kind"] == k for t in trials)]
    methods = method_names(thresholds)
    for t in trials:
        t["verdicts"] = verdicts(t, thresholds)
    lines = table(trials, kinds, levels, methods)
    lines += ["", f"perfwatch's verdicts at {thresholds[0]:.0%} (regressed / too-noisy / unchanged / improved, "
              "and the median over trials of the measured candidate/baseline ratio of medians), the spread of "
              "the rounds' log ratios against that of single pairs inside a round, and the wall time of one "
              "comparison (both sides):", ""]
    lines += breakdown(trials, kinds, levels, methods[0])
    failed = [t for t in doc["trials"] if t["status"] != "ok"]
    loads = [t["load_1min"] for t in doc["trials"]]
    setup = doc["setup"]
    lines += [
        "",
        f"Targets (issue #16): {TARGETS}. Cells: detected/trials (rate, Wilson 95% interval); at 0% every "
        "significant perfwatch verdict (regressed or improved) counts as a false alarm.",
        "",
        f"Method: suite size {setup['size']} (its budget and rounds), {UNITS} units of work per call at 0%, "
        f"{len(trials)} trials ({len(failed)} failed and left out), interleaved at random. "
        "See scripts/detection_quality.py for the details.",
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


def trial_count(args: argparse.Namespace, kind: str, level: float, mode: str) -> int:
    """How many trials a (kind, level, mode) gets: A/A doubled for the pure-Python loop (its target is 1 in 40)."""
    if mode == "unpaired":
        count = args.unpaired_trials
    elif mode == "history":
        count = args.aa_trials if level == 0 else args.history_trials
    elif level == 0:
        count = args.aa_trials
    else:
        count = args.trials if level in (0.05, 0.10) else args.edge_trials
    return count * (2 if kind == "python_loop" and level == 0 else 1)


def plan(args: argparse.Namespace, rng: random.Random) -> list[tuple[str, float, str]]:
    """(kind, level, mode) jobs interleaved in proportion: the i-th of a job's n trials sits at
    (i + u) / n of the run (u random), so slow drift hits every cell alike and a run stopped early
    (--max-minutes) still covers each cell in proportion to its count."""
    keyed = [((i + rng.random()) / count, (kind, level, mode))
             for kind in args.kinds for level in args.levels for mode in args.modes
             for count in [trial_count(args, kind, level, mode)] for i in range(count)]
    warmup = [(kind, 0.0, "history-warmup") for _ in range(args.history_runs) for kind in args.kinds
              if "history" in args.modes]  # the history a history-mode trial needs, made first
    return warmup + [job for _, job in sorted(keyed)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from perfwatch.env import cpu_model

    doc: dict[str, Any] = {
        "setup": {"size": args.size, "units": UNITS, "levels": args.levels, "kinds": args.kinds, "modes": args.modes,
                  "trials": args.trials, "aa_trials": args.aa_trials,
                  "edge_trials": args.edge_trials, "unpaired_trials": args.unpaired_trials, "seed": args.seed,
                  "history_runs": args.history_runs, "history_trials": args.history_trials,
                  "nproc": os.cpu_count(),
                  "cpu": cpu_model()},
        "trials": [],
    }
    jobs = plan(args, random.Random(args.seed))
    recent = RecentRuns(args.history_runs)
    measures = {"paired": measure_paired, "unpaired": measure_unpaired, "history": recent.measure,
                "history-warmup": recent.measure}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="perfwatch-dq-") as tmp:
        repo = make_project(Path(tmp) / "project")
        for index, (kind, level, mode) in enumerate(jobs):
            if args.max_minutes and time.perf_counter() - started > args.max_minutes * 60:
                print(f"stopping after {args.max_minutes} min with {index} of {len(jobs)} trials", flush=True)
                break
            record: dict[str, Any] = {"kind": kind, "level": level, "mode": mode,
                                      "load_1min": os.getloadavg()[0], "status": "ok"}
            t0 = time.perf_counter()
            try:
                record.update(measures[mode](repo, kind, level, args.size))
            except Exception as exc:  # a failed trial is reported, not fatal
                record.update(status="error", error=f"{type(exc).__name__}: {exc}")
            record["wall_s"] = time.perf_counter() - t0
            doc["trials"].append(record)
            doc["wall_s"] = time.perf_counter() - started
            write_json(args.out, doc)
            ratio = (stats.median(record["candidate"]) / stats.median(record["baseline"])
                     if record["status"] == "ok" and record["baseline"] else math.nan)
            print(f"{index + 1}/{len(jobs)} {kind} {level:.0%} {mode}: {record['status']} ratio {ratio:.3f} "
                  f"in {record['wall_s']:.0f} s, load {record['load_1min']:.2f}"
                  + ("" if record["status"] == "ok" else f" ({record['error']})"), flush=True)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS),
                        help=f"benchmark kinds, comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["paired", "unpaired"],
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--history-runs", type=int, default=DEFAULT_RUNS,
                        help="history mode: recent A/A runs a trial is judged against (and warm-up runs per kind)")
    parser.add_argument("--history-trials", type=int, default=8,
                        help="history-mode trials per kind at each slowdown level")
    parser.add_argument("--aa-trials", type=int, default=20,
                        help="A/A trials per kind and mode (doubled for the pure-Python loop)")
    parser.add_argument("--trials", type=int, default=10, help="paired trials per kind at 5%% and at 10%%")
    parser.add_argument("--edge-trials", type=int, default=5, help="paired trials per kind at the other slowdowns")
    parser.add_argument("--unpaired-trials", type=int, default=5,
                        help="unpaired trials per kind and level (doubled for the pure-Python loop's A/A)")
    parser.add_argument("--levels", type=lambda s: [parse_threshold(x) if x.strip() not in ("0", "0%") else 0.0
                                                    for x in s.split(",")],
                        default=[0.0, 0.03, 0.05, 0.10, 0.20], help="injected slowdowns, e.g. 0,3%%,5%%,10%%,20%%")
    parser.add_argument("--thresholds", default="3%,5%", help="perfwatch thresholds to evaluate, the first one "
                                                               "also in the breakdown, e.g. 3%%,5%%")
    parser.add_argument("--size", default="ci", help="suite size whose budget and rounds are used")
    parser.add_argument("--max-minutes", type=float, default=0, help="stop starting trials after this long (0: never)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("detection_quality.json"), help="raw per-trial results")
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    parser.add_argument("--summarize", type=Path, metavar="JSON", help="only report on a saved --out file")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kind {', '.join(unknown)}; use some of {', '.join(KINDS)}")
    if set(args.modes) - set(MODES):
        parser.error(f"unknown mode {', '.join(sorted(set(args.modes) - set(MODES)))}; use some of {', '.join(MODES)}")
    thresholds = [parse_threshold(t) for t in args.thresholds.split(",")]

    doc = json.loads(args.summarize.read_text()) if args.summarize else run(args)
    report = summarize(doc, thresholds)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
