"""``perfwatch monitor`` as users run it: a real command launched, watched and scraped;
signals forwarded, exit codes passed through, one-line errors (exit 2) for bad input."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from helpers import assert_one_line_error, assert_promtool_clean, run_perfwatch, types, value, wait_for_scrape
from servers import free_port

from perfwatch.monitoring.session import serve

NOBODY = 65534

# Starts two children, echoes its stdin, exits 3 once stdin closes.
COMMAND = textwrap.dedent(
    """
    import multiprocessing, sys, time
    if __name__ == "__main__":
        children = [multiprocessing.Process(target=time.sleep, args=(60,), daemon=True) for _ in range(2)]
        for child in children:
            child.start()
        print("ready", flush=True)
        for line in sys.stdin:
            print("echo", line.strip(), flush=True)
        sys.exit(3)
    """
)

# Exits 7 on SIGTERM and 8 on SIGINT.
SIGNALLED = textwrap.dedent(
    """
    import os, signal, sys
    for signum, code in ((signal.SIGTERM, 7), (signal.SIGINT, 8)):
        signal.signal(signum, lambda s, f, code=code: os._exit(code))
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def start_monitor(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "perfwatch", "monitor", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})


def finish(process: subprocess.Popen, timeout: float = 30) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_command_is_watched_scraped_and_its_io_and_exit_code_pass_through():
    port = free_port()
    monitor = start_monitor("--port", str(port), "--interval", "0.05", "--", sys.executable, "-c", COMMAND)
    assert monitor.stdout.readline() == "ready\n"
    text = wait_for_scrape(f"http://127.0.0.1:{port}/metrics", lambda t: value(t, "perfwatch_process_workers") == 2)
    monitor.stdin.write("hello\n")
    code, out, err = finish(monitor)
    assert code == 3 and out == "echo hello\n"
    assert err.splitlines()[0] == f"perfwatch: serving metrics on http://127.0.0.1:{port}/metrics"
    assert_promtool_clean(text)
    assert value(text, "perfwatch_process_up") == 1
    assert value(text, "perfwatch_process_cpu_seconds_total", role="main") > 0
    assert value(text, "perfwatch_process_threads", role="worker") >= 2
    assert not any(name.startswith("perfwatch_train") for name in types(text))  # another process: no StepTimer
    assert value(text, "perfwatch_host_memory_bytes", kind="available") > 0


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 7), (signal.SIGINT, 8)])
def test_signals_are_forwarded_and_the_command_decides(signum, code):
    port = free_port()
    monitor = start_monitor("--port", str(port), "--", sys.executable, "-c", SIGNALLED)
    assert monitor.stdout.readline() == "ready\n"
    monitor.send_signal(signum)
    assert monitor.wait(30) == code  # stdin stays open: only the forwarded signal ends the command
    finish(monitor)


def test_command_killed_by_a_signal_exits_128_plus_n(tmp_path):
    proc = run_perfwatch("monitor", "--port", "0", "--", sys.executable, "-c",
                         "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", cwd=tmp_path, timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL


def test_command_not_found_is_a_one_line_error(tmp_path):
    proc = run_perfwatch("monitor", "--port", "0", "--", "no-such-command-xyz", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == \
        "perfwatch: error: command not found: no-such-command-xyz"
    assert "Traceback" not in proc.stderr


def test_a_launched_commands_own_debug_flag_is_not_perfwatchs(tmp_path):
    proc = run_perfwatch("monitor", "--port", "0", "--", "no-such-command-xyz", "--debug", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_port_in_use_is_a_one_line_error_and_the_command_never_runs(tmp_path):
    marker = tmp_path / "ran"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_perfwatch("monitor", "--port", str(port), "--", sys.executable, "-c",
                             f"open({str(marker)!r}, 'w')", cwd=tmp_path, timeout=60)
    assert_one_line_error(proc, f"port {port} on 127.0.0.1 is already in use; pick a free port (--port / port=) "
                                "or stop what listens there")
    assert not marker.exists()


def test_missing_pid_and_pid_with_command_are_one_line_errors(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    proc = run_perfwatch("monitor", "--port", "0", "--pid", str(finished.pid), cwd=tmp_path, timeout=60)
    assert_one_line_error(proc, f"no process with pid {finished.pid} to watch")
    proc = run_perfwatch("monitor", "--port", "0", "--pid", str(os.getpid()), "--", "true", cwd=tmp_path, timeout=60)
    assert_one_line_error(proc, "give a PID to watch or a command to launch, not both (--pid)")


def test_watched_pid_that_exits_stops_the_monitor_with_0():
    watched = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    port = free_port()
    monitor = start_monitor("--port", str(port), "--interval", "0.05", "--pid", str(watched.pid))
    text = wait_for_scrape(f"http://127.0.0.1:{port}/metrics", lambda t: value(t, "perfwatch_process_up") == 1)
    assert value(text, "perfwatch_process_workers") == 0
    watched.stdin.close()  # the watched process ends; the monitor notices at its next sample
    watched.wait()
    code, _, err = finish(monitor)
    assert code == 0
    assert err.splitlines()[-1] == f"perfwatch: watched process {watched.pid} exited; stopping"


def test_host_only_until_ctrl_c_and_an_unreachable_pushgateway_only_warns():
    port, gateway = free_port(), f"127.0.0.1:{free_port()}"
    monitor = start_monitor("--port", str(port), "--interval", "0.05", "--push", gateway)
    url = f"http://127.0.0.1:{port}/metrics"
    text = wait_for_scrape(url, lambda t: value(t, "perfwatch_collector_samples_total") is not None)
    assert not any(name.startswith("perfwatch_process") for name in types(text))
    assert value(text, "perfwatch_host_cpu_seconds_total", mode="idle") > 0
    monitor.send_signal(signal.SIGINT)
    code, _, err = finish(monitor)
    assert code == 0
    pushes = [line for line in err.splitlines() if "cannot push metrics" in line]
    assert len(pushes) == 1 and gateway in pushes[0]
    assert "Traceback" not in err


def _serve_unprivileged(pid: int, port: int, results) -> None:
    """In a forked child: drop to nobody, then monitor a root process until it exits."""
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("perfwatch").addHandler(handler)
    socket.getaddrinfo("127.0.0.1", port)  # loads the idna codec while the interpreter's files are readable
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    code = serve(port=port, interval=0.05, pid=pid)
    results.put((code, warnings))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_no_permission_to_read_the_watched_process_warns_once_and_keeps_serving():
    watched = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    port = free_port()
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    child = fork.Process(target=_serve_unprivileged, args=(watched.pid, port, results))
    child.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        text = wait_for_scrape(url, lambda t: (value(t, "perfwatch_collector_access_denied_total") or 0) >= 3)
        assert value(text, "perfwatch_process_up") == 1
        assert value(text, "perfwatch_process_cpu_seconds_total", role="main") is not None
    finally:
        watched.kill()  # (closing its stdin would not do: the forked child holds the pipe too)
        watched.wait()
    code, warnings = results.get(timeout=30)
    child.join(10)
    assert code == 0
    assert len(warnings) == 1 and "access denied" in warnings[0]
