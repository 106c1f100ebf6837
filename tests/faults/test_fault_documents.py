"""Hostile results documents next to a good run in the results directory: not JSON, not UTF-8, the wrong
shape field by field, non-finite numbers, nesting deeper than a parser goes. A listing (`runs`,
`history`) skips each bad file, naming it, and still shows the good run; a command given the bad file
(`show`, `compare`) says in one line which file is bad.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import STEADY, assert_one_line_error, bench, run_perfwatch, scaled, store_run

pytestmark = pytest.mark.fault("documents")

GOOD_ID = "20260101T000000Z-aaaaaa"



def changed(change):
    """The good run's document, changed by ``change``, as text."""
    def document(good: dict) -> bytes:
        doc = json.loads(json.dumps(good))
        change(doc)
        return json.dumps(doc).encode()
    return document


def bench0(**fields):
    return changed(lambda doc: doc["benchmarks"][0].update(fields))


def raw(text: bytes):
    return lambda good: text


# id -> the bad file's content, made from the good run's document
BAD = {
    "empty": raw(b""),
    "not-json": raw(b"{"),
    "not-utf8": raw(b'{"format_version": 1, "run_id": "\xff\xfe"}'),
    "a-list": raw(b"[]"),
    "a-string": raw(b'"str"'),
    "null": raw(b"null"),
    "deep-nesting": raw(b"[" * 100_000 + b"]" * 100_000),
    "no-format-version": changed(lambda doc: doc.pop("format_version")),
    "future-format": changed(lambda doc: doc.update(format_version=999)),
    "run-id-number": changed(lambda doc: doc.update(run_id=42)),
    "created-null": changed(lambda doc: doc.update(created=None)),
    "env-list": changed(lambda doc: doc.update(env=[])),
    "benchmarks-str": changed(lambda doc: doc.update(benchmarks="str")),
    "benchmarks-object": changed(lambda doc: doc.update(benchmarks={})),
    "benchmark-number": changed(lambda doc: doc.update(benchmarks=[1])),
    "benchmark-empty": changed(lambda doc: doc.update(benchmarks=[{}])),
    "name-number": bench0(name=42),
    "params-list": bench0(params=[1]),
    "status-unknown": bench0(status="fine"),
    "samples-str": bench0(samples="abc"),
    "samples-object": bench0(samples={"a": 1}),
    "sample-null": bench0(samples=[None]),
    "sample-str": bench0(samples=["1.0"]),
    "sample-bool": bench0(samples=[True]),
    "sample-nan": lambda good: bench0(samples=[1.0])(good).replace(b"[1.0]", b"[NaN]"),
    "sample-infinity": lambda good: bench0(samples=[1.0])(good).replace(b"[1.0]", b"[Infinity]"),
    "higher-is-better-str": bench0(higher_is_better="yes"),
}


COMMANDS = {
    "runs": lambda bad: ["runs", "--results-dir", ".perfwatch/results"],
    "history": lambda bad: ["history", "--json", "--results-dir", ".perfwatch/results"],
    "show": lambda bad: ["show", bad],
    "compare": lambda bad: ["compare", GOOD_ID, bad],
}
LISTINGS = {"runs", "history"}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", BAD)
def test_a_bad_results_file_is_named_and_never_crashes_a_command(tmp_path, case, command):
    good = store_run(tmp_path, GOOD_ID, bench("loader.time_read", scaled(STEADY, 1.0))).to_dict()
    bad = Path(".perfwatch", "results", f"20260102T000000Z-{case}.json")
    (tmp_path / bad).write_bytes(BAD[case](good))
    proc = run_perfwatch(*COMMANDS[command](str(bad)), cwd=tmp_path)
    if command in LISTINGS:  # the bad file skipped with its name, the good run still there
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert GOOD_ID in proc.stdout and f"skipping {bad}: " in " ".join(proc.stderr.split()), proc.stderr
    else:
        assert_one_line_error(proc, f"{bad}: ")
