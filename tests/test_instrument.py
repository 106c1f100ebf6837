"""StepTimer behaviour: phases, steps, samples, listeners, bounds, CUDA timing.

Exact arithmetic uses a manual clock (``clock=`` is the timer's real seam); a few
tests use real sleeps with generous bounds. CUDA event bookkeeping runs against a
fake ``torch.cuda`` (what this machine lacks), and on a real GPU where there is one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import types

import pytest
import torch

from perfwatch.instrument import PHASES, StepRecord, StepTimer


class ManualClock:
    """A clock that moves only when told to, so phase arithmetic is exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def ticking_loader(clock: ManualClock, n: int, wait: float, shutdown: float = 0.0):
    """Yields 0..n-1, each after ``wait`` seconds; exhaustion costs ``shutdown``."""
    for i in range(n):
        clock.advance(wait)
        yield i
    clock.advance(shutdown)


# ------------------------------------------------------------------ phases


def test_phases_accumulate_real_sleeps():
    timer = StepTimer(device="cpu")
    for _ in range(3):
        with timer.step(samples=8):
            with timer.phase("forward"):
                time.sleep(0.02)
            with timer.phase("backward"):
                time.sleep(0.01)
            time.sleep(0.005)  # no phase: other
    totals = timer.totals
    assert set(totals) == set(PHASES)
    assert 0.06 <= totals["forward"] < 0.06 + 0.1
    assert 0.03 <= totals["backward"] < 0.03 + 0.1
    assert 0.015 <= totals["other"] < 0.015 + 0.1
    assert totals["h2d"] == totals["optimizer"] == totals["data_wait"] == 0.0
    assert timer.steps == 3 and timer.samples == 24
    assert sum(totals.values()) == pytest.approx(timer.wall)


def test_other_is_the_uncovered_remainder(clock):
    timer = StepTimer(device="cpu", clock=clock)
    with timer.step(samples=4):
        clock.advance(1.0)
        with timer.phase("forward"):
            clock.advance(2.0)
        clock.advance(0.5)
        with timer.phase("backward"):
            clock.advance(3.0)
    (record,) = timer.records
    assert record.wall == 6.5
    assert record.phases == {"data_wait": 0.0, "h2d": 0.0, "forward": 2.0, "backward": 3.0,
                             "optimizer": 0.0, "other": 1.5}
    assert record.index == 0 and record.start == 100.0 and record.samples == 4


def test_nested_phases_are_exclusive(clock):
    timer = StepTimer(device="cpu", clock=clock)
    with timer.step():
        with timer.phase("forward"):
            clock.advance(1.0)
            with timer.phase("h2d"):
                clock.advance(2.0)
                with timer.phase("data_wait"):
                    clock.advance(4.0)
                clock.advance(0.25)
            clock.advance(3.0)
    phases = timer.records[0].phases
    assert phases["forward"] == 4.0
    assert phases["h2d"] == 2.25
    assert phases["data_wait"] == 4.0
    assert phases["other"] == 0.0
    assert timer.wall == 10.25


def test_unknown_phase_raises_at_once():
    timer = StepTimer(device="cpu")
    with pytest.raises(ValueError, match="forwrad"):
        timer.phase("forwrad")
    with pytest.raises(ValueError, match="other"):
        timer.phase("other")  # derived, never entered
    with timer.step():
        with timer.phase("data_wait"):
            pass
    assert timer.steps == 1


def test_phase_outside_a_step_counts_nothing(clock):
    timer = StepTimer(device="cpu", clock=clock)
    with timer.phase("forward"):
        clock.advance(5.0)
    with timer.step():
        clock.advance(1.0)
    assert timer.totals["forward"] == 0.0
    assert timer.wall == 1.0


# ------------------------------------------------------------------ steps via iter()


def test_iter_charges_loader_time_to_data_wait(clock):
    timer = StepTimer(device="cpu", clock=clock)
    for _ in timer.iter(ticking_loader(clock, 3, wait=2.0, shutdown=5.0)):
        with timer.phase("forward"):
            clock.advance(1.0)
    assert timer.steps == 3
    assert timer.totals["data_wait"] == 6.0
    assert timer.totals["forward"] == 3.0
    assert timer.wall == 9.0  # the exhausting next() (shutdown) belongs to no step
    assert timer.data_wait_fraction == pytest.approx(2 / 3)
    assert [r.start for r in timer.records] == [100.0, 103.0, 106.0]


def test_iter_with_a_sleeping_loader_real_clock():
    def slow_loader():
        for i in range(3):
            time.sleep(0.02)
            yield i

    timer = StepTimer(device="cpu")
    for _ in timer.iter(slow_loader()):
        with timer.phase("forward"):
            time.sleep(0.005)
    assert timer.steps == 3
    assert 0.06 <= timer.totals["data_wait"] < 0.06 + 0.1
    assert 0.5 < timer.data_wait_fraction <= 1.0


