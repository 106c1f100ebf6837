"""Paired runs: a git ref and the working tree measured interleaved, sample by sample, in rounds.

Drift on a shared runner (neighbours' load, clocks, thermals) moves timings by more
than the regressions CI should catch. Two runs taken minutes apart carry different
drift; two samples taken back to back carry the same, and it cancels in their ratio
(compare.py's ``paired=True``). So a round of a benchmark starts one live worker per
side (``perfwatch.worker serve``), warms both up, and asks them for one sample at a
time in ABBA order (A B, B A, A B, ...), which cancels order effects too. A is the
baseline (REF, checked out in a temporary git worktree), B the candidate (the working tree,
or a second ref in a worktree of its own: bisection measures two commits so).

Drift is not the only bias: two processes of the same code differ by a few percent
(address-space layout, environment size, core, allocator state), and every sample of a
process shares its offset. So each benchmark is measured in several rounds of fresh
processes (asv's ``rounds``), the side that goes first alternating between rounds, and
compare.py tests over the rounds (stats.rounds_ratio): an offset widens the interval
instead of passing as a change. Each round's workers get an environment of another size,
so layout effects vary between rounds rather than favouring one side. The calls per
time_ sample are calibrated once, in the first round, so every sample is the same work.

Each side imports its own code: the baseline's worker runs in the worktree with the
worktree first on PYTHONPATH. When the project under test is perfwatch itself, that
includes the baseline's own worker, which must know the serve protocol.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from perfwatch.bench import runner
from perfwatch.bench.gitrefs import checked_out, moved, repository_root, resolve_commit
from perfwatch.bench.suite import Benchmark
from perfwatch.bench.worker import Budget
from perfwatch.config import SIZES
from perfwatch.env import fingerprint
from perfwatch.errors import UserError
from perfwatch.results import BenchResult, RunRecord, new_run_id, utc_now_iso

CLOSE_TIMEOUT = 30.0  # for teardown

# Rounds per benchmark by suite size, unless the benchmark sets ``rounds``. The test over R rounds
# is a t-interval on R-1 degrees of freedom; its 99% half-width is t(0.995, R-1)/sqrt(R) times the
# rounds' spread: 5.7 at 3 rounds, 2.9 at 4, 1.65 at 6, 1.03 at 10. With rounds 1-2% apart (what
# two processes of the same code differ by), 4 rounds can call a 10% change and 6 a 3-5% one;
# beyond 10 each round buys little. A sign-flip test could not go below p = 2/2^R (0.03 at 6).
# Each extra round costs a process start (torch imports: ~2 s) and a warm-up per side. ci takes 10:
# on a shared 2-core machine the rounds spread 3-5.5% (docs/performance.md), where 6 rounds' interval
# (+-7-9%) let most 10% slowdowns through as too-noisy, and 10 rounds' (+-4-6%) catches them.
ROUNDS = {"quick": 4, "ci": 10, "full": 10}

# Paired mode's sampling budget by suite size, over all of a benchmark's rounds (its ``repeat``
# overrides the totals, as in `perfwatch run`); warm-up and sample time are `perfwatch run`'s. The
# test over rounds is only as good as each round's centre: single pairs differ by 5-9% on a busy
# 2-core machine, so the 8 pairs per round of `perfwatch run`'s ci budget leave a round's centre
# about +-3% and a 5% slowdown near p = 0.01, where 20 pairs bring it to about +-2%
# (docs/performance.md, the detection study). max_time is sampling time per side.
PAIRED_BUDGETS = {
    "quick": replace(runner.BUDGETS["quick"][0], min_repeat=4 * 3, max_repeat=4 * 8, max_time=4 * 1.0),
    "ci": replace(runner.BUDGETS["ci"][0], min_repeat=10 * 4, max_repeat=10 * 16, max_time=10 * 2.4),
    "full": replace(runner.BUDGETS["full"][0], min_repeat=10 * 8, max_repeat=10 * 40, max_time=10 * 6.0),
}

# Each round's workers get this variable, ENV_PAD_STEP bytes longer per round (modulo 4 KiB, a
# page): the environment sits at the top of the stack, so its size moves the stack's alignment
# (Mytkowicz et al., ASPLOS 2009: several percent either way).
ENV_PAD = "PERFWATCH_ENV_PAD"
ENV_PAD_STEP = 1237


@dataclass(frozen=True)
class Side:
    """Where one side's code lives and how its workers start."""

    name: str  # for messages: "the working tree", "main (0123abcd)"
    cwd: Path
    paths: tuple[Path, ...]  # suite paths, as they are on this side
    env: dict[str, str]
    own_worker: Path | None  # this side's worker module (perfwatch/bench/worker.py, or perfwatch/worker.py before the move) when it imports perfwatch from its own tree


