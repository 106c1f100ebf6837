"""How often `perfwatch profile` is right, on cases built from issue #15's failures (a skeleton).

Each case is a small training script written here, run unmodified under the real `perfwatch profile`;
its ground truth is measured independently in the same run: the script times its own DataLoader
iterator with ``time.perf_counter`` (the share of the loop's wall time spent in ``next()``), or is
known by construction (a crash before training, a run too short to judge). Reported: primary right,
cause right (where the case knows its cause), "unknown" on the runs that should get it, confidence
calibration (verdicts at confidence c right about c of the time), and with ``--try`` the measured
against the predicted gain, and whether a kept change measured slower.

Still to come (issue #15, item 6): a snapshot of pytorch/examples with synthetic stand-ins for their
data sets, and the table in docs/performance.md. Run under ``nice``; one case takes its ``--seconds``
plus start-up (and about 4 x that again with ``--try``)::

    nice -n 19 python scripts/profile_external.py --seconds 8 --out /tmp/external
    nice -n 19 python scripts/profile_external.py --seconds 2 --cases short,crash   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

CLEAR_INPUT_SHARE = 0.5  # the iterator's share of wall time at or above which data loading is the truth
CLEAR_COMPUTE_SHARE = 0.2  # at or below which it is not (the loop computes)

# Prepended to every case: the script's own timing of its DataLoader iterator, written at exit.
TRUTH = """\
import atexit, json, os, time
_truth = {"data_wait": 0.0, "first": None, "steps": 0}
def timed(loader):
    it = iter(loader)
    while True:
        started = time.perf_counter()
        _truth["first"] = _truth["first"] or started
        try:
            batch = next(it)
        except StopIteration:
            return
        _truth["data_wait"] += time.perf_counter() - started
        _truth["steps"] += 1
        yield batch
def _write():
    wall = time.perf_counter() - _truth["first"] if _truth["first"] else 0.0
    with open(os.environ["TRUTH_FILE"], "w") as f:
        json.dump({"data_wait": _truth["data_wait"], "wall": wall, "steps": _truth["steps"]}, f)
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


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # the script after TRUTH; {seconds} and {workers} filled in
    primary: str | None = None  # known by construction; None: from the measured iterator share
    cause: str | None = None  # the input_bound finding's cause it should get
    workers: int = 0
    loop: bool = True  # append LOOP to the source
    shell: bool = False  # run as bash -c "python gen.py && python train.py"


CASES = (
    Case("decode_inline", DECODE, cause="inline_cpu"),
    Case("decode_2_workers", DECODE, workers=2),
    Case("remote_inline", REMOTE, cause="inline_blocked"),
    Case("compute", COMPUTE),
    Case("lbfgs_float64", LBFGS, primary="compute", loop=False),
    Case("generator_then_train", COMPUTE, shell=True),
    Case("short", SHORT, primary="unknown", loop=False),
    Case("crash", CRASH, primary="unknown", loop=False),
)

GENERATOR = "import time\nend = time.monotonic() + 1.2\nwhile time.monotonic() < end:\n    sum(range(10000))\n"


def run_case(case: Case, seconds: float, work: Path, try_it: bool) -> dict:
    """Write the case's script, profile it with the real command, and compare with its ground truth."""
    here = work / case.name
    here.mkdir(parents=True)
    body = case.source.format(seconds=seconds, workers=case.workers) + (LOOP.format(seconds=seconds) if case.loop
                                                                        else "")
    (here / "train.py").write_text(TRUTH + textwrap.dedent(body))
    (here / "gen.py").write_text(GENERATOR)
    train = f"{sys.executable} train.py"
    command = ["bash", "-c", f"{sys.executable} gen.py && {train}"] if case.shell else train.split()
    out = here / "out"
    options = ["--try", "--try-pairs", "2", "--try-seconds", str(max(1.0, seconds / 2))] if try_it else []
    env = {**os.environ, "TRUTH_FILE": str(here / "truth.json")}
    done = subprocess.run([sys.executable, "-m", "perfwatch", "profile", "--out", str(out), *options, "--", *command],
                          cwd=here, env=env, capture_output=True, text=True, timeout=600, check=False)
    report = json.loads((out / "report.json").read_text())
    truth = json.loads((here / "truth.json").read_text()) if (here / "truth.json").exists() else None
    share = truth["data_wait"] / truth["wall"] if truth and truth["wall"] > 0 else None
    expected = case.primary or _primary_of(share)
    found = next((f for f in report["findings"] if f["id"] == "input_bound"), None)
    cause = found["evidence"]["cause"] if found else None
    tried = report.get("try")
    return {"case": case.name, "exit_code": done.returncode, "data_wait_share": share, "expected": expected,
            "primary": report["bottleneck"]["primary"], "confidence": report["bottleneck"]["confidence"],
            "right": None if expected is None else report["bottleneck"]["primary"] == expected,
            "expected_cause": case.cause, "cause": cause,
            "cause_right": None if case.cause is None else cause == case.cause,
            "try": None if not tried or tried.get("measured") is None else {
                "measured": tried["measured"]["speedup"], "low": tried["measured"]["low"],
                "predicted_at_most": tried["predicted_at_most"], "verdict": tried["verdict"]}}


