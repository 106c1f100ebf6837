"""Reports: the profile report of a real `perfwatch profile` run and `perfwatch report` of a stored
benchmark run, as Markdown and self-contained HTML; every outside string escaped; the pages
opened in headless Chromium, which must render them with every image decoded."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import assert_one_line_error, chromium, run_perfwatch

from perfwatch.pages import md_code, md_escape
from perfwatch.profile.flamegraph import flame_graph_svg
from perfwatch.profile.page import draw_profile_figures, write_profile_pages
from perfwatch.profile.stacks import Frame, Stack
from perfwatch.results import BenchResult, RunRecord, new_run_id
from perfwatch.store import Store

HOSTILE = ("<script>alert(1)</script>", "\"&'")
SITE = "/usr/lib/python3.11/site-packages"

TRAIN = """\
import sys, torch
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
data = TensorDataset(torch.randn(4096, 64), torch.randint(0, 10, (4096,)))
loader = DataLoader(data, batch_size=32, num_workers=1, persistent_workers=True)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(3):
    for x, y in loader:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
print("trained with", sys.argv[1:])
"""


# ---------------------------------------------------------------- pages and browsers


class Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "strong", "table", "thead",
             "tbody", "tr", "th", "td", "code", "ul", "ol", "li", "span", "figure", "figcaption", "img", "div",
             "svg", "g", "rect", "text"}
IMAGE_FAILED = "data-failed="  # set on a figure by its image's onerror handler


def assert_only_our_markup(page: str) -> None:
    """No tag, event handler or URL that the report itself does not write."""
    for tag, attrs in Tags(page).tags:
        assert tag in PAGE_TAGS, tag
        handlers = {name for name in attrs if name.startswith("on")}
        assert handlers <= ({"onerror"} if tag == "img" else set()), (tag, attrs)
        assert "href" not in attrs
        assert (attrs.get("src") or "data:").startswith("data:")


def markdown_links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", text)


def assert_references_exist(directory: Path) -> None:
    markdown = (directory / "report.md").read_text()
    assert markdown_links(markdown), "report.md links its figures"
    for link in markdown_links(markdown):
        assert (directory / link).is_file(), link
    page = (directory / "report.html").read_text()
    sources = [attrs["src"] for tag, attrs in Tags(page).tags if "src" in attrs]
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|file:|//)", page)


def browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Open ``page`` from disk in headless Chromium with a profile of its own."""
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--hide-scrollbars", f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def assert_renders_with_its_images(page: Path, tmp_path: Path, heading: str) -> None:
    dom = browse(page, tmp_path, "--dump-dom").stdout
    assert heading in dom  # the document was parsed and rendered, not an error page
    images = dom.count("<img ")
    assert images == page.read_text().count("<img ") and images >= 1
    assert IMAGE_FAILED not in dom, "an image failed to decode"
    shot = tmp_path / "screenshot.png"
    browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    ink = (pixels[..., :3] < 0.8).any(axis=-1).mean()  # share of pixels that are not near-white
    assert 0.005 < ink < 0.9, ink


# ---------------------------------------------------------------- escaping and the flame graph


def test_markdown_escaping_keeps_text_literal_and_words_readable():
    assert md_escape("<b>x</b> | *y* [z](u) & `c`") == r"\<b\>x\</b\> \| \*y\* \[z\](u) \& \`c\`"
    assert md_escape("num_workers _private_ a\nb") == r"num_workers \_private\_ a b"
    assert md_code("a`b") == "``a`b``" and md_code("`x") == "`` `x ``"


