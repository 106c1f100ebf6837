"""The straggler verdict on literal windows, and the collective timing's comm hook on a real
DDP model in this process (gloo, one rank): what it exports under ``perfwatch.monitor``,
that it computes what DDP computes, and how it steps aside (a hook of the user's own, a
model that is not DDP, a failure inside it). The two-rank job is tests/test_straggler_ddp.py."""

from __future__ import annotations

import logging
import socket

import pytest
from helpers import assert_promtool_clean, samples, scrape, value

from perfwatch.monitoring import collective
from perfwatch.monitoring.session import monitor
from perfwatch.monitoring.straggler import UNKNOWN, RankWindow, verdict

HOST = socket.gethostname()


def window(rank: str, work_ms: float, wait_ms: float, steps: int = 100, **phase_ms: float) -> RankWindow:
    """A rank's window from per-step milliseconds (phases as given, the others 0)."""
    return RankWindow(rank=rank, steps=steps, work_seconds=work_ms * steps / 1000, wait_seconds=wait_ms * steps / 1000,
                      phase_seconds={phase: ms * steps / 1000 for phase, ms in phase_ms.items()},
                      timer_steps=steps if phase_ms else 0, host=f"node{rank}")


# ---------------------------------------------------------------- the verdict, pure


def test_the_rank_that_works_most_and_waits_least_is_named_with_its_phase():
    # Rank 2 spends 30 ms more in forward; the others wait those 30 ms inside their backward.
    ranks = [window(r, work_ms=100, wait_ms=35, data_wait=10, forward=30, backward=35 + 40, optimizer=20)
             for r in ("0", "1", "3")]
    ranks.insert(2, window("2", work_ms=130, wait_ms=5, data_wait=10, forward=60, backward=5 + 40, optimizer=20))
    judged = verdict(ranks)
    assert (judged.rank, judged.host, judged.cause) == ("2", "node2", "forward")
    assert judged.excess == pytest.approx(0.030)
    assert judged.scores == pytest.approx({"0": 0.0, "1": 0.0, "2": 0.3, "3": 0.0})
    assert judged.says.startswith("rank 2 (host node2) is the straggler: it works +30% per step")


def test_slow_backward_is_named_once_the_wait_is_taken_out_of_the_others_backward():
    # Raw backward is *longer* on the fast ranks (it holds their wait); their own compute is shorter.
    fast = [window(r, work_ms=50, wait_ms=25, forward=10, backward=25 + 20) for r in ("0", "1")]
    slow = window("2", work_ms=75, wait_ms=2, forward=10, backward=2 + 45)
    judged = verdict([*fast, slow])
    assert (judged.rank, judged.cause) == ("2", "backward")
    assert judged.excess == pytest.approx(0.025)


def test_slow_data_is_named_data_wait():
    judged = verdict([window("0", 40, 30, data_wait=1, forward=20, backward=30 + 19),
                      window("1", 70, 1, data_wait=31, forward=20, backward=1 + 19)])
    assert (judged.rank, judged.cause) == ("1", "data_wait")  # 2 ranks: the median is their mean


def test_no_straggler_when_no_rank_works_clearly_longer():
    judged = verdict([window("0", 100, 10, forward=50), window("1", 104, 7, forward=54), window("2", 99, 11)])
    assert (judged.rank, judged.cause, judged.excess) == (None, None, None)
    assert judged.scores["1"] == pytest.approx(0.04)
    assert judged.says.startswith("no straggler: the most working rank (1) works +4% per step")


def test_no_straggler_when_the_most_working_rank_does_not_wait_least():
    # Inconsistent with a levelling all-reduce (e.g. the counters of different spans): not judged.
    assert verdict([window("0", 100, 10), window("1", 150, 20), window("2", 100, 5)]).rank is None


def test_without_phase_timing_the_cause_is_unknown_not_guessed():
    judged = verdict([window("0", 50, 30), window("1", 80, 1)])
    assert (judged.rank, judged.cause, judged.excess) == ("1", UNKNOWN, None)
    assert "cause is unknown" in judged.says


def test_a_rank_without_timed_steps_sits_out_and_one_rank_is_no_verdict():
    dead = RankWindow(rank="1", steps=0, work_seconds=0.0, wait_seconds=0.0)
    judged = verdict([window("0", 50, 5), dead])
    assert (judged.rank, judged.scores) == (None, {})
    assert judged.says == "1 rank(s) with timed all-reduces in the window: a straggler needs 2 or more"
    assert verdict([window("0", 50, 30), dead, window("2", 80, 1)]).rank == "2"


# ---------------------------------------------------------------- the hook, one real rank

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel


@pytest.fixture
def group(tmp_path):
    """A gloo process group of one rank in this process, destroyed after the test."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def ddp(seed: int = 0, **options: object) -> DistributedDataParallel:
    torch.manual_seed(seed)
    layers = (torch.nn.Linear(16, 512), torch.nn.ReLU(), torch.nn.Linear(512, 600), torch.nn.ReLU(),
              torch.nn.Linear(600, 4))  # DDP's first bucket takes 1 MB, its others here a few parameters
    return DistributedDataParallel(torch.nn.Sequential(*layers), bucket_cap_mb=0.001, **options)


def train(model: torch.nn.Module, steps: int) -> list[torch.Tensor]:
    """``steps`` SGD steps on fixed batches; the parameters after them."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model(torch.randn(8, 16, generator=generator)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def said(caplog) -> list[tuple[int, str]]:
    """What the collective timing logged (other parts of the monitor have their own say)."""
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == collective.log.name]


