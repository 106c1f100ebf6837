"""An unchanged asv suite measured under ``perfwatch run`` and under ``asv run --python=same``, side by side.

Both tools discover the suite in the directory that holds its ``asv.conf.json`` (asv writes its
``benchmarks.json``; perfwatch answers ``perfwatch list --json``, and where the whole listing stops,
one listing per module says which modules it cannot read). Then every selected asv benchmark runs
under both, interleaved by benchmark (the tool that goes first alternates), so drift on a shared
machine hits both alike. asv keeps its samples (``--record-samples``); perfwatch prints its results
document (``--json``). Per parameter combination the ratio is perfwatch's median over asv's.

    python scripts/asv_compare.py SUITE_DIR [--bench REGEX] [--per-module 3] [--max-combos 4]
                                  [--suite ci] [--out result.json] [--markdown result.md]

SUITE_DIR must be inside a git repository (asv's results are keyed by a commit). The selection is
the asv benchmarks whose name matches REGEX, at most ``--max-combos`` parameter combinations each,
at most ``--per-module`` per module, evenly spread over each module's benchmarks in name order (a
module with no benchmark that small gives its smallest one, up to twice as many combinations).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import json5

from perfwatch import stats

COMMAND_TIMEOUT = 300.0  # one benchmark under one tool; asv's own default timeout is 60 s per call
ERROR_LINE = re.compile(r"^\s*(?:[\w.]+(?:Error|Exception|Exit|Interrupt)\b.*|asv: skipped.*|[\w.]+Warning: .*)$")


@dataclass
class Row:
    """One parameter combination of a selected benchmark, as both tools measured it."""

    asv_name: str
    index: int
    label: str  # asv's display name: name(p0, p1, ...)
    kind: str
    pw_status: str = "not run"
    pw_error: str | None = None
    pw_median: float | None = None
    pw_samples: int = 0
    asv_status: str = "not run"
    asv_error: str | None = None
    asv_median: float | None = None
    asv_samples: int = 0

    @property
    def ratio(self) -> float | None:
        if self.pw_median is None or not self.asv_median:
            return None
        return self.pw_median / self.asv_median


@dataclass
class Discovery:
    """What one tool found: combinations by (asv name, parameter index), and why it could not read the rest."""

    combos: dict[tuple[str, int], str] = field(default_factory=dict)  # key -> the tool's own name
    suite_error: str | None = None  # the whole listing stopped
    module_errors: dict[str, str] = field(default_factory=dict)  # module -> its one line

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.combos}


# --- pure helpers -----------------------------------------------------------------------

def asv_labels(entry: dict) -> list[str]:
    """asv's display name of every parameter combination of a benchmarks.json entry, in its index order."""
    if not entry.get("params"):
        return [entry["name"]]
    return [f"{entry['name']}({', '.join(combo)})" for combo in itertools.product(*entry["params"])]


def selection_regex(asv_name: str) -> str:
    """A regex that both tools match against one benchmark and every one of its parameter combinations."""
    return "^" + re.escape(asv_name) + r"(\(|$)"


def spread_pick(combos: dict[str, int], per_module: int, max_combos: int) -> list[str]:
    """The selection from {asv name: its number of parameter combinations}: per module at most ``per_module``
    names evenly spaced in name order (first and last kept) among those with at most ``max_combos``
    combinations; a module with none of those gives its smallest benchmark if it has at most twice that."""
    picked: list[str] = []
    for _, group in itertools.groupby(sorted(combos), key=lambda n: n.split(".")[0]):
        members = list(group)
        fits = [n for n in members if combos[n] <= max_combos]
        if not fits:
            smallest = min(members, key=lambda n: (combos[n], n))
            picked += [smallest] if combos[smallest] <= 2 * max_combos else []
        elif len(fits) <= per_module:
            picked += fits
        elif per_module == 1:
            picked.append(fits[0])
        else:
            step = (len(fits) - 1) / (per_module - 1)
            picked += [fits[round(i * step)] for i in range(per_module)]
    return picked


def name_differences(asv: Discovery, pw: Discovery) -> dict[str, list[str]]:
    """Benchmark names only one tool found, and names both found with a different number of combinations."""
    def counts(d: Discovery) -> dict[str, int]:
        return {name: sum(1 for n, _ in d.combos if n == name) for name in d.names}
    a, p = counts(asv), counts(pw)
    return {"only_asv": sorted(set(a) - set(p)), "only_perfwatch": sorted(set(p) - set(a)),
            "combos_differ": sorted(n for n in set(a) & set(p) if a[n] != p[n])}


