"""How often `perfwatch profile` is right on code the project did not write, and on cases built from issue #15.

Two kinds of case, each run unmodified under the real `perfwatch profile`:

* built: a small training script written here from one of the issue's failures. Its ground truth is
  measured independently in the same run: the script times its own DataLoader iterator with
  ``time.perf_counter`` (the share of the loop's wall time spent in ``next()``, and the process CPU
  spent meanwhile), or is known by construction (no DataLoader, a crash before training, a run too
  short to judge).
* external: a script of a pytorch/examples snapshot (``--examples``: a bare git directory, such as
  the one ``fetch github:pytorch/examples`` brings), its ``.py`` files copied unmodified into a temp
  folder at run time, with synthetic stand-ins for its data sets written in the formats it reads
  (nothing downloads here), kept short with flags the script already has. The examples that run with
  torch alone have no DataLoader, so their truth is by construction; each case's description says so.

Reported: primary right, cause right (where the case knows its cause), "unknown" on the runs that
should get it (and that a failed command is said to have failed), confidence calibration (verdicts
at confidence c right about c of the time), and with ``--try`` on the input-bound cases the measured
against the predicted gain, and whether a kept change measured slower. Run under ``nice``; one case
takes its ``--seconds`` plus start-up (and about 4 x that again with ``--try``)::

    nice -n 19 python scripts/profile_external.py --seconds 8 --try --out /tmp/external --markdown /tmp/external.md
    nice -n 19 python scripts/profile_external.py --seconds 2 --cases short,crash   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLEAR_INPUT_SHARE = 0.5  # the iterator's share of wall time at or above which data loading is the truth
CLEAR_COMPUTE_SHARE = 0.2  # at or below which it is not (the loop computes)
BALANCE_TIE = 0.02  # a graded case's truth is unclear when the iterator's share is this close to half
TARGET_RIGHT = 0.95  # issue #15: primary and cause right in >= 95% of the cases with a clear truth
EXAMPLES = Path("/work/.mirror/pytorch+examples/repo")  # where `fetch github:pytorch/examples` puts it

# Prepended to every built case: the script's own timing of its DataLoader iterator, written at exit.
TRUTH = """\
import atexit, json, os, time
_truth = {"data_wait": 0.0, "data_cpu": 0.0, "first": None, "steps": 0}
def timed(loader):
    it = iter(loader)
    while True:
        started, cpu = time.perf_counter(), time.process_time()
        _truth["first"] = _truth["first"] or started
        try:
            batch = next(it)
        except StopIteration:
            return
        _truth["data_wait"] += time.perf_counter() - started
        _truth["data_cpu"] += time.process_time() - cpu
        _truth["steps"] += 1
        yield batch
def _write():
    wall = time.perf_counter() - _truth["first"] if _truth["first"] else 0.0
    with open(os.environ["TRUTH_FILE"], "w") as f:
        json.dump({"data_wait": _truth["data_wait"], "data_cpu": _truth["data_cpu"], "wall": wall,
                   "steps": _truth["steps"]}, f)
