"""Reports of a comparison for people and CI tools: Markdown, JUnit XML and JSON.

The renderers are pure (a Comparison in, text or a dict out); ``write_reports`` and
``append_step_summary`` are the only functions that touch files. Every string that came
from a user (benchmark names, parameters, error messages) is escaped for its format:
Markdown table cells cannot break the table or turn into HTML, and XML is well formed
even when an error message carries control characters.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from perfwatch.display import format_value
from perfwatch.pages import md_escape
from perfwatch.regress.compare import VERDICTS, Comparison, Verdict
from perfwatch.results import RunRecord
from perfwatch.store import write_atomic

VERDICT_ICONS = {
    "regressed": "🔴", "improved": "🟢", "unchanged": "⚪", "too-noisy": "🟡",
    "new": "🆕", "missing": "➖", "failed": "❌", "insufficient": "❔",
}

# JUnit outcome per verdict: a regression fails the test, a benchmark that failed is an error,
# a result that could not be judged is skipped with its reason, everything else passes.
JUNIT_OUTCOME = {"regressed": "failure", "failed": "error", "too-noisy": "skipped", "insufficient": "skipped"}

# Characters XML 1.0 cannot carry at all, even escaped (ElementTree would write them anyway).
_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` without the characters XML 1.0 forbids (ElementTree escapes the rest)."""
    return _XML_INVALID.sub("\ufffd", str(text))


def change_text(v: Verdict) -> str:
    """Direction-normalised change and its interval, ``+12.0% [+8.1%, +15.3%]`` (+ is worse), or ``-``."""
    if math.isnan(v.change):
        return "-"
    return f"{v.change:+.1%} [{v.ci_low:+.1%}, {v.ci_high:+.1%}]"


def p_text(v: Verdict) -> str:
    if math.isnan(v.p_value):
        return "-"
    return "<0.0001" if v.p_value < 1e-4 else f"{v.p_value:.2g}"


def median_text(value: float, v: Verdict) -> str:
    return format_value(value, v.unit) + (" ↑" if v.higher_is_better and not math.isnan(value) else "")


def summary_line(comparison: Comparison) -> str:
    """``1 regressed, 4 unchanged``: the non-zero verdict counts in VERDICTS order."""
    counts = comparison.summary.counts
    return ", ".join(f"{counts[kind]} {kind}" for kind in VERDICTS if counts.get(kind)) or "no benchmarks"


def single_process_note(comparison: Comparison) -> str | None:
    """What to say when verdicts rest on one process per side (Comparison.single_process), else None."""
    names = comparison.single_process
    if not names:
        return None
    how = ("give them more rounds (a benchmark's `rounds` and `repeat`)" if comparison.paired
           else "`perfwatch ci --against REF` measures both sides in rounds of fresh processes")
    return (f"{len(names)} verdict(s) rest on one process per side: two processes of the same code differ by a "
            f"few percent (memory layout, environment size, core), which no number of samples inside one "
            f"averages out, so a change of that size may be the processes'; {how}")


MODE_TEXT = {"paired": "paired (interleaved on one machine)",
             "history": "history (against the spread between this machine's recent runs)", "unpaired": "unpaired"}


def run_line(run: RunRecord) -> str:
    commit = (run.env.get("git_commit") or "no git")[:10] + ("+dirty" if run.env.get("git_dirty") else "")
    return f"{run.run_id} (commit {commit}, {run.created})"


def markdown(comparison: Comparison) -> str:
    """A GitHub-flavoured Markdown report: a heading with the counts, the runs, then one row per benchmark."""
    mode = MODE_TEXT[comparison.mode]
    against = run_line(comparison.baseline) if comparison.history is None else comparison.baseline_text
    lines = [
        f"## perfwatch: {summary_line(comparison)}",
        "",
        f"Baseline {md_escape(against)} · "
        f"candidate {md_escape(run_line(comparison.candidate))} · {mode}. "
        "Change is direction-normalised: + is worse, with its confidence interval.",
        "",
    ]
    if comparison.differences:
        lines += ["> [!WARNING]",
                  f"> Different machines: {md_escape('; '.join(comparison.differences))}. "
                  "Timings may differ for that reason alone.", ""]
    note = single_process_note(comparison)
    if note:
        lines += ["> [!NOTE]", f"> {md_escape(note)}", ""]
    lines += ["| | Benchmark | Baseline | Candidate | Change [CI] | p | Verdict | Reason |",
              "|---|---|--:|--:|--:|--:|---|---|"]
    for v in comparison.verdicts:
        cells = [VERDICT_ICONS[v.verdict], v.name, median_text(v.baseline_median, v),
                 median_text(v.candidate_median, v), change_text(v), p_text(v), v.verdict, v.reason]
        lines.append("| " + " | ".join(cells[:1] + [md_escape(c) for c in cells[1:]]) + " |")
    return "\n".join(lines) + "\n"


