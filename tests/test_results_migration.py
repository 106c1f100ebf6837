"""Results documents of an older format_version are brought up to date on read; a newer one is refused."""

from __future__ import annotations

import json

import pytest
from helpers import run_perfwatch

from perfwatch.errors import UserError
from perfwatch.results import FORMAT_VERSION, UPDATES, BenchResult, RunRecord, upgrade
from perfwatch.store import Store

RUN = RunRecord(run_id="20260101T000000Z-abcdef", created="2026-01-01T00:00:00+00:00", suite="quick",
                env={"host": "ci"}, benchmarks=[
                    BenchResult(name="loader.time_epoch", params={}, kind="time", unit="seconds",
                                higher_is_better=False, status="failed", error="boom", samples=[])])


# Two made-up future steps, to show the order: version 3 reads the field that version 2 renamed.
def update_to_2(doc):
    return {**doc, "benchmarks": [{**{k: v for k, v in b.items() if k != "error"}, "reason": b["error"]}
                                  for b in doc["benchmarks"]]}


def update_to_3(doc):
    return {**doc, "failures": [b["name"] for b in doc["benchmarks"] if b["reason"]]}


def test_an_older_document_goes_through_every_update_after_its_version_in_order():
    old = RUN.to_dict()
    new = upgrade(old, "old.json", {2: update_to_2, 3: update_to_3}, current=3)
    assert new["format_version"] == 3
    assert new["benchmarks"][0]["reason"] == "boom" and "error" not in new["benchmarks"][0]
    assert new["failures"] == ["loader.time_epoch"]
    assert old == RUN.to_dict()  # the document read is left as it was

    from_2 = upgrade({**update_to_2(old), "format_version": 2}, "v2.json", {2: update_to_2, 3: update_to_3}, 3)
    assert from_2 == new


def test_every_version_perfwatch_wrote_has_its_update():
    oldest = min(UPDATES, default=FORMAT_VERSION + 1) - 1
    assert sorted(UPDATES) == list(range(oldest + 1, FORMAT_VERSION + 1))
    assert upgrade(RUN.to_dict(), "now.json") == RUN.to_dict()


@pytest.mark.parametrize("version, words", [
    (FORMAT_VERSION + 1, f"format_version {FORMAT_VERSION + 1} is newer than this perfwatch"),
    (0, "format_version 0 was never written by perfwatch"),
    ("1", "format_version '1' is not a version number"),
    (True, "format_version True is not a version number"),
])
def test_a_version_it_cannot_read_is_refused_naming_the_file(version, words):
    with pytest.raises(UserError) as refused:
        RunRecord.from_dict({**RUN.to_dict(), "format_version": version}, "runs/x.json")
    assert str(refused.value).startswith("runs/x.json: ") and words in str(refused.value)


def test_a_newer_document_says_to_upgrade_and_the_others_are_still_listed(tmp_path):
    results = tmp_path / ".perfwatch" / "results"
    Store(results).save(RUN)
    future = results / "20270101T000000Z-000000.json"
    future.write_text(json.dumps({**RUN.to_dict(), "run_id": future.stem, "format_version": FORMAT_VERSION + 1}))

    shown = run_perfwatch("show", str(future), cwd=tmp_path)
    assert shown.returncode == 2
    assert shown.stderr.splitlines() == [
        (f"perfwatch: error: {future}: results format_version {FORMAT_VERSION + 1} is newer than this perfwatch, "
         f"which reads versions up to {FORMAT_VERSION}; upgrade perfwatch to read it")]

    listed = run_perfwatch("runs", cwd=tmp_path)
    assert listed.returncode == 0 and RUN.run_id in listed.stdout and future.stem not in listed.stdout
    assert f"skipping {future.relative_to(tmp_path)}: results format_version" in listed.stderr
