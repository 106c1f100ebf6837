"""``perfwatch profile`` says only what its evidence supports: too little of it is ``unknown`` with what
is missing, a command that failed before training says so, advice needs its premise (no device knobs
without a GPU, no bf16 autocast for a float64 model, an LBFGS closure is forward and backward), and
the command line it keeps has its URLs redacted. Each through the real command."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import run_perfwatch


def profile(tmp_path: Path, source: str, *args: str, argv: tuple[str, ...] = ()):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(source))
    out = tmp_path / "out"
    done = run_perfwatch("profile", "--out", str(out), *args, "--", sys.executable, str(script), *argv,
                         cwd=tmp_path, timeout=180)
    report = json.loads((out / "report.json").read_text())
    return done, report, out


TWO_STEPS = """\
    import torch
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters())
    for batch in torch.randn(2, 8, 4):  # two steps, then done
        optimizer.zero_grad()
        model(batch).pow(2).mean().backward()
        optimizer.step()
"""


def test_a_run_too_short_to_judge_is_unknown_and_says_what_is_missing(tmp_path):
    done, report, out = profile(tmp_path, TWO_STEPS, "--no-pyspy")
    assert done.returncode == 0, done.stderr
    b = report["bottleneck"]
    assert b["primary"] == "unknown" and b["confidence"] == 0.0 and b["shares"] == {}
    assert b["missing"]["steps"] == {"have": 2, "need": 3} and b["missing"]["stack_samples"]["have"] == 0
    assert "too little evidence: 2 timed steps (needs 3)" in b["basis"]
    assert f"primary bottleneck: unknown: {b['basis']})" in done.stderr  # the console says why, not a confidence
    markdown = (out / "report.md").read_text()
    assert "**Primary bottleneck: unknown** too little evidence: 2 timed steps" in markdown


def test_a_command_that_fails_before_training_says_so(tmp_path):
    done, report, _ = profile(tmp_path, """\
        import time, torch
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            sum(range(10000))
        raise SystemExit("no such dataset: /data/imagenet")
    """)
    assert done.returncode == 1
    b = report["bottleneck"]
    assert b["primary"] == "unknown" and b["basis"].startswith("the command failed (exit code 1) before training")
    (failed,) = [f for f in report["findings"] if f["id"] == "command_failed"]
    assert failed["severity"] == "high" and failed["evidence"] == {"exit_code": 1, "steps": 0}
    assert report["recommendations"] == []


# A CPU-only LBFGS fit of a float64 model: forward and backward run inside optimizer.step(closure).
LBFGS = """\
    import time, torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = "cpu"
    x, y = torch.randn(8192, 256, dtype=torch.float64), torch.randn(8192, 1, dtype=torch.float64)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1)).double()
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=5, history_size=5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4096)
    end = time.monotonic() + 4
    while time.monotonic() < end:
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            def closure():
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(xb), yb)
                loss.backward()
                return loss
            optimizer.step(closure)