def junit_xml(comparison: Comparison, suite_name: str = "perfwatch") -> str:
    """JUnit XML with one testcase per benchmark (see JUNIT_OUTCOME), as CI test reporters read it."""
    durations = {b.name: b.duration_s for b in comparison.candidate.benchmarks}
    counts = {outcome: sum(1 for v in comparison.verdicts if JUNIT_OUTCOME.get(v.verdict) == outcome)
              for outcome in ("failure", "error", "skipped")}
    total_time = f"{sum(durations.values()):.3f}"
    attributes = {"name": suite_name, "tests": str(len(comparison.verdicts)), "failures": str(counts["failure"]),
                  "errors": str(counts["error"]), "skipped": str(counts["skipped"]), "time": total_time}
    root = ET.Element("testsuites", attributes)
    suite = ET.SubElement(root, "testsuite", {**attributes, "timestamp": comparison.candidate.created,
                                              "hostname": xml_text(comparison.candidate.env.get("host", ""))})
    properties = ET.SubElement(suite, "properties")
    for name, value in (("baseline_run", comparison.baseline.run_id), ("candidate_run", comparison.candidate.run_id),
                        ("paired", str(comparison.paired).lower()), ("mode", comparison.mode),
                        ("machine_differences", "; ".join(comparison.differences))):
        ET.SubElement(properties, "property", {"name": name, "value": xml_text(value)})
    for v in comparison.verdicts:
        case = ET.SubElement(suite, "testcase", {"classname": xml_text(v.name.split(".", 1)[0]),
                                                 "name": xml_text(v.name),
                                                 "time": f"{durations.get(v.name, 0.0):.3f}"})
        outcome = JUNIT_OUTCOME.get(v.verdict)
        if outcome:
            detail = ET.SubElement(case, outcome, {"message": xml_text(f"{v.verdict}: {v.reason}"), "type": v.verdict})
            if outcome != "skipped":
                detail.text = xml_text(f"baseline {median_text(v.baseline_median, v)}, candidate "
                                       f"{median_text(v.candidate_median, v)}, change {change_text(v)}, "
                                       f"p {p_text(v)}\n{v.reason}")
        else:
            ET.SubElement(case, "system-out").text = xml_text(f"{v.verdict}: {v.reason}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _run_facts(run: RunRecord) -> dict[str, Any]:
    return {"run_id": run.run_id, "created": run.created, "suite": run.suite,
            "git_commit": run.env.get("git_commit"), "git_dirty": run.env.get("git_dirty"),
            "machine_id": run.env.get("machine_id")}


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def report_json(comparison: Comparison) -> dict[str, Any]:
    """The whole comparison as plain JSON data (nan -> null): runs, machine differences, counts, rows."""
    return {
        "baseline": _run_facts(comparison.baseline),
        "candidate": _run_facts(comparison.candidate),
        "paired": comparison.paired,
        "mode": comparison.mode,
        "history": list(comparison.history) if comparison.history is not None else None,
        "machine_differences": list(comparison.differences),
        "summary": dict(comparison.summary.counts),
        "exit_code": comparison.exit_code,
        "verdicts": [{k: _finite_or_none(value) for k, value in asdict(v).items()} for v in comparison.verdicts],
    }


def json_text(comparison: Comparison) -> str:
    return json.dumps(report_json(comparison), indent=1, allow_nan=False, ensure_ascii=False)


def write_reports(directory: Path, comparison: Comparison) -> Mapping[str, Path]:
    """report.md, junit.xml and report.json in ``directory`` (created), each written atomically.

    A paired comparison's baseline ran from another commit and is not stored with the history,
    so its results document goes here too (baseline-run.json): no raw sample is lost.
    """
    written = {"markdown": directory / "report.md", "junit": directory / "junit.xml", "json": directory / "report.json"}
    write_atomic(written["markdown"], markdown(comparison))
    write_atomic(written["junit"], junit_xml(comparison))
    write_atomic(written["json"], json_text(comparison) + "\n")
    if comparison.paired:
        written["baseline run"] = directory / "baseline-run.json"
        write_atomic(written["baseline run"], comparison.baseline.to_json() + "\n")
    return written


def append_step_summary(path: Path, comparison: Comparison) -> None:
    """Append the Markdown report to a GitHub Actions job summary ($GITHUB_STEP_SUMMARY)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(markdown(comparison) + "\n")


def github_run_url(environ: Mapping[str, str]) -> str | None:
    """This workflow run's page on GitHub Actions, for alerts to link to; None outside Actions."""
    parts = [environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    return f"{parts[0]}/{parts[1]}/actions/runs/{parts[2]}" if all(parts) else None