def make_side(name: str, root: Path, repo_root: Path, here: Path, suite_paths: Sequence[Path], size: str) -> Side:
    """A side whose tree is ``root`` (the repository's or REF's worktree); ``here`` and the suite
    paths are given as they are in ``repo_root``."""
    cwd = moved(here, repo_root, root)
    import_roots = [r for r in (root, root / "src") if r.is_dir()]  # src/ layouts import from src
    env = runner.worker_env(size)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, import_roots), env["PYTHONPATH"]])
    own = next((w for r in import_roots for w in (r / "perfwatch" / "bench" / "worker.py", r / "perfwatch" / "worker.py")
                if w.is_file()), None)
    return Side(name, cwd if cwd.is_dir() else root, tuple(moved(p, repo_root, root) for p in suite_paths), env, own)


class WorkerLost(Exception):
    """A serve-mode worker died or overran its timeout; ``status`` and ``error`` say how, in one line."""

    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status, self.error = status, error


class LiveWorker:
    """One ``python -m perfwatch.worker serve`` process of a side, asked one request at a time;
    ``pad`` (if any) goes into its environment as ENV_PAD."""

    def __init__(self, side: Side, pad: str = ""):
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (open for the worker's life; stop() closes it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "perfwatch.worker", "serve"],
            cwd=side.cwd, env={**side.env, ENV_PAD: pad} if pad else side.env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            start_new_session=True,  # Ctrl-C reaches perfwatch, which then kills the whole tree
        )
        self._buffer = b""
        self._greeted = False
        self._stopped = False

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and return its reply; raises WorkerLost if the worker dies or overruns."""
        deadline = time.monotonic() + timeout
        if not self._greeted:
            hello = self._read_line(deadline, timeout)
            if "serve" not in hello:
                raise self._lost(timeout, f"unexpected greeting {hello!r}")
            self._greeted = True
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._lost(timeout) from None
        return self._read_line(deadline, timeout)

    def _read_line(self, deadline: float, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._lost(timeout, timed_out=True)
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise self._lost(timeout)
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise self._lost(timeout, f"garbled reply {line[:80]!r}") from None

    def _lost(self, timeout: float, problem: str | None = None, timed_out: bool = False) -> WorkerLost:
        returncode = None if timed_out else self._wait_for_exit()
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        self.stop()
        outcome = runner.ChildOutcome(None, returncode, lines[-1].strip() if lines else "")
        status, error = runner.failure_reason(outcome, timeout)
        return WorkerLost(status, f"{error} ({problem})" if problem else error)

    def _wait_for_exit(self) -> int:
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # alive but talking nonsense
            runner.kill_tree(self.proc.pid)
            return self.proc.wait()

    def stop(self) -> None:
        """Kill the worker and every process it started; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        runner.kill_tree(self.proc.pid)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def predates_serve_mode(worker_file: Path) -> bool:
    """A perfwatch from before interleaved mode: its worker has no serve protocol."""
    try:
        return "SERVE_PROTOCOL" not in worker_file.read_text(encoding="utf-8")
    except OSError:
        return True


