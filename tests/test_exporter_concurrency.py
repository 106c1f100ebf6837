"""The /metrics endpoint under many scrapers and bad clients: real servers on 127.0.0.1, real sockets.

A burst of concurrent scrapers all get the whole exposition, each as its request asked
(format, gzip) and none older than its connection, though they share renders; a
connection that sends nothing, or trickles a request byte by byte, is closed after the
server's timeout and holds no thread, while other scrapes go on being served.
"""

from __future__ import annotations

import gzip
import http.client
import multiprocessing
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psutil
import pytest
from helpers import scrape, types, wait_for_scrape
from prometheus_client import CollectorRegistry, Gauge
from servers import free_port, wait_until

import perfwatch
from perfwatch.monitoring.serve import MetricsServer

SCRAPERS = 50
TIMEOUT_S = 1.0  # the server's connection timeout in these tests (the default is 5 s)


def get(host: str, port: int, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One scrape on a fresh connection, all of its Content-Length: status and body (gunzipped if it came so)."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("GET", "/metrics", headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        assert response.getheader("Content-Length") == str(len(body))
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return response.status, body.decode()
    finally:
        connection.close()


def exchange(port: int, request: bytes) -> bytes:
    """``request`` as raw bytes, and all the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the peer closed ``sock`` (EOF or reset) within ``within`` seconds."""
    readable, _, _ = select.select([sock], [], [], within)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def wait_accepted(sock: socket.socket) -> None:
    """Until the server (in this process) holds the other end of ``sock``."""
    port = sock.getsockname()[1]
    wait_until(lambda: any(c.raddr and c.raddr.port == port for c in psutil.Process().net_connections()), 10,
               "the server to accept the connection")


@contextmanager
def serving(timeout: float = TIMEOUT_S) -> Iterator[MetricsServer]:
    registry = CollectorRegistry()
    Gauge("perfwatch_test_up", "A gauge to serve.", registry=registry).set(1)
    server = MetricsServer(registry, 0, timeout=timeout)
    try:
        yield server
    finally:
        server.close()


def test_fifty_concurrent_scrapers_of_monitor_all_get_the_whole_exposition():
    port = free_port()
    with perfwatch.monitor(port=port, interval=0.1) as mon:
        for _ in range(3):
            with mon.timer.step():
                time.sleep(0.001)
        mon.log(loss=0.5)
        reference = wait_for_scrape(mon.url, lambda text: "perfwatch_process_cpu_seconds_total" in text)
        start = threading.Barrier(SCRAPERS)

        def scraper(_: int) -> tuple[int, str]:
            start.wait()  # all connect at once: a burst deeper than socketserver's backlog of 5
            return get("127.0.0.1", port)

        with ThreadPoolExecutor(SCRAPERS) as pool:
            answers = list(pool.map(scraper, range(SCRAPERS)))
    for status, body in answers:
        assert status == 200
        assert types(body) == types(reference)  # every family, parsed whole


def test_each_scrape_of_a_burst_gets_the_format_it_asked_for():
    asks = [{}, {"Accept-Encoding": "gzip"}, {"Accept": "application/openmetrics-text; version=1.0.0"}] * 10
    with serving() as server:
        start = threading.Barrier(len(asks))

        def scraper(headers: dict[str, str]) -> tuple[int, str]:
            start.wait()
            return get("127.0.0.1", server.port, headers)

        with ThreadPoolExecutor(len(asks)) as pool:
            answers = list(pool.map(scraper, asks))
    for headers, (status, body) in zip(asks, answers):
        assert (status, "perfwatch_test_up 1.0" in body) == (200, True)
        assert body.endswith("# EOF\n") == ("Accept" in headers)


def test_a_scrape_never_gets_an_answer_older_than_its_connection():
    registry = CollectorRegistry()
    gauge = Gauge("perfwatch_test_value", "Changed before every scrape.", registry=registry)
    server = MetricsServer(registry, 0)
    try:
        for value in range(30):
            gauge.set(value)
            assert f"perfwatch_test_value {value}.0" in scrape(server.url)
    finally:
        server.close()


def test_a_malformed_request_gets_400_and_other_methods_what_prometheus_client_answers():
    with serving() as server:
        assert exchange(server.port, b"nonsense\r\n\r\n").startswith(b"HTTP/1.0 400 ")
        assert exchange(server.port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 405 ")
        assert b"perfwatch_test_up 1.0" in exchange(server.port, b"GET /metrics HTTP/1.0\r\n\r\n")


def test_an_answer_ends_even_when_a_forked_child_holds_its_connection():
    with serving(timeout=30) as server, socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        wait_accepted(sock)
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,), daemon=True)
        child.start()  # a DataLoader worker forked mid-scrape: it holds the server's end of the connection too
        try:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            answer = b"".join(iter(lambda: sock.recv(65536), b""))  # until EOF; a TimeoutError if it never comes
        finally:
            child.kill()
            child.join()
    assert b"perfwatch_test_up 1.0" in answer


def test_idle_connections_do_not_block_scrapes_and_are_closed_after_the_timeout():
    threads_before = threading.active_count()
    with serving() as server:
        opened = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        try:
            assert "perfwatch_test_up 1.0" in scrape(server.url)  # served while 20 connections sit idle
            for sock in idle:
                assert closed_by_server(sock, within=TIMEOUT_S + 10)
            assert time.monotonic() - opened >= TIMEOUT_S  # closed for idling, not at once
        finally:
            for sock in idle:
                sock.close()
        wait_until(lambda: threading.active_count() <= threads_before + 1, 10, "the idle connections' threads to end")
        assert "perfwatch_test_up 1.0" in scrape(server.url)


def test_a_request_trickled_byte_by_byte_is_cut_off_at_the_timeout():
    threads_before = threading.active_count()
    with serving() as server, socket.create_connection(("127.0.0.1", server.port)) as slowloris:
        slowloris.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        # A header byte every 0.1 s keeps each read under the timeout; the whole request may not take longer.
        while not closed_by_server(slowloris, within=0.1):
            assert time.monotonic() - started < TIMEOUT_S + 10, "the server still reads the trickled request"
            try:
                slowloris.send(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
        wait_until(lambda: threading.active_count() <= threads_before + 1, 10, "the slow connection's thread to end")
        assert "perfwatch_test_up 1.0" in scrape(server.url)


def test_close_drops_an_idle_connection_at_once_and_the_port_serves_again():
    with serving(timeout=60) as server, socket.create_connection(("127.0.0.1", server.port)) as idle:
        wait_accepted(idle)
        server.close()
        assert closed_by_server(idle, within=10)  # not after the 60 s timeout
        MetricsServer(CollectorRegistry(), server.port).close()  # a monitor restarted on the same port


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_bind_address_serves():
    registry = CollectorRegistry()
    Gauge("perfwatch_test_up", "A gauge to serve.", registry=registry).set(1)
    server = MetricsServer(registry, 0, bind="::1")
    try:
        assert server.url == f"http://[::1]:{server.port}/metrics"
        status, body = get("::1", server.port)
        assert (status, "perfwatch_test_up 1.0" in body) == (200, True)
    finally:
        server.close()
