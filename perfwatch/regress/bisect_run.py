"""`perfwatch bisect` on a real repository: the first-parent commits between GOOD and BAD, the one
benchmark followed, and the paired measurements that bisect.py's search asks for.

Every measurement checks both commits out in worktrees of their own (paired.run_against with a
candidate ref), so the user's working tree is never touched and may be dirty. A pair measured again
pools its rounds with the earlier ones before compare judges it over all of them: more rounds of
fresh processes, the only thing that narrows the interval of a too-noisy verdict (docs: paired.py).

A pooled pair is decided by compare's t-test over the rounds alone. compare also calls a pair too
noisy when rounds lie over +threshold and others under -threshold (one in six each way); the
extremes of 20 or 30 pooled rounds reach further while the interval narrows, so on a busy machine
re-measuring can make that rule fire more often, not less. The t-interval already carries the spread
between rounds (R-1 degrees of freedom), so past the first measurement the test decides.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from perfwatch.bench.gitrefs import checked_out, git, remove_abandoned, resolve_commit
from perfwatch.bench.paired import discover_side, make_side, project_paths, run_against
from perfwatch.bench.suite import Benchmark
from perfwatch.errors import UserError
from perfwatch.regress import bisect
from perfwatch.regress.compare import compare_samples, judge, round_sizes
from perfwatch.results import RunRecord, utc_now_iso
from perfwatch.stats import DEFAULT_ALPHA
from perfwatch.thresholds import Thresholds


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str
    date: str  # author date, ISO 8601

    @property
    def short(self) -> str:
        return self.sha[:10]


def commit_line(root: Path, good: str, bad: str) -> list[Commit]:
    """GOOD and the first-parent commits after it up to BAD, oldest first (position 0 is GOOD); each
    way that GOOD and BAD cannot be bisected is a UserError naming the setting at fault."""
    good_sha, bad_sha = (resolve_ref(root, ref, setting) for ref, setting in ((good, "good"), (bad, "bad")))
    if good_sha == bad_sha:
        raise UserError(f"GOOD {good!r} and BAD {bad!r} are the same commit {good_sha[:10]}: nothing lies between "
                        "them; pass the last commit known to be fast as GOOD", setting="good")
    if git(root, "merge-base", "--is-ancestor", good_sha, bad_sha).returncode != 0:
        base = git(root, "merge-base", good_sha, bad_sha).stdout.strip()
        hint = f" (their merge base is {base[:10]})" if base else " (they share no history)"
        raise UserError(f"GOOD {good!r} ({good_sha[:10]}) is not an ancestor of BAD {bad!r} ({bad_sha[:10]}){hint}; "
                        "pass a GOOD from BAD's history", setting="good")
    fields = "%H%x1f%s%x1f%aI%x1f%P"
    listed = git(root, "log", "--first-parent", "--reverse", f"--format={fields}", f"{good_sha}..{bad_sha}")
    head = git(root, "log", "-1", f"--format={fields}", good_sha)
    rows = [line.split("\x1f") for line in (head.stdout + listed.stdout).splitlines() if line]
    first_parent = (rows[1][3].split() or [""])[0]
    if first_parent != good_sha:
        raise UserError(f"GOOD {good!r} ({good_sha[:10]}) is not on the first-parent history of BAD {bad!r}: it came "
                        f"in through a merge; pass {first_parent[:10]}, the newest commit of that history that GOOD "
                        "contains, as GOOD", setting="good")
    return [Commit(sha, subject, date) for sha, subject, date, _ in rows]


def resolve_ref(root: Path, ref: str, setting: str) -> str:
    try:
        return resolve_commit(root, ref)
    except UserError as exc:
        raise UserError(str(exc), setting=setting) from None


def matches(name: str, bench: str) -> bool:
    """A benchmark name, or an fnmatch glob of names (as `perfwatch history` takes them)."""
    return name == bench or fnmatchcase(name, bench)


def chosen_benchmark(root: Path, here: Path, bad: Commit, bench: str, suite_paths: list[Path], size: str) -> Benchmark:
    """The one benchmark of BAD's suite that ``bench`` names; none or several is a UserError."""
    with checked_out(root, bad.sha) as tree:
        found = discover_side(make_side(f"BAD ({bad.short})", tree, root, here, suite_paths, size), size, None)
    chosen = [b for b in found if matches(b.name, bench)]
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        raise UserError(f"no benchmark matches {bench!r} in the {size} suite of BAD ({bad.short}), which has "
                        f"{len(found)}; `perfwatch list` shows them", setting="bench")
    shown = ", ".join(b.name for b in chosen[:4]) + (f" and {len(chosen) - 4} more" if len(chosen) > 4 else "")
    raise UserError(f"{bench!r} matches {len(chosen)} benchmarks ({shown}); bisect follows one: name it",
                    setting="bench")


@dataclass(frozen=True)
class Target:
    """What one bisection measures: the commits (0 is GOOD, the last BAD), the benchmark, and its suites."""

    commits: list[Commit]
    bench: Benchmark
    threshold: float
    size: str
    paths: tuple[Path, ...]
    here: Path