def test_break_still_completes_the_step(clock):
    timer = StepTimer(device="cpu", clock=clock)
    for i in timer.iter(ticking_loader(clock, 10, wait=1.0)):
        with timer.phase("forward"):
            clock.advance(2.0)
        if i == 1:
            clock.advance(0.5)
            break
    assert timer.steps == 2
    assert [r.wall for r in timer.records] == [3.0, 3.5]
    assert timer.records[1].phases["other"] == 0.5


def test_close_and_exception_complete_the_step(clock):
    timer = StepTimer(device="cpu", clock=clock)
    batches = timer.iter(ticking_loader(clock, 10, wait=1.0))
    next(batches)
    clock.advance(2.0)
    batches.close()
    assert timer.steps == 1 and timer.wall == 3.0

    with pytest.raises(RuntimeError, match="boom"):
        for _ in timer.iter(ticking_loader(clock, 10, wait=1.0)):
            with timer.phase("backward"):
                clock.advance(4.0)
                raise RuntimeError("boom")
    assert timer.steps == 2
    assert timer.records[1].phases["backward"] == 4.0


def test_a_raising_loader_completes_the_step_and_leaves_the_timer_clean(clock):
    def failing_loader():
        clock.advance(1.0)
        yield 0
        clock.advance(2.0)
        raise OSError("corrupt shard")

    timer = StepTimer(device="cpu", clock=clock)
    with pytest.raises(OSError, match="corrupt shard"):
        for _ in timer.iter(failing_loader()):
            clock.advance(1.0)
    assert [r.wall for r in timer.records] == [2.0, 2.0]
    assert timer.records[1].phases["data_wait"] == 2.0
    with timer.step():  # nothing left open: the uncovered time is "other" again
        clock.advance(1.0)
    assert timer.records[2].phases["other"] == 1.0 and timer.records[2].phases["data_wait"] == 0.0


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (torch.zeros(8, 3), 8),
        ((torch.zeros(4, 2), torch.zeros(4)), 4),
        ([torch.zeros(()), torch.zeros(6, 1)], 6),  # a 0-d tensor has no batch dim
        ({"input_ids": torch.zeros(5, 7), "label": torch.zeros(5)}, 5),
        ({"meta": "x", "pair": (torch.zeros(3, 3),)}, 3),
        (["no", "tensors"], 0),
    ],
)
def test_samples_inferred_from_the_batch(batch, expected):
    timer = StepTimer(device="cpu")
    for _ in timer.iter([batch, batch]):
        pass
    assert timer.samples == 2 * expected
    assert [r.samples for r in timer.records] == [expected, expected]


def test_samples_overrides():
    timer = StepTimer(device="cpu")
    for _ in timer.iter([["a", "b", "c"]] * 2, samples=len):
        pass
    with timer.step(samples=64):
        pass
    assert timer.samples == 3 + 3 + 64


def test_a_raising_sample_counter_counts_zero(caplog):
    def broken(batch):
        raise KeyError("no size")

    timer = StepTimer(device="cpu")
    with caplog.at_level(logging.WARNING, logger="perfwatch.instrument"):
        for _ in timer.iter([torch.zeros(2, 1)] * 3, samples=broken):
            pass
    assert timer.steps == 3 and timer.samples == 0
    assert len(caplog.records) == 1


# ------------------------------------------------------------------ listeners, bounds, summary


def test_listener_called_once_per_step_and_a_raising_one_is_dropped(caplog, clock):
    seen: list[StepRecord] = []
    calls = []

    def broken(record):
        calls.append(record.index)
        raise RuntimeError("exporter down")

    timer = StepTimer(device="cpu", clock=clock)
    timer.add_listener(seen.append)
    timer.add_listener(broken)
    with caplog.at_level(logging.WARNING, logger="perfwatch.instrument"):
        for _ in timer.iter(ticking_loader(clock, 4, wait=1.0)):
            clock.advance(1.0)
    assert [r.index for r in seen] == [0, 1, 2, 3]
    assert all(isinstance(r, StepRecord) and r.wall == 2.0 for r in seen)
    assert calls == [0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "listener" in warnings[0].getMessage()


def test_records_are_bounded(clock):
    timer = StepTimer(device="cpu", history=3, clock=clock)
    for _ in timer.iter(ticking_loader(clock, 10, wait=0.5)):
        pass
    assert timer.steps == 10
    assert [r.index for r in timer.records] == [7, 8, 9]


def test_summary_is_json_serializable(clock):
    timer = StepTimer(device="cpu", clock=clock)
    empty = timer.summary()
    assert empty["steps"] == 0 and empty["data_wait_fraction"] == 0.0
    json.dumps(empty, allow_nan=False)

    for i in timer.iter(ticking_loader(clock, 4, wait=1.0)):
        with timer.phase("forward"):
            clock.advance(float(i + 1))
    summary = json.loads(json.dumps(timer.summary(), allow_nan=False))
    assert summary["steps"] == 4 and summary["wall"] == 14.0
    assert summary["totals"]["forward"] == 10.0
    assert summary["shares"]["data_wait"] == pytest.approx(4 / 14)
    assert summary["step_time_median"] == 3.5  # walls 2, 3, 4, 5
    assert summary["step_time_p90"] == pytest.approx(4.7)
    assert summary["device"] == "cpu" and summary["mode"] == "host"


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="device"):
        StepTimer(device="tpu")
    with pytest.raises(ValueError):
        StepTimer(device="cpu", history=0)