def collective_series(text: str) -> dict:
    return {key: v for key, v in samples(text).items()
            if key[0].startswith(("perfwatch_train_collective", "perfwatch_train_rank_work"))}


def test_monitor_exports_work_and_wait_of_a_ddp_model_and_stops_counting_on_exit(group, caplog):
    model = ddp()
    with caplog.at_level(logging.INFO, logger="perfwatch"), monitor(port=0, model=model) as mon:
        train(model, 6)
        text = scrape(mon.url)
    assert said(caplog) == []  # nothing to say for a DDP model
    labels = {"rank": "0", "host": HOST}
    assert value(text, "perfwatch_train_collective_steps_total", **labels) == 5  # the first step is the origin
    work = value(text, "perfwatch_train_rank_work_seconds_total", **labels)
    wait = value(text, "perfwatch_train_collective_wait_seconds_total", **labels)
    assert work > 0 and wait >= 0
    assert_promtool_clean(text)
    timing = collective.install(model)  # the same hook, counting again (as a second monitor() would)
    assert timing is not None and timing.totals().steps == 5
    timing.stop()
    train(model, 3)  # outside any monitor: the hook only forwards
    assert timing.totals().steps == 5


@pytest.mark.parametrize("options", [{}, {"find_unused_parameters": True}, {"static_graph": True},
                                     {"gradient_as_bucket_view": True}], ids=lambda o: ",".join(o) or "default")
def test_the_hook_computes_exactly_what_ddp_computes(group, options):
    hooked = ddp(**options)  # in several buckets (as the next test sees)
    timing = collective.install(hooked)
    assert timing is not None
    assert torch.equal(torch.cat([p.flatten() for p in train(hooked, 4)]),
                       torch.cat([p.flatten() for p in train(ddp(**options), 4)]))
    assert timing.mode == "host" and timing.totals().steps == 3


def test_accumulation_steps_under_no_sync_fold_into_the_next_all_reduces_work(group):
    model = ddp()
    timing = collective.install(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):  # 3 micro-batches without an all-reduce, then one with
        with model.no_sync():
            for _ in range(3):
                model(torch.randn(8, 16)).sum().backward()
        model(torch.randn(8, 16)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    totals = timing.totals()
    assert totals.steps == 3 and totals.work_seconds > 0


def test_a_models_own_comm_hook_is_kept_with_one_warning(group, caplog):
    model, calls = ddp(), []

    def their_hook(state, bucket):
        calls.append(bucket.index())
        return allreduce_hook(state, bucket)

    model.register_comm_hook(None, their_hook)
    with caplog.at_level(logging.INFO, logger="perfwatch"), monitor(port=0, model=model) as mon:
        train(model, 3)
        text = scrape(mon.url)
    assert said(caplog) == [(logging.WARNING, (
        "perfwatch: the DDP model already has a communication hook (test_a_models_own_comm_hook_is_kept_with_one_"
        "warning.<locals>.their_hook); keeping it, so collective timing (perfwatch_train_collective_wait_seconds_total"
        " and friends) is unavailable"))]
    assert calls.count(0) == 3 and len(set(calls)) > 1  # theirs, every step, on every bucket
    assert collective_series(text) == {}
    assert value(text, "perfwatch_train_steps_total", rank="0") == 0  # the loop used no timer: nothing else changed


def test_a_model_that_is_not_ddp_gets_nothing_and_no_warning(caplog):
    model = torch.nn.Linear(4, 2)
    with caplog.at_level(logging.INFO, logger="perfwatch"), monitor(port=0, model=model) as mon:
        model(torch.randn(3, 4)).sum().backward()
        text = scrape(mon.url)
    assert said(caplog) == [(logging.INFO, ("perfwatch: collective timing needs a DistributedDataParallel model, "
                                            "not a Linear; none here"))]
    assert collective_series(text) == {}


@pytest.mark.parametrize("readings", [0, 1, 7], ids=["at-launch", "in-then-callback", "later"])
def test_a_failure_inside_the_hook_steps_aside_once_and_training_goes_on_unchanged(group, caplog, readings):
    clock = iter(range(readings))

    def failing_clock() -> float:
        return float(next(clock))  # StopIteration once the readings run out

    hooked = ddp()
    assert collective.install(hooked, clock=failing_clock) is not None
    with caplog.at_level(logging.WARNING, logger="perfwatch"):
        after = train(hooked, 8)
    assert said(caplog) == [(logging.WARNING, ("perfwatch: collective timing failed (StopIteration()); it is off "
                                               "from now on, the training goes on"))]
    assert all(torch.equal(a, b) for a, b in zip(after, train(ddp(), 8)))


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA GPU on this machine: the CUDA-event path of the collective timing needs one")
def test_on_cuda_the_hook_times_with_events_and_never_synchronizes(tmp_path, monkeypatch):
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(torch.nn.Linear(256, 256).cuda(), device_ids=[0])
        timing = collective.install(model)

        def no_sync(*args: object) -> None:
            raise AssertionError("the collective timing synchronized")

        with monkeypatch.context() as patch:
            patch.setattr(torch.cuda, "synchronize", no_sync)
            patch.setattr(torch.cuda.Event, "synchronize", no_sync)
            for _ in range(20):
                model(torch.randn(64, 256, device="cuda")).square().mean().backward()
        torch.cuda.synchronize()
        model(torch.randn(64, 256, device="cuda")).square().mean().backward()  # resolves what the GPU finished
        totals = timing.totals()
        assert timing.mode == "cuda events"
        assert totals.steps >= 19 and totals.work_seconds > 0 and totals.wait_seconds >= 0
    finally:
        dist.destroy_process_group()