def ratio_summary(ratios: list[float]) -> dict[str, float | int]:
    """Median ratio with its spread: the IQR and the 5-95% range of the per-combination ratios."""
    return {"n": len(ratios), "median": stats.median(ratios), "q25": stats.quantile(ratios, 0.25),
            "q75": stats.quantile(ratios, 0.75), "p05": stats.quantile(ratios, 0.05),
            "p95": stats.quantile(ratios, 0.95),
            "within_5pct": sum(1 for r in ratios if abs(r - 1) <= 0.05)}


def differing(rows: list[dict]) -> dict[tuple[str, str, str], int]:
    """Combinations that ran under one tool and not the other, counted per (benchmark, asv's outcome,
    perfwatch's outcome); a module perfwatch cannot list is named, its error is given once above."""
    def outcome(status: str, error: str | None) -> str:
        return status if status in ("ok", "cannot list") or not error else f"{status}: {error}"
    found: dict[tuple[str, str, str], int] = {}
    for r in rows:
        if (r["asv_status"] == "ok") != (r["pw_status"] == "ok"):
            key = (r["asv_name"], outcome(r["asv_status"], r["asv_error"]), outcome(r["pw_status"], r["pw_error"]))
            found[key] = found.get(key, 0) + 1
    return found


def last_error(text: str) -> str | None:
    """The last line that names an exception (or asv's skip) in a tool's output: the failure's reason."""
    hits = [line.strip() for line in text.splitlines() if ERROR_LINE.match(line)]
    return hits[-1][:300] if hits else None


def sample_median(samples: list | None) -> tuple[float | None, int]:
    values = [s for s in samples or [] if s is not None and not math.isnan(s)]
    return (stats.median(values), len(values)) if values else (None, 0)


# --- the tools ----------------------------------------------------------------------------

def run_command(cmd: list[str], cwd: Path, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
    """Run a command in its own session; on timeout its whole process group is killed (rc -9)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return -9, out, err + f"\ntimed out after {timeout:.0f} s"
    return proc.returncode, out, err


class AsvSide:
    """asv over the suite in this interpreter's environment (``--python=same``), results keyed by HEAD."""

    def __init__(self, suite: Path):
        self.suite = suite
        conf = json5.loads((suite / "asv.conf.json").read_text())
        self.results_dir = suite / conf.get("results_dir", "results")
        self.benchmark_dir = suite / conf.get("benchmark_dir", "benchmarks")
        self.commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=suite, capture_output=True, text=True,
                                     check=True).stdout.strip()
        self.entries: dict[str, dict] = {}

    def discover(self) -> Discovery:
        rc, out, err = run_command(["asv", "run", "--python=same", "--dry-run", "--bench", "^$"], self.suite)
        found = json.loads((self.results_dir / "benchmarks.json").read_text())
        found.pop("version", None)
        self.entries = found
        combos = {(name, i): label for name, entry in found.items() for i, label in enumerate(asv_labels(entry))}
        return Discovery(combos, suite_error=None if combos else last_error(out + err) or f"exit {rc}")

    def _results_files(self) -> list[Path]:
        return list(self.results_dir.glob(f"*/{self.commit[:8]}-*.json"))

    def forget_results(self) -> None:
        """Remove earlier results of this commit, so that every value read back was measured by this run."""
        for path in self._results_files():
            path.unlink()

    def run(self, asv_name: str, rows: list[Row]) -> None:
        cmd = ["asv", "run", "--python=same", "--bench", selection_regex(asv_name), "--set-commit-hash",
               self.commit, "--record-samples", "--show-stderr"]
        rc, out, err = run_command(cmd, self.suite)
        found = {}
        for path in self._results_files():
            doc = json.loads(path.read_text())
            if asv_name in doc["results"]:
                found = dict(zip(doc["result_columns"], doc["results"][asv_name]))
        reason = last_error(out + err) or (f"exit {rc}" if rc else None)
        results = found.get("result")
        for row in rows:
            samples = (found.get("samples") or [None] * len(rows))[row.index] if results is not None else None
            value = results[row.index] if isinstance(results, list) else results
            row.asv_median, row.asv_samples = sample_median(samples)
            if row.asv_median is None and value is not None and not math.isnan(value):
                row.asv_median, row.asv_samples = float(value), 1  # mem_/track_: one value, no samples
            if row.asv_median is not None:
                row.asv_status = "ok"
            else:
                skipped = value is not None and math.isnan(value)
                row.asv_status, row.asv_error = ("skipped" if skipped else "failed"), reason


