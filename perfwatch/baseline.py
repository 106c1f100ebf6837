"""Baselines and what a candidate run is compared against.

A baseline file (``perfwatch-baseline.json``, meant to be committed) *is* a results
document, so it carries the environment fingerprint of the machine it ran on. Timings
from another machine are not comparable: ``machine_differences`` names what differs and
``compare_against`` refuses such a pair unless the caller allows it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .compare import Summary, Verdict, compare_runs, summarize
from .errors import BenchmarkFailed, PerfwatchError, RegressionFound, UserError
from .results import RunRecord
from .store import Store, write_atomic
from .thresholds import Thresholds

DEFAULT_BASELINE = Path("perfwatch-baseline.json")

_SAVE_HINT = ("run `perfwatch baseline save` to write one from the latest stored run "
              "(or let `perfwatch ci --against REF` run a git ref instead)")


def load_baseline(path: Path = DEFAULT_BASELINE) -> RunRecord:
    """The baseline run in ``path``; a missing or corrupt file is a UserError saying what to do."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no baseline file; {_SAVE_HINT}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the baseline ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt baseline (invalid JSON at line {exc.lineno}); "
                        f"restore it from git or {_SAVE_HINT}") from None
    return RunRecord.from_dict(data, f"{path} (baseline)")


def describe_run(run: RunRecord) -> str:
    """``run <id> (<n> benchmarks, commit <short>)``: enough to recognise a run in a message."""
    commit = (run.env.get("git_commit") or "no git")[:10] + ("+dirty" if run.env.get("git_dirty") else "")
    return f"run {run.run_id} ({len(run.benchmarks)} benchmarks, commit {commit})"


def save_baseline(run: RunRecord, path: Path = DEFAULT_BASELINE) -> str | None:
    """Write ``run`` as the baseline (atomically); returns a description of what it replaced, if anything."""
    replaced = None
    if path.exists():
        try:
            replaced = describe_run(load_baseline(path))
        except UserError:
            replaced = "an unreadable baseline file"
    try:
        write_atomic(path, run.to_json() + "\n")
    except OSError as exc:
        raise UserError(f"{path}: cannot write the baseline ({exc.strerror}); pass a writable --to FILE") from None
    return replaced


def looks_like_file(ref: str) -> bool:
    """Whether a run reference names a file rather than a stored run id (Store.resolve's rule, plus existing files)."""
    return ref.endswith(".json") or os.sep in ref or Path(ref).is_file()


def load_reference(ref: str | None, store: Store) -> RunRecord:
    """A baseline given on the command line: the default file, another file, or a stored run id/prefix/``latest``."""
    if ref is None:
        return load_baseline(DEFAULT_BASELINE)
    if looks_like_file(ref):
        return load_baseline(Path(ref))
    return store.load(ref)


def _gpu_text(env: dict[str, Any]) -> str:
    gpu = env.get("gpu") or {}
    return f"{gpu.get('model')} ×{gpu.get('count')}" if gpu else "no GPU"


def _memory_text(env: dict[str, Any]) -> str | None:
    # Identical VMs report a few MiB apart; whole GiB is what makes timings differ.
    memory = env.get("memory_bytes")
    return f"{memory / 1024**3:.0f} GiB" if isinstance(memory, (int, float)) else None


# (label, how to read the fact from an env fingerprint); see env.machine_id for the hardware facts.
# The host name is left out on purpose: CI runners get a new one per job on identical hardware.
_MACHINE_FACTS = (
    ("CPU", lambda env: env.get("cpu")),
    ("cores", lambda env: env.get("cpu_cores_logical")),
    ("memory", _memory_text),
    ("GPU", _gpu_text),
    ("torch", lambda env: env.get("torch")),
)


def machine_differences(a_env: dict[str, Any], b_env: dict[str, Any]) -> list[str]:
    """What makes two runs' timings incomparable: ``["CPU: A vs B", "torch: 2.12 vs 2.13"]``, or []."""
    differences = []
    for label, read in _MACHINE_FACTS:
        a, b = read(a_env), read(b_env)
        if a != b:
            differences.append(f"{label}: {a if a is not None else 'unknown'} vs {b if b is not None else 'unknown'}")
    return differences


@dataclass(frozen=True)
class Comparison:
    """A judged pair of runs: what was compared, every verdict, and the machine facts that differ."""

    baseline: RunRecord
    candidate: RunRecord
    verdicts: list[Verdict]
    differences: list[str]
    paired: bool = False

    @property
    def summary(self) -> Summary:
        return summarize(self.verdicts)

    def outcome_error(self) -> PerfwatchError | None:
        """The error to exit with: a failed benchmark (3) wins over a regression (1), since the
        results are incomplete; None when neither happened."""
        failed = [v.name for v in self.verdicts if v.verdict == "failed"]
        if failed:
            return BenchmarkFailed(f"{len(failed)} benchmark(s) failed in the candidate: {', '.join(failed)}")
        regressed = [v.name for v in self.verdicts if v.verdict == "regressed"]
        if regressed:
            return RegressionFound(f"{len(regressed)} benchmark(s) regressed: {', '.join(regressed)}")
        return None

    @property
    def exit_code(self) -> int:
        error = self.outcome_error()
        return error.exit_code if error else 0


def mismatch_error(differences: Sequence[str]) -> UserError:
    """The refusal of a cross-machine comparison, naming what differs and the ways out."""
    return UserError(f"baseline and candidate ran on different machines ({'; '.join(differences)}); "
                     "their timings are not comparable: save a baseline on this machine (`perfwatch baseline save`), "
                     "compare interleaved with `perfwatch ci --against REF`, or pass --allow-machine-mismatch")


def compare_against(
    baseline: RunRecord,
    candidate: RunRecord,
    thresholds: Thresholds | None = None,
    *,
    paired: bool = False,
    allow_machine_mismatch: bool = False,
) -> Comparison:
    """Judge ``candidate`` against ``baseline``; refuses runs from different machines unless allowed."""
    differences = machine_differences(baseline.env, candidate.env)
    if differences and not allow_machine_mismatch:
        raise mismatch_error(differences)
    verdicts = compare_runs(baseline, candidate, thresholds, paired=paired)
    return Comparison(baseline, candidate, verdicts, differences, paired)
