"""`perfwatch publish` writes a static site of the store's history, and a real headless Chromium (Debian's, driven
by Playwright) opens it from disk: the summary lists every benchmark and filters, a benchmark page draws one point
per commit and machine, hover shows the commit, a click opens the commit's URL, nothing leaves file://, no console
error, and nothing from the data runs. The bad inputs get one line or a note on the page.

The stores are built from literal runs (a directory store), so the numbers and the steps are known."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import STEADY, assert_one_line_error, bench, chromium, run_perfwatch

from perfwatch.results import RunRecord
from perfwatch.store import Store

M1 = {"host": "ci-1", "machine_id": "0123456789ab", "cpu": "AMD EPYC 7763", "cpu_cores_logical": 2,
      "memory_bytes": 8 * 1024**3, "gpu": None, "torch": "2.13.0", "python": "3.11.7"}
M2 = {**M1, "host": "gpu-box", "machine_id": "fedcba987654", "cpu": "Intel Xeon 8480"}
COMMITS = [f"{i + 1:02x}" * 20 for i in range(20)]  # 40 hex digits each: 0101..., 0202..., ...
STEP_AT = 10  # loader.time_batch(workers=2) is 25% slower on ci-1 from the eleventh commit on
COMMIT_URL = "https://example.invalid/commit/{commit}"
HOSTILE = ('<script>window.__pwned = 1</script>', '"><img src=x onerror="window.__pwned=1;alert(1)">',
           '**bold** [link](javascript:window.__pwned=1) <b>markup</b> &amp;')


def samples(factor: float) -> list[float]:
    return [round(v * factor, 6) * 1e-3 for v in STEADY]


def run(machine: dict, i: int, benchmarks: list, run_id: str | None = None) -> RunRecord:
    env = {**machine, "git_commit": COMMITS[i], "git_dirty": False, "git_branch": "main",
           "git_commit_time": f"2026-03-{i + 1:02d}T12:00:00+00:00"}
    return RunRecord(run_id=run_id or f"202603{i + 1:02d}T130000Z-{machine['machine_id'][:6]}",
                     created=f"2026-03-{i + 1:02d}T13:00:00+00:00", suite="quick", env=env, benchmarks=benchmarks)


def history_runs() -> list[RunRecord]:
    """20 commits on ci-1 with a step, 10 on gpu-box; a benchmark with two parameter values, a throughput, and a
    memory that grew 15% in ci-1's latest commit. Each commit wobbles by up to 0.4%, as real runs do."""
    runs = []
    for machine, commits in ((M1, 20), (M2, 10)):
        for i in range(commits):
            wobble = 1 + 0.002 * ((i * 3) % 5 - 2)
            slower = wobble * (1.25 if machine is M1 and i >= STEP_AT else 1.0)
            bigger = wobble * (1.15 if machine is M1 and i == commits - 1 else 1.0)
            runs.append(run(machine, i, [
                bench("loader.time_batch(workers=2)", samples(10 * slower)),
                bench("loader.time_batch(workers=4)", samples(6 * wobble)),
                bench("loader.track_samples_per_s", [v * 5000 * wobble for v in STEADY], unit="samples/s",
                      higher_is_better=True),
                bench("training.peakmem_step", [v * 2e8 * bigger for v in STEADY], unit="bytes"),
            ]))
    return runs


def stored(directory: Path, runs: list[RunRecord]) -> Path:
    store = Store(directory)
    for r in runs:
        store.add(r)
    return directory


def publish(cwd: Path, *args: str):
    return run_perfwatch("publish", *args, cwd=cwd, timeout=120)


def published(tmp_path: Path, runs: list[RunRecord], *args: str) -> Path:
    stored(tmp_path / "store", runs)
    proc = publish(tmp_path, "--store", "store", "--out", "site", *args)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "site"


def page_data(path: Path) -> dict:
    """The JSON block a page renders from (as JSON.parse reads it)."""
    text = path.read_text()
    start = text.index('<script type="application/json" id="perfwatch-data">') + len(
        '<script type="application/json" id="perfwatch-data">')
    return json.loads(text[start:text.index("</script>", start)])


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Debian's: nothing downloads a browser)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