class PerfwatchSide:
    """``perfwatch run`` over the suite: the benchmark's module as the path, its runs in their own store."""

    def __init__(self, suite: Path, benchmark_dir: Path, size: str, store: Path):
        self.suite, self.benchmark_dir, self.size, self.store = suite, benchmark_dir, size, store
        self.by_name: dict[str, tuple[str, int]] = {}
        self.discovery = Discovery()

    def _list(self, *paths: str) -> tuple[dict | None, str]:
        rc, out, err = run_command(["perfwatch", "list", "--json", *paths], self.suite)
        try:
            return json.loads(out), err
        except json.JSONDecodeError:
            return None, (err.strip().splitlines() or [f"exit {rc}"])[-1]

    def _take(self, listing: dict) -> None:
        for spec in listing["benchmarks"]:
            if spec["kind"] == "import":
                self.discovery.module_errors[spec["module"]] = spec["import_error"]
                continue
            key = (spec["asv_name"], spec["param_index"])
            self.discovery.combos[key] = spec["name"]
            self.by_name[spec["name"]] = key

    def discover(self) -> Discovery:
        listing, err = self._list()
        if listing is not None:
            self._take(listing)
            return self.discovery
        self.discovery.suite_error = err
        for module in sorted(self.benchmark_dir.iterdir()):
            if module.name.startswith(("_", ".")) or not (module.suffix == ".py" or (module / "__init__.py").exists()):
                continue
            listing, err = self._list(str(module.relative_to(self.suite)))
            if listing is None:
                self.discovery.module_errors[module.stem] = err
            else:
                self._take(listing)
        return self.discovery

    def module_path(self, asv_name: str) -> Path | None:
        """The file or package of a benchmark's module: the longest dotted prefix of its name that exists."""
        parts = asv_name.split(".")
        for n in range(len(parts) - 1, 0, -1):
            base = self.benchmark_dir.joinpath(*parts[:n])
            for path in (base.with_suffix(".py"), base):
                if path.is_file() or (path / "__init__.py").is_file():
                    return path
        return None

    def run(self, asv_name: str, rows: list[Row]) -> None:
        module = asv_name.split(".")[0]
        path = self.module_path(asv_name)
        if module in self.discovery.module_errors or path is None:
            for row in rows:
                row.pw_status, row.pw_error = "cannot list", self.discovery.module_errors.get(module, "no module file")
            return
        cmd = ["perfwatch", "run", "--suite", self.size, "--filter", selection_regex(asv_name), "--json",
               "--store", str(self.store), str(path.relative_to(self.suite))]
        rc, out, err = run_command(cmd, self.suite)
        try:
            doc = json.loads(out)
        except json.JSONDecodeError:
            for row in rows:
                row.pw_status, row.pw_error = "failed", last_error(err) or (err.strip().splitlines() or [f"exit {rc}"])[-1]
            return
        by_key = {self.by_name.get(b["name"]): b for b in doc["benchmarks"]}
        for row in rows:
            bench = by_key.get((row.asv_name, row.index))
            if bench is None:
                row.pw_status = "not run"
                continue
            row.pw_status, row.pw_error = bench["status"], bench.get("error")
            row.pw_median, row.pw_samples = sample_median(bench.get("samples"))
            if bench["status"] == "ok" and row.pw_median is None:
                row.pw_status = "no samples"


# --- the comparison -------------------------------------------------------------------------

def select(asv: AsvSide, regex: str, per_module: int, max_combos: int) -> list[str]:
    pattern = re.compile(regex)
    combos = {name: len(asv_labels(entry)) for name, entry in asv.entries.items() if pattern.search(name)}
    return spread_pick(combos, per_module, max_combos)


def compare(suite: Path, regex: str, per_module: int, max_combos: int, size: str, store: Path,
            budget_s: float = math.inf, progress=print) -> dict:
    asv = AsvSide(suite)
    pw = PerfwatchSide(suite, asv.benchmark_dir, size, store)
    asv_found, pw_found = asv.discover(), pw.discover()
    chosen = select(asv, regex, per_module, max_combos)
    asv.forget_results()
    rows: list[Row] = []
    started, load_start = time.time(), os.getloadavg()
    for i, name in enumerate(chosen):
        if time.time() - started > budget_s:
            progress(f"budget of {budget_s:.0f} s spent: {len(chosen) - i} benchmarks left out")
            chosen = chosen[:i]
            break
        entry = asv.entries[name]
        mine = [Row(name, k, label, entry["type"]) for k, label in enumerate(asv_labels(entry))]
        sides = (pw.run, asv.run) if i % 2 == 0 else (asv.run, pw.run)
        for side in sides:
            side(name, mine)
        rows += mine
        progress(f"[{i + 1}/{len(chosen)}] {name}: " + ", ".join(
            f"{r.pw_status}/{r.asv_status}" + (f" {r.ratio:.3f}" if r.ratio else "") for r in mine))
    ok = [r for r in rows if r.ratio is not None]
    return {
        "suite": str(suite), "commit": asv.commit, "size": size, "selection": {
            "regex": regex, "per_module": per_module, "max_combos": max_combos, "benchmarks": chosen},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "seconds": time.time() - started,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "discovered": {tool: {"benchmarks": len(d.names), "combinations": len(d.combos), "suite_error": d.suite_error,
                              "module_errors": d.module_errors}
                       for tool, d in (("asv", asv_found), ("perfwatch", pw_found))},
        "names": name_differences(asv_found, pw_found),
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
        "summary": {"all": ratio_summary([r.ratio for r in ok]) if ok else {"n": 0},
                    **{kind: ratio_summary([r.ratio for r in ok if r.kind == kind])
                       for kind in sorted({r.kind for r in ok})}},
    }


