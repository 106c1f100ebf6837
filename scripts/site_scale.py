"""The history site at a team's scale (issue #11, item 5): `perfwatch publish` beside `asv publish` over the
same generated history, and the site's load times in Chromium.

Method. One history is generated once, in asv's own format, so that both tools read the same data: a git
repository of ``--runs`` commits on main (``git fast-import``, an hour apart), and asv's results for it
(``asv.conf.json``, ``results/benchmarks.json``, ``results/MACHINE/machine.json`` and one results file
per commit, asv's format 2) of ``--benchmarks`` time benchmarks with ``--samples`` raw samples each:
about 1 ms with 2% noise, and a 10% step at 90% of the history in every tenth benchmark, for the
regressions page. perfwatch reads it through its own import, ``perfwatch store import-asv`` into a
SQLite store (setup: timed and reported, not a target). Then, each run as a user runs it (a subprocess
in the repository, so that commits are in git order; wall time and the child's peak RSS):

* ``publish``: ``perfwatch publish --store URL --out SITE`` into an empty directory;
* ``republish``: one more commit and its results file, imported, then ``perfwatch publish`` again into
  the same directory (``--repeat`` times, a new commit each time);
* ``asv publish`` and ``asv republish``: ``asv publish --no-pull`` the same way, beside it (asv rebuilds
  its whole site each time);
* the size on disk of both sites (files and bytes);
* in Chromium (Playwright with the system chromium, file://, a fresh context each time): the summary
  page until the row of every benchmark is in its table, and the first benchmark's page until its chart
  is drawn (``--repeat`` times each; perfwatch's site only: asv's loads its data over HTTP).

Targets (issue #11): publish < 60 s, republish < 5 s, the summary interactive < 2 s, a benchmark page < 1 s.
These are measurements: run on a quiet machine and record them in docs/performance.md with the load::

    python scripts/site_scale.py --work /tmp/site-scale --out /tmp/site-scale.json          # 1,000 x 5,000
    python scripts/site_scale.py --benchmarks 20 --runs 30 --samples 5 --repeat 1 --work /tmp/ss  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

START = 1_767_225_600  # 2026-01-01T00:00:00Z: the first commit's time
MACHINE = "scale-box"
ENV_NAME = "existing-py"
COLUMNS = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a", "stats_ci_99_b",
           "stats_q_25", "stats_q_75", "stats_number", "stats_repeat", "samples"]
TARGETS_S = {"publish": 60.0, "republish": 5.0, "summary": 2.0, "benchmark page": 1.0}
STEP, STEP_EVERY = 1.10, 10  # every tenth benchmark gets 10% slower at 90% of the history


def git(repo: Path, *args: str, when: int | None = None, **options: Any) -> str:
    """``git ARGS`` in ``repo`` as the generated history's author (at ``when``, Unix seconds, if given)."""
    dates = {"GIT_AUTHOR_DATE": f"@{when} +0000", "GIT_COMMITTER_DATE": f"@{when} +0000"} if when else {}
    env = {**os.environ, "GIT_AUTHOR_NAME": "scale", "GIT_AUTHOR_EMAIL": "scale@example.invalid",
           "GIT_COMMITTER_NAME": "scale", "GIT_COMMITTER_EMAIL": "scale@example.invalid", **dates}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True,
                          **options).stdout.strip()


