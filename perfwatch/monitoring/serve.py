"""Serving the metric families: the HTTP endpoint that Prometheus scrapes and the optional
Pushgateway pusher, one exporter per process (per rank under torchrun).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from functools import partial
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, push_to_gateway, start_http_server
from prometheus_client.exposition import basic_auth_handler, default_handler

from perfwatch.errors import UserError
from perfwatch.monitoring.metrics import PerfwatchMetrics
from perfwatch.urls import redact, scrub, split_credentials

PUSH_INTERVAL_S = 15.0  # Prometheus's default scrape interval

log = logging.getLogger(__name__)


PUSH_TIMEOUT_S = 5.0  # bounds how long a dead Pushgateway can delay the end of a run


# Forked children (DataLoader workers) inherit the listening socket; closing it there
# frees the port as soon as the exporter closes, not when the last worker exits.
_live_servers: weakref.WeakSet = weakref.WeakSet()


def _close_inherited_sockets() -> None:
    for server in list(_live_servers):
        server.socket.close()


os.register_at_fork(after_in_child=_close_inherited_sockets)


def _listen_error(port: int, bind: str, exc: OSError) -> UserError:
    where = f"{bind}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return UserError(f"port {port} on {bind} is already in use; pick a free port (--port / port=) "
                         "or stop what listens there")
    if exc.errno == errno.EACCES:
        return UserError(f"no permission to listen on {where}; use a port above 1023")
    return UserError(f"cannot serve metrics on {where}: {exc.strerror or exc}; check --bind / bind=")


class MetricsServer:
    """``registry`` on http://bind:port/metrics, from a daemon thread, until ``close()``."""

    def __init__(self, registry: CollectorRegistry, port: int, bind: str = "127.0.0.1") -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=bind, registry=registry)
        except OSError as exc:  # includes socket.gaierror for a bind address that does not resolve
            raise _listen_error(port, bind, exc) from None
        _live_servers.add(self._server)
        self.bind = bind
        self.port: int = self._server.server_port  # the real one when port 0 asked for any

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._thread = None
        _live_servers.discard(self._server)


def _check_gateway(url: str) -> None:
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
    except ValueError:  # an unclosed [IPv6 address
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"Pushgateway URL {redact(url)!r} is not http(s)://host[:port]")


class Pusher:
    """Pushes ``registry`` to a Pushgateway every ``interval`` seconds from a daemon thread, and on ``close()``.

    A gateway that cannot be reached costs one warning per run of failures (and an
    info line when it works again), never an exception into the caller. The URL's
    user:password goes as HTTP Basic auth; ``gateway`` is the URL redacted, for messages.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        gateway: str,
        *,
        job: str = "perfwatch",
        grouping_key: Mapping[str, str] | None = None,
        interval: float = PUSH_INTERVAL_S,
        timeout: float = PUSH_TIMEOUT_S,
    ) -> None:
        _check_gateway(gateway)
        self.gateway = redact(gateway)
        self._url, credentials = split_credentials(gateway)
        self._handler = partial(basic_auth_handler, username=credentials[0], password=credentials[1]) \
            if credentials else default_handler
        self._given = gateway  # its secrets are what scrub() hides in an exception's text
        self._registry = registry
        self._job = job
        self._grouping_key = dict(grouping_key or {})
        self._interval = interval
        self._timeout = timeout
        self._failing = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="perfwatch-pusher", daemon=True)
        self._thread.start()

    def push(self) -> bool:
        """One push now; False (logged once per failure run) when it failed."""
        try:
            push_to_gateway(self._url, self._job, self._registry, self._grouping_key, timeout=self._timeout,
                            handler=self._handler)
        except Exception as exc:  # URLError, HTTPError (400 on conflicting labels, 401), timeouts
            if not self._failing:
                log.warning("perfwatch: cannot push metrics to %s (%s); retrying every %g s, "
                            "no more warnings until a push succeeds", self.gateway,
                            scrub(str(exc), self._given), self._interval)
            self._failing = True
            return False
        if self._failing:
            log.info("perfwatch: pushing metrics to %s works again", self.gateway)
        self._failing = False
        return True

    def close(self) -> None:
        """Stop the periodic pushes, then push the final values."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.push()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self.push()


class Exporter:
    """What serves one ``PerfwatchMetrics``: the HTTP endpoint and, with ``push``, a Pusher."""

    def __init__(
        self,
        metrics: PerfwatchMetrics,
        *,
        port: int,
        bind: str = "127.0.0.1",
        push: str | None = None,
        job: str = "perfwatch",
        grouping_key: Mapping[str, str] | None = None,
        push_interval: float = PUSH_INTERVAL_S,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(metrics)
        self._port, self._bind = port, bind
        # Built (and its URL checked) now, started with the server.
        self.pusher = Pusher(self.registry, push, job=job, grouping_key=grouping_key, interval=push_interval) \
            if push else None
        self.server: MetricsServer | None = None

    def start(self) -> Exporter:
        """Listen (a UserError when the port is taken), then start pushing."""
        self.server = MetricsServer(self.registry, self._port, self._bind)
        if self.pusher is not None:
            self.pusher.start()
        return self

    def close(self) -> None:
        """Final push, then the port is released."""
        if self.pusher is not None:
            self.pusher.close()
        if self.server is not None:
            self.server.close()
