"""Real Prometheus, Pushgateway and Alertmanager for tests: 127.0.0.1, free ports, temp dirs.

The servers are the Debian packages (``prometheus``, which ships ``promtool``,
``prometheus-pushgateway``, ``prometheus-alertmanager``), as CI installs them. A test
asks for one through :func:`binary`, which installs the package when it is missing
and it can (root with apt-get), and otherwise skips the test saying why.

Each server is a context manager; ``stop()`` is idempotent, so a fixture can both
use ``with`` and register ``stop`` as a finalizer::

    from servers import Prometheus, Pushgateway, free_ports

    @pytest.fixture
    def prometheus(tmp_path):
        with Prometheus(tmp_path / "prometheus", {"scrape_configs": [...]}) as server:
            yield server

    server.query("up")                      # instant vector: [{"metric": ..., "value": [t, "1"]}]
    server.wait_for("perfwatch_train_steps_total > 0", timeout=30)
    gateway.metrics()                       # the Pushgateway's groups, /api/v1/metrics

PostgreSQL (Debian's ``postgresql``) is one server per test module, a fresh database per test::

    postgres = postgres_fixture()           # in the test module: one server for the module

    def test_x(postgres):
        url = postgres.new_database()       # postgresql://perfwatch:<password>@127.0.0.1:PORT/db_N
        postgres.shown(url)                 # the same URL as perfwatch shows it: postgresql://***@...

Servers never listen beyond 127.0.0.1 (Alertmanager's cluster port is switched off),
and their logs stay in their directory for the failure message.
"""

from __future__ import annotations

import functools
import glob
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import pytest
import yaml

# Binary -> the Debian package that provides it.
DEBIAN_PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-pushgateway": "prometheus-pushgateway",
    "prometheus-alertmanager": "prometheus-alertmanager",
}

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3  # a free port can be taken between probing it and the server binding it


def binary(name: str) -> str:
    """Absolute path of server binary ``name``; installs its Debian package if missing.

    Skips the calling test (with the reason) only when the binary is missing and
    cannot be installed here: not root, no apt-get, or the install failed.
    """
    path, reason = _locate(name)
    if path is None:
        pytest.skip(reason)
    return path


@functools.cache
def _locate(name: str) -> tuple[str | None, str]:
    """(path, "") or (None, why); cached, so a failed install is tried once per session."""
    found = shutil.which(name)
    if found:
        return found, ""
    package = DEBIAN_PACKAGES[name]
    reason = _apt_install(package)
    found = shutil.which(name)
    if found:
        return found, ""
    return None, f"{name} not found and Debian package {package!r} could not be installed: {reason}"


