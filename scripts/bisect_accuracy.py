"""Accuracy and cost of `perfwatch bisect`, beside `asv find`, on throw-away git repositories (issue #12).

Method. Each trial builds a repository: a setup commit, GOOD, then N first-parent commits (N drawn
from ``--sizes``, default 16/32/64), each appending a line to ``log.txt``. The suite has one
benchmark, ``bench_loop.time_loop``: a pure-Python loop of ``knob.UNITS * 1400`` iterations, with
no attributes, so both tools measure it with their own defaults (perfwatch with ``--suite``'s
budget). ``knob.py`` says ``UNITS = 100``; the scenarios change it:

* ``step-3%`` .. ``step-20%``: UNITS becomes round(100 * (1 + s)) at one commit drawn at random;
* ``two``: two 10% steps (100 -> 110 -> 121) at two commits at least 2 apart;
* ``unimportable``: a 10% step, and one other commit whose knob.py raises ImportError (fixed at
  the next commit), so its suite cannot be imported;
* ``none``: the knob never changes (every commit only touches log.txt).

Each repository is bisected by the real command, ``perfwatch bisect bench_loop.time_loop --good
GOOD --bad BAD --suite SIZE --json`` (a subprocess, as a user runs it), and then by ``asv find
GOOD^..BAD bench_loop.time_loop`` (asv's range excludes its first commit, so the range starts one
earlier and asv's list starts at GOOD, as perfwatch's does). asv's environments build a wheel of
every commit, which needs a package index this machine may not reach; so asv runs in an
``existing``-style environment of this Python (``asv_checkout.py``, an asv plugin written beside
the repository) that checks each commit out, as asv does, and puts the checkout on asv's
ASV_PYTHONPATH instead of installing it: asv's own search, timing and processes, without the build.

Reported per scenario: how often the culprit is found exactly (``two``: both), a range that holds
it (a skipped commit next to it), false culprits (a named commit that is not one), the steps
against ceil(log2 N) + 2, paired measurements, wall time; for asv, the exact rate, the commits it
benchmarked, the wall time. Results are appended to ``--out`` (JSON lines) as each trial ends, so a
long run can be stopped and resumed (``--resume`` skips trials already there); ``--summarize``
prints the Markdown table of a results file.

Usage::

    nice -n 19 python scripts/bisect_accuracy.py --trials 20 --out /tmp/bisect.jsonl --markdown /tmp/bisect.md
    python scripts/bisect_accuracy.py --trials 1 --sizes 16 --suite quick --scenarios step-20%,none --out /tmp/b.jsonl
    python scripts/bisect_accuracy.py --summarize /tmp/bisect.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = "bench_loop.time_loop"
SUITE = '''
import knob


def time_loop():
    total = 0
    for i in range(knob.UNITS * 1400):
        total += i * i % 7
    return total
'''
BROKEN = 'raise ImportError("knob.py is half-written at this commit")\n'
SCENARIOS = ("step-3%", "step-5%", "step-10%", "step-20%", "two", "unimportable", "none")
TARGETS = ("exact culprit >= 95% of trials at 10% and 20% and >= 80% at 5%; no culprit in a no-regression "
           "repository; at most ceil(log2 N) + 2 steps")

# An asv environment of this Python that checks each commit out and imports it from there (see the module doc).
ASV_PLUGIN = '''
import os

from asv.environment import ExistingEnvironment


class CheckoutEnvironment(ExistingEnvironment):
    tool_name = "checkout"

    def install_project(self, conf, repo, commit_hash=None):
        if commit_hash is not None:
            self.checkout_project(repo, commit_hash)

    def can_install_project(self):
        return True

    def run(self, args, **kwargs):
        env = dict(kwargs.pop("env", None) or os.environ)
        env["ASV_PYTHONPATH"] = self._build_root  # asv's runner drops PYTHONPATH and reads this instead
        return super().run(args, env=env, **kwargs)
'''


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=study", "-c", "user.email=study@example.invalid", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def knob_values(scenario: str, count: int, rng: random.Random) -> tuple[list[str], dict[str, Any]]:
    """knob.py at GOOD (0) and at each of the ``count`` commits after it, and the truth to score against."""
    units = [100] * (count + 1)
    truth: dict[str, Any] = {"culprits": [], "broken": None}
    if scenario.startswith("step-"):
        culprit = rng.randint(1, count)
        level = float(scenario[5:-1]) / 100
        units[culprit:] = [round(100 * (1 + level))] * (count + 1 - culprit)
        truth["culprits"] = [culprit]
    elif scenario == "two":
        first = rng.randint(1, count - 2)
        second = rng.randint(first + 2, count)
        units[first:] = [110] * (count + 1 - first)
        units[second:] = [121] * (count + 1 - second)
        truth["culprits"] = [first, second]
    elif scenario == "unimportable":
        culprit = rng.randint(1, count)
        truth["culprits"] = [culprit]
        units[culprit:] = [110] * (count + 1 - culprit)
        truth["broken"] = rng.choice([p for p in range(1, count) if p != culprit])
    texts = [f"UNITS = {u}\n" for u in units]
    if truth["broken"] is not None:
        texts[truth["broken"]] = BROKEN
    return texts, truth


def make_repository(repo: Path, knobs: list[str]) -> list[str]:
    """A setup commit, then GOOD and the commits after it, one per knob text; their hashes (GOOD first)."""
    (repo / "suites").mkdir(parents=True)
    (repo / "suites" / "__init__.py").write_text("")  # asv wants its benchmark directory to be a package
    (repo / "suites" / "bench_loop.py").write_text(SUITE)
    (repo / "knob.py").write_text(knobs[0])
    (repo / "log.txt").write_text("setup\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "setup")
    hashes = []
    for position, text in enumerate(knobs):
        (repo / "knob.py").write_text(text)
        with (repo / "log.txt").open("a") as log:
            log.write(f"commit {position}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "GOOD" if position == 0 else f"commit {position}")
        hashes.append(git(repo, "rev-parse", "HEAD"))
    return hashes


def run_perfwatch(repo: Path, hashes: list[str], suite: str, scratch: Path) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "perfwatch", "bisect", BENCH, "--good", hashes[0], "--bad",
                           hashes[-1], "--suite", suite, "--json", "--report-dir", str(scratch / "report")],
                          cwd=repo, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(scratch)},
                          check=False)
    wall = time.monotonic() - started
    if done.returncode != 0 or not done.stdout.strip():
        return {"exit": done.returncode, "wall_s": wall, "error": done.stderr.strip().splitlines()[-1:]}
    doc = json.loads(done.stdout)
    position = {sha: p for p, sha in enumerate(hashes)}
    return {"exit": 0, "wall_s": wall, "outcome": doc["outcome"],
            "culprits": [position[f["first_bad"]["commit"]] for f in doc["findings"] if f["first_bad"]],
            "ranges": [[position[sha] for sha in f["commits"]] for f in doc["findings"] if f["kind"] == "range"],
            "steps": doc["steps_taken"], "measurements": doc["measurements"],
            "confirmation": doc["confirmation"]["verdict"], "message": doc["message"],
            "trace": [[s["went"], *((side or {}).get("reason", "") for side in (s["vs_older"], s["vs_newer"]))]
                      for s in doc["steps"]]}  # why each step went where it did


def run_asv(repo: Path, hashes: list[str], scratch: Path) -> dict[str, Any]:
    """``asv find GOOD^..BAD`` in the checkout environment; the position it names and the commits it measured."""
    home = scratch / "asv-home"
    home.mkdir(exist_ok=True)
    (repo / "asv_checkout.py").write_text(ASV_PLUGIN)  # untracked: asv imports plugins from its working directory
    config = scratch / "asv.conf.json"
    config.write_text(json.dumps({
        "version": 1, "project": "knobs", "repo": str(repo), "branches": ["HEAD"],
        "environment_type": "checkout", "pythons": [sys.executable], "plugins": [".asv_checkout"],
        "benchmark_dir": str(repo / "suites"), "env_dir": str(scratch / "asv-env"),
        "results_dir": str(scratch / "asv-results"), "html_dir": str(scratch / "asv-html")}))
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(scratch)}  # asv machine writes ~/.asv-machine.json
    asv = [sys.executable, "-m", "asv"]
    subprocess.run([*asv, "machine", "--yes", "--config", str(config)], cwd=repo, env=env, capture_output=True,
                   check=True)
    started = time.monotonic()
    done = subprocess.run([*asv, "find", "--config", str(config), f"{hashes[0]}^..{hashes[-1]}", BENCH],
                          cwd=repo, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    text = done.stdout + done.stderr
    found = re.search(r"Greatest regression found: ([0-9a-f]{8})", text)
    measured = set(re.findall(r"For knobs commit ([0-9a-f]{8})", text))
    named = next((p for p, sha in enumerate(hashes) if found and sha.startswith(found[1])), None)
    return {"exit": done.returncode, "wall_s": wall, "culprit": named, "benchmarked": len(measured),
            "error": None if found else (text.strip().splitlines() or ["no output"])[-1]}


def trial(scenario: str, count: int, seed: int, suite: str, with_asv: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    knobs, truth = knob_values(scenario, count, rng)
    scratch = Path(tempfile.mkdtemp(prefix="bisect-study-"))
    try:
        repo = scratch / "repo"
        hashes = make_repository(repo, knobs)
        record = {"scenario": scenario, "commits": count, "seed": seed, "suite": suite, **truth,
                  "perfwatch": run_perfwatch(repo, hashes, suite, scratch)}
        if with_asv:
            record["asv"] = run_asv(repo, hashes, scratch)
        return record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def scored(record: dict[str, Any]) -> dict[str, Any]:
    """One trial's perfwatch and asv results scored against the truth."""
    truth, pw = record["culprits"], record["perfwatch"]
    named = pw.get("culprits", [])
    exact = (sorted(named) == sorted(truth)) if truth else not named and not pw.get("ranges")
    in_range = any(set(truth) & set(r) for r in pw.get("ranges", []))
    false = [c for c in named if c not in truth] + ([] if truth else [r for r in pw.get("ranges", [])])
    asv = record.get("asv")
    return {"exact": bool(exact) and pw.get("exit") == 0, "in_range": in_range, "false": len(false),
            "steps": pw.get("steps"), "limit": math.ceil(math.log2(record["commits"])) + 2,
            "measurements": pw.get("measurements"), "wall": pw["wall_s"],
            "asv_exact": asv is not None and asv["culprit"] in truth if truth else None,
            "asv_false": asv is not None and asv["culprit"] is not None and asv["culprit"] not in truth,
            "asv_benchmarked": asv and asv["benchmarked"], "asv_wall": asv and asv["wall_s"]}