def discover_side(side: Side, size: str, pattern: str | None) -> list[Benchmark]:
    """The benchmarks of ``size`` matching ``pattern`` on one side; none where its suite paths do not exist."""
    paths = [p for p in side.paths if p.exists()]
    if not paths:
        return []
    worker = LiveWorker(side)
    try:
        payload = worker.request({"op": "discover", "paths": [str(p) for p in paths]}, runner.DISCOVERY_TIMEOUT)
    except WorkerLost as lost:
        if side.own_worker is not None and predates_serve_mode(side.own_worker):
            raise UserError(f"{side.name} predates interleaved mode (its perfwatch worker cannot serve paired "
                            "samples); compare against a baseline file of it instead") from None
        raise UserError(f"discovering the benchmarks of {side.name} failed: {lost.error}") from None
    finally:
        worker.stop()
    if "error" in payload:
        raise UserError(f"{side.name}: {payload['error']}")
    return runner.select([Benchmark.from_dict(b) for b in payload["benchmarks"]], size, pattern)


@dataclass
class Series:
    """One side of one benchmark being measured: its live worker (in this round) and its samples so far."""

    side: Side
    bench: Benchmark
    worker: LiveWorker | None = None
    status: str = "ok"
    error: str | None = None
    samples: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # samples per round, in order
    number: int = 1
    warmup_s: float = 0.0  # over all rounds
    max_samples: int | None = None
    busy_s: float = 0.0  # time spent in this side's requests

    @property
    def live(self) -> bool:
        return self.worker is not None and self.status == "ok"

    def ask(self, message: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """One request; a failure reply or a lost worker ends this side (its samples are dropped)."""
        assert self.worker is not None
        started = time.perf_counter()
        try:
            reply = self.worker.request(message, timeout)
        except WorkerLost as lost:
            reply = {"status": lost.status, "error": lost.error}
        self.busy_s += time.perf_counter() - started
        if reply.get("status") == "ok":
            return reply
        self.fail(reply)
        self.close()
        return None

    def fail(self, reply: dict[str, Any]) -> None:
        """End this side with a failure reply's status and error; its samples are dropped."""
        self.status, self.error, self.samples, self.rounds = reply.get("status", "failed"), reply.get("error"), [], []

    def close(self) -> None:
        """Tear the benchmark down (a teardown failure fails this side) and stop the worker."""
        if self.worker is None:
            return
        worker, self.worker = self.worker, None
        if worker.proc.poll() is None:
            with contextlib.suppress(WorkerLost):
                done = worker.request({"op": "close"}, CLOSE_TIMEOUT)
                if done.get("status") != "ok" and self.status == "ok":
                    self.fail(done)
        worker.stop()

    def result(self) -> BenchResult:
        return runner.result_of(self.bench, self.status, error=self.error, samples=list(self.samples),
                                number=self.number, warmup_s=self.warmup_s, duration_s=self.busy_s)


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal whole shares, larger first: 10 in 4 -> [3, 3, 2, 2]."""
    share, extra = divmod(total, parts)
    return [share + (r < extra) for r in range(parts)]


def round_count(bench: Benchmark, size: str, budget: Budget) -> int:
    """The benchmark's ``rounds`` or the suite size's, but no more rounds than it has samples."""
    wanted = bench.rounds or ROUNDS[size]
    return max(1, min(wanted, budget.max_repeat))


def round_budgets(budget: Budget, rounds: int) -> list[Budget]:
    """One budget per round that together spend ``budget``'s samples and sampling time (its
    ``repeat``, or the suite size's); every round warms up in full, being a fresh process."""
    return [replace(budget, min_repeat=max(1, low), max_repeat=max(1, high), max_time=budget.max_time / rounds)
            for low, high in zip(split(budget.min_repeat, rounds), split(budget.max_repeat, rounds))]


def env_pad(round_index: int) -> str:
    """The ENV_PAD value of a round: empty in the first, then another length modulo a page."""
    return "x" * (round_index * ENV_PAD_STEP % 4096)


def measure_round(series: list[Series], budget: Budget, timeout: float, number: int | None, pad: str) -> int | None:
    """One round: a fresh worker per live side, opened in the order given, then sampled in ABBA
    order until the budget is spent. A time_ benchmark is calibrated on the first side that opens
    unless ``number`` (its calls per sample) is known; returns that number for the next rounds."""
    live = [s for s in series if s.status == "ok"]
    taken_before = [len(s.samples) for s in live]
    try:
        for s in live:
            s.worker = LiveWorker(s.side, pad)  # all start at once; their imports overlap
        for s in live:
            reply = s.ask({"op": "open", "benchmark": s.bench.to_dict(), "budget": asdict(budget),
                           "number": number if s.bench.kind == "time" else None}, timeout)
            if reply is not None:
                s.number, s.max_samples = reply["number"], reply["max_samples"]
                s.warmup_s += reply["warmup_s"]
                if s.bench.kind == "time":
                    number = number or s.number
        caps = [s.max_samples for s in live if s.live and s.max_samples is not None]
        if caps:
            budget = replace(budget, min_repeat=min(budget.min_repeat, *caps), max_repeat=min(budget.max_repeat, *caps))
        budget = replace(budget, max_time=budget.max_time * max(1, sum(s.live for s in live)))  # they share the clock
        pairs, start = 0, time.perf_counter()
        while any(s.live for s in live) and not budget.spent(pairs, time.perf_counter() - start):
            for s in live if pairs % 2 == 0 else live[::-1]:
                if s.live and (reply := s.ask({"op": "sample"}, timeout)) is not None:
                    s.samples.append(reply["sample"])
            pairs += 1
    except BaseException:  # Ctrl-C or a bug: kill now, a teardown could hang
        for s in live:
            if s.worker is not None:
                s.worker.stop()
        raise
    finally:
        for s in live:
            s.close()
    for s, before in zip(live, taken_before):
        if s.status == "ok":
            s.rounds.append(len(s.samples) - before)
    return number


def measure_benchmark(sides: dict[str, tuple[Side, Benchmark | None]], lead: Benchmark, size: str,
                      perturb_env: bool = True) -> dict[str, tuple[BenchResult, list[int]]]:
    """One benchmark on each side that has it (label -> result and its samples per round), in rounds
    of fresh workers, the first side alternating; ``lead`` sets the budget. A side measured alone
    (the other lacks or skips the benchmark) has nothing to pair with and gets one round."""
    present = {label: (side, bench) for label, (side, bench) in sides.items() if bench is not None}
    series = {label: Series(side, bench) for label, (side, bench) in present.items() if not bench.unsupported}
    order = list(series.values())
    budget, default_timeout = PAIRED_BUDGETS[size].for_benchmark(lead), runner.BUDGETS[size][1]
    rounds, number = round_count(lead, size, budget) if len(order) > 1 else 1, None
    for index, round_budget in enumerate(round_budgets(budget, rounds)):
        if not any(s.status == "ok" for s in order):
            break
        number = measure_round(order if index % 2 == 0 else order[::-1], round_budget,
                               float(lead.timeout or default_timeout), number, env_pad(index) if perturb_env else "")
    return {label: (series[label].result(), series[label].rounds) if label in series
            else (runner.result_of(bench, "skipped", error=bench.unsupported), [])
            for label, (_, bench) in present.items()}


def run_against(
    ref: str,
    size: str,
    *,
    candidate: str | None = None,
    pattern: str | None = None,
    paths: Sequence[Path] = (),
    repo: Path | None = None,
    progress: runner.Progress | None = None,
    perturb_env: bool = True,
) -> tuple[RunRecord, RunRecord]:
    """Measure ``ref`` (baseline) and the working tree (candidate) interleaved, in rounds; returns both runs.

    Every benchmark found on both sides has equal sample counts on both, sample i of both
    ran back to back, and both runs' ``env["rounds"]`` maps its name to its samples per
    round. A benchmark on one side only is measured alone (compare calls it new or missing).
    A side that fails keeps its status and one-line error while the other keeps its samples.
    ``candidate``, a second ref, is measured instead of the working tree, checked out in a worktree
    of its own: the working tree is then never read, so it may be dirty (bisection measures so).
    ``paths`` and ``repo`` (default: the current directory) are as for ``perfwatch run``;
    ``progress`` gets ("start", bench, None) and ("done", bench, the candidate's result, else
    the baseline's); ``perturb_env`` False keeps every round's environment as it is (ENV_PAD).
    """
    root, here, suite_paths = project_paths(size, paths, repo)
    refs = [ref] if candidate is None else [ref, candidate]
    commits = [resolve_commit(root, r) for r in refs]
    created = utc_now_iso()
    with contextlib.ExitStack() as trees:
        sides = [make_side(commit[:10] if commit.startswith(r) else f"{r} ({commit[:10]})",
                           trees.enter_context(checked_out(root, commit)), root, here, suite_paths, size)
                 for r, commit in zip(refs, commits)]
        if candidate is None:
            sides.append(make_side("the working tree", root, root, here, suite_paths, size))
        baseline, candidate_side = sides
        return measure_sides(baseline, candidate_side, size, suite_paths, pattern, progress, perturb_env, created)


def project_paths(size: str, paths: Sequence[Path], repo: Path | None) -> tuple[Path, Path, list[Path]]:
    """The repository root, the directory the paths are relative to, and the suite paths (checked to exist)."""
    if size not in SIZES:
        raise UserError(f"unknown suite size {size!r}; use one of {', '.join(SIZES)}", setting="size")
    here = (repo or Path.cwd()).resolve()
    root = repository_root(here)
    suite_paths = [(p if p.is_absolute() else here / p).resolve()
                   for p in map(Path, runner.default_paths(tuple(paths), cwd=here))]
    for path in suite_paths:
        if not path.exists():
            raise UserError(f"{path}: no such file or directory; pass an existing suite file or directory")
    return root, here, suite_paths


def measure_sides(baseline: Side, candidate: Side, size: str, suite_paths: list[Path], pattern: str | None,
                  progress: runner.Progress | None, perturb_env: bool, created: str) -> tuple[RunRecord, RunRecord]:
    """The two runs of run_against: every benchmark either side has, measured paired."""
    envs = {"baseline": fingerprint(cwd=baseline.cwd), "candidate": fingerprint(cwd=candidate.cwd)}
    before = {b.name: b for b in discover_side(baseline, size, pattern)}
    after = {b.name: b for b in discover_side(candidate, size, pattern)}
    if not before and not after:
        raise runner.nothing_selected(size, suite_paths, pattern)
    results: dict[str, list[BenchResult]] = {"baseline": [], "candidate": []}
    rounds: dict[str, dict[str, list[int]]] = {"baseline": {}, "candidate": {}}
    for name in [*after, *(n for n in before if n not in after)]:
        lead = after.get(name) or before[name]
        if progress:
            progress("start", lead, None)
        measured = measure_benchmark({"baseline": (baseline, before.get(name)),
                                      "candidate": (candidate, after.get(name))}, lead, size, perturb_env)
        for label, (result, sizes) in measured.items():
            results[label].append(result)
            if sizes:
                rounds[label][name] = sizes
        if progress:
            progress("done", lead, (measured.get("candidate") or measured["baseline"])[0])

    ids = {"baseline": new_run_id(), "candidate": new_run_id()}
    partner = {"baseline": "candidate", "candidate": "baseline"}
    baseline_run, candidate_run = (
        RunRecord(run_id=ids[label], created=created, suite=size,
                  env={**envs[label], "paired": True, "paired_with": ids[partner[label]], "rounds": rounds[label]},
                  benchmarks=results[label])
        for label in ("baseline", "candidate")
    )
    return baseline_run, candidate_run