def test_auto_on_cpu_never_imports_torch():
    code = (
        "import sys\n"
        "from perfwatch.instrument import StepTimer\n"
        "timer = StepTimer()\n"
        "for _ in timer.iter(range(3)):\n"
        "    with timer.phase('forward'): pass\n"
        "assert timer.device == 'cpu' and timer.steps == 3\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_under_perfwatch_profile_a_timer_publishes_its_totals_by_itself(tmp_path):
    code = (
        "from perfwatch.instrument import StepTimer\n"
        "timer = StepTimer('cpu')\n"
        "for _ in timer.iter(range(4)):\n"
        "    with timer.phase('forward'): pass\n"
    )
    env = {**os.environ, "PERFWATCH_PROFILE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)
    [published] = tmp_path.glob("steptimer-*.json")  # written at exit, no call in the script
    assert json.loads(published.read_text())["steps"] == 4


def test_an_unwritable_profile_dir_never_reaches_the_loop(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    code = (
        "from perfwatch.instrument import StepTimer\n"
        "timer = StepTimer('cpu')\n"
        "for _ in timer.iter(range(4)):\n"
        "    pass\n"
        "print(timer.steps)\n"
    )
    env = {**os.environ, "PERFWATCH_PROFILE_DIR": str(blocked)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "4"


def train_epoch(timer, batches, model, opt, device):
    """The loop users write: every step's phases timed, data_wait from the loader."""
    for x, y in timer.iter(batches):
        with timer.phase("h2d"):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with timer.phase("forward"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        with timer.phase("backward"):
            loss.backward()
        with timer.phase("optimizer"):
            opt.step()
            opt.zero_grad()

def test_end_to_end_with_a_real_dataloader():
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    loader = DataLoader(data, batch_size=16, num_workers=0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    timer = StepTimer(device="auto")
    train_epoch(timer, loader, model, opt, "cpu")
    assert timer.device == "cpu"
    assert timer.steps == 4 and timer.samples == 64
    totals = timer.totals
    assert all(totals[p] > 0 for p in ("data_wait", "h2d", "forward", "backward", "optimizer"))
    assert sum(totals.values()) == pytest.approx(timer.wall)


# ------------------------------------------------------------------ CUDA bookkeeping on a fake device


class FakeCuda:
    """Stands in for ``torch.cuda``: events take their GPU timestamp from the host
    clock plus ``lag`` and complete only when the test says the GPU got there."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.lag = 0.0
        self.done_upto = 0  # events with seq <= done_upto are complete
        self.seq = 0
        self.syncs = 0  # device synchronizations
        self.event_waits = 0
        self.fail_record = False
        fake = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing
                self.seq, self.time = 0, None

            def record(self, stream) -> None:
                if fake.fail_record:
                    raise RuntimeError("operation not permitted when stream is capturing")
                fake.seq += 1
                self.seq, self.time = fake.seq, fake.clock() + fake.lag

            def query(self) -> bool:
                return self.seq <= fake.done_upto

            def synchronize(self) -> None:
                fake.event_waits += 1
                fake.done_upto = max(fake.done_upto, self.seq)

            def elapsed_time(self, end) -> float:
                assert self.query() and end.query(), "elapsed_time on an incomplete event"
                return (end.time - self.time) * 1000.0

        self.Event = Event

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def current_stream(self, device=None) -> str:
        return "stream"

    def synchronize(self, device=None) -> None:
        self.syncs += 1

    def complete_all(self) -> None:
        self.done_upto = self.seq


@pytest.fixture
def fake_cuda(clock, monkeypatch) -> FakeCuda:
    cuda = FakeCuda(clock)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    return cuda


def gpu_step(timer: StepTimer, clock: ManualClock, forward: float, backward: float) -> None:
    with timer.phase("forward"):
        clock.advance(forward)
    with timer.phase("backward"):
        clock.advance(backward)


def test_auto_resolves_to_cuda_and_events_resolve_lazily(clock, fake_cuda):
    timer = StepTimer(device="auto", clock=clock)
    batches = timer.iter(ticking_loader(clock, 3, wait=1.0))
    next(batches)
    assert timer.device == "cuda" and timer.mode == "events"
    with timer.phase("forward"):
        clock.advance(1.0)
        fake_cuda.lag = 3.0  # the GPU reaches the end of forward 3 s after the host launched it
    with timer.phase("backward"):
        clock.advance(1.0)
    fake_cuda.lag = 0.0
    next(batches)  # step 0 ends; its events are not done, so it stays pending
    assert timer.steps == 0 and timer.pending == 1
    fake_cuda.complete_all()
    gpu_step(timer, clock, 1.0, 1.0)
    next(batches)  # step 1 ends: step 0 resolves now, step 1 waits for its own events
    assert timer.steps == 1 and timer.pending == 1
    (first,) = timer.records
    assert first.phases["forward"] == 4.0  # GPU time, not the host's 1.0
    assert first.phases["backward"] == 1.0
    assert first.wall == 3.0 and first.phases["data_wait"] == 1.0
    assert first.phases["other"] == 0.0  # GPU time overlapping the host: clamped, never negative
    assert fake_cuda.syncs == 0 and fake_cuda.event_waits == 0  # nothing blocked the loop
    batches.close()
    timer.flush()
    assert timer.steps == 3 and [r.index for r in timer.records] == [0, 1, 2]
    assert timer.records[1].phases == {"data_wait": 1.0, "h2d": 0.0, "forward": 1.0, "backward": 1.0,
                                       "optimizer": 0.0, "other": 0.0}


def test_flush_waits_for_pending_events(clock, fake_cuda):
    timer = StepTimer(device="cuda", clock=clock)
    for _ in timer.iter(ticking_loader(clock, 3, wait=1.0)):
        gpu_step(timer, clock, 2.0, 0.5)
    assert timer.steps == 0 and timer.pending == 3
    assert timer.summary()["pending"] == 3
    timer.flush()
    assert timer.steps == 3 and timer.pending == 0 and timer.forced_syncs == 0
    assert timer.totals["forward"] == 6.0 and timer.totals["backward"] == 1.5
    assert fake_cuda.syncs == 0


def test_pending_overflow_waits_for_the_oldest_and_counts_it(clock, fake_cuda):
    timer = StepTimer(device="cuda", max_pending=2, clock=clock)
    for _ in timer.iter(ticking_loader(clock, 5, wait=1.0)):
        gpu_step(timer, clock, 1.0, 1.0)
    assert timer.forced_syncs == 3
    assert timer.steps == 3 and timer.pending == 2
    assert [r.index for r in timer.records] == [0, 1, 2]


def test_sync_mode_partitions_host_wall_exactly(clock, fake_cuda):
    timer = StepTimer(device="cuda", sync=True, clock=clock)
    for _ in timer.iter(ticking_loader(clock, 2, wait=1.0)):
        gpu_step(timer, clock, 2.0, 3.0)
        clock.advance(0.5)
    assert timer.mode == "sync" and timer.steps == 2 and timer.pending == 0
    assert fake_cuda.seq == 0  # no events
    assert fake_cuda.syncs == 2 * 4  # at each boundary that opens or closes a GPU phase
    assert timer.records[0].phases == {"data_wait": 1.0, "h2d": 0.0, "forward": 2.0, "backward": 3.0,
                                       "optimizer": 0.0, "other": 0.5}


def test_cuda_failure_falls_back_to_host_timing(clock, fake_cuda, caplog):
    timer = StepTimer(device="cuda", clock=clock)
    with caplog.at_level(logging.WARNING, logger="perfwatch.instrument"):
        for i in timer.iter(ticking_loader(clock, 3, wait=1.0)):
            fake_cuda.fail_record = i == 1
            gpu_step(timer, clock, 2.0, 1.0)
    assert timer.mode == "host" and timer.steps == 3 and timer.pending == 0
    assert timer.totals["forward"] == 6.0
    assert len([r for r in caplog.records if "CUDA" in r.getMessage()]) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sync", [False, True])
def test_real_cuda_loop(sync):
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [(torch.randn(256, 512), torch.randint(0, 10, (256,))) for _ in range(20)]
    timer = StepTimer(device="auto", sync=sync)
    train_epoch(timer, batches, model, opt, dev)
    timer.flush()
    assert timer.device == "cuda" and timer.mode == ("sync" if sync else "events")
    assert timer.steps == 20 and timer.pending == 0 and timer.samples == 20 * 256
    assert all(timer.totals[p] > 0 for p in ("h2d", "forward", "backward", "optimizer"))
    assert timer.forced_syncs == 0