class Visit:
    """A browser context that records every request and console message, lets file:// through and answers
    everything else itself (404, nothing sent); dialogs (alert) are recorded and dismissed."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1300, "height": 900})
        self.requests: list[str] = []
        self.console: list[str] = []
        self.dialogs: list[str] = []
        self.context.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        self.requests.append(url)
        if url.startswith("file://"):
            route.continue_()
        else:  # answered here, so it never leaves the machine
            route.fulfill(status=404, body="offline")

    def open(self, path: Path):
        page = self.context.new_page()
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
                else None)
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        return page

    def outside(self) -> list[str]:
        return [url for url in self.requests if not url.startswith("file://")]

    def close(self):
        self.context.close()


def shoot(page, name: str, tmp_path: Path, readme: bool = False) -> None:
    """A screenshot as a test artefact; the README's two also into $PERFWATCH_SCREENSHOTS when set (docs/img:
    a test run leaves the checkout as it was unless asked)."""
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if readme and os.environ.get("PERFWATCH_SCREENSHOTS"):
        target = Path(os.environ["PERFWATCH_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / name), full_page=False)


def point_position(page, trace: int, index: int) -> list[float]:
    """Where on the page plotly drew point ``index`` of trace ``trace`` of the chart."""
    return page.evaluate("""([trace, index]) => {
        const gd = document.getElementById('chart'), l = gd._fullLayout, box = gd.getBoundingClientRect();
        const t = gd.data[trace];
        return [box.left + l._size.l + l.xaxis.d2p(t.x[index]), box.top + l._size.t + l.yaxis.d2p(t.y[index])];
    }""", [trace, index])


def wait_drawn(page) -> None:
    """Until every chart of a benchmark page is drawn (the distribution comes after the history is on screen)."""
    page.wait_for_function("['chart', 'distribution'].every(id => { const gd = document.getElementById(id);"
                           " return gd === null || gd._fullData !== undefined; })")


def visible_rows(page) -> list[list[str]]:
    return page.eval_on_selector_all("#summary tbody tr:not([hidden])",
                                     "rows => rows.map(r => [...r.cells].slice(0, 3)"
                                     ".map(c => c.querySelector('a, span')"
                                     " ? (c.querySelector('a') || c).textContent : c.textContent))")


def test_the_site_shows_every_benchmark_draws_each_commit_and_machine_and_stays_on_disk(tmp_path, browser):
    site = published(tmp_path, history_runs(), "--commit-url", COMMIT_URL)
    visit = Visit(browser)
    try:
        summary = visit.open(site / "index.html")
        names = summary.eval_on_selector_all("#summary tbody tr td:first-child > a",
                                             "links => links.map(a => a.textContent)")
        expected = ["loader.time_batch(workers=2)", "loader.time_batch(workers=4)", "loader.track_samples_per_s",
                    "training.peakmem_step"]
        assert sorted(names) == sorted(expected * 2)  # every benchmark, once per machine
        rows = summary.locator("#summary tbody tr")
        assert names[:2] == ["training.peakmem_step", "loader.time_batch(workers=2)"]  # regressions first
        assert rows.nth(0).locator(".verdict").inner_text() == "regressed"  # +15% against the previous commit
        assert rows.nth(0).locator("td").nth(4).inner_text() == "+14.5%"  # 1.15 / the previous commit's 1.004
        assert "+25." in rows.nth(1).locator("td").nth(6).inner_text()  # a change point, with its magnitude
        shoot(summary, "publish-summary.png", tmp_path, readme=True)

        summary.fill("#filter-name", "peakmem")
        assert [r[0] for r in visible_rows(summary)] == ["training.peakmem_step"] * 2
        summary.select_option("#filter-machine", "gpu-box (fedcba987654)")
        assert visible_rows(summary) == [["training.peakmem_step", "quick", "gpu-box (fedcba987654)"]]
        assert summary.inner_text("#shown") == "1 of 8 shown"
        summary.fill("#filter-name", "")
        summary.select_option("#filter-machine", "")
        summary.click("#summary th[data-key=name]")  # sort by name, then back
        assert [r[0] for r in visible_rows(summary)] == sorted(expected * 2)

        summary.click("text=loader.time_batch(workers=4) >> nth=0")
        summary.wait_for_load_state("load")
        assert summary.url.endswith("/benchmarks/loader.time_batch.html")
        bench_page = summary
        wait_drawn(bench_page)
        traces = bench_page.evaluate("""() => document.getElementById('chart').data.map(t => ({
            name: t.name, x: t.x, y: t.y, customdata: t.customdata}))""")
        points = {t["name"]: len(t["x"]) for t in traces}
        assert points == {"ci-1 (0123456789ab) · workers=2": 20, "gpu-box (fedcba987654) · workers=2": 10,
                          "ci-1 (0123456789ab) · workers=4": 20, "gpu-box (fedcba987654) · workers=4": 10}
        assert all(len(set(t["x"])) == len(t["x"]) for t in traces)  # one point per commit
        assert traces[0]["y"][0] == pytest.approx(0.01, rel=0.01)
        assert traces[0]["y"][-1] == pytest.approx(0.0125, rel=0.01)
        assert bench_page.locator("#steps tbody tr").count() == 1
        assert "+25.0% worse" in bench_page.inner_text("#steps")
        assert bench_page.locator(".annotation-text", has_text="+25.0% worse").count() == 1  # marked on the chart
        drawn = bench_page.evaluate("""() => ['chart', 'distribution'].map(id =>
            document.getElementById(id)._fullData.map(t => [t.type, t.y.length]))""")  # as drawn: a bundle without a
        assert drawn[0] == [["scatter", 20], ["scatter", 10]] * 2  # trace type would draw its traces as scatter
        assert drawn[1] == [["box", 20]] * 8  # the latest commit's samples and the previous one's, per series

        where = point_position(bench_page, 0, 3)  # the fourth point of ci-1 · workers=2, hovered with the mouse
        bench_page.mouse.move(*where)
        bench_page.wait_for_selector(".hoverlayer .hovertext")
        hover = bench_page.text_content(".hoverlayer")
        assert COMMITS[3][:10] in hover and "n=20" in hover, hover
        assert visit.outside() == []
        shoot(bench_page, "publish-benchmark.png", tmp_path, readme=True)

        with visit.context.expect_page() as popup:
            bench_page.mouse.click(*where)
        assert popup.value.url == COMMIT_URL.format(commit=COMMITS[3])  # the commit opens (the test answers: offline)
        assert COMMITS[3][:10] in bench_page.inner_text("#picked")
        assert visit.outside() == [COMMIT_URL.format(commit=COMMITS[3])]
        popup.value.close()
        visit.requests.clear()

        bench_page.check("#log-scale")
        assert bench_page.evaluate("document.getElementById('chart').layout.yaxis.type") == "log"
        bench_page.check("#x-date")
        first_x = bench_page.evaluate("document.getElementById('chart').data[0].x[0]")
        assert first_x == "2026-03-01T12:00:00+00:00"
        shoot(bench_page, "publish-benchmark-by-date-log.png", tmp_path)

        regressions = visit.open(site / "regressions.html")
        rows = regressions.locator("#regressions tbody tr")
        assert rows.count() == 1
        assert "loader.time_batch(workers=2)" in rows.inner_text() and "+25.0%" in rows.inner_text()
        shoot(regressions, "publish-regressions.png", tmp_path)
        machines = visit.open(site / "machines.html")
        assert machines.locator("section.machine h2").all_inner_texts() == ["ci-1 (0123456789ab)",
                                                                             "gpu-box (fedcba987654)"]
        assert "Intel Xeon 8480" in machines.inner_text("main")
        compare = machines.locator("#compare tbody tr", has_text="loader.time_batch(workers=2)")
        assert compare.locator("td").all_inner_texts() == ["loader.time_batch(workers=2)", "12.5 ms", "10 ms", "×0.800"]
        shoot(machines, "publish-machines.png", tmp_path)
        assert visit.outside() == [] and visit.console == [] and visit.dialogs == []
    finally:
        visit.close()

    feed = ET.parse(site / "regressions.xml").getroot()
    atom = "{http://www.w3.org/2005/Atom}"
    entries = feed.findall(f"{atom}entry")
    assert len(entries) == 1
    title = entries[0].find(f"{atom}title").text
    assert title.startswith("loader.time_batch(workers=2) on ci-1 (0123456789ab): +25.0%")
    assert entries[0].find(f"{atom}link").get("href") == "benchmarks/loader.time_batch.html"


def test_nothing_from_the_data_runs_in_the_browser(tmp_path, browser):
    """Names, parameters, error messages, host and branch names holding script, an onerror image and Markdown are
    published as text: no script runs, no dialog opens, no image loads, and the text reads as it was stored."""
    name = f"evil.time_x(p={HOSTILE[1]})"
    host = {**M1, "host": HOSTILE[0], "git_branch": HOSTILE[2]}
    runs = [run(host, i, [bench(name, samples(1)), bench(HOSTILE[2], samples(2)),
                          bench(f"evil.{HOSTILE[0]}", [], status="failed", error=HOSTILE[1])]) for i in range(3)]
    site = published(tmp_path, runs, "--commit-url", COMMIT_URL)
    visit = Visit(browser)
    try:
        pages = [site / "index.html", site / "regressions.html", site / "machines.html",
                 *sorted((site / "benchmarks").glob("*.html"))]
        assert len(pages) == 6
        for path in pages:
            page = visit.open(path)
            wait_drawn(page)
            assert page.evaluate("window.__pwned") is None, path
            assert page.locator("main img, main script").count() == 0, path
            text = page.inner_text("body")
            if path.name == "index.html":
                for hostile in (name, HOSTILE[2], f"evil.{HOSTILE[0]}", "failed in run"):
                    assert hostile in text, hostile
                assert HOSTILE[1] in text  # the error message, as text
            if path.name == "machines.html":
                assert HOSTILE[0] in text
            if "evil.time_x" in path.name:
                legend = page.eval_on_selector_all(".legendtext", "ts => ts.map(t => t.textContent)")
                assert legend == [f"{HOSTILE[0]} (0123456789ab) · p={HOSTILE[1]}"]
                page.mouse.move(*point_position(page, 0, 1))
                page.wait_for_selector(".hoverlayer .hovertext")
                assert HOSTILE[0] in page.text_content(".hoverlayer")  # the host name in the hover, as text
                shoot(page, "publish-hostile.png", tmp_path)
        assert visit.outside() == [] and visit.dialogs == [] and visit.console == []
    finally:
        visit.close()


def test_a_long_history_draws_its_line_and_bars_and_every_commit_still_hovers(tmp_path, browser):
    """Past 400 commits a series is drawn without a marker per commit (they would overlap into a line, and 5,000
    of them cost a fifth of a second to draw); hover still finds each commit."""
    commits = [f"{i + 1:040x}" for i in range(450)]
    runs = [RunRecord(run_id=f"r{i:03d}", created=f"2026-04-01T{i // 60:02d}:{i % 60:02d}:00+00:00", suite="quick",
                      env={**M1, "git_commit": commit, "git_dirty": False, "git_branch": "main",
                           "git_commit_time": f"2026-04-01T{i // 60:02d}:{i % 60:02d}:00+00:00"},
                      benchmarks=[bench("long.time_x", samples(1 + 0.01 * (i % 3)))])
            for i, commit in enumerate(commits)]
    site = published(tmp_path, runs)
    visit = Visit(browser)
    try:
        page = visit.open(site / "benchmarks" / "long.time_x.html")
        wait_drawn(page)
        assert page.evaluate("document.getElementById('chart')._fullData.map(t => [t.mode, t.x.length])") == [
            ["lines", 450]]
        assert page.locator("#chart .scatterlayer .points path").count() == 0
        page.mouse.move(*point_position(page, 0, 300))
        page.wait_for_selector(".hoverlayer .hovertext")
        assert commits[300][:10] in page.text_content(".hoverlayer")
        assert visit.console == [] and visit.outside() == []
    finally:
        visit.close()


# ---------------------------------------------------------------- the command and the files


def test_a_second_publish_writes_only_what_changed_and_leaves_files_it_did_not_write(tmp_path):
    site = published(tmp_path, history_runs())
    (site / "NOTES.txt").write_text("mine")
    again = publish(tmp_path, "--store", "store", "--out", "site")
    assert again.returncode == 0 and "0 files written" in again.stdout, again.stdout + again.stderr
    manifest = json.loads((site / ".perfwatch-site.json").read_text())["files"]
    assert "NOTES.txt" not in manifest and "plotly.min.js" in manifest
    assert "benchmarks/training.peakmem_step.html" in manifest

    smaller = [RunRecord(r.run_id, r.created, r.suite, r.env, [b for b in r.benchmarks if "peakmem" not in b.name])
               for r in history_runs()]
    stored(tmp_path / "store2", smaller)
    third = publish(tmp_path, "--store", "store2", "--out", "site")
    assert third.returncode == 0 and "1 removed" in third.stdout, third.stdout + third.stderr
    assert not (site / "benchmarks" / "training.peakmem_step.html").exists()
    assert (site / "NOTES.txt").read_text() == "mine" and (site / "plotly.min.js").stat().st_size > 1_000_000
    pages = [p.read_text() for p in site.rglob("*.html")]
    csp = ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; script-src \'self\'; '
           "style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'\">")
    assert len(pages) == 5 and all(csp in page for page in pages)  # nothing may load from outside the site
    text = "".join(pages)
    assert "https://" not in text.replace("https://example.invalid", "") and "http://" not in text.replace(
        "http://www.w3.org/2000/svg", "")  # no remote URL in any page


def test_a_file_in_the_way_that_perfwatch_did_not_write_is_an_error_before_anything_is_written(tmp_path):
    stored(tmp_path / "store", history_runs())
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<p>the team's own page</p>")
    proc = publish(tmp_path, "--store", "store", "--out", "site")
    assert_one_line_error(proc, "site: holds index.html", "perfwatch did not write", "(--out)")
    assert (tmp_path / "site" / "index.html").read_text() == "<p>the team's own page</p>"
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == ["index.html"]


@pytest.mark.parametrize("args, needles", [
    (("--store", "ftp://example.invalid/runs"), ("unknown store URL scheme 'ftp'",)),
    (("--store", "sqlite:///garbage.db"), ("garbage.db",)),
    (("--store", "store", "--out", "blocker/site"), ("blocker", "cannot write the site", "(--out)")),
    (("--store", "store", "--commit-url", "javascript:alert(1)//{commit}"), ("http(s) URL", "(--commit-url)")),
    (("--store", "store", "--commit-url", "https://example.invalid/commit"), ("{commit}", "(--commit-url)")),
], ids=["unknown-scheme", "not-a-database", "unwritable-out", "not-http", "no-placeholder"])
def test_bad_input_is_one_line(tmp_path, args, needles):
    stored(tmp_path / "store", history_runs()[:2])
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)
    (tmp_path / "blocker").write_text("a file where the site's parent directory should be")
    assert_one_line_error(publish(tmp_path, *args), *needles)


def test_an_empty_store_publishes_a_site_that_says_so(tmp_path):
    (tmp_path / "store").mkdir()
    proc = publish(tmp_path, "--store", "store")  # into the default directory
    assert proc.returncode == 0, proc.stderr
    assert "holds no runs yet" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    site = tmp_path / "reports" / "site"
    summary = page_data(site / "index.html")
    assert summary["rows"] == [] and "holds no runs yet" in summary["notes"][0]
    assert {"regressions.html", "machines.html", "regressions.xml"} <= {p.name for p in site.iterdir()}


def test_a_run_without_samples_a_failure_and_a_changed_unit_are_notes_on_their_pages(tmp_path):
    runs = [run(M1, i, [bench("a.time_x", samples(1)), bench("b.track_y", [1.0, 2.0, 3.0], unit="items")])
            for i in range(4)]
    runs.append(run(M1, 4, [bench("a.time_x", []), bench("b.track_y", [1.5, 2.5, 3.5], unit="samples/s")]))
    runs.append(run(M1, 5, [bench("a.time_x", [], status="failed", error="RuntimeError: boom"),
                            bench("b.track_y", [1.5, 2.5, 3.5], unit="samples/s")]))
    site = published(tmp_path, runs[:5])
    a = page_data(site / "benchmarks" / "a.time_x.html")["traces"][0]
    assert any("recorded no samples" in n for n in a["notes"]) and a["points"][-1]["median"] is None
    b = page_data(site / "benchmarks" / "b.track_y.html")["traces"][0]
    assert b["unit"] == "samples/s" and len(b["points"]) == 1
    assert any("unit changed to 'samples/s'" in n and "4 earlier run(s) in 'items'" in n for n in b["notes"])

    stored(tmp_path / "store", runs[5:])
    proc = publish(tmp_path, "--store", "store", "--out", "site")
    assert proc.returncode == 0, proc.stderr
    assert "a.time_x on ci-1: failed in run" in proc.stderr and "RuntimeError: boom" in proc.stderr
    rows = {r["name"]: r for r in page_data(site / "index.html")["rows"]}
    assert rows["a.time_x"]["verdict"] == "failed" and rows["a.time_x"]["latest"] is None
    assert rows["b.track_y"]["verdict"] == "insufficient"  # 3 samples a side can never reach p < 0.01


def test_the_summary_sets_each_latest_commit_against_the_baseline_file_on_its_machine(tmp_path, browser):
    """perfwatch-baseline.json (what `perfwatch baseline save` writes) in the directory: each series' latest
    commit is also judged against it, unpaired as `perfwatch compare` judges it, and only on the baseline's
    machine; a new baseline rebuilds the site, since every row depends on it."""
    runs = history_runs()
    baseline = run(M1, 0, [bench("loader.time_batch(workers=2)", samples(10)),
                           bench("training.peakmem_step", [v * 2e8 for v in STEADY], unit="bytes")],
                   run_id="20260220T130000Z-baseline")
    (tmp_path / "perfwatch-baseline.json").write_text(json.dumps(baseline.to_dict()))
    site = published(tmp_path, runs)
    rows = {(r["name"], r["machine"].split()[0]): r["baseline"] for r in page_data(site / "index.html")["rows"]}
    slower = rows["loader.time_batch(workers=2)", "ci-1"]
    assert (slower["verdict"], slower["run_id"]) == ("regressed", baseline.run_id)
    assert slower["change"] == pytest.approx(0.25, abs=0.02)
    assert rows["training.peakmem_step", "ci-1"]["verdict"] == "regressed"  # 15% bigger in the latest commit
    assert rows["loader.time_batch(workers=4)", "ci-1"] == {
        "run_id": baseline.run_id, "change": None, "verdict": "none",
        "reason": f"the baseline ({baseline.run_id}) has no result for it"}
    assert rows["loader.time_batch(workers=2)", "gpu-box"]["verdict"] == "none"
    assert "another machine" in rows["loader.time_batch(workers=2)", "gpu-box"]["reason"]

    visit = Visit(browser)
    try:
        page = visit.open(site / "index.html")
        headers = page.eval_on_selector_all("#summary thead th", "ths => ths.map(th => th.textContent)")
        assert "vs baseline (unpaired)" in headers
        column = headers.index("vs baseline (unpaired)")
        cells = page.eval_on_selector_all(
            "#summary tbody tr", f"trs => trs.map(tr => [tr.cells[0].textContent, tr.cells[2].textContent, "
                                 f"tr.cells[{column}].textContent])")
        shown = {(name, machine.split()[0]): text for name, machine, text in cells}
        assert re.fullmatch(r"\+2[45]\.\d% regressed", shown["loader.time_batch(workers=2)", "ci-1"])
        assert shown["loader.time_batch(workers=2)", "gpu-box"] == "not compared"
        assert visit.console == [] and visit.outside() == []
    finally:
        visit.close()

    (tmp_path / "perfwatch-baseline.json").write_text(json.dumps({**baseline.to_dict(), "run_id": "20260221T1300Z-b"}))
    again = publish(tmp_path, "--store", "store", "--out", "site")
    assert again.returncode == 0 and "all computed: the store, the thresholds, the commit URL, the baseline" in again.stdout
    assert publish(tmp_path, "--store", "store", "--out", "site", "--baseline", "missing.json").returncode == 2
