"""scripts/store_scale.py's ``dashboard`` operation on a tiny generated store: every SQL text of the
Benchmark history dashboard, filled in as Grafana fills it, runs against a real PostgreSQL and finds
rows in each of its views; on SQLite, what does not run says why in one line. The timing at a
team's scale is in docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from grafana_dashboards import GRAFANA, sql_queries
from servers import postgres_fixture

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "store_scale.py"
TINY = ["--runs", "30", "--benchmarks", "10", "--samples", "5", "--repeat", "1", "--operation", "dashboard"]
QUERIES = {q.where for q in sql_queries(GRAFANA / "dashboards" / "history.json")}
VIEWS = {"all-history", "last-30-days", "as-opened", "every-benchmark"}

postgres = postgres_fixture()


def dashboard(store: str, out: Path) -> list[dict]:
    """The script's dashboard entries for ``store``, checked to cover every query in every view."""
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--store", store, "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(out.read_text())["stores"]
    assert {(q["query"], q["view"]) for q in entry["dashboard"]} == {(q, v) for q in QUERIES for v in VIEWS}
    return entry["dashboard"]


def test_every_dashboard_query_finds_rows_in_postgresql(postgres, tmp_path):
    entries = dashboard(postgres.new_database(), tmp_path / "report.json")
    assert [(q["query"], q["view"]) for q in entries if "error" in q] == []
    empty = {(q["query"], q["view"]) for q in entries if q["rows"] == 0}
    # as opened, on its first benchmark (a peakmem one here), the panels and the annotation of the other kinds
    # have nothing to show; every other view finds rows in every query
    assert empty == {(q, "as-opened") for q in ("panel 'Time per benchmark, by commit' [A]",
                                                "panel 'Tracked values, by commit' [A]",
                                                "annotation 'Steps between consecutive commits'")}
    assert all(0 < q["median_s"] <= q["max_s"] for q in entries)
    steps = {q["view"]: q["rows"] for q in entries if q["query"].startswith("annotation")}
    # the generated step: of the picked time benchmark on its machine; with every benchmark, on both machines
    assert steps == {"all-history": 1, "last-30-days": 1, "as-opened": 0, "every-benchmark": 2}


def test_on_sqlite_the_variables_run_and_the_postgresql_only_queries_say_why_not(tmp_path):
    entries = dashboard(f"sqlite:///{tmp_path / 'tiny.db'}", tmp_path / "report.json")
    failed = {q["query"] for q in entries if "error" in q}
    assert failed == {q for q in QUERIES if not q.startswith("variable")}
    assert all("\n" not in q["error"] and q["error"] for q in entries if "error" in q)
    assert all(q["rows"] > 0 for q in entries if "error" not in q)