"""


@pytest.mark.slow
def test_advice_for_a_cpu_only_float64_lbfgs_run_fits_it(tmp_path):
    done, report, _ = profile(tmp_path, LBFGS)
    assert done.returncode == 0, done.stderr
    phases, b = report["phases"], report["bottleneck"]
    assert b["primary"] == "compute" and b["source"] == "steptimer"
    assert report["steptimer"]["closure_steps"] == report["steptimer"]["steps"] > 0
    # forward and backward inside the closure are not "optimizer 99%"
    assert phases["forward"] + phases["backward"] > 0.5 > phases["optimizer"]
    assert report["measurements"]["model"] == {"dtype": "float64", "device": "cpu", "cuda_capability": None,
                                               "optimizer": "LBFGS"}
    ids = {rec["id"] for rec in report["recommendations"]}
    assert not ids & {"amp_bf16", "amp_fp16", "pin_memory", "avoid_item", "batch_size"}
    assert b["shares"]["host_to_device"] == 0.0  # .to("cpu") on a CPU-only run copies nothing to a device


def test_urls_in_the_command_are_redacted_in_the_report(tmp_path):
    secret = "s3cr3t-pass"
    argv = ("--push", f"http://alice:{secret}@gateway.example:9091/metrics",
            f"--store=postgresql://bob:{secret}@db.example/runs?sslkey=token-9f8e7d")
    busy = "import time\nend = time.monotonic() + 1\nwhile time.monotonic() < end:\n    sum(range(10000))\n"
    done, report, out = profile(tmp_path, busy, argv=argv)
    assert done.returncode == 0, done.stderr
    assert report["command"][-3:] == ["--push", "http://***@gateway.example:9091/metrics",
                                      "--store=postgresql://***@db.example/runs?***"]
    assert "pyspy-wall.txt" in report["artifacts"]  # py-spy's raw stacks name each process by its command line
    for name in ("report.json", "report.md", "report.html", "pyspy-wall.txt", "collector.jsonl"):
        text = (out / name).read_text()
        assert secret not in text and "token-9f8e7d" not in text and "alice" not in text, name
    assert "gateway.example:9091/metrics" in (out / "pyspy-wall.txt").read_text()


# The scripts below: set-up, then a training step repeated for a few seconds, one intra-op thread.
STEP = "model(x).sum().backward()\noptimizer.step()\noptimizer.zero_grad()\n"


def script(setup: str, step: str, seconds: float = 4) -> str:
    """A training script: ``setup``, then ``step`` (the loop body, unindented) repeated for ``seconds``."""
    return ("import time, torch\ntorch.set_num_threads(1)\n" + textwrap.dedent(setup)
            + f"end = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n"
            + textwrap.indent(textwrap.dedent(step), "    "))


# JPEG decoding inline (num_workers=0): PIL releases the GIL while it decodes and resizes, so the
# training thread seldom holds it in data loading; the process is busy on a core and barely waits on
# IO, which says decode, not storage. The advice must fit the cores.
DECODE = script("""\
    import io, numpy
    from PIL import Image
    rng = numpy.random.default_rng(0)
    jpegs = []
    for _ in range(16):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (768, 768, 3), dtype=numpy.uint8)).save(buffer, "JPEG", quality=95)
        jpegs.append(buffer.getvalue())

    class Decoded(torch.utils.data.Dataset):
        def __len__(self):
            return 64
        def __getitem__(self, i):
            image = Image.open(io.BytesIO(jpegs[i % 16])).convert("RGB").resize((64, 64), Image.BICUBIC)
            return torch.from_numpy(numpy.asarray(image)).permute(2, 0, 1).float().div(255)

    loader = torch.utils.data.DataLoader(Decoded(), batch_size=8, num_workers=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
""", "for x in loader:\n" + textwrap.indent(STEP, "    "), seconds=5)


@pytest.mark.slow
def test_inline_decoding_that_releases_the_gil_is_cpu_bound_decode_with_advice_the_cores_support(tmp_path):
    done, report, _ = profile(tmp_path, DECODE)
    assert done.returncode == 0, done.stderr
    b, r = report["bottleneck"], report["measurements"]["resources"]
    assert b["primary"] == "data_loading" and b["source"] == "steptimer"
    (input_bound,) = [f for f in report["findings"] if f["id"] == "input_bound"]
    evidence = input_bound["evidence"]
    assert evidence["data_loading_gil_share"] < 0.5  # the GIL alone would say "blocked, storage"
    assert evidence["cause"] == "inline_cpu" and "CPU-bound" in input_bound["title"]
    # busy on a core, or starved of one on a host other work keeps full; not waiting on storage either way
    assert (evidence["main_cpu_cores"] >= 0.7 or r["host_busy_ratio"] >= 0.9) and (r["host_iowait_ratio"] or 0) < 0.1
    (workers,) = [rec for rec in report["recommendations"] if rec["id"] == "num_workers"]
    assert 1 <= workers["knobs"]["num_workers"] <= r["cores"] - 1  # what the cores support, not Amdahl's count
    expected, share, k = workers["expected_gain"], b["shares"]["data_loading"], workers["knobs"]["num_workers"]
    assert expected["basis"].startswith("amdahl+cores") and "ms of CPU per step" in expected["reasoning"]
    assert expected["speedup_at_most"] <= r["cores"] / r["main_cpu_cores"]  # what the cores can give
    assert expected["speedup_at_most"] <= round(1 / max(1 - share, share / k), 2)  # and what k workers can supply


# A CPU-only loop that spends most of its time copying within host memory (.copy_, .to(dtype)): on a
# run without a GPU that is not host-to-device, and no pinned memory can help it.
HOST_COPIES = script("""\
    model = torch.nn.Linear(256, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    source, buffer = torch.randn(4096, 4096), torch.empty(4096, 4096)
""", 'buffer.copy_(source)\nwide = buffer.to(torch.float64)\nx = wide[:64, :256].to("cpu").float()\n' + STEP)


@pytest.mark.slow
def test_copies_within_host_memory_on_a_cpu_only_run_are_not_host_to_device(tmp_path):
    done, report, _ = profile(tmp_path, HOST_COPIES)
    assert done.returncode == 0, done.stderr
    phases, b = report["phases"], report["bottleneck"]
    assert report["measurements"]["model"]["device"] == "cpu"
    assert phases["copy"] > 0.5 and "host_to_device" not in phases and b["shares"]["host_to_device"] == 0.0
    assert b["primary"] == "other" and not [f for f in report["findings"] if f["id"] == "host_to_device"]
    assert not {rec["id"] for rec in report["recommendations"]} & {"pin_memory", "avoid_item"}


# A compute-bound float32 model on the CPU: bf16 autocast fits where the CPU has bf16 units, not elsewhere;
# nothing that needs a GPU is advised.
COMPUTE_FLOAT32 = script("""\
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512))
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(256, 512)
""", STEP)


@pytest.mark.slow
def test_bf16_autocast_is_advised_for_a_float32_model_only_on_a_cpu_with_bf16_units(tmp_path):
    done, report, _ = profile(tmp_path, COMPUTE_FLOAT32)
    assert done.returncode == 0, done.stderr
    assert report["bottleneck"]["primary"] == "compute"
    assert report["measurements"]["model"]["dtype"] == "float32" and report["measurements"]["model"]["device"] == "cpu"
    recs = {rec["id"]: rec for rec in report["recommendations"]}
    assert ("amp_bf16" in recs) == bool(report["env"]["cpu_bf16"]) and "amp_fp16" not in recs
    if "amp_bf16" in recs:
        assert "/".join(report["env"]["cpu_bf16"]) in recs["amp_bf16"]["evidence"]
    assert not set(recs) & {"pin_memory", "avoid_item", "batch_size"}