def test_flame_graph_is_svg_with_a_box_per_frame_as_wide_as_its_samples():
    loop = (Frame("<module>", "/home/u/train.py", 3), Frame("train", "/home/u/train.py", 9))

    def stack(function: str, file: str, line: int, count: int) -> Stack:
        return Stack(11, 11, "MainThread", loop + (Frame(function, file, line),), count)

    stacks = [
        stack("_BaseDataLoaderIter.__next__", f"{SITE}/torch/utils/data/dataloader.py", 7, 6000),
        stack("Linear.forward", f"{SITE}/torch/nn/modules/linear.py", 2, 3000),
        stack("Linear.forward", f"{SITE}/torch/nn/modules/linear.py", 5, 990),
        stack("<img src=x onerror=alert(1)>", "/home/u/a&b.py", 1, 5),
    ]
    svg = flame_graph_svg(stacks, "title <&>", width=1000)
    root = ET.fromstring(svg)  # well-formed XML: every name escaped
    ns = {"s": "http://www.w3.org/2000/svg"}
    boxes = {g.find("s:title", ns).text.split(" — ")[0]: float(g.find("s:rect", ns).get("width"))
             for g in root.findall("s:g", ns)}
    assert boxes["all"] == pytest.approx(1000, abs=1)
    assert boxes["train (/home/u/train.py)"] == pytest.approx(1000, abs=1)
    assert boxes["_BaseDataLoaderIter.__next__ (torch/utils/data/dataloader.py)"] == pytest.approx(600, abs=1)
    assert boxes["Linear.forward (torch/nn/modules/linear.py)"] == pytest.approx(399, abs=1)  # lines merge
    assert "<img src=x onerror=alert(1)> (/home/u/a&b.py)" not in boxes  # under 0.1% of samples: not drawn
    assert "process 11" in boxes and "thread MainThread (11)" in boxes
    tooltips = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert any("6000 samples (60.0%), phase data_loading" in t for t in tooltips)

    wide = flame_graph_svg(stacks[3:], "t")
    assert "&lt;img src=x onerror=alert(1)&gt;" in wide and "<img" not in wide


# ---------------------------------------------------------------- the profile report


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> Path:
    """A real `perfwatch profile` of a small, uninstrumented torch training script whose arguments are hostile."""
    tmp = tmp_path_factory.mktemp("profile")
    (tmp / "train.py").write_text(TRAIN)
    out = tmp / "out"
    result = run_perfwatch("profile", "--out", str(out), "--", sys.executable, "train.py", *HOSTILE, cwd=tmp)
    assert result.returncode == 0, result.stderr
    assert f"report: {out / 'report.html'}" in result.stderr
    return out


def test_profile_writes_html_markdown_and_figures_it_lists_as_artifacts(profiled):
    report = json.loads((profiled / "report.json").read_text())
    expected = {"report.json", "report.md", "report.html", "breakdown.png", "timeline.png", "workers.png",
                "flamegraph.svg", "collector.jsonl", "pyspy-wall.txt"}
    assert expected <= set(report["artifacts"])
    assert all((profiled / name).is_dir() if name.endswith("/") else (profiled / name).is_file()
               for name in report["artifacts"])  # folders (steptimer/, the --try windows) end in "/"
    markdown = (profiled / "report.md").read_text()
    for figure in ("breakdown.png", "timeline.png", "workers.png", "flamegraph.svg"):
        assert f"]({figure})" in markdown
    assert f"**Primary bottleneck: {report['bottleneck']['primary']}**" in markdown
    assert "throughput is the StepTimer's mean over its steps" in markdown  # the injected timing counts the steps
    page = (profiled / "report.html").read_text()
    assert page.count("<img ") == 3 and page.count("<svg ") == 1  # the flame graph inline, for its tooltips
    for rec in report["recommendations"]:
        assert md_code(rec["id"]) in markdown and rec["id"] in page
    assert_references_exist(profiled)


def test_profile_report_escapes_the_command_line(profiled):
    page = (profiled / "report.html").read_text()
    assert "<script" not in page and "alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &quot;&amp;&#x27;" in page
    assert_only_our_markup(page)
    markdown = (profiled / "report.md").read_text()
    assert markdown.splitlines()[0].endswith(r"train.py \<script\>alert(1)\</script\> " + "\"\\&'")


