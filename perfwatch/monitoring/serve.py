"""Serving the metric families: the HTTP endpoint that Prometheus scrapes and the optional
Pushgateway pusher, one exporter per process (per rank under torchrun).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from functools import partial
from urllib.parse import unquote, urlsplit

from prometheus_client import CollectorRegistry, make_wsgi_app, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from perfwatch.errors import UserError
from perfwatch.monitoring.metrics import PerfwatchMetrics
from perfwatch.urls import redact, scrub, split_credentials

PUSH_INTERVAL_S = 15.0  # Prometheus's default scrape interval

log = logging.getLogger(__name__)


PUSH_TIMEOUT_S = 5.0  # bounds how long a dead Pushgateway can delay the end of a run


# Forked children (DataLoader workers) inherit the listening socket; closing it there
# frees the port as soon as the exporter closes, not when the last worker exits.
_live_sockets: weakref.WeakSet = weakref.WeakSet()


def _close_inherited_sockets() -> None:
    for sock in list(_live_sockets):
        sock.close()


os.register_at_fork(after_in_child=_close_inherited_sockets)


def _listen_error(port: int, bind: str, exc: OSError) -> UserError:
    where = f"{bind}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return UserError(f"port {port} on {bind} is already in use; pick a free port (--port / port=) "
                         "or stop what listens there")
    if exc.errno == errno.EACCES:
        return UserError(f"no permission to listen on {where}; use a port above 1023")
    return UserError(f"cannot serve metrics on {where}: {exc.strerror or exc}; check --bind / bind=")


# socketserver's backlog of 5 (prometheus_client's server) drops the SYNs of a burst of
# scrapers, which retry after 1 s; the kernel caps this at net.core.somaxconn.
LISTEN_BACKLOG = socket.SOMAXCONN
# A scraper sends its request at once and reads the answer: a connection still open after
# this (idle, a request trickled byte by byte, an answer never read) is closed.
CONNECTION_TIMEOUT_S = 5.0
HEAD_LIMIT = 1 << 16  # bytes of request line and headers
ACCEPT_RETRY_S = 1.0  # out of file descriptors, try accepting again after this

_BAD_REQUEST = b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
# What an answer depends on: the format (Accept), gzip (Accept-Encoding), name[] filters.
_ANSWER_VARIES_WITH = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING")


def _environ(head: bytes) -> dict[str, str] | None:
    """The WSGI variables of a request head that prometheus_client's app reads; None when malformed."""
    lines = head.decode("latin-1").split("\r\n")
    request = lines[0].split(" ")
    if len(request) != 3 or not request[2].startswith("HTTP/"):
        return None
    method, target, protocol = request
    path, _, query = target.partition("?")
    environ = {"REQUEST_METHOD": method, "PATH_INFO": unquote(path, "iso-8859-1"), "QUERY_STRING": query,
               "SERVER_PROTOCOL": protocol}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            environ.setdefault("HTTP_" + name.strip().upper().replace("-", "_"), value.strip())
    return environ


class _Answers:
    """Whole HTTP/1.0 answers of a WSGI app, shared by the requests that come together.

    A request gets the newest answer to the same request begun after it connected (so
    none is older than its connection), or a new one: a burst of 50 scrapers costs a
    render or two, not 50 renders fighting the training for the GIL.
    """

    def __init__(self, app: Callable) -> None:
        self._app = app
        self._last: tuple[tuple[str, ...], float, bytes] | None = None  # (what it varies with, begun, answer)

    def __call__(self, environ: dict[str, str], connected: float) -> bytes:
        varies = tuple(environ.get(name, "") for name in _ANSWER_VARIES_WITH)
        if self._last is not None and self._last[0] == varies and self._last[1] >= connected:
            return self._last[2]
        begun, given = time.monotonic(), []
        body = b"".join(self._app(environ, lambda status, headers, exc_info=None: given.append((status, headers))))
        status, headers = given[0]
        head = [f"HTTP/1.0 {status}", *(f"{name}: {value}" for name, value in headers),
                f"Content-Length: {len(body)}", "Connection: close", "", ""]
        self._last = (varies, begun, "\r\n".join(head).encode("latin-1") + body)
        return self._last[2]