def _primary_of(share: float | None) -> str | None:
    if share is None:
        return None
    if share >= CLEAR_INPUT_SHARE:
        return "data_loading"
    return "compute" if share <= CLEAR_COMPUTE_SHARE else None  # in between: no clear ground truth


def calibration(results: list[dict]) -> list[tuple[str, int, float]]:
    """(confidence bin, verdicts in it, share right) over the cases with a clear truth and a verdict."""
    bins = [(0.0, 0.5), (0.5, 0.8), (0.8, 0.9), (0.9, 1.01)]
    judged = [r for r in results if r["right"] is not None and r["primary"] != "unknown"]
    rows = []
    for low, high in bins:
        inside = [r for r in judged if low <= r["confidence"] < high]
        if inside:
            rows.append((f"{low:.1f}-{min(high, 1.0):.1f}", len(inside), sum(r["right"] for r in inside) / len(inside)))
    return rows


def table(results: list[dict]) -> str:
    lines = ["| case | data wait (measured) | expected | primary | confidence | cause | right | --try |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        share = "-" if r["data_wait_share"] is None else f"{r['data_wait_share']:.0%}"
        tried = "-" if r["try"] is None else (f"{r['try']['measured']:.2f}x (at most {r['try']['predicted_at_most']}x, "
                                               f"{r['try']['verdict']})")
        cause = r["cause"] or "-"
        if r["expected_cause"]:
            cause += " (want " + r["expected_cause"] + ")"
        lines.append(f"| {r['case']} | {share} | {r['expected'] or 'unclear'} | {r['primary']} | {r['confidence']:.2f} "
                     f"| {cause} | {'-' if r['right'] is None else 'yes' if r['right'] else 'NO'} | {tried} |")
    clear = [r for r in results if r["right"] is not None]
    causes = [r for r in results if r["cause_right"] is not None]
    lines += ["", (f"primary right: {sum(r['right'] for r in clear)}/{len(clear)} cases with a clear ground truth; "
                   f"cause right: {sum(r['cause_right'] for r in causes)}/{len(causes)}"),
              "calibration: " + ("; ".join(f"confidence {b}: {n} verdicts, {right:.0%} right"
                                           for b, n, right in calibration(results)) or "no verdicts")]
    slower = [r for r in results if r["try"] and r["try"]["verdict"] != "slower" and r["try"]["measured"] < 1.0]
    if any(r["try"] for r in results):
        lines.append(f"--try: {len(slower)} kept changes measured slower")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="training seconds per case")
    parser.add_argument("--cases", help="comma-separated case names (default: all): " + ", ".join(c.name for c in CASES))
    parser.add_argument("--try", dest="try_it", action="store_true", help="also run --try on each case")
    parser.add_argument("--out", type=Path, help="keep the cases and write results.json here (default: a temp dir)")
    args = parser.parse_args(argv)
    wanted = set(args.cases.split(",")) if args.cases else {c.name for c in CASES}
    unknown = wanted - {c.name for c in CASES}
    if unknown:
        parser.error(f"--cases: no case named {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="profile-external-") as scratch:
        work = args.out or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        results = [run_case(case, args.seconds, work, args.try_it) for case in CASES if case.name in wanted]
        (work / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