def _apt_install(package: str) -> str:
    """Try ``apt-get install``; return why it could not work (or what it said)."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    if os.geteuid() != 0:
        return f"not root; run: sudo apt-get install -y {package}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for a concurrent apt (another test session installing) instead of failing at once.
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends", package]
    result = subprocess.run(install, check=False, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # a fresh image has no package lists yet
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True, env=env)
        result = subprocess.run(install, check=False, capture_output=True, text=True, env=env)
    return (result.stderr.strip().splitlines() or ["apt-get install failed"])[-1]


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (torchrun ranks serve on port + LOCAL_RANK)."""
    for _ in range(100):
        base = free_port()
        if base + count <= 65535 and all(_bindable(base + i) for i in range(1, count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free ports on 127.0.0.1")


def http_get_json(url: str, timeout: float = 10.0) -> Any:
    """GET ``url`` and parse JSON; an HTTP error carries the body (Prometheus puts the reason there)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"GET {url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that; TimeoutError names ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Server:
    """One server process on 127.0.0.1:``port`` with its files under ``workdir``.

    Subclasses give the binary name and the command-line arguments for a port.
    """

    name: str = ""
    ready_path = "/-/ready"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as Prometheus targets are written."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def arguments(self, port: int) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write what the server reads at start (config files); called before each start."""

    def executable(self) -> str:
        return binary(self.name)

    def next_port(self, attempt: int) -> int:
        """The port to try at the ``attempt``-th try of a start."""
        return free_port()

    def popen_options(self) -> dict[str, Any]:
        """More keyword arguments for the server's Popen."""
        return {}

    def start(self) -> Server:
        """Start on a free port and return once it answers ``ready_path``."""
        if self.process is not None:
            raise RuntimeError(f"{self.name} already started")
        executable = self.executable()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        for attempt in range(_PORT_ATTEMPTS):
            self.port = self.next_port(attempt)
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [executable, *self.arguments(self.port)], cwd=self.workdir,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **self.popen_options(),
                )
            if self._wait_ready():
                return self
            self.process = None
            if not any(words in self.log_tail() for words in ("address already in use", "could not bind")):
                break
        raise RuntimeError(f"{self.name} did not start: {self.log_tail()}")

    def _wait_ready(self) -> bool:
        """True once ready; False if the process exited; stops it and raises on timeout."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.process.poll() is None:
            if self._ready():
                return True
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {START_TIMEOUT_S:g} s: {self.log_tail()}")
            time.sleep(0.1)
        return False

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.ready_path, timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers. Safe to call twice or before start."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def get_json(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        return http_get_json(f"{self.url}{path}" + (f"?{query}" if query else ""))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Prometheus(Server):
    """Prometheus with ``config`` (a prometheus.yml as a dict) and its TSDB in ``workdir``.

    Relative paths in ``rule_files`` and ``file_sd_configs`` resolve against
    ``workdir``, where the config is written; pass absolute paths for shipped files.
    """

    name = "prometheus"

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        super().__init__(workdir)
        self.config = config

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    def prepare(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def arguments(self, port: int) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]

    def api(self, path: str, **params: Any) -> Any:
        """``data`` of a /api/v1 answer; RuntimeError with Prometheus's error otherwise."""
        answer = self.get_json(f"/api/v1/{path}", **params)
        if answer.get("status") != "success":
            raise RuntimeError(f"Prometheus {path}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Evaluate ``expr`` now (or at Unix time ``at``); the result as a list of series.

        A scalar or string result comes back as one series without labels.
        """
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns data, and return it."""
        return wait_until(lambda: self.query(expr), timeout, f"Prometheus to return data for {expr}")

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets", state="active")["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule, with ``group`` added, each with its ``health`` and ``lastError``."""
        return [
            {**rule, "group": group["name"]}
            for group in self.api("rules")["groups"]
            for rule in group["rules"]
        ]


class Pushgateway(Server):
    """A Pushgateway keeping pushes in memory only (the Debian default persists to /var/lib)."""

    name = "prometheus-pushgateway"

    def arguments(self, port: int) -> list[str]:
        return [f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=", "--log.level=warn"]

    def metrics(self) -> list[dict[str, Any]]:
        """The pushed groups: ``labels`` (the grouping key, job included) and one entry per metric family."""
        answer = self.get_json("/api/v1/metrics")
        if answer.get("status") != "success":
            raise RuntimeError(f"Pushgateway /api/v1/metrics: {answer}")
        return answer["data"]


class Alertmanager(Server):
    """An Alertmanager with ``config`` (an alertmanager.yml as a dict; default: one
    receiver that notifies nobody), clustering off so nothing binds beyond loopback."""

    name = "prometheus-alertmanager"

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None) -> None:
        super().__init__(workdir)
        self.config = config or {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}

    @property
    def config_path(self) -> Path:
        return self.workdir / "alertmanager.yml"

    def prepare(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def arguments(self, port: int) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts it holds now (API v2), each with ``labels``, ``annotations`` and ``status``."""
        return self.get_json("/api/v2/alerts")


class Postgres(Server):
    """A PostgreSQL server in ``workdir``: its own cluster (``initdb``), the superuser ``perfwatch`` with
    ``password`` (scram-sha-256 over TCP), on a free port of 127.0.0.1 and a socket in ``workdir``. As root
    it runs as the ``postgres`` user, since the server refuses root. Stopped by its PID (fast shutdown)."""

    name = "postgres"
    user = "perfwatch"
    password = "pg-s3cret-hunter2"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._databases = itertools.count(1)
        self.bin_dir = self.locate()
        self.run_as = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}

    @staticmethod
    def locate() -> Path:
        """The newest installed server's bin directory; installs Debian's ``postgresql`` if none is."""
        if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
            reason = _apt_install("postgresql")
            if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
                pytest.skip(f"PostgreSQL not found and Debian's postgresql could not be installed: {reason}")
        return Path(max(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))).parent

    @property
    def url(self) -> str:
        """The server's ``postgres`` database, with the password."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{name}"

    def shown(self, url: str) -> str:
        """``url`` as perfwatch prints it: the userinfo hidden."""
        return url.replace(f"{self.user}:{self.password}@", "***@")

    def prepare(self) -> None:
        if (self.workdir / "data").exists():
            return
        if self.run_as:
            shutil.chown(self.workdir, **self.run_as)
        (self.workdir / "pw").write_text(self.password)
        if self.run_as:
            shutil.chown(self.workdir / "pw", **self.run_as)
        subprocess.run([str(self.bin_dir / "initdb"), "-D", str(self.workdir / "data"), "-U", self.user,
                        "--auth=scram-sha-256", f"--pwfile={self.workdir / 'pw'}", "--no-sync"],
                       check=True, capture_output=True, cwd=self.workdir, **self.run_as)

    def executable(self) -> str:
        return str(self.bin_dir / "postgres")

    def next_port(self, attempt: int) -> int:
        """Started again after ``stop()``, on the port it had, so that its URLs stay valid."""
        return self.port if self.port is not None and attempt == 0 else free_port()

    def popen_options(self) -> dict[str, Any]:
        return self.run_as

    def arguments(self, port: int) -> list[str]:
        return ["-D", str(self.workdir / "data"), "-p", str(port), "-k", str(self.workdir),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]

    def _ready(self) -> bool:
        ready = subprocess.run([str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                               check=False, capture_output=True)
        return ready.returncode == 0

    def stop(self) -> None:
        """SIGINT (fast shutdown: clients are disconnected), then SIGQUIT if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGQUIT)
            process.wait()

    def sql(self, statement: str, database: str = "postgres") -> list[tuple]:
        """Run one statement (autocommit) and return its rows."""
        import psycopg

        with psycopg.connect(self.database_url(database), autocommit=True) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def new_database(self) -> str:
        """The URL (with the password) of a new, empty database."""
        name = f"db_{next(self._databases)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.database_url(name)


def postgres_fixture():
    """A module-scoped fixture of one PostgreSQL server; each test takes a database of its own (new_database)."""

    @pytest.fixture(scope="module")
    def postgres():
        home = Path(tempfile.mkdtemp(prefix="perfwatch-pg-"))  # not under pytest's, which only root may enter
        try:
            with Postgres(home) as server:
                yield server
        finally:
            shutil.rmtree(home, ignore_errors=True)

    return postgres
