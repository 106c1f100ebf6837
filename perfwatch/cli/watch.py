"""Watching commands: serve live metrics (`monitor`) and find a command's bottleneck (`profile`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from perfwatch.cli.app import cli
from perfwatch.profile.pyspy import STOP_GRACE_S
from perfwatch.profile.trial import TRY_PAIRS, TRY_SECONDS


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--port", type=click.IntRange(0, 65535), default=9400, show_default=True,
              help="Port to serve /metrics on.")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the metrics to the network).")
@click.option("--interval", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Seconds between samples.")
@click.option("--push", metavar="URL", help="Also push to this Pushgateway every 15 s and on exit.")
@click.option("--pid", type=int, help="Watch this running process and its descendants.")
@click.option("--uss-interval", type=click.FloatRange(0), metavar="SECONDS",
              help="Also measure unique memory (USS/PSS) this often; it costs ms per process.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def monitor(port: int, bind: str, interval: float, push: str | None, pid: int | None,
            uss_interval: float | None, command: tuple[str, ...]) -> None:
    """Serve live metrics for Prometheus: the host, and a training process if given.

    `perfwatch monitor -- python train.py ...` launches the command (its input and
    output pass through, SIGINT/SIGTERM are forwarded) and exits with its exit code.
    With --pid, stops once that process exits. With neither, serves the host until
    Ctrl-C.
    """
    from perfwatch.monitoring.session import serve  # prometheus_client loads only for this command

    code = serve(port=port, bind=bind, interval=interval, push=push, pid=pid, command=command,
                 uss_interval=uss_interval, say=lambda line: click.echo(f"perfwatch: {line}", err=True))
    if code:  # the launched command's own code; click would swallow Exit in main()'s non-standalone mode
        sys.exit(code)


@cli.command("profile", context_settings={"allow_interspersed_args": False})
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Directory for report.json, report.md, report.html, their figures and the raw samples "
                   "(default: reports/profile-<time>).")
@click.option("--duration", type=float, metavar="SECONDS",  # finite and > 0: ProfileOptions says so in one line
              help="Stop sampling after this long (default: when the command exits).")
@click.option("--keep-running/--stop-at-duration", default=True, show_default=True,
              help="After --duration, let the command run on, or stop it and every process it started, daemons "
                   f"included (SIGINT, then SIGTERM, then SIGKILL, {STOP_GRACE_S:g} s apart).")
@click.option("--no-pyspy", is_flag=True, help="Do not sample stacks with py-spy (collector-only diagnosis).")
@click.option("--torch-profiler", is_flag=True,
              help="Also run torch.profiler in the command (for --duration, default 30 s) and keep its top ops.")
@click.option("--rate", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="py-spy samples per second.")
@click.option("--try", "try_top", is_flag=True,
              help="Then try the top DataLoader recommendation: re-run the command with its knobs injected, in "
                   "paired windows against the original settings, and report the measured speedup.")
@click.option("--try-pairs", type=click.IntRange(1), default=TRY_PAIRS, show_default=True,
              help="Pairs of windows (original, tried) for --try.")
@click.option("--try-seconds", type=float, default=TRY_SECONDS, show_default=True, metavar="SECONDS",
              help="Seconds each --try window measures, after its warm-up.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def profile_command(out: Path | None, duration: float | None, keep_running: bool, no_pyspy: bool,
                    torch_profiler: bool, rate: int, try_top: bool, try_pairs: int, try_seconds: float,
                    command: tuple[str, ...]) -> None:
    """Find the bottleneck of a training command: `perfwatch profile -- python train.py ...`.

    Runs the command unmodified (its input and output pass through) under the collector and
    py-spy, then writes report.json, report.md and report.html (with figures): the primary
    bottleneck (data loading, host-to-device copies, compute or other), its evidence and the
    knobs to turn.

    Exits with the command's exit code (128+N if signal N ended it), also after --stop-at-duration:
    a script that catches the KeyboardInterrupt of its SIGINT exits with its own code, one that does
    not with 130. A process the command leaves running when it exits by itself (a daemon) is named
    in a warning and left running.

    With --try, once the command has exited, the top recommendation that sets DataLoader arguments
    (num_workers, pin_memory, prefetch_factor, persistent_workers) is tried on the unmodified command:
    fresh runs with and without it, interleaved, their steps/s timed exactly; the report gives the measured
    speedup and its interval beside the predicted bound, and drops a knob that measured slower.
    """
    from perfwatch.profile.run import ProfileOptions, run_profile

    options = ProfileOptions(out=out, duration=duration, keep_running=keep_running, pyspy=not no_pyspy,
                             rate=rate, torch_profiler=torch_profiler, try_pairs=try_pairs if try_top else 0,
                             try_seconds=try_seconds)
    result = run_profile(command, options, say=lambda line: click.echo(f"perfwatch: {line}", err=True))
    if result.exit_code:
        sys.exit(result.exit_code)