def _listening_socket(bind: str, port: int) -> socket.socket:
    """Bound and listening, in the family of ``bind`` (IPv6 for "::1"); gaierror and bind errors are OSErrors."""
    family, kind, protocol, _, address = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted monitor gets its port back
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class MetricsServer:
    """``registry`` on http://bind:port/metrics, from one daemon thread, until ``close()``.

    The thread runs an asyncio loop of its own: no thread per connection, no wake-up
    while nobody scrapes, and a connection lasts at most ``timeout`` seconds, however
    it stalls (idle, a request trickled byte by byte, an answer never read).
    """

    def __init__(self, registry: CollectorRegistry, port: int, bind: str = "127.0.0.1",
                 timeout: float = CONNECTION_TIMEOUT_S) -> None:
        try:
            self._socket = _listening_socket(bind, port)
        except OSError as exc:  # includes socket.gaierror for a bind address that does not resolve
            raise _listen_error(port, bind, exc) from None
        self._socket.setblocking(False)
        _live_sockets.add(self._socket)
        self.bind = bind
        self.port: int = self._socket.getsockname()[1]  # the real one when port 0 asked for any
        self._answers = _Answers(make_wsgi_app(registry))
        self._timeout = timeout
        self._loop = asyncio.SelectorEventLoop()  # ours, whatever event loop policy the training set
        self._stopping = asyncio.Event()
        self._connections: set[asyncio.Task] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._open: set[asyncio.StreamWriter] = set()  # the connections' streams once they are made
        self._thread: threading.Thread | None = threading.Thread(
            target=self._loop.run_until_complete, args=(self._serve(),), name="perfwatch-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, drop open connections and release the port; safe to call twice."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None
        self._loop.close()
        with contextlib.suppress(OSError):  # on Linux this also stops a forked child's copy from holding the port
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        _live_sockets.discard(self._socket)

    async def _serve(self) -> None:
        # Our own accepting, not asyncio.start_server: its Server leaks the connections it
        # accepts just as it closes (an assertion in Server._attach, Python 3.10 and 3.11).
        self._loop.add_reader(self._socket, self._accept)
        await self._stopping.wait()
        self._loop.remove_reader(self._socket)
        if self._retry is not None:
            self._retry.cancel()
        for writer in list(self._open):
            writer.transport.abort()  # its reads and writes fail, so its task ends
        while self._connections:  # those not yet begun end as they begin, seeing _stopping
            await asyncio.wait(set(self._connections))

    def _accept(self) -> None:
        """Every connection waiting on the listening socket, each to a task of its own."""
        while True:
            try:
                connection, _ = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of file descriptors: the socket stays readable, so pause
                log.warning("perfwatch: cannot accept metrics connections (%s); trying again in %g s",
                            exc.strerror or exc, ACCEPT_RETRY_S)
                self._loop.remove_reader(self._socket)
                self._retry = self._loop.call_later(ACCEPT_RETRY_S, self._loop.add_reader, self._socket,
                                                    self._accept)
                return
            task = self._loop.create_task(self._connected(connection, time.monotonic()))
            self._connections.add(task)  # a reference: the loop keeps only weak ones
            task.add_done_callback(self._connections.discard)

    async def _connected(self, connection: socket.socket, connected: float) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=connection, limit=HEAD_LIMIT)
        except OSError:
            connection.close()
            return
        if self._stopping.is_set():
            writer.transport.abort()
            return
        self._open.add(writer)
        writer.transport.set_write_buffer_limits(0)  # drain() returns once the kernel has the whole answer
        try:
            await asyncio.wait_for(self._exchange(reader, writer, connected), self._timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.debug("perfwatch: metrics connection dropped: %r", exc)  # the client's problem, not the training's
        finally:
            self._open.discard(writer)
            writer.transport.abort()  # all was sent, or what was not is given up

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connected: float) -> None:
        environ = _environ(await reader.readuntil(b"\r\n\r\n"))
        writer.write(_BAD_REQUEST if environ is None else self._answers(environ, connected))
        await writer.drain()
        writer.write_eof()  # the end of the answer even if a forked DataLoader worker holds the socket too


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