atexit.register(_write)
"""

LOOP = """\
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    for x in timed(loader):
        model(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        if time.monotonic() >= end:
            break
"""

DECODE = """\
import glob, numpy, os, torch
from PIL import Image
torch.set_num_threads(1)
if not os.path.isdir("images"):  # a folder of large JPEGs, as the imagenet example reads
    os.mkdir("images")
    rng = numpy.random.default_rng(0)
    for n in range(32):
        pixels = rng.integers(0, 255, (1024, 1024, 3), dtype=numpy.uint8)
        Image.fromarray(pixels).save(f"images/{{n:03d}}.jpg", quality=90)
paths = sorted(glob.glob("images/*.jpg"))
def load(path):  # decode and resize: PIL releases the GIL for both
    with Image.open(path) as image:
        return numpy.asarray(image.convert("RGB").resize((96, 96)))
class Folder(torch.utils.data.Dataset):
    def __len__(self):
        return 4 * len(paths)
    def __getitem__(self, i):
        return torch.from_numpy(load(paths[i % len(paths)])).permute(2, 0, 1).float()
loader = torch.utils.data.DataLoader(Folder(), batch_size=8, num_workers={workers})
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 96 * 96, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
"""

REMOTE = """\
import torch
torch.set_num_threads(1)
class Remote(torch.utils.data.Dataset):  # 4 ms of latency per sample, as on a network file system
    def __len__(self):
        return 256
    def __getitem__(self, i):
        time.sleep(0.004)
        return torch.full((64,), float(i))
loader = torch.utils.data.DataLoader(Remote(), batch_size=8, num_workers=0)
model = torch.nn.Linear(64, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
"""

COMPUTE = """\
import torch
torch.set_num_threads(1)
data = torch.utils.data.TensorDataset(torch.randn(1024, 512))
loader = torch.utils.data.DataLoader(data, batch_size=128, collate_fn=lambda b: torch.stack([s[0] for s in b]))
model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 512))
optimizer = torch.optim.Adam(model.parameters())
"""

LBFGS = """\
import torch  # full-batch float64 curve fitting with LBFGS, as time_sequence_prediction does: no DataLoader
torch.set_num_threads(1)
t = torch.linspace(0, 20, 4096, dtype=torch.float64).unsqueeze(1)
target = torch.sin(t) * torch.exp(-t / 10)
model = torch.nn.Sequential(torch.nn.Linear(1, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1)).double()
lbfgs = torch.optim.LBFGS(model.parameters(), max_iter=5, history_size=5)
def fit():  # LBFGS calls it several times a step: forward and backward run inside optimizer.step
    lbfgs.zero_grad()
    loss = torch.nn.functional.mse_loss(model(t), target)
    loss.backward()
    return loss
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    lbfgs.step(fit)
"""

TEXT = """\
import torch  # a word-level LSTM language model over one token tensor, sliced as word_language_model does
torch.set_num_threads(1)
tokens = torch.randint(0, 2000, (100_000,))
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.rnn = torch.nn.Embedding(2000, 64), torch.nn.LSTM(64, 64)
        self.out = torch.nn.Linear(64, 2000)
    def forward(self, x):
        return self.out(self.rnn(self.embed(x))[0])