def make_repository(repo: Path, commits: int) -> list[str]:
    """``commits`` commits on main, an hour apart from START, each appending to log.txt; their hashes, oldest first."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    stream, log = [], ""
    for i in range(commits):
        log += f"{i}\n"
        message = f"commit {i}"
        stream.append(f"commit refs/heads/main\nmark :{i + 1}\ncommitter scale <scale@example.invalid> "
                      f"{START + 3600 * i} +0000\ndata {len(message)}\n{message}\n"
                      + (f"from :{i}\n" if i else "") + f"M 644 inline log.txt\ndata {len(log)}\n{log}\n")
    git(repo, "fast-import", "--quiet", input="".join(stream))
    git(repo, "reset", "-q", "--hard", "main")
    return git(repo, "rev-list", "--reverse", "main").split()


def add_commit(repo: Path, index: int) -> str:
    """The ``index``-th commit (an hour after the one before), on top of main; its hash."""
    with (repo / "log.txt").open("a") as log:
        log.write(f"{index}\n")
    git(repo, "commit", "-q", "-am", f"commit {index}", when=START + 3600 * index)
    return git(repo, "rev-parse", "HEAD")


def bench_name(b: int) -> str:
    return f"mod{b // 20:03d}.time_b{b:04d}"


def write_asv_project(repo: Path, benchmarks: int) -> None:
    """asv.conf.json, the machine file and benchmarks.json: what `asv publish` reads besides the results."""
    (repo / "asv.conf.json").write_text(json.dumps({
        "version": 1, "project": "scale", "project_url": "https://example.invalid/", "repo": ".",
        "branches": ["main"], "environment_type": "existing", "benchmark_dir": "benchmarks",
        "results_dir": "results", "html_dir": "html"}))
    machine = repo / "results" / MACHINE
    machine.mkdir(parents=True)
    (machine / "machine.json").write_text(json.dumps({
        "arch": "x86_64", "cpu": "generated", "machine": MACHINE, "num_cpu": "2", "os": "Linux", "ram": "24000000",
        "version": 1}))
    described = {bench_name(b): {"code": "def time_it(): pass", "name": bench_name(b), "number": 0,
                                 "param_names": [], "params": [], "repeat": 0, "rounds": 2, "min_run_count": 2,
                                 "sample_time": 0.01, "timeout": 60.0, "type": "time", "unit": "seconds",
                                 "version": "1", "warmup_time": -1}
                 for b in range(benchmarks)}
    (repo / "results" / "benchmarks.json").write_text(json.dumps({**described, "version": 2}))


def write_results(repo: Path, commit: str, index: int, runs: int, benchmarks: int, samples: int,
                  rng: random.Random) -> None:
    """One asv results file (format 2) for ``commit``, the ``index``-th of ``runs``."""
    date_ms = (START + 3600 * index) * 1000
    results = {}
    for b in range(benchmarks):
        typical = 1e-3 * (STEP if b % STEP_EVERY == 0 and index >= runs * 9 // 10 else 1.0)
        values = sorted(rng.gauss(typical, typical / 50) for _ in range(samples))
        middle = statistics.median(values)
        results[bench_name(b)] = [[middle], [], "1", date_ms, 0.5, [values[0]], [values[-1]],
                                  [values[len(values) // 4]], [values[3 * len(values) // 4]], [10], [samples], [values]]
    (repo / "results" / MACHINE / f"{commit[:8]}-{ENV_NAME}.json").write_text(json.dumps({
        "commit_hash": commit, "env_name": ENV_NAME, "date": date_ms, "params": {"machine": MACHINE},
        "python": "3.11", "requirements": {}, "env_vars": {}, "result_columns": COLUMNS, "results": results,
        "durations": {}, "version": 2}))


def timed(command: list[str], cwd: Path) -> dict[str, Any]:
    """Run ``command`` to its end: its wall time and its own peak RSS (``wait4``); a failure ends the study with
    its output."""
    with tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        said = output.read()
    if child.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {child.returncode}:\n{said[-3000:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "said": said.strip().splitlines()[-1:]}


def site_size(directory: Path) -> dict[str, int]:
    files = [p for p in directory.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def browser_times(site: Path, benchmarks: int, repeat: int) -> dict[str, list[float]]:
    """Seconds until the summary lists every benchmark, and until the first benchmark's chart is drawn."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install chromium): the load times need it")
    page_file = min((site / "benchmarks").glob("*.html"))
    found: dict[str, list[float]] = {"summary": [], "benchmark page": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            for _ in range(repeat):
                for what, path, ready in (
                        ("summary", site / "index.html",
                         f"document.querySelectorAll('#summary tbody tr').length >= {benchmarks}"),
                        ("benchmark page", page_file, "document.querySelector('#chart .main-svg') !== null")):
                    context = browser.new_context()
                    page = context.new_page()
                    started = time.perf_counter()
                    page.goto(path.resolve().as_uri())
                    page.wait_for_function(ready, timeout=120_000, polling=10)
                    found[what].append(time.perf_counter() - started)
                    context.close()
        finally:
            browser.close()
    return found


def generate(work: Path, args: argparse.Namespace, rng: random.Random) -> Path:
    """The repository with its asv project and results (see the module docstring)."""
    repo = work / "repo"
    started = time.perf_counter()
    commits = make_repository(repo, args.runs)
    write_asv_project(repo, args.benchmarks)
    for i, commit in enumerate(commits):
        write_results(repo, commit, i, args.runs, args.benchmarks, args.samples, rng)
        if (i + 1) % 500 == 0:
            print(f"generated {i + 1}/{args.runs} results files ({time.perf_counter() - started:.0f} s)", flush=True)
    return repo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="Re-publishes and page loads measured (default 3).")
    parser.add_argument("--work", type=Path, required=True, help="An empty or missing directory for everything.")
    parser.add_argument("--no-asv", action="store_true", help="Leave asv publish out.")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, help="Write the report as JSON here.")
    args = parser.parse_args(argv)
    if args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work}: not empty; give a new directory")
    rng = random.Random(args.seed)
    load = [os.getloadavg()[0]]
    repo = generate(args.work, args, rng)
    store, site = f"sqlite:///{args.work / 'store.db'}", args.work / "site"
    perfwatch = [sys.executable, "-m", "perfwatch"]
    report: dict[str, Any] = {"benchmarks": args.benchmarks, "runs": args.runs, "samples": args.samples,
                              "cpu_count": os.cpu_count()}
    report["import"] = timed([*perfwatch, "store", "import-asv", "results", "--store", store], repo)
    report["publish"] = timed([*perfwatch, "publish", "--store", store, "--out", str(site)], repo)
    if not args.no_asv:
        report["asv publish"] = timed(["asv", "publish", "--no-pull"], repo)
    republish, asv_republish = [], []
    for extra in range(args.repeat):
        index = args.runs + extra
        commit = add_commit(repo, index)
        write_results(repo, commit, index, args.runs, args.benchmarks, args.samples, rng)
        timed([*perfwatch, "store", "import-asv", "results", "--store", store], repo)
        republish.append(timed([*perfwatch, "publish", "--store", store, "--out", str(site)], repo))
        if not args.no_asv:
            asv_republish.append(timed(["asv", "publish", "--no-pull"], repo))
        load.append(os.getloadavg()[0])
    report["republish"], report["asv republish"] = republish, asv_republish
    report["size"] = {"perfwatch": site_size(site), **({} if args.no_asv else {"asv": site_size(repo / "html")})}
    report["browser"] = browser_times(site, args.benchmarks, args.repeat)
    report["load_average_1m"] = load + [os.getloadavg()[0]]
    print(summary(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


def summary(report: dict[str, Any]) -> str:
    """The Markdown table of a report, each measured time beside its target."""
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s" + (f" ({min(values):.2f}-{max(values):.2f}, n={len(values)})"
                                                       if len(values) > 1 else "")

    def verdict(what: str, values: list[float]) -> str:
        target = TARGETS_S.get(what)
        return "" if target is None else f"< {target:g} s: {'met' if statistics.median(values) < target else 'missed'}"

    rows = [("import-asv (setup)", [report["import"]["seconds"]], ""),
            ("publish", [report["publish"]["seconds"]], verdict("publish", [report["publish"]["seconds"]])),
            ("republish after one new run", [r["seconds"] for r in report["republish"]],
             verdict("republish", [r["seconds"] for r in report["republish"]]))]
    if "asv publish" in report:
        rows += [("asv publish", [report["asv publish"]["seconds"]], ""),
                 ("asv publish after one new run", [r["seconds"] for r in report["asv republish"]], "")]
    rows += [(f"Chromium: {what}", values, verdict(what, values)) for what, values in report["browser"].items()]
    sizes = ", ".join(f"{tool} {size['files']} files, {size['bytes'] / 2**20:.1f} MiB"
                      for tool, size in report["size"].items())
    return "\n".join([(f"{report['benchmarks']} benchmarks x {report['runs']} runs x {report['samples']} samples; "
                       f"peak RSS of publish {report['publish']['peak_rss_mib']:.0f} MiB; sites: {sizes}; 1-min load "
                       f"{min(report['load_average_1m']):.2f}-{max(report['load_average_1m']):.2f}"), "",
                      "| step | median (range, n) | target |", "|---|---|---|",
                      *(f"| {what} | {cell(values)} | {target} |" for what, values, target in rows)])


if __name__ == "__main__":
    sys.exit(main())
