"""``perfwatch profile``: py-spy output parsing and phase attribution on literal stacks, the
StepTimer channel, and the real command end to end with every fault a user can hit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import run_perfwatch

from perfwatch.channel import publish_timer, read_timer_summaries
from perfwatch.instrument import StepTimer
from perfwatch.profile.attribution import attribute, stack_phase
from perfwatch.profile.pyspy import may_trace
from perfwatch.profile.rows import busy_threads, intra_op_threads
from perfwatch.profile.stacks import Frame, Stack, parse_collapsed

ZOO = Path(__file__).parent / "zoo"
SITE = "/usr/lib/python3.11/site-packages"


def f(function: str, file: str, line: int = 1) -> Frame:
    return Frame(function, file, line)


LOOP = (f("<module>", "/home/u/train.py", 40), f("train", "/home/u/train.py", 30))
NEXT = f("_BaseDataLoaderIter.__next__", f"{SITE}/torch/utils/data/dataloader.py", 733)
CALL = f("Module._call_impl", f"{SITE}/torch/nn/modules/module.py", 1750)
BACKWARD = f("Tensor.backward", f"{SITE}/torch/_tensor.py", 626)
STEP = f("Optimizer.profile_hook_step.<locals>.wrapper", f"{SITE}/torch/optim/optimizer.py", 517)
IMPORT = f("_find_and_load", "<frozen importlib._bootstrap>", 1176)
WORKER = (f("_worker_loop", f"{SITE}/torch/utils/data/_utils/worker.py", 350),)
FETCH = f("_MapDatasetFetcher.fetch", f"{SITE}/torch/utils/data/_utils/fetch.py", 52)
QUEUE_GET = f("Queue.get", "/usr/lib/python3.11/multiprocessing/queues.py", 103)
LBFGS_STEP = f("LBFGS.step", f"{SITE}/torch/optim/lbfgs.py", 330)
CONTEXT = f("decorate_context", f"{SITE}/torch/utils/_contextlib.py", 120)
CLOSURE = f("train.<locals>.closure", "/home/u/train.py", 22)


# ---------------------------------------------------------------- parsing


def test_parse_collapsed_reads_processes_threads_and_frames():
    text = textwrap.dedent("""\
        process 10:"bash run.sh";process 11:"python train.py --tag a;b";thread (11): MainThread;<module> (/t/train.py:3);train (/t/train.py:9) 42
        process 10:"bash run.sh";process 11:"python train.py --tag a;b";thread (12): Thread-1 (loop) 7
        thread (0x7f3a): MainThread;f (/t/x.py:1) 3
        not a stack line
        """)
    first, second, third = parse_collapsed(text)
    assert (first.pid, first.tid, first.thread, first.count) == (11, 11, "MainThread", 42)
    assert first.frames == (Frame("<module>", "/t/train.py", 3), Frame("train", "/t/train.py", 9))
    assert (second.pid, second.tid, second.thread, second.frames, second.count) == (11, 12, "Thread-1 (loop)", (), 7)
    assert (third.pid, third.tid) == (None, 0x7F3A)


# ---------------------------------------------------------------- attribution


@pytest.mark.parametrize("frames, phase", [
    (LOOP + (NEXT, FETCH), "data_loading"),
    (LOOP + (NEXT, FETCH, CALL), "data_loading"),  # a Module transform inside the Dataset: the loader's time
    (LOOP + (CALL, f("Linear.forward", f"{SITE}/torch/nn/modules/linear.py")), "forward"),
    (LOOP + (f("cross_entropy", f"{SITE}/torch/nn/functional.py"),), "forward"),
    (LOOP + (BACKWARD, f("_engine_run_backward", f"{SITE}/torch/autograd/graph.py")), "backward"),
    (LOOP + (STEP, f("_single_tensor_adam", f"{SITE}/torch/optim/adam.py")), "optimizer"),
    (LOOP + (STEP, IMPORT), "startup"),  # a first step's lazy import is a one-time cost
    (LOOP[:1] + (IMPORT,), "startup"),
    ((), "startup"),
    ((f("finalize._exitfunc", "/usr/lib/python3.11/weakref.py"), f("_del_library", f"{SITE}/torch/library.py")),
     "startup"),  # shut-down: atexit handlers and finalizers
    ((f("_run_module_as_main", "/usr/lib/python3.11/runpy.py"), f("_run_code", "/usr/lib/python3.11/runpy.py"),
      f("<module>", "/home/u/train.py"), CALL), "forward"),  # python -m
    (LOOP + (f("save", f"{SITE}/torch/serialization.py"),), "checkpoint"),
    (LOOP + (f("Logger.info", "/usr/lib/python3.11/logging/__init__.py"),), "logging"),
    (LOOP + (f("synchronize", f"{SITE}/torch/cuda/__init__.py"),), "sync"),
    (LOOP + (f("Module.to", f"{SITE}/torch/nn/modules/module.py"),), "host_to_device"),
    # LBFGS: forward and backward run in the script's closure, called back by optimizer.step(closure)
    (LOOP + (STEP, LBFGS_STEP, CONTEXT, CLOSURE, CALL, f("Linear.forward", f"{SITE}/torch/nn/modules/linear.py")),
     "forward"),
    (LOOP + (STEP, LBFGS_STEP, CONTEXT, CLOSURE, BACKWARD), "backward"),
    (LOOP + (STEP, LBFGS_STEP, f("_strong_wolfe", f"{SITE}/torch/optim/lbfgs.py")), "optimizer"),  # its own work
    (LOOP + (STEP, LBFGS_STEP, CONTEXT, CLOSURE, f("Optimizer.zero_grad", f"{SITE}/torch/optim/optimizer.py")),
     "optimizer"),
])
def test_the_outermost_known_frame_decides_the_phase(frames, phase):
    assert stack_phase(frames, source_line=lambda file, line: "") == phase


@pytest.mark.parametrize("line, phase", [
    ("    x, y = x.to(device, non_blocking=True), y.to(device)", "host_to_device"),
    ("    x = x.cuda()", "host_to_device"),
    ("    predictions.append(out.to('cpu'))", "sync"),  # to the host: waits for the device, copies nothing to it
    # casts copy within the memory the tensor is in (on a GPU: device to device), not host to device
    ("    x = x.to(torch.bfloat16)", "copy"),
    ("    x = x.to(dtype=torch.float16, non_blocking=True)", "copy"),
    ("    images = images.to(memory_format=torch.channels_last)", "copy"),
    ("    logits = logits.float()", "copy"),
    ("    x = x.to(device, torch.float16)", "host_to_device"),  # to a device, and a cast on the way
    ("    running += loss.item()", "sync"),
    ("    print(f'step {i}')", "logging"),
    ("    total += 1", "other"),
])
def test_c_calls_without_frames_are_told_by_the_source_line(line, phase):
    assert stack_phase(LOOP, source_line=lambda file, lineno: line) == phase


def test_attribute_finds_the_training_process_its_workers_and_the_gil_shares():
    def s(pid, tid, frames, count, thread="MainThread"):
        return Stack(pid, tid, thread, frames, count)

    wall = [
        s(11, 11, LOOP + (NEXT,), 400), s(11, 11, LOOP + (CALL,), 300), s(11, 11, LOOP + (BACKWARD,), 200),
        s(11, 11, LOOP + (STEP,), 100), s(11, 11, LOOP[:1] + (IMPORT,), 250),
        s(11, 13, (f("Thread.run", "/usr/lib/python3.11/threading.py"),), 1000, thread="pin"),
        s(12, 12, LOOP + (NEXT,) + WORKER + (FETCH,), 800), s(12, 12, LOOP + (NEXT,) + WORKER + (QUEUE_GET,), 200),
    ]
    gil = [s(None, 11, LOOP + (NEXT,), 8), s(None, 11, LOOP + (CALL,), 30), s(None, 13, (), 20, thread="pin")]
    a = attribute(wall, gil, launched_pid=11, rate=100, gil_rate=10, source_line=lambda file, line: "")
    assert a.training_pid == 11 and a.worker_pids == (12,) and a.python_threads == 2
    e = a.evidence
    assert e.phases["data_loading"] == 400 and e.phases["forward"] == 300 and e.startup == 250 and e.total == 1000
    assert e.workers == {"fetch": 800, "waiting_for_indices": 200}
    assert e.gil["data_loading"] == pytest.approx(0.2)  # 0.8 s with the GIL of 4 s in data loading
    assert e.gil["forward"] == pytest.approx(1.0)
    assert e.gil_other_threads == pytest.approx(2.0 / 12.5)  # 2 s of the 12.5 s the main thread was sampled
    assert a.top_functions[0]["function"] == "_BaseDataLoaderIter.__next__"
    assert a.top_functions[0]["self_share"] == 0.4 and a.top_functions[0]["phase"] == "data_loading"


def test_attribute_without_a_python_main_thread_is_none():
    assert attribute([], [], launched_pid=10, rate=100, gil_rate=10) is None


def test_intra_op_threads_come_from_the_environment_or_the_busy_threads():
    assert busy_threads({1: 9.0, 2: 4.0, 3: 0.5}, seconds=10.0) == 2  # >= 10% of a core each
    assert busy_threads({}, seconds=10.0) is None
    assert intra_op_threads({"OMP_NUM_THREADS": "4"}, busy=2) == (4, "OMP_NUM_THREADS")
    assert intra_op_threads({}, busy=2) == (2, "busy threads of the training process")
    assert intra_op_threads({"OMP_NUM_THREADS": "x"}, busy=None) == (None, "unknown")


def test_may_trace_its_own_process():
    assert may_trace(os.getpid())


# ---------------------------------------------------------------- the StepTimer channel


def test_publish_timer_writes_summaries_that_profile_sums(tmp_path, monkeypatch):
    monkeypatch.delenv("PERFWATCH_PROFILE_DIR", raising=False)
    assert publish_timer(StepTimer("cpu")) is None  # not under `perfwatch profile`: nothing to do
    ticks = iter(range(1000))
    paths = []
    for _ in range(2):
        timer = StepTimer("cpu")
        paths.append(publish_timer(timer, tmp_path, every=0.5, clock=lambda: next(ticks)))
        for _ in timer.iter(range(5)):
            with timer.phase("forward"):
                pass
    assert all(path.exists() for path in paths)
    total = read_timer_summaries(tmp_path, os.getpid())
    assert total["timers"] == 2 and total["steps"] >= 8 and set(total["totals"]) >= {"data_wait", "forward"}
    assert read_timer_summaries(tmp_path, pid=1) == total  # no file of that pid: every process's
    assert read_timer_summaries(tmp_path / "none", pid=1) is None


# ---------------------------------------------------------------- the command, end to end


def profile(tmp_path: Path, *args: str, command: list[str], env: dict | None = None, timeout: float = 120):
    out = tmp_path / "out"
    result = run_perfwatch("profile", "--out", str(out), *args, "--", *command, cwd=tmp_path, env=env,
                           timeout=timeout)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return result, report, out


def script(tmp_path: Path, source: str) -> list[str]:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(source))
    return [sys.executable, str(path)]


def messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("perfwatch:")]


BUSY = """\
import sys, time
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    sum(range(10000))
"""


def test_command_not_found_is_one_line_and_exit_2(tmp_path):
    result, report, out = profile(tmp_path, command=["no-such-command-xyz", "--flag"])
    assert result.returncode == 2
    assert messages(result.stderr) == ["perfwatch: error: command not found: no-such-command-xyz"]
    assert report is None and not out.exists()


def test_an_unwritable_output_directory_is_one_line_and_exit_2_before_launching(tmp_path):
    marker = tmp_path / "ran"
    command = script(tmp_path, f"open({str(marker)!r}, 'w').close()")
    for out in ("/sys/perfwatch-out", str(tmp_path / "script.py" / "out")):  # read-only fs; a file as parent
        result = run_perfwatch("profile", "--out", out, "--", *command, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        (line,) = messages(result.stderr)
        assert line.startswith(f"perfwatch: error: output directory {out} is not writable")
    assert not marker.exists()


def test_a_failing_command_keeps_its_exit_code_and_still_gets_a_report(tmp_path):
    command = script(tmp_path, BUSY.format(seconds=1.5) + "print('out', flush=True)\nsys.exit(7)\n")
    result, report, out = profile(tmp_path, command=command)
    assert result.returncode == 7 and "out" in result.stdout
    assert report["run"]["exit_code"] == 7 and report["run"]["ended_by"] == "exited"
    assert report["bottleneck"]["primary"] == "unknown"  # no training step: never a guess
    assert report["bottleneck"]["basis"].startswith("the command failed (exit code 7) before training")
    assert (out / "report.md").read_text().startswith("# perfwatch profile:")


def test_duration_with_stop_interrupts_the_command_and_keeps_its_exit_code(tmp_path):
    command = script(tmp_path, """
        import sys
        try:
            while True:
                sum(range(10000))
        except KeyboardInterrupt:
            sys.exit(5)
    """)
    started = time.monotonic()
    result, report, out = profile(tmp_path, "--duration", "2", "--stop-at-duration", command=command)
    assert result.returncode == 5, result.stderr
    assert time.monotonic() - started < 30
    assert report["run"]["ended_by"] == "duration" and report["run"]["stopped_by_perfwatch"] is True
    assert report["run"]["exit_code"] == 5  # its own KeyboardInterrupt handler ran: SIGINT came first
    assert report["run"]["seconds"] == pytest.approx(2.0, abs=1.0)


def test_duration_with_keep_running_reports_early_and_then_waits_for_the_command(tmp_path):
    finished, page = tmp_path / "finished", tmp_path / "out" / "report.html"  # report.html is written last
    command = script(tmp_path, f"""
        import os, sys, time
        end = time.monotonic() + 60
        while not os.path.exists({str(page)!r}) and time.monotonic() < end:
            sum(range(10000))
        open({str(finished)!r}, 'w').close()
        sys.exit(4)
    """)
    result, report, out = profile(tmp_path, "--duration", "1.5", command=command)
    assert result.returncode == 4
    assert report["run"]["ended_by"] == "duration" and report["run"]["stopped_by_perfwatch"] is False
    assert report["run"]["exit_code"] is None  # still running when the report was written
    assert (out / "report.json").stat().st_mtime < finished.stat().st_mtime


def test_no_pyspy_gives_a_collector_only_diagnosis(tmp_path):
    result, report, out = profile(tmp_path, "--no-pyspy", command=script(tmp_path, BUSY.format(seconds=1.5)))
    assert result.returncode == 0
    assert report["pyspy"]["status"] == "disabled" and report["bottleneck"]["source"] == "collector"
    assert report["bottleneck"]["shares"] == {} and report["bottleneck"]["primary"] == "unknown"
    assert len((out / "collector.jsonl").read_text().splitlines()) >= 3


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_when_pyspy_cannot_attach_it_says_so_once_and_diagnoses_from_the_collector(tmp_path):
    # Without CAP_SYS_PTRACE, a process that made itself non-dumpable (as hardened services
    # do) cannot be traced even by its own user: py-spy's attach is denied, as in a container.
    command = script(tmp_path, """
        import ctypes, time
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
        end = time.monotonic() + 4
        while time.monotonic() < end:
            sum(range(10000))
    """)
    out = tmp_path / "out"
    result = subprocess.run(["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", sys.executable,
                             "-m", "perfwatch", "profile", "--out", str(out), "--", *command],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    denied = [line for line in messages(result.stderr) if "py-spy" in line]
    assert len(denied) == 1 and "cannot attach" in denied[0] and "collector-only" in denied[0]
    report = json.loads((out / "report.json").read_text())
    assert report["pyspy"]["status"] == "permission denied" and report["bottleneck"]["source"] == "collector"


def test_a_steptimer_in_the_script_gives_exact_phase_shares(tmp_path):
    command = script(tmp_path, """
        import time
        from perfwatch.instrument import StepTimer
        from perfwatch.channel import publish_timer

        timer = StepTimer("cpu")
        publish_timer(timer)  # the timer already publishes itself: an old-style extra call must not count twice
        for batch in timer.iter(range(30)):
            with timer.phase("data_wait"):
                time.sleep(0.03)
            with timer.phase("forward"):
                time.sleep(0.01)
    """)
    result, report, out = profile(tmp_path, command=command)
    assert result.returncode == 0, result.stderr
    b = report["bottleneck"]
    assert b["source"] == "steptimer" and b["samples"] == 30 and b["primary"] == "data_loading"
    assert b["shares"]["data_loading"] == pytest.approx(0.75, abs=0.1)
    assert report["steptimer"]["steps"] == 30


@pytest.mark.slow
@pytest.mark.parametrize("zoo, steps, cause", [("transform_bound", 50, "inline_cpu"), ("storage_bound", 25, "storage")])
def test_profiling_a_zoo_script_finds_its_injected_bottleneck(tmp_path, zoo, steps, cause):
    command = [sys.executable, str(ZOO / f"{zoo}.py"), "--steps", str(steps)]
    result, report, out = profile(tmp_path, command=command)
    assert result.returncode == 0, result.stderr
    assert "zoo-result" in result.stdout  # the command's own output passes through
    b = report["bottleneck"]
    # the injected step timing measures the data wait exactly; py-spy's stacks still give the cause
    assert b["primary"] == "data_loading" and b["source"] == "steptimer" and b["confidence"] >= 0.8
    assert report["steptimer"]["injected"] and report["steptimer"]["steps"] >= steps - 1
    input_bound = next(f for f in report["findings"] if f["id"] == "input_bound")
    assert input_bound["severity"] == "high" and input_bound["evidence"]["cause"] == cause
    assert "num_workers" in [r["id"] for r in report["recommendations"]]
    assert {"pyspy-wall.txt", "pyspy-gil.txt", "collector.jsonl", "report.md"} <= set(report["artifacts"])
    markdown = (out / "report.md").read_text()
    assert "**Primary bottleneck: data_loading**" in markdown and "num_workers" in markdown
    if zoo == "storage_bound":  # the workers' own stacks: busy fetching (blocked in the dataset)
        assert len(report["pyspy"]["worker_pids"]) == 2
        assert report["measurements"]["stacks"]["workers"]["fetch"] > 0


@pytest.mark.slow
def test_torch_profiler_opt_in_keeps_the_top_operators(tmp_path):
    command = script(tmp_path, """
        import time, torch
        model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        end = time.monotonic() + 3
        while time.monotonic() < end:
            model(torch.randn(32, 128)).sum().backward()
    """)
    result, report, out = profile(tmp_path, "--torch-profiler", "--duration", "1", command=command)
    assert result.returncode == 0, result.stderr
    ops = {op["name"] for op in report["torch_profiler"]["ops"]}
    assert ops & {"aten::addmm", "aten::mm", "aten::linear"}
    assert (out / "torch-trace.json").exists() and not (out / ".hooks").exists()
