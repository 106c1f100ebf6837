"""Live monitoring: ``monitor()`` inside a user's training loop, ``serve()`` behind ``perfwatch monitor``.

Both start a Collector on the process tree to watch and an Exporter serving its
snapshots on /metrics (and pushing them, when asked). Starting is strict: a taken
port is a UserError before training starts. Running is lenient: whatever fails once
training runs is logged and steps aside, since monitoring must never stop, slow
or kill the training it watches.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from perfwatch.errors import UserError
from perfwatch.instrument import StepTimer
from perfwatch.launch import ForwardedSignals, exit_code, launch
from perfwatch.monitoring import collective
from perfwatch.monitoring.collective_metrics import CollectiveMetrics, PublishedCollective
from perfwatch.monitoring.collector import Collector
from perfwatch.monitoring.metrics import STEP_BUCKETS, PerfwatchMetrics, PublishedTraining, TrainingMetrics
from perfwatch.monitoring.serve import PUSH_INTERVAL_S, Exporter
from perfwatch.monitoring.step_timing import STEP_BUCKETS_ENV, STEP_DIR_ENV, install_child_hooks

log = logging.getLogger(__name__)

DEFAULT_PORT = 9400
WAKE_S = 0.1  # how often serve() looks at its stop conditions


def torchrun_rank(environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """(LOCAL_RANK as a port offset, RANK as a label), (0, "0") outside torchrun."""
    local_rank = environ.get("LOCAL_RANK", "0")
    if not local_rank.isdigit():
        raise UserError(f"LOCAL_RANK={local_rank!r} is not a non-negative integer")
    return int(local_rank), environ.get("RANK", "0")


class Monitor:
    """Serve live metrics of this training process on http://bind:port/metrics while the block runs.

    ``with perfwatch.monitor() as mon:`` then time the loop with ``mon.timer`` (a new
    StepTimer unless ``timer`` is given) and report ``mon.log(loss=..., lr=...)``.
    The process and its descendants (DataLoader workers) are sampled every ``interval``
    seconds; USS/PSS every ``uss_interval`` seconds when set. Under torchrun each rank
    serves on ``port + LOCAL_RANK`` with label ``rank=$RANK``; ``port=0`` takes any free
    port. With ``push`` (a Pushgateway URL) metrics are also pushed every
    ``push_interval`` seconds and on exit, under ``job`` and grouping key
    instance=hostname, rank.

    With ``model`` (a DistributedDataParallel module) each gradient all-reduce is timed by a
    comm hook installed on entering: the rank's work before it and its wait in it, exported
    as ``perfwatch_train_rank_work_seconds_total`` and ``perfwatch_train_collective_*``, whose
    split across ranks names a straggler (monitoring.collective, monitoring.straggler). Any
    other model: nothing (one info line); a model with a comm hook of its own keeps it.

    Entering raises UserError when the port is taken, before the loop runs; once in,
    failures are logged and the training goes on. ``port`` and ``url`` tell where the
    metrics are served once entered.
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        bind: str = "127.0.0.1",
        interval: float = 1.0,
        *,
        timer: StepTimer | None = None,
        push: str | None = None,
        job: str = "perfwatch",
        push_interval: float = PUSH_INTERVAL_S,
        uss_interval: float | None = None,
        model: Any = None,
    ) -> None:
        local_rank, self.rank = torchrun_rank()
        self.timer = timer if timer is not None else StepTimer()
        self._training = TrainingMetrics(self.rank)
        self._listener = self._training.observe  # one bound method: remove_listener compares by identity
        self._timers: list[StepTimer] = []
        self._collector = Collector(os.getpid(), interval=interval, uss_interval=uss_interval)
        self._exporter = Exporter(
            PerfwatchMetrics(self._collector, training=self._training, process_labels={"rank": self.rank}),
            port=port + local_rank if port else 0, bind=bind, push=push, job=job,
            grouping_key={"instance": socket.gethostname(), "rank": self.rank}, push_interval=push_interval,
        )
        self._model = model
        self._collective = CollectiveMetrics(self.rank, socket.gethostname())
        self._exporter.registry.register(self._collective)
        self.port: int | None = None
        self.url: str | None = None

    def __enter__(self) -> Monitor:
        server = self._exporter.start().server  # a taken port fails here, before anything else runs
        self.port, self.url = server.port, server.url
        self._collector.start()
        self.attach(self.timer)
        if self._model is not None:
            self._collective.timing = self._hook(self._model)
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop sampling, push once more, free the port; a failure here is logged, never raised."""
        for timer in self._timers:
            timer.remove_listener(self._listener)
        self._timers.clear()
        if self._collective.timing is not None:
            self._collective.timing.stop()  # DDP keeps the hook: from now on it only forwards
        for step in (self._collector.stop, self._exporter.close):
            try:
                step()
            except Exception:
                log.warning("perfwatch: stopping the monitor: %s failed", step.__qualname__, exc_info=True)

    @staticmethod
    def _hook(model: Any) -> collective.CollectiveTiming | None:
        try:
            return collective.install(model)
        except Exception:
            log.warning("perfwatch: installing the collective timing failed; the training goes on without it",
                        exc_info=True)
            return None

    def attach(self, timer: StepTimer) -> None:
        """Also export the steps of ``timer`` (one a library creates, an eval loop's); detached on exit.
        The steps of all attached timers add up in the same ``perfwatch_train_*`` series."""
        timer.add_listener(self._listener)
        self._timers.append(timer)

    def log(self, loss: Any = None, lr: Any = None) -> None:
        """Export the latest loss and learning rate (numbers or 0-d tensors); cheap, never waits for the GPU."""
        self._training.log(loss, lr)


monitor = Monitor  # the public spelling: ``with perfwatch.monitor(...) as mon:``


# ---------------------------------------------------------------- perfwatch monitor


def serve(
    *,
    port: int = DEFAULT_PORT,
    bind: str = "127.0.0.1",
    interval: float = 1.0,
    push: str | None = None,
    pid: int | None = None,
    command: Sequence[str] = (),
    uss_interval: float | None = None,
    say: Callable[[str], None] = log.info,
) -> int:
    """Serve host metrics and those of ``pid`` or of ``command`` (launched here); return the exit code.

    With ``command``: its exit code (128 + N when killed by signal N); SIGINT and
    SIGTERM are forwarded to it (a terminal's Ctrl-C already reaches it). With ``pid``:
    0 once that process exits. Neither: host only, until SIGINT or SIGTERM (then 0).
    Call from the main thread (it installs signal handlers). ``say`` gets status lines.
    A launched command's steps are timed without code changes (monitoring.step_timing) and
    exported as ``perfwatch_train_*``; when none were measured, ``say`` tells so at its end.
    Under torchrun each rank's gradient all-reduces are timed too (its first DDP model's), and
    exported here per rank, labelled rank and host, as ``perfwatch.monitor(model=...)`` does.
    """
    if pid is not None and command:
        raise UserError("give a PID to watch or a command to launch, not both", setting="pid")
    exited = threading.Event()
    # Host only, or the PID (checked now: a UserError when it does not exist); a command's later.
    collector = None if command else Collector(pid, interval=interval, uss_interval=uss_interval,
                                               on_exit=lambda _: exited.set())
    metrics = PerfwatchMetrics(collector)
    exporter = Exporter(metrics, port=port, bind=bind, push=push,
                        grouping_key={"instance": socket.gethostname()}).start()
    say(f"serving metrics on {exporter.server.url}")
    if exporter.pusher is not None:
        say(f"pushing metrics to {exporter.pusher.gateway} every {PUSH_INTERVAL_S:g} s")
    scratch = tempfile.TemporaryDirectory(prefix="perfwatch-monitor-") if command else None
    try:
        with ForwardedSignals() as signals:
            if command:
                signals.child = child = launch(command, _timed_env(Path(scratch.name)))
                metrics.training = PublishedTraining(Path(scratch.name) / "steps")
                exporter.registry.register(PublishedCollective(Path(scratch.name) / "steps"))  # DDP ranks
                metrics.collector = collector = Collector(child.pid, interval=interval, uss_interval=uss_interval)
            collector.start()
            if command:
                code = exit_code(child.wait())
                if not metrics.training.published():
                    say("no training steps were measured (no torch DataLoader or optimizer step on the command's "
                        "main thread, or it times itself with perfwatch), so no perfwatch_train_* series here")
                return code
            while signals.received is None and not exited.wait(WAKE_S):
                pass
            if exited.is_set():
                say(f"watched process {pid} exited; stopping")
            return 0
    finally:
        if collector is not None:
            collector.stop()
        exporter.close()
        if scratch is not None:
            scratch.cleanup()


def _timed_env(scratch: Path) -> dict[str, str]:
    """The launched command's environment: the zero-code step timing publishes into ``scratch/steps``."""
    env = dict(os.environ)
    (scratch / "steps").mkdir()
    install_child_hooks(scratch / "hooks", env)
    env[STEP_DIR_ENV] = str(scratch / "steps")
    env[STEP_BUCKETS_ENV] = ",".join(map(str, STEP_BUCKETS))
    return env