def markdown(result: dict) -> str:
    """The comparison as Markdown: counts, differences with their reasons, and the ratio summary."""
    rows = result["rows"]
    d = result["discovered"]
    head = (f"Suite `{result['suite']}` (commit `{result['commit'][:10]}`), perfwatch `--suite {result['size']}`, "
            f"{len(result['selection']['benchmarks'])} asv benchmarks selected ({len(rows)} combinations), "
            f"started {result['started']}, {result['seconds'] / 60:.0f} min, load average (1/5/15 min) "
            + " then ".join(" / ".join(f"{x:.2f}" for x in result["load_average"][k]) for k in ("start", "end"))
            + ".")
    lines = [head, "", "| | asv | perfwatch |", "|---|---|---|"]
    lines.append(f"| discovered benchmarks (combinations) | {d['asv']['benchmarks']} ({d['asv']['combinations']}) "
                 f"| {d['perfwatch']['benchmarks']} ({d['perfwatch']['combinations']}) |")
    for label, status in (("ran ok", "ok"), ("skipped", "skipped")):
        lines.append(f"| selected combinations {label} | {sum(r['asv_status'] == status for r in rows)} "
                     f"| {sum(r['pw_status'] == status for r in rows)} |")
    lines.append(f"| selected combinations not ok | {sum(r['asv_status'] not in ('ok', 'skipped') for r in rows)} "
                 f"| {sum(r['pw_status'] not in ('ok', 'skipped') for r in rows)} |")
    if d["perfwatch"]["suite_error"]:
        lines += ["", f"`perfwatch list` of the whole suite stopped: `{d['perfwatch']['suite_error']}`"]
    for module, error in sorted(d["perfwatch"]["module_errors"].items()):
        lines.append(f"- perfwatch cannot list module `{module}`: `{error}`")
    for key, text in (("only_asv", "only asv names"), ("only_perfwatch", "only perfwatch names"),
                      ("combos_differ", "different numbers of combinations")):
        names = result["names"][key]
        if names:
            lines.append(f"- {len(names)} {text}: " + ", ".join(f"`{n}`" for n in names[:8])
                         + (" ..." if len(names) > 8 else ""))
    differ = differing(rows)
    if differ:
        lines += ["", "| benchmark | combinations | asv | perfwatch |", "|---|---|---|---|"]
        lines += [f"| `{name}` | {n} | {a} | {p} |" for (name, a, p), n in differ.items()]
    lines += ["", "| kind | combinations | median ratio | IQR | 5-95% | within 5% |", "|---|---|---|---|---|---|"]
    for kind, s in result["summary"].items():
        if s["n"]:
            lines.append(f"| {kind} | {s['n']} | {s['median']:.3f} | {s['q25']:.3f}-{s['q75']:.3f} "
                         f"| {s['p05']:.3f}-{s['p95']:.3f} | {s['within_5pct']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite", type=Path, help="the directory that holds asv.conf.json")
    parser.add_argument("--bench", default=".", help="regex over asv benchmark names (default: all)")
    parser.add_argument("--per-module", type=int, default=3)
    parser.add_argument("--max-combos", type=int, default=4)
    parser.add_argument("--suite-size", default="ci", choices=("quick", "ci", "full"))
    parser.add_argument("--budget-min", type=float, default=math.inf,
                        help="start no further benchmark after this many minutes (the report says how many ran)")
    parser.add_argument("--store", type=Path, help="perfwatch's results directory (default: SUITE/.perfwatch-compare)")
    parser.add_argument("--out", type=Path, help="write the whole result as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown summary here (else stdout)")
    args = parser.parse_args(argv)
    suite = args.suite.resolve()
    if not (suite / "asv.conf.json").is_file():
        print(f"asv_compare: {suite}/asv.conf.json not found; give the directory that holds it", file=sys.stderr)
        return 2
    try:
        re.compile(args.bench)
    except re.error as exc:
        print(f"asv_compare: --bench {args.bench!r} is not a regex: {exc}", file=sys.stderr)
        return 2
    store = args.store or suite / ".perfwatch-compare"
    result = compare(suite, args.bench, args.per_module, args.max_combos, args.suite_size, store,
                     budget_s=args.budget_min * 60, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    text = markdown(result)
    if args.markdown:
        args.markdown.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