def test_profile_report_escapes_function_names_paths_and_evidence(profiled, tmp_path):
    """Whatever the profiled program calls its functions and files, and whatever evidence says.
    (Also drawn here: a StepTimer's throughput and two GPUs, one of which NVML could not read.)"""
    report = json.loads((profiled / "report.json").read_text())
    report["steptimer"] = {"steps": 100, "samples": 3200, "wall": 2.0}
    hostile = "<img src=x onerror=alert(2)>"
    report["pyspy"]["top_functions"][0].update(function=hostile, file=f"/tmp/{hostile}.py")
    report["findings"].append({"id": "x", "severity": "high", "title": hostile, "evidence": {hostile: hostile}})
    report["recommendations"].append({"id": hostile, "title": hostile, "evidence": hostile,
                                      "expected_gain": {"speedup_at_most": 1.5, "reasoning": hostile}})
    rows = [json.loads(line) for line in (profiled / "collector.jsonl").read_text().splitlines()]
    (tmp_path / "collector.jsonl").write_text("".join(json.dumps({**row, "gpu_util": [0.9, None]}) + "\n"
                                                      for row in rows))
    (tmp_path / "pyspy-wall.txt").write_text(
        f'process 5:"python {hostile}";thread (5): MainThread;<module> (/t/{hostile}.py:1);{hostile} (/t/x.py:2) 50\n')
    write_profile_pages(report, draw_profile_figures(report, tmp_path), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert hostile not in page and "alert(2)" in page
    assert page.count("&lt;img src=x onerror=alert(2)&gt;") >= 8
    assert_only_our_markup(page)
    assert "throughput is the StepTimer&#x27;s mean" in page
    outside_code = re.sub(r"(`+).+?\1", "", (tmp_path / "report.md").read_text())  # code spans show HTML as text
    assert hostile not in outside_code and r"\<img src=x onerror=alert(2)\>" in outside_code
    assert hostile not in (tmp_path / "flamegraph.svg").read_text()


def test_profile_report_renders_in_a_headless_browser_with_every_image(profiled, tmp_path):
    assert_renders_with_its_images(profiled / "report.html", tmp_path, "Primary bottleneck")


def test_the_page_marks_an_image_that_fails_to_decode(profiled, tmp_path):
    page = (profiled / "report.html").read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    dom = browse(broken, tmp_path, "--dump-dom").stdout
    assert dom.count(IMAGE_FAILED) == 1


# ---------------------------------------------------------------- the benchmark-run report

ENV = {"host": "ci-1", "cpu": "Test CPU", "cpu_cores_logical": 2, "memory_bytes": 8 * 1024**3, "gpu": None,
       "torch": "2.13.0", "python": "3.11.7", "git_commit": "0123456789ab", "git_dirty": False}


def bench(family: str, params: dict, value: float, unit: str = "samples/s", status: str = "ok",
          error: str | None = None) -> BenchResult:
    """Ten samples spread +-2% around ``value``."""
    name = f"{family}({', '.join(f'{k}={v!r}' for k, v in params.items())})"
    samples = [value * (1 + 0.01 * ((i * 7) % 5 - 2)) for i in range(10)] if status == "ok" else []
    return BenchResult(name=name, params=params, kind="time" if unit == "seconds" else "track", unit=unit,
                       higher_is_better=unit != "seconds", status=status, error=error, samples=samples)


def loader_run(speed: float, hours_ago: float = 0) -> RunRecord:
    """The loader suite's Throughput grid (format x num_workers x batch_size), a training step, a failure."""
    benches = [bench("loader.Throughput.track_samples_per_s", {"format": fmt, "num_workers": workers,
                                                               "batch_size": batch},
                     speed * 500 * (1 + workers) * (batch / 16) ** 0.3 * (1.2 if fmt == "npy" else 1))
               for fmt in ("npy", "files") for workers in (0, 2, 4) for batch in (16, 64, 256)]
    benches.append(bench("training.Step.time_step", {"model": "mlp"}, 0.004, unit="seconds"))
    benches.append(bench("loader.Latency.time_next_batch", {"format": HOSTILE[0], "num_workers": 2}, 0,
                         unit="seconds", status="failed", error="RuntimeError: " + " ".join(HOSTILE)))
    when = datetime.now(timezone.utc) - timedelta(hours=hours_ago)
    return RunRecord(run_id=new_run_id(when), created=when.isoformat(timespec="seconds"), suite="quick", env=ENV,
                     benchmarks=benches)


@pytest.fixture
def stored(tmp_path) -> tuple[Path, RunRecord]:
    run = loader_run(speed=0.8)
    Store(tmp_path / "results").save(run)
    return tmp_path, run


def report_of(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_perfwatch("report", *args, "--results-dir", "results", cwd=cwd)


def test_run_report_has_every_benchmark_and_plots_metrics_against_numeric_params(stored):
    cwd, run = stored
    result = report_of(cwd, run.run_id[:12])
    out = cwd / "reports" / f"run-{run.run_id}"
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"report: {out.relative_to(cwd) / 'report.html'}\n"
    assert sorted(p.name for p in out.iterdir()) == [
        "distributions.png", "params-loader-Throughput-track-samples-per-s.png", "report.html", "report.md"]
    markdown = (out / "report.md").read_text()
    assert "against num_workers, batch_size" in markdown  # format is not numeric; training.Step has no numeric param
    page = (out / "report.html").read_text()
    for b in run.benchmarks:
        assert md_code(b.name) in markdown.replace("\\|", "|")
    assert "| ok | 480 samples/s ↑ | ±2.0% | 10 | samples/s |  |" in markdown  # npy, 0 workers, batch 16
    assert "Comparison with the baseline" not in markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert_only_our_markup(page)
    assert_references_exist(out)


def test_run_report_compares_with_the_baseline_file_in_the_working_directory(stored):
    cwd, run = stored
    baseline = loader_run(speed=1.0, hours_ago=1)
    (cwd / "perfwatch-baseline.json").write_text(baseline.to_json())
    result = report_of(cwd, "latest", "--out", "here")
    assert result.returncode == 0, result.stderr
    assert "(compared with perfwatch-baseline.json)" in result.stdout
    markdown = (cwd / "here" / "report.md").read_text()
    assert markdown.split("\n\n")[1].startswith(f"**Against the baseline:** 18 regressed, 1 unchanged, 1 failed "
                                                f"(baseline {baseline.run_id}")
    assert "](comparison.png)" in markdown and "| regressed | +20.0% \\[" in markdown
    assert_references_exist(cwd / "here")


def test_an_explicit_baseline_wins_and_machine_differences_are_shown(stored):
    cwd, run = stored
    other = replace(loader_run(speed=0.8, hours_ago=2), env={**ENV, "cpu": "Other CPU"})
    (cwd / "other.json").write_text(other.to_json())
    result = report_of(cwd, run.run_id, "--baseline", "other.json", "--out", "o")
    assert result.returncode == 0, result.stderr
    markdown = (cwd / "o" / "report.md").read_text()
    assert f"(baseline {other.run_id}, other.json)" in markdown
    assert "**Different machines:** CPU: Other CPU vs Test CPU" in markdown


def test_run_report_renders_in_a_headless_browser_with_every_image(stored):
    cwd, run = stored
    (cwd / "perfwatch-baseline.json").write_text(loader_run(speed=1.0, hours_ago=1).to_json())
    assert report_of(cwd, "--out", "o").returncode == 0
    assert_renders_with_its_images(cwd / "o" / "report.html", cwd, f"perfwatch run {run.run_id}")


@pytest.mark.parametrize("args, message", [
    (["nope"], "perfwatch: error: nope: no stored run with that id in results; `perfwatch runs` lists them"),
    (["missing.json"], "perfwatch: error: missing.json: no such results file"),
    (["--baseline", "gone.json"], "perfwatch: error: gone.json: no baseline file; run `perfwatch baseline save`"),
    (["--baseline", "corrupt.json"], "perfwatch: error: corrupt.json: corrupt baseline (invalid JSON at line 1)"),
    (["--out", "/sys/perfwatch-report"], "perfwatch: error: output directory /sys/perfwatch-report is not writable"),
])
def test_bad_input_is_one_line_and_exit_2(stored, args, message):
    cwd, _ = stored
    (cwd / "corrupt.json").write_text('{"format_version": 1, "run_id": ')
    result = report_of(cwd, *args)
    assert_one_line_error(result, message)
    assert not (cwd / "reports").exists()


def test_no_stored_run_is_one_line(tmp_path):
    result = report_of(tmp_path)
    assert result.returncode == 2
    assert result.stderr == "perfwatch: error: results: no stored runs yet; run `perfwatch run` first\n"
