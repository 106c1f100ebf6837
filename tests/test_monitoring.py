"""``perfwatch.monitor()`` around a real torch training loop: metrics that move, torchrun
ports and ranks, a clear error before training when the port is taken, and faults that
never reach the loop."""

from __future__ import annotations

import logging
import socket
import threading

import pytest
from helpers import scrape, types, value, wait_for_scrape
from servers import Pushgateway, free_port, free_ports

from perfwatch.errors import UserError
from perfwatch.monitoring.session import monitor

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402


def perfwatch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("perfwatch")]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` again (SO_REUSEADDR, as servers do: the
    scrapes' connections may linger in TIME_WAIT, but no socket may still listen)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


class Training:
    """A tiny classifier trained one epoch at a time, the phases timed by a monitor's timer."""

    def __init__(self, workers: int = 0) -> None:
        generator = torch.Generator().manual_seed(0)
        inputs, targets = torch.randn(512, 16, generator=generator), torch.randint(0, 4, (512,), generator=generator)
        dataset = TensorDataset(inputs, targets)
        self.loader = DataLoader(dataset, batch_size=32, num_workers=workers, persistent_workers=workers > 0)
        self.model = torch.nn.Linear(16, 4)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

    def epoch(self, mon, log: bool = True) -> None:
        timer = mon.timer
        for x, y in timer.iter(self.loader):
            with timer.phase("forward"):
                loss = torch.nn.functional.cross_entropy(self.model(x), y)
            with timer.phase("backward"):
                loss.backward()
            with timer.phase("optimizer"):
                self.optimizer.step()
                self.optimizer.zero_grad()
            if log:
                mon.log(loss=loss, lr=self.optimizer.param_groups[0]["lr"])


def test_training_metrics_move_and_the_port_is_freed_with_workers_alive(tmp_path):
    training = Training(workers=2)
    port = free_port()
    with Pushgateway(tmp_path) as gateway:
        with monitor(port=port, interval=0.05, push=gateway.url, push_interval=60) as mon:
            assert mon.port == port and mon.url == f"http://127.0.0.1:{port}/metrics"
            first = scrape(mon.url)
            training.epoch(mon, log=False)
            # Descendants: the two DataLoader workers, and the Pushgateway this test started.
            unlogged = wait_for_scrape(mon.url, lambda t: value(t, "perfwatch_process_workers", rank="0") == 3)
            training.epoch(mon)
            second = scrape(mon.url)
        pushed = scrape(f"{gateway.url}/metrics")  # the final push on exit
    rank = {"rank": "0"}
    assert value(first, "perfwatch_train_steps_total", **rank) == 0
    assert value(unlogged, "perfwatch_train_steps_total", **rank) == 16
    assert value(second, "perfwatch_train_steps_total", **rank) == 32
    assert value(second, "perfwatch_train_samples_total", **rank) == 1024
    assert value(second, "perfwatch_train_step_duration_seconds_count", **rank) == 32
    for phase in ("data_wait", "forward", "backward", "optimizer"):
        assert value(second, "perfwatch_train_phase_seconds_total", phase=phase, **rank) > \
               value(unlogged, "perfwatch_train_phase_seconds_total", phase=phase, **rank) > 0
    assert "perfwatch_train_loss" not in types(unlogged)  # only once the user reports it
    assert 0 < value(second, "perfwatch_train_loss", **rank) < 10
    assert value(second, "perfwatch_train_learning_rate", **rank) == 0.1
    assert value(second, "perfwatch_train_last_step_timestamp_seconds", **rank) > 1.7e9
    assert value(second, "perfwatch_process_cpu_seconds_total", role="main", **rank) > 0
    assert value(pushed, "perfwatch_train_steps_total", job="perfwatch", instance=socket.gethostname(), **rank) == 32
    # The persistent DataLoader workers forked while serving still run, yet the port is free.
    assert training.loader._iterator is not None and port_is_free(port)
    assert perfwatch_threads() == []


def test_torchrun_env_serves_on_port_plus_local_rank_with_the_rank_label(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "5")
    base = free_ports(2)
    training = Training()
    with monitor(port=base, interval=0.05) as mon:
        training.epoch(mon)
        text = wait_for_scrape(f"http://127.0.0.1:{base + 1}/metrics",
                               lambda t: value(t, "perfwatch_process_up", rank="5") == 1)
        assert mon.port == base + 1 and mon.rank == "5"
    assert value(text, "perfwatch_train_steps_total", rank="5") == 16
    assert value(text, "perfwatch_process_threads", role="main", rank="5") >= 1


def test_bad_local_rank_is_a_user_error(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "first")
    with pytest.raises(UserError, match="LOCAL_RANK"):
        monitor(port=0)


def test_port_in_use_fails_before_the_loop_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = False
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is already in use"):
            with monitor(port=port):
                ran = True
    assert not ran
    assert perfwatch_threads() == []


def test_faulty_listeners_scrapes_and_logs_never_break_the_loop(monkeypatch, caplog):
    """A raising or slow listener (the user's, or the monitor's own once broken) costs no step,
    a scrape running all the time blocks none, garbage in log() is only warned about."""
    training = Training()
    slow_steps = []

    def raising(record):
        raise RuntimeError("user listener bug")

    def slow(record):
        if record.index < 2:
            slow_steps.append(record.index)
            threading.Event().wait(0.05)

    with monitor(port=0, interval=0.05) as mon:
        mon.timer.add_listener(raising)
        mon.timer.add_listener(slow)
        stop = threading.Event()
        scrapes = []

        def scrape_all_the_time():
            while not stop.is_set():
                scrapes.append(scrape(mon.url))

        scraper = threading.Thread(target=scrape_all_the_time)
        scraper.start()
        try:
            with caplog.at_level(logging.WARNING):
                training.epoch(mon)
                mon.log(loss="nan-ish garbage", lr=[0.1, 0.2])
                steady = scrape(mon.url)
                monkeypatch.setattr(mon._training, "_buckets", None)  # the monitor's own listener now raises
                training.epoch(mon, log=False)
                after = scrape(mon.url)
        finally:
            stop.set()
            scraper.join()
    assert mon.timer.steps == 32 and slow_steps == [0, 1]  # every step ran and completed
    assert value(steady, "perfwatch_train_steps_total", rank="0") == 16
    assert value(steady, "perfwatch_train_loss", rank="0") is None
    assert value(after, "perfwatch_process_up", rank="0") == 1  # the rest of the scrape still served
    assert len(scrapes) > 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("listener" in m and "was removed" in m for m in messages) == 2
    assert any("the loss given to log() is not a number" in m for m in messages)
    assert any("the learning rate given to log() is not a number" in m for m in messages)


def test_an_error_in_the_loop_propagates_and_still_frees_the_port():
    with pytest.raises(ZeroDivisionError):
        with monitor(port=0, interval=0.05) as mon:
            port = mon.port
            1 / 0
    assert port_is_free(port)
    assert perfwatch_threads() == []


def test_unreachable_pushgateway_only_warns(caplog):
    training = Training()
    with caplog.at_level(logging.WARNING, logger="perfwatch"):
        with monitor(port=0, interval=0.05, push=f"127.0.0.1:{free_port()}", push_interval=0.05) as mon:
            training.epoch(mon)
            wait_for_scrape(mon.url, lambda t: (value(t, "perfwatch_collector_samples_total") or 0) >= 3)
    assert mon.timer.steps == 16
    assert sum("cannot push metrics" in r.getMessage() for r in caplog.records) == 1