def rate(values: list[bool]) -> str:
    return f"{sum(values)}/{len(values)} ({sum(values) / len(values):.0%})" if values else "-"


def middle(values: list[float], digits: int = 0) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def summary(records: list[dict[str, Any]]) -> str:
    lines = [f"Targets: {TARGETS}.", "",
             ("| scenario | trials | N | perfwatch exact | culprit in a named range | false culprits | steps, "
              "median (range) | over ceil(log2 N)+2 | paired measurements | wall s | asv find exact | asv false "
              "| asv commits benchmarked | asv wall s |"),
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario in SCENARIOS:
        mine = [r for r in records if r["scenario"] == scenario]
        if not mine:
            continue
        s = [scored(r) for r in mine]
        sizes = ",".join(str(n) for n in sorted({r["commits"] for r in mine}))
        asv_ran = [x for x, r in zip(s, mine) if "asv" in r]
        lines.append(
            f"| {scenario} | {len(mine)} | {sizes} | {rate([x['exact'] for x in s])} | "
            f"{rate([x['in_range'] for x in s]) if scenario == 'unimportable' else '-'} | {sum(x['false'] for x in s)} | "
            f"{middle([x['steps'] for x in s])} | {sum(1 for x in s if (x['steps'] or 0) > x['limit'])} | "
            f"{middle([x['measurements'] for x in s])} | {middle([x['wall'] for x in s])} | "
            f"{rate([x['asv_exact'] for x in asv_ran]) if scenario != 'none' else '-'} | "
            f"{sum(x['asv_false'] for x in asv_ran) if asv_ran else '-'} | "
            f"{middle([x['asv_benchmarked'] for x in asv_ran])} | {middle([x['asv_wall'] for x in asv_ran])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="Trials per scenario (default 20).")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="Comma-separated, from: " + ", ".join(SCENARIOS))
    parser.add_argument("--sizes", default="16,32,64", help="Commit counts N to draw from (default 16,32,64).")
    parser.add_argument("--suite", default="ci", help="perfwatch bisect --suite (default ci).")
    parser.add_argument("--no-asv", action="store_true", help="Do not run asv find.")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--out", type=Path, help="JSON lines, one per trial, appended as they end.")
    parser.add_argument("--resume", action="store_true", help="Skip the trials --out already holds.")
    parser.add_argument("--markdown", type=Path, help="Write the summary table here too.")
    parser.add_argument("--summarize", type=Path, metavar="JSONL", help="Only print the table of a results file.")
    args = parser.parse_args()
    if args.summarize:
        print(summary([json.loads(line) for line in args.summarize.read_text().splitlines() if line.strip()]))
        return
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    sizes = [int(n) for n in args.sizes.split(",")]
    rng = random.Random(args.seed)
    plan = [(s, rng.choice(sizes), rng.randrange(1 << 30)) for _ in range(args.trials) for s in scenarios]
    rng.shuffle(plan)  # drift of the machine hits every scenario alike; a run stopped early keeps the mix
    records = []
    if args.out and args.resume and args.out.exists():
        records = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    done = {(r["scenario"], r["commits"], r["seed"]) for r in records}
    for index, (scenario, count, seed) in enumerate(plan, 1):
        if (scenario, count, seed) in done:
            continue
        record = trial(scenario, count, seed, args.suite, not args.no_asv)
        records.append(record)
        if args.out:
            with args.out.open("a") as out:
                out.write(json.dumps(record) + "\n")
        pw, asv = record["perfwatch"], record.get("asv") or {}
        print(f"[{index}/{len(plan)}] {scenario} N={count} truth={record['culprits']} perfwatch: "
              f"{pw.get('outcome', pw.get('error'))} {pw.get('culprits', '')} in {pw['wall_s']:.0f} s, "
              f"{pw.get('steps')} steps; asv: {asv.get('culprit')} in {asv.get('wall_s', 0):.0f} s", flush=True)
    table = summary(records)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