model = Model()
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    for i in range(0, len(tokens) - 35 * 20 - 1, 35 * 20):  # no DataLoader: batches are views of the tensor
        x, y = tokens[i:i + 700].view(35, 20), tokens[i + 1:i + 701].view(35, 20)
        torch.nn.functional.cross_entropy(model(x).view(-1, 2000), y.reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad()
        if time.monotonic() >= end:
            break
"""

SHORT = """\
import torch
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.Adam(model.parameters())
loader = torch.utils.data.DataLoader(torch.randn(16, 4), batch_size=8)  # two steps, then done
for x in timed(loader):
    model(x).sum().backward()
    optimizer.step()
"""

CRASH = """\
import torch
end = time.monotonic() + 1.5
while time.monotonic() < end:
    sum(range(10000))
raise SystemExit("no such dataset: /data/imagenet")
"""

# A loader whose CPU work (pure Python holding the GIL, as a tokenizer or an augmentation written in Python)
# is sized at start-up against the measured step, to take about SHARE of the loop; both sides are CPU work, so
# load on the machine slows them alike. The truth is still the iterator's share as measured in the run.
BALANCE = """\
import torch
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256))
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
def work(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total
def step(x):
    model(x).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
x = torch.randn(8, 256)
for _ in range(5):
    step(x)
started = time.perf_counter()
for _ in range(20):
    step(x)
step_s = (time.perf_counter() - started) / 20
started = time.perf_counter()
work(100000)
iteration_s = (time.perf_counter() - started) / 100000
per_sample = int(step_s * SHARE / (1 - SHARE) / iteration_s / 8)
class Loading(torch.utils.data.Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, i):
        work(per_sample)
        return torch.full((256,), float(i))
loader = torch.utils.data.DataLoader(Loading(), batch_size=8, num_workers=0)
"""

GENERATOR = "import time\nend = time.monotonic() + 1.2\nwhile time.monotonic() < end:\n    sum(range(10000))\n"


def write_wikitext(folder: Path, rng: random.Random, train_tokens: int = 30_000, other_tokens: int = 10_000) -> None:
    """wikitext-2's train/valid/test.txt as word_language_model's data.Corpus reads them: one paragraph a
    line, words split by spaces, `` = Heading = `` lines, ``<unk>`` and ``@-@``; Zipf-distributed words."""
    folder.mkdir(parents=True)
    vocab = [f"w{n}" for n in range(1000)] + ["<unk>", "@-@", ",", "."]
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    for name, tokens in (("train", train_tokens), ("valid", other_tokens), ("test", other_tokens)):
        lines, written = [], 0
        while written < tokens:
            words = rng.choices(vocab, weights, k=rng.randint(40, 120))
            lines += [" ", f" = {rng.choice(vocab[:1000])} {rng.choice(vocab[:1000])} = ", " ", " " + " ".join(words) + " "]
            written += len(words) + 4
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf8")


def write_cora(folder: Path, rng: random.Random, nodes: int = 2708, features: int = 1433, edges: int = 5429) -> None:
    """cora/cora.content (paper id, binary word features, class label, tab-separated) and cora/cora.cites
    (cited id, citing id), as the gat and gcn examples read them with numpy.genfromtxt; Cora's sizes."""
    folder.mkdir(parents=True)
    ids = rng.sample(range(10**6), nodes)
    labels = ["Case_Based", "Genetic_Algorithms", "Neural_Networks", "Probabilistic_Methods",
              "Reinforcement_Learning", "Rule_Learning", "Theory"]
    rows = ["\t".join([str(i), *("1" if rng.random() < 0.0127 else "0" for _ in range(features)), rng.choice(labels)])
            for i in ids]
    (folder / "cora.content").write_text("\n".join(rows) + "\n")
    (folder / "cora.cites").write_text("".join(f"{rng.choice(ids)}\t{rng.choice(ids)}\n" for _ in range(edges)))


@dataclass(frozen=True)
class Case:
    name: str
    description: str  # what it is and where its ground truth comes from
    source: str = ""  # built: the script after TRUTH; {seconds} and {workers} filled in
    example: str = ""  # external: the pytorch/examples folder whose .py files are copied
    command: str = ""  # external: the command line, {python} for the interpreter; with "&&" run by bash -c
    data: Callable[[Path, random.Random], None] | None = None  # external: writes the stand-in into the folder
    primary: str | None = None  # known by construction; None: from the measured iterator share
    cause: str | None = None  # the input_bound finding's cause it should get
    failed: bool = False  # the report must say the command failed
    workers: int = 0
    loop: bool = True  # built: append LOOP to the source
    shell: bool = False  # built: run as bash -c "python gen.py && python train.py"
    try_it: bool = False  # input-bound by construction: what --try is measured on
    duration: float | None = None  # profile this long, then stop the command (perfwatch's --stop-at-duration)
    seconds: float | None = None  # built: train this long instead of --seconds
    balanced: bool = False  # built: truth is the larger of loading and the rest of the loop (compute), see primary_of

    @property
    def origin(self) -> str:
        return f"pytorch/examples {self.example}" if self.example else "built"


CASES = (
    Case("decode_inline", "32 JPEGs of 1024x1024 decoded and resized by PIL on the training thread (num_workers=0); "
         "truth: the iterator's measured share", DECODE, cause="inline_cpu", try_it=True),
    Case("decode_2_workers", "the same folder with num_workers=2 on 2 cores; truth: the iterator's measured share",
         DECODE, cause="workers_cpu_saturated", workers=2, try_it=True),
    Case("remote_inline", "a dataset that sleeps 4 ms a sample (network storage) on the training thread; truth: the "
         "iterator's measured share", REMOTE, cause="inline_blocked", try_it=True),
    Case("compute", "an MLP over an in-memory TensorDataset; truth: the iterator's measured share", COMPUTE),
    Case("lbfgs_float64", "float64 LBFGS curve fit, forward and backward in the closure; no DataLoader: compute by "
         "construction", LBFGS, primary="compute", loop=False),
    Case("text_no_loader", "a word-level LSTM language model, batches sliced from one token tensor; no DataLoader: "
         "compute by construction", TEXT, primary="compute", loop=False),
    Case("generator_then_train", "bash -c 'python gen.py && python train.py': a 1.2 s data generator, then the MLP; "
         "truth: the iterator's measured share", COMPUTE, shell=True),
    Case("short", "two steps of a tiny model (well under a second of training): unknown by construction", SHORT,
         primary="unknown", loop=False),
    Case("crash", "exits 1 after 1.5 s, before any training: unknown, and said to have failed", CRASH,
         primary="unknown", failed=True, loop=False),
    Case("wlm_lstm", "word_language_model, 1-layer LSTM, the script's own SGD (no optimizer object), 3 epochs of a "
         "synthetic wikitext-2 (30k tokens); no DataLoader: compute by construction", example="word_language_model",
         command="{python} main.py --epochs 3 --emsize 64 --nhid 64 --nlayers 1 --dropout 0 --log-interval 20",
         data=lambda here, rng: write_wikitext(here / "data" / "wikitext-2", rng), primary="compute"),
    Case("wlm_transformer", "word_language_model, 1-layer Transformer with --use-optimizer (AdamW), 2 epochs of the "
         "synthetic wikitext-2; no DataLoader: compute by construction", example="word_language_model",
         command="{python} main.py --model Transformer --use-optimizer --lr 0.001 --epochs 2 --emsize 64 --nhid 64 "
                 "--nlayers 1 --nhead 2 --dropout 0 --log-interval 20",
         data=lambda here, rng: write_wikitext(here / "data" / "wikitext-2", rng), primary="compute"),
    Case("time_sequence_lbfgs", "time_sequence_prediction as its README runs it, bash -c 'python "
         "generate_sine_wave.py && python train.py --steps 1' (float64 LSTM, LBFGS, a matplotlib PDF a step), with "
         "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 so that torch >= 2.6 loads the generator's numpy array; its own "
         "generator writes the data; one LBFGS step takes minutes here, so profiled for 25 s and stopped "
         "(--duration 25 --stop-at-duration); no DataLoader: compute by construction",
         example="time_sequence_prediction",
         command="{python} generate_sine_wave.py && TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 {python} train.py --steps 1",
         primary="compute", duration=25.0),
    Case("time_sequence_as_is", "the same command without the variable: train.py's torch.load refuses the numpy "
         "array (weights_only, torch >= 2.6) after the generator ran: unknown, and said to have failed",
         example="time_sequence_prediction", command="{python} generate_sine_wave.py && {python} train.py --steps 1",
         primary="unknown", failed=True),
    Case("gat_cora", "gat, 2 heads of 16, 4 epochs on a synthetic Cora (2708 nodes, 1433 features); full-batch, no "
         "DataLoader: compute by construction", example="gat",
         command="{python} main.py --epochs 4 --hidden-dim 16 --num-heads 2 --val-every 2",
         data=lambda here, rng: write_cora(here / "cora", rng), primary="compute"),
    Case("regression_unclear", "regression: fits a random degree-4 polynomial (no seed) until loss < 1e-3, 200-1300 "
         "steps of a 4-input linear layer, each batch synthesized on the training thread (randn, powers, a matmul) "
         "about as long as the step takes: no clear truth, reported but not counted", example="regression",
         command="{python} main.py"),
    Case("gcn_download_fails", "gcn downloads Cora on every run; with no network it fails before training: unknown, "
         "and said to have failed", example="gcn", command="{python} main.py --epochs 5", primary="unknown",
         failed=True),
    *(Case(f"balance_{round(share * 100)}_{length}", f"a loader doing pure-Python CPU work sized at start-up to take "
           f"about {share:.0%} of the loop, on the training thread, {length} s of training; truth: the larger of the "
           "iterator's measured share and the rest of the loop (compute), unclear within 2 points of a tie (the "
           "graded cases for calibration)", BALANCE.replace("SHARE", str(share)), seconds=length, balanced=True)
      for share in (0.3, 0.4, 0.45, 0.47, 0.53, 0.55, 0.6, 0.7) for length in (2, 6)),
)


def snapshot_commit(examples: Path) -> str | None:
    """The snapshot's HEAD commit, or None where there is no snapshot there."""
    done = subprocess.run(["git", "--git-dir", str(examples), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def copy_example(examples: Path, folder: str, here: Path) -> None:
    """The example's Python files, byte for byte from the snapshot's HEAD (its data sets are not used)."""
    names = subprocess.run(["git", "--git-dir", str(examples), "ls-tree", "--name-only", "HEAD", folder + "/"],
                           capture_output=True, text=True, check=True).stdout.split()
    for name in (n for n in names if n.endswith(".py")):
        blob = subprocess.run(["git", "--git-dir", str(examples), "show", f"HEAD:{name}"], capture_output=True,
                              check=True).stdout
        (here / Path(name).name).write_bytes(blob)


def prepare(case: Case, seconds: float, here: Path, examples: Path) -> list[str]:
    """Write the case's files into ``here``; the command line that runs it there."""
    python = sys.executable
    if case.example:
        copy_example(examples, case.example, here)
        if case.data:
            case.data(here, random.Random(0))
        line = case.command.format(python=python)
        return ["bash", "-c", line] if "&&" in line else line.split()
    seconds = case.seconds or seconds
    body = case.source.format(seconds=seconds, workers=case.workers) + (LOOP.format(seconds=seconds) if case.loop
                                                                        else "")
    (here / "train.py").write_text(TRUTH + textwrap.dedent(body))
    (here / "gen.py").write_text(GENERATOR)
    return ["bash", "-c", f"{python} gen.py && {python} train.py"] if case.shell else [python, "train.py"]


def run_case(case: Case, seconds: float, work: Path, examples: Path, try_pairs: int) -> dict:
    """Profile the case with the real command (``--try`` in ``try_pairs`` pairs unless 0), and judge the report
    against its ground truth."""
    here = work / case.name
    here.mkdir(parents=True)
    command = prepare(case, seconds, here, examples)
    out = here / "out"
    options = ["--try", "--try-pairs", str(try_pairs), "--try-seconds", str(max(1.0, seconds / 2))] if try_pairs else []
    if case.duration:
        options += ["--duration", str(case.duration), "--stop-at-duration"]
    env = {**os.environ, "TRUTH_FILE": str(here / "truth.json")}
    load, started = os.getloadavg()[0], time.monotonic()
    done = subprocess.run([sys.executable, "-m", "perfwatch", "profile", "--out", str(out), *options, "--", *command],
                          cwd=here, env=env, capture_output=True, text=True, timeout=900, check=False)
    (here / "profile.log").write_text(done.stdout + done.stderr)
    if not (out / "report.json").exists():
        return {"case": case.name, "origin": case.origin, "error": f"no report (exit {done.returncode}): "
                + (done.stderr.strip().splitlines() or [""])[-1]}
    report = json.loads((out / "report.json").read_text())
    truth = json.loads((here / "truth.json").read_text()) if (here / "truth.json").exists() else None
    return {**judge(case, report, truth), "exit_code": done.returncode, "seconds": round(time.monotonic() - started, 1),
            "load1": load}


def judge(case: Case, report: dict, truth: dict | None) -> dict:
    """One case's verdicts against its truth: primary, cause, failure said, --try measured against predicted."""
    share = truth["data_wait"] / truth["wall"] if truth and truth["wall"] > 0 else None
    cpu = truth["data_cpu"] / truth["data_wait"] if truth and truth.get("data_wait") else None
    expected = case.primary or primary_of(share, case.balanced)
    bottleneck = report["bottleneck"]
    found = next((f for f in report["findings"] if f["id"] == "input_bound"), None)
    cause = found["evidence"]["cause"] if found else None
    said_failed = any(f["id"] == "command_failed" for f in report["findings"])
    right = None if expected is None else bottleneck["primary"] == expected and (said_failed or not case.failed)
    tried = report.get("try")
    return {"case": case.name, "origin": case.origin, "data_wait_share": share,
            "data_cpu_ratio": cpu if case.workers == 0 else None, "expected": expected,
            "primary": bottleneck["primary"], "confidence": bottleneck["confidence"], "basis": bottleneck.get("basis"),
            "shares": bottleneck.get("shares"), "right": right, "failed": case.failed, "said_failed": said_failed,
            "expected_cause": case.cause if expected == "data_loading" else None, "cause": cause,
            "cause_right": None if case.cause is None or expected != "data_loading" else cause == case.cause,
            "top_recommendation": report["recommendations"][0]["id"] if report["recommendations"] else None,
            "try": None if not tried else {
                "verdict": tried["verdict"], "knobs": tried.get("knobs"), "reason": tried.get("reason"),
                "predicted_at_most": tried.get("predicted_at_most"),
                **({k: tried["measured"][k] for k in ("speedup", "low", "high", "pairs")} if tried.get("measured")
                   else {})}}


def primary_of(share: float | None, balanced: bool = False) -> str | None:
    """The truth from the iterator's measured share; None in between the clear thresholds. ``balanced``: a loop
    of loading and compute only, whose truth is the larger of the two, unclear within BALANCE_TIE of a tie."""
    if share is None:
        return None
    if balanced:
        return None if abs(share - 0.5) < BALANCE_TIE else "data_loading" if share > 0.5 else "compute"
    if share >= CLEAR_INPUT_SHARE:
        return "data_loading"
    return "compute" if share <= CLEAR_COMPUTE_SHARE else None  # in between: no clear ground truth


CALIBRATION_BINS = ((0.0, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01))


def judged_verdicts(results: list[dict]) -> list[dict]:
    """The verdicts calibration is about: a primary other than unknown, on a case with a clear truth."""
    return [r for r in results if r.get("right") is not None and r["primary"] != "unknown"]


def calibration(results: list[dict]) -> list[tuple[str, int, float, float]]:
    """(confidence bin, verdicts in it, their mean confidence, share right): calibrated where the last two agree."""
    judged = judged_verdicts(results)
    rows = []
    for low, high in CALIBRATION_BINS:
        inside = [r for r in judged if low <= r["confidence"] < high]
        if inside:
            rows.append((f"{low:.1f}-{min(high, 1.0):.1f}", len(inside),
                         sum(r["confidence"] for r in inside) / len(inside),
                         sum(r["right"] for r in inside) / len(inside)))
    return rows


def calibration_scores(results: list[dict]) -> tuple[float, float] | None:
    """(expected calibration error over CALIBRATION_BINS, Brier score) of the judged verdicts; None without any.
    Both are 0 for a perfect forecaster; always saying 0.5 scores a Brier of 0.25."""
    judged = judged_verdicts(results)
    if not judged:
        return None
    error = sum(n * abs(mean - right) for _, n, mean, right in calibration(results)) / len(judged)
    brier = sum((r["confidence"] - r["right"]) ** 2 for r in judged) / len(judged)
    return error, brier


def _truth_cell(r: dict) -> str:
    if r["data_wait_share"] is None:
        return f"{r['expected'] or 'unclear'} (by construction)"
    cpu = "" if r["data_cpu_ratio"] is None or r["expected"] != "data_loading" else (
        f", {r['data_cpu_ratio']:.2f} CPU-s per s in it")
    return f"{r['expected'] or 'unclear'} ({r['data_wait_share']:.0%} in next(){cpu})"


def _try_cell(tried: dict | None) -> str:
    if tried is None:
        return "-"
    if "speedup" not in tried:
        return f"{tried['verdict']}: {tried.get('reason') or '-'}"
    interval = "" if tried["low"] is None else f" [{tried['low']:.2f}, {tried['high']:.2f}]"
    knobs = ", ".join(f"{k}={v}" for k, v in (tried.get("knobs") or {}).items())
    predicted = "-" if tried["predicted_at_most"] is None else f"{tried['predicted_at_most']}x"
    return f"{knobs}: {tried['speedup']:.2f}x{interval}, predicted at most {predicted}, {tried['verdict']}"


def table(results: list[dict]) -> str:
    """The per-case Markdown table."""
    lines = ["| case | code | truth (how) | primary | confidence | cause | right | --try: measured (95% CI) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['origin']} | - | - | - | - | NO ({r['error']}) | - |")
            continue
        cause = r["cause"] or "-"
        if r["expected_cause"]:
            cause += f" (want {r['expected_cause']}: {'yes' if r['cause_right'] else 'NO'})"
        primary = r["primary"] + (", said failed" if r["said_failed"] else "")
        right = "-" if r["right"] is None else "yes" if r["right"] else "NO"
        lines.append(f"| {r['case']} | {r['origin']} | {_truth_cell(r)} | {primary} | {r['confidence']:.2f} | {cause} "
                     f"| {right} | {_try_cell(r['try'])} |")
    return "\n".join(lines)


def totals(results: list[dict]) -> list[str]:
    """The totals against the issue's targets, one line each."""
    clear = [r for r in results if "error" in r or r["right"] is not None]
    right = sum(bool(r.get("right")) for r in clear)
    causes = [r for r in results if r.get("cause_right") is not None]
    short = [r for r in results if r.get("expected") == "unknown" and not r.get("failed")]
    failed = [r for r in results if r.get("failed")]
    tried = [r["try"] for r in results if r.get("try") and "speedup" in r["try"]]
    kept_slower = [t for t in tried if t["verdict"] != "slower" and t["speedup"] < 1.0]
    over = [t for t in tried if t["predicted_at_most"] is not None and t["speedup"] > t["predicted_at_most"]]

    def share(n: int, of: int) -> str:
        return f"{n}/{of} ({n / of:.0%})" if of else "0/0"
    lines = [(f"- primary right: {share(right, len(clear))} of the cases with a clear ground truth (target >= "
             f"{TARGET_RIGHT:.0%}: {'met' if clear and right / len(clear) >= TARGET_RIGHT else 'NOT met'})"),
             (f"- cause right: {share(sum(r['cause_right'] for r in causes), len(causes))} of the input-bound cases "
             f"(target >= {TARGET_RIGHT:.0%})"),
             (f"- \"unknown\" on too-short runs: {share(sum(r['primary'] == 'unknown' for r in short), len(short))}; "
             f"failed commands said to have failed: {share(sum(r['said_failed'] for r in failed), len(failed))}")]
    if tried:
        lines.append(f"- --try: {len(tried)} measured; {len(kept_slower)} kept recommendations measured slower "
                     f"(target 0); {len(over)} measured above their predicted bound")
    return lines


def calibration_table(results: list[dict]) -> str:
    rows = calibration(results)
    if not rows:
        return "no verdicts with a clear truth"
    error, brier = calibration_scores(results)
    return "\n".join(["| confidence | verdicts | mean confidence | right |", "|---|---|---|---|",
                      *(f"| {b} | {n} | {mean:.2f} | {right:.0%} |" for b, n, mean, right in rows), "",
                      (f"Expected calibration error {error:.3f}, Brier score {brier:.3f} over "
                       f"{len(judged_verdicts(results))} verdicts.")])


def markdown(results: list[dict], context: dict) -> str:
    """The snippet for docs/performance.md: context, the table, the cases, the totals and calibration."""
    commit = context["commit"] or "not available (no snapshot: built cases only)"
    described = [f"- `{c.name}` ({c.origin}): {c.description}" for c in CASES if c.name in context["cases"]]
    tried = f", --try on the input-bound cases in {context['try']} pairs of windows" if context["try"] else ""
    return "\n".join([
        (f"Measured {context['date']} on {context['machine']}; load average (1 min) {context['load_before']:.2f} "
         f"before, {context['load_after']:.2f} after, {context['minutes']:.0f} min in all; pytorch/examples at "
         f"`{commit}`; `--seconds {context['seconds']:g}`{tried}."),
        "", table(results), "", "The cases:", "", *described, "", "Against the targets:", "", *totals(results), "",
        "Calibration (verdicts other than unknown, with a clear truth):", "", calibration_table(results), ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="training seconds per built case")
    parser.add_argument("--cases", help="comma-separated case names (default: all): " + ", ".join(c.name for c in CASES))
    parser.add_argument("--try", dest="try_it", action="store_true", help="also run --try on the input-bound cases")
    parser.add_argument("--try-pairs", type=int, default=2, help="pairs of --try windows per case")
    parser.add_argument("--examples", type=Path, default=EXAMPLES, help="a pytorch/examples snapshot (bare git dir)")
    parser.add_argument("--out", type=Path, help="keep the cases and write results.json here (default: a temp dir)")
    parser.add_argument("--markdown", type=Path, help="also write the docs/performance.md snippet here")
    args = parser.parse_args(argv)
    wanted = set(args.cases.split(",")) if args.cases else {c.name for c in CASES}
    unknown = wanted - {c.name for c in CASES}
    if unknown:
        parser.error(f"--cases: no case named {', '.join(sorted(unknown))}")
    commit = snapshot_commit(args.examples)
    if commit is None:
        print(f"no pytorch/examples snapshot at {args.examples}: running the built cases only", file=sys.stderr)
    chosen = [c for c in CASES if c.name in wanted and (commit or not c.example)]
    load_before, started = os.getloadavg()[0], time.monotonic()
    with tempfile.TemporaryDirectory(prefix="profile-external-") as scratch:
        work = args.out or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        results = [run_case(c, args.seconds, work, args.examples, args.try_pairs if args.try_it and c.try_it else 0)
                   for c in chosen]
        context = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "machine": f"{platform.machine()} {os.cpu_count()} cores, torch CPU", "seconds": args.seconds,
                   "load_before": load_before, "load_after": os.getloadavg()[0],
                   "try": args.try_pairs if args.try_it else 0,
                   "minutes": (time.monotonic() - started) / 60, "cases": [c.name for c in chosen]}
        (work / "results.json").write_text(json.dumps({"context": context, "results": results}, indent=1))
    text = markdown(results, context)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
