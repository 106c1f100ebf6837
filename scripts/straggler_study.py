"""Does perfwatch name a straggler rank and its cause, live, for an unmodified torchrun job; and what does
the collective-timing hook cost the step? (An evaluation, not a test: issue #13 item 4.)

Each case is a gloo job on the CPU (``--ranks``, one thread each) under ``perfwatch monitor``, whose one
exporter a real Prometheus scrapes every second with grafana/'s recording and alert rules; one rank
(``--slow-rank``) is slowed:

- ``compute``: extra matrix work in the model's forward. The zero-code timing times data wait and the
  optimizer; forward and backward are its untimed rest, so the cause expected is ``other``;
- ``data``: a sleep in the Dataset's ``__getitem__``: ``data_wait``;
- ``control``: nothing: nobody may be named.

Prometheus is polled every ``POLL_S``: the time from launching the job to the first poll at which
``perfwatch:train_straggler_cause_info`` names the slowed rank with the expected cause and the alert
``PerfwatchStragglerRank`` is pending or firing for it, and to its firing (``for: 2m``); a case ends once
it fires (or after ``--case-seconds``); every other naming seen is listed.

Overhead: the same job with nothing slowed, ``--steps`` steps, under ``perfwatch monitor`` with the hook
(B) and without it (A: ``PERFWATCH_COLLECTIVE_TIMING=0``, the rest of the step timing on), in pairs of
fresh jobs, order alternating (AB, BA, ...). A run's step time is rank 0's median of its 50-step block
means after a warm-up; the result is the median of the pairs' ratios B/A, with their spread.

    python scripts/straggler_study.py [--ranks 2] [--cases compute,data,control] [--case-seconds 180]
                                      [--pairs 10] [--steps 2000] [--json PATH]

The job (``JOB``) is written into a scratch directory and run as torchrun runs a user's script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import yaml

from perfwatch.assets import GRAFANA
from perfwatch.env import cpu_model
from perfwatch.monitoring.collective import ENABLE_ENV as COLLECTIVE_ENV
from perfwatch.proctree import kill_tree
from perfwatch.stats import iqr, median

POLL_S = 0.5
TARGET_S = 60.0  # the target: the right rank and cause named within a minute of the start
START_TIMEOUT_S = 30.0
EXPECTED = {"compute": "other", "data": "data_wait", "control": None}  # the cause each case should be named with

JOB = textwrap.dedent("""\
    import argparse, json, statistics, time
    from pathlib import Path
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, Dataset

    parser = argparse.ArgumentParser(description="one rank of the straggler study's job")
    parser.add_argument("--slow", choices=["none", "compute", "data"], default="none")
    parser.add_argument("--slow-rank", type=int, default=1)
    parser.add_argument("--slow-ms", type=float, default=4.0, help="data: the sleep in each __getitem__ (a batch)")
    parser.add_argument("--matmuls", type=int, default=6, help="compute: extra 256x256 products in each forward")
    parser.add_argument("--steps", type=int, default=0, help="this many steps; 0: until --release exists")
    parser.add_argument("--release", type=Path)
    parser.add_argument("--out", type=Path, help="a folder for each rank's steps and step time")
    args = parser.parse_args()
    WARMUP, BLOCK = 50, 50

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    slowed = rank == args.slow_rank
    torch.manual_seed(0)  # the same model on every rank

    class Batches(Dataset):  # an item is a whole batch (batch_size=None): one __getitem__ per step
        def __init__(self):
            g = torch.Generator().manual_seed(rank)
            self.items = [(torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g))
                          for _ in range(16)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, index):
            if slowed and args.slow == "data":
                time.sleep(args.slow_ms / 1000)  # slow storage
            return self.items[index]

    class Net(torch.nn.Sequential):
        def forward(self, x):
            if slowed and args.slow == "compute":
                extra = EXTRA
                for _ in range(args.matmuls):
                    extra = torch.tanh(extra @ extra)
            return super().forward(x)

    EXTRA = torch.randn(256, 256) / 16
    model = DistributedDataParallel(Net(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(Batches(), batch_size=None)

    def more(steps):
        if args.steps:
            return steps < args.steps
        if steps % 20:
            return True
        released = torch.tensor([float(args.release.exists())])
        dist.all_reduce(released, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        return not released.item()

    def batches():
        while True:
            yield from loader

    steps, blocks, mark = 0, [], None
    for inputs, targets in batches():
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
        if steps >= WARMUP and steps % BLOCK == 0:
            now = time.perf_counter()
            if mark is not None:
                blocks.append((now - mark[0]) / (steps - mark[1]))
            mark = (now, steps)
        if not more(steps):
            break
    if args.out:
        step = statistics.median(blocks) if blocks else None
        (args.out / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "steps": steps, "step_seconds": step}))
    dist.destroy_process_group()
""")


# ---------------------------------------------------------------- servers and the job


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            sys.exit(f"straggler_study: timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
    return found


class Prometheus:
    """Prometheus on a free loopback port scraping ``target`` every second, with grafana/prometheus.yml's
    rule files; its TSDB and log in ``workdir``. Stopped (by its PID) on leaving the ``with``."""

    def __init__(self, workdir: Path, target: str) -> None:
        shipped = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(GRAFANA / path) for path in shipped["rule_files"]],
                  "scrape_configs": [{"job_name": "perfwatch", "static_configs": [{"targets": [target]}]}]}
        workdir.mkdir(parents=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.command = ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                        f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={self.url[7:]}",
                        "--log.level=warn"]
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        until(self._ready, START_TIMEOUT_S, f"Prometheus to start (log: {self.log})")
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            sys.exit(f"straggler_study: Prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(self.url + "/-/ready", timeout=2).close()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def __exit__(self, *exc_info: object) -> None:
        self.process.terminate()
        self.process.wait(10)

    def api(self, path: str, **params: str) -> Any:
        return get_json(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")["data"]


@contextlib.contextmanager
def monitored_job(scratch: Path, ranks: int, job_args: list[str], env: dict[str, str],
                  port: int) -> Iterator[subprocess.Popen]:
    """``perfwatch monitor`` serving on ``port`` and running the job on ``ranks`` ranks, stopped on leaving."""
    command = [sys.executable, "-m", "perfwatch", "monitor", "--port", str(port), "--",
               sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(scratch / "job.py"), *job_args]
    with open(scratch / "job.log", "ab") as log:
        job = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=scratch,
                               env={**env, "OMP_NUM_THREADS": "1"})
    try:
        yield job
    finally:
        stop(job)


def stop(job: subprocess.Popen) -> None:
    """The monitor, torchrun and the ranks (in sessions of their own) killed by their PIDs if the job still runs."""
    if job.poll() is None:
        kill_tree(job.pid)
    job.wait()


def finished(job: subprocess.Popen, scratch: Path, timeout: float) -> None:
    """Wait for the job; a failed one ends the study with its log's tail."""
    try:
        code = job.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    if code != 0:
        tail = (scratch / "job.log").read_text(errors="replace")[-3000:]
        sys.exit(f"straggler_study: the job {'did not finish' if code is None else f'exited {code}'}:\n{tail}")


# ---------------------------------------------------------------- the cases


def namings(prometheus: Prometheus) -> tuple[set[tuple[str, str, str]], dict[tuple[str, str], str]]:
    """What the rules name now: {(rank, host, cause)} of perfwatch:train_straggler_cause_info, and the
    PerfwatchStragglerRank alerts' state by (rank, cause)."""
    causes = {(s["metric"]["rank"], s["metric"]["host"], s["metric"]["cause"])
              for s in prometheus.api("query", query="perfwatch:train_straggler_cause_info")["result"]}
    alerts = {(a["labels"]["rank"], a["labels"]["cause"]): a["state"] for a in prometheus.api("alerts")["alerts"]
              if a["labels"].get("alertname") == "PerfwatchStragglerRank"}
    return causes, alerts


def run_case(case: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """One case under a fresh Prometheus: when the slowed rank was first named right, when its alert fired,
    and whatever else was named."""
    scratch.mkdir(parents=True)
    (scratch / "job.py").write_text(JOB)
    release, host = scratch / "release", socket.gethostname()
    want = EXPECTED[case]
    right = (str(args.slow_rank), host, want)
    job_args = ["--slow", "none" if case == "control" else case, "--slow-rank", str(args.slow_rank),
                "--release", str(release)]
    seen: dict[str, Any] = {"named_s": None, "firing_s": None, "wrong": set()}
    load_before, port = os.getloadavg()[0], free_port()
    with Prometheus(scratch / "prometheus", f"127.0.0.1:{port}") as prometheus, \
            monitored_job(scratch, args.ranks, job_args, dict(os.environ), port) as job:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < args.case_seconds and seen["firing_s"] is None:
            if job.poll() is not None:
                finished(job, scratch, 0)
            causes, alerts = namings(prometheus)
            state = alerts.get((right[0], right[2])) if want else None
            if right in causes and state in ("pending", "firing"):
                seen["named_s"] = seen["named_s"] if seen["named_s"] is not None else elapsed
                if state == "firing":
                    seen["firing_s"] = elapsed
            seen["wrong"] |= {c for c in causes if c != right} | {
                (rank, host, f"alert {cause} {st}") for (rank, cause), st in alerts.items()
                if (rank, host, cause) != right}
            time.sleep(POLL_S)
        release.touch()
        finished(job, scratch, 60)
    named_right = seen["named_s"] is not None
    return {"case": case, "ranks": args.ranks, "slowed_rank": None if case == "control" else args.slow_rank,
            "expected_cause": want, "named_right": named_right if want else None,
            "seconds_to_named": seen["named_s"], "seconds_to_firing": seen["firing_s"],
            "watched_seconds": round(elapsed, 1),
            "wrong_namings": sorted(f"rank {r} ({h}): {c}" for r, h, c in seen["wrong"]),
            "ok": seen["named_s"] <= TARGET_S if named_right else (not want and not seen["wrong"]),
            "load_1m": [load_before, os.getloadavg()[0]]}


# ---------------------------------------------------------------- the hook's overhead


def step_seconds(args: argparse.Namespace, scratch: Path, hooked: bool) -> float:
    """Rank 0's step time of one fresh job of ``args.steps`` steps, with or without the hook."""
    scratch.mkdir(parents=True)
    (scratch / "job.py").write_text(JOB)
    env = {**os.environ, COLLECTIVE_ENV: "1" if hooked else "0"}
    with monitored_job(scratch, args.ranks, ["--steps", str(args.steps), "--out", str(scratch)], env,
                       free_port()) as job:
        finished(job, scratch, START_TIMEOUT_S + args.steps)
    measured = json.loads((scratch / "rank-0.json").read_text())["step_seconds"]
    if measured is None:
        sys.exit(f"straggler_study: --steps {args.steps} is too few for a step time (warm-up 50, then 50-step blocks)")
    return measured


def overhead(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """``args.pairs`` pairs of jobs without (A) and with (B) the hook, order alternating; B/A per pair."""
    pairs = []
    for index in range(args.pairs):
        order = (False, True) if index % 2 == 0 else (True, False)
        times = {hooked: step_seconds(args, scratch / f"pair-{index}-{'B' if hooked else 'A'}", hooked)
                 for hooked in order}
        pairs.append({"without_s": times[False], "with_s": times[True], "ratio": times[True] / times[False],
                      "order": "AB" if index % 2 == 0 else "BA", "load_1m": os.getloadavg()[0]})
    ratios = [p["ratio"] for p in pairs]
    return {"pairs": pairs, "median_ratio": median(ratios), "ratio_iqr": iqr(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
            "median_without_s": median([p["without_s"] for p in pairs]),
            "median_with_s": median([p["with_s"] for p in pairs])}


# ---------------------------------------------------------------- output


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown(study: dict[str, Any]) -> str:
    load = study["load_1m"]
    title = (f"Straggler study: {study['ranks']} gloo ranks on {study['cpu']}, {study['started']}, load (1 min) "
             f"{load[0]:.2f} before, {load[1]:.2f} after.")
    lines = [title, "",
             _row("case", "slowed rank", "expected cause", "named right", "s to named (pending)", "s to firing",
                  "watched s", "other namings", "ok"),
             _row("---", "---:", "---", "---", "---:", "---:", "---:", "---", "---")]
    for c in study["cases"]:
        right = "-" if c["named_right"] is None else ("yes" if c["named_right"] else "no")
        lines.append(_row(c["case"], "-" if c["slowed_rank"] is None else c["slowed_rank"],
                          c["expected_cause"] or "nobody", right, _seconds(c["seconds_to_named"]),
                          _seconds(c["seconds_to_firing"]), f"{c['watched_seconds']:.1f}",
                          "; ".join(c["wrong_namings"]) or "none", "yes" if c["ok"] else "no"))
    o = study.get("overhead")
    if o:
        lines += ["", f"Collective-timing hook, {len(o['pairs'])} interleaved pair(s) of {study['steps']}-step jobs:",
                  "", _row("step ms without", "step ms with", "median ratio with/without", "IQR", "min", "max"),
                  _row(*["---:"] * 6),
                  _row(f"{o['median_without_s'] * 1000:.3f}", f"{o['median_with_s'] * 1000:.3f}",
                       *(f"{o[key]:.4f}" for key in ("median_ratio", "ratio_iqr", "ratio_min", "ratio_max")))]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--slow-rank", type=int, default=1)
    parser.add_argument("--cases", default="compute,data,control", help="comma-separated: compute, data, control")
    parser.add_argument("--case-seconds", type=float, default=180.0, help="watch each case at most this long")
    parser.add_argument("--pairs", type=int, default=10, help="pairs of jobs for the hook's overhead; 0: none")
    parser.add_argument("--steps", type=int, default=2000, help="steps of each overhead job")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    if not set(cases) <= set(EXPECTED):
        parser.error(f"--cases {args.cases}: choose from {', '.join(EXPECTED)}")
    if not 0 <= args.slow_rank < args.ranks or args.ranks < 2:
        parser.error(f"--slow-rank {args.slow_rank} of --ranks {args.ranks}: 2 or more ranks, the slowed one among them")
    if args.pairs < 0 or args.case_seconds <= 0:
        parser.error("--pairs is 0 or more, --case-seconds more than 0")
    args.cases = cases
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    load = os.getloadavg()[0]
    study: dict[str, Any] = {"ranks": args.ranks, "steps": args.steps, "cpu": cpu_model(),
                             "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="straggler-study-") as scratch:
        study["cases"] = [run_case(case, args, Path(scratch) / case) for case in args.cases]
        if args.pairs:
            study["overhead"] = overhead(args, Path(scratch) / "overhead")
    study["load_1m"] = [load, os.getloadavg()[0]]
    if args.json:
        args.json.write_text(json.dumps(study, indent=1))
    print(markdown(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