def prepare(bench: str, good: str, bad: str, size: str, *, paths: Sequence[Path] = (), repo: Path | None = None,
            thresholds: Thresholds | None = None) -> Target:
    """Check everything about a bisection before anything is measured (each problem a UserError): the
    repository and the suite paths (``repo`` as for `perfwatch run`), GOOD and BAD, and that ``bench``
    (a name or a glob) names exactly one benchmark of BAD's suite."""
    root, here, suite_paths = project_paths(size, paths, repo)
    remove_abandoned(root)  # what an earlier, killed run left, even if this one stops at bad input
    commits = commit_line(root, good, bad)
    chosen = chosen_benchmark(root, here, commits[-1], bench, suite_paths, size)
    return Target(commits, chosen, (thresholds or Thresholds()).for_name(chosen.name), size, tuple(paths), here)


@dataclass
class Pooled:
    """A pair's samples over every measurement so far, and its rounds."""

    baseline: list[float] = field(default_factory=list)
    candidate: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    measurements: int = 0


@dataclass
class PairedMeasure:
    """bisect.Measure over a Target's commits: the two measured paired, pooled per pair, judged by compare."""

    target: Target
    perturb_env: bool = True
    pooled: dict[tuple[int, int], Pooled] = field(default_factory=dict)
    measurable: set[int] = field(default_factory=set)  # positions measured once: their failure is not a skip

    def __call__(self, a: int, b: int) -> bisect.Judgement:
        t = self.target
        try:
            runs = run_against(t.commits[a].sha, t.size, candidate=t.commits[b].sha,
                               pattern=f"^{re.escape(t.bench.name)}$", paths=t.paths, repo=t.here,
                               perturb_env=self.perturb_env)
        except UserError as exc:  # a suite that does not import, or a worker that cannot serve
            broken = tuple(p for p in (a, b) if p not in self.measurable)
            if not broken:
                raise
            return bisect.skip(broken, str(exc))
        return self.judged(a, b, runs)

    def judged(self, a: int, b: int, runs: tuple[RunRecord, RunRecord]) -> bisect.Judgement:
        """The pair's judgement over ``runs`` and its earlier measurements (past the first, the test decides)."""
        t, name = self.target, self.target.bench.name
        results = [next((r for r in run.benchmarks if r.name == name), None) for run in runs]
        if (a, b) == (0, len(t.commits) - 1) and results[0] is None:
            raise UserError(f"{name} does not exist at GOOD ({t.commits[0].short}): nothing to compare BAD "
                            "with; pass a GOOD whose suite has it", setting="good")
        bad = [(p, r) for p, r in zip((a, b), results) if r is None or not r.ok]
        if bad:
            return bisect.skip(tuple(p for p, _ in bad), "; ".join(
                f"{name} at {t.commits[p].short} " + ("does not exist" if r is None
                                                      else f"{r.status}: {r.error or 'no error message'}")
                for p, r in bad))
        before, after = results
        assert before is not None and after is not None
        self.measurable.update((a, b))
        pool = self.pooled.setdefault((a, b), Pooled())
        pool.baseline += before.samples
        pool.candidate += after.samples
        pool.rounds += round_sizes(runs[1], name) or [len(after.samples)]
        pool.measurements += 1
        v = compare_samples(name, pool.baseline, pool.candidate, unit=after.unit,
                            higher_is_better=after.higher_is_better, threshold=t.threshold, paired=True,
                            baseline_rounds=pool.rounds, candidate_rounds=pool.rounds)
        verdict, reason = v.verdict, v.reason
        if verdict == "too-noisy" and pool.measurements > 1 and v.rounds > 1:  # the module doc: the test decides
            tested, why = judge(v.change, v.ci_low, v.ci_high, v.p_value, v.threshold, DEFAULT_ALPHA,
                                 1 - DEFAULT_ALPHA)
            if tested != "too-noisy":
                verdict, reason = tested, (f"{why}: the t-test over {v.rounds} pooled rounds decides, though "
                                           f"compare said {reason}")
        return bisect.Judgement(verdict, v.change, v.ci_low, v.ci_high, v.p_value, reason)


@dataclass(frozen=True)
class BisectRun:
    """A finished bisection: its target, bisect.py's result, and every pair's pooled samples."""

    target: Target
    result: bisect.Bisection
    started: str
    samples: dict[tuple[int, int], Pooled]

    @property
    def commits(self) -> list[Commit]:
        return self.target.commits

    @property
    def name(self) -> str:
        return self.target.bench.name

    @property
    def higher_is_better(self) -> bool:
        return self.target.bench.higher_is_better

    def commit(self, position: int) -> Commit:
        return self.target.commits[position]


def run_bisection(
    target: Target,
    *,
    max_steps: int | None = None,
    budget_s: float | None = None,
    perturb_env: bool = True,
    progress: Callable[[bisect.Progress | bisect.Step], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> BisectRun:
    """Find the commit of ``target`` that made its benchmark slower (bisect.py's search, real paired
    measurements); ``progress`` is told before and after each step."""
    if max_steps is not None and max_steps < 1:
        raise UserError(f"max steps {max_steps}: give at least 1", setting="max_steps")
    if budget_s is not None and not budget_s > 0:
        raise UserError(f"budget {budget_s:g} s: give a positive number of seconds", setting="budget")
    started = utc_now_iso()
    measure = PairedMeasure(target, perturb_env)
    result = bisect.bisect(len(target.commits) - 1, measure, max_steps=max_steps, budget_s=budget_s, clock=clock,
                           progress=progress)
    return BisectRun(target, result, started, measure.pooled)
