"""MetricsServer over plain HTTP: endpoints, negotiation, limits, load and slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from agent.config import HttpSettings
from exporters.http import MetricsServer

Make = Callable[..., MetricsServer]
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=underscores,"
    "application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=1.0.0;escaping=underscores;q=0.5,"
    "text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
)


def fetch(
    port: int,
    path: str = "/metrics",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request with the stdlib client (it adds no Accept-Encoding of its own)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- endpoints -----------------------------------------------------------------------------------


def test_landing_page_links_to_the_endpoints(make_server: Make) -> None:
    status, headers, body = fetch(make_server().port, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b'href="metrics"' in body and b'href="healthz"' in body


def test_metrics_default_is_text_format(make_server: Make, build: Any) -> None:
    status, headers, body = fetch(make_server().port)
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "content-encoding" not in headers
    names = {f.name for f in parse_text(body.decode())}
    assert "tokenergy_tokens" in names and "tokenergy_build_info" in names


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text",
        PROMETHEUS_ACCEPT,
    ],
)
def test_openmetrics_when_asked(make_server: Make, accept: str) -> None:
    status, headers, body = fetch(make_server().port, headers={"Accept": accept})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert b"# UNIT tokenergy_gpu_energy_joules joules" in body
    assert "Accept" in headers["vary"]


def test_gzip_when_accepted(make_server: Make) -> None:
    port = make_server().port
    _, plain_headers, plain = fetch(port)
    status, headers, body = fetch(port, headers={"Accept-Encoding": "gzip, deflate"})
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert int(headers["content-length"]) == len(body) < len(plain)
    # Same exposition (sample_age is fixed by the manual clock).
    assert gzip.decompress(body) == plain
    assert "content-encoding" not in plain_headers


def test_head_has_headers_but_no_body(make_server: Make) -> None:
    port = make_server().port
    _, _, body = fetch(port)
    reply = raw(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert f"Content-Length: {len(body)}".encode() in head
    assert rest == b""


@pytest.mark.parametrize(
    ("ok", "lines", "status", "expected"),
    [
        (True, [], 200, "ok\n"),
        (True, ["server sglang: timeout"], 200, "ok\nserver sglang: timeout\n"),
        (False, ["last sampling cycle 31.0 s ago (limit 15.0 s)", "nvml: not initialised"], 503,
         "unhealthy\nlast sampling cycle 31.0 s ago (limit 15.0 s)\nnvml: not initialised\n"),
    ],
)  # fmt: skip
def test_healthz(make_server: Make, ok: bool, lines: list[str], status: int, expected: str) -> None:
    got_status, _, body = fetch(make_server(health=lambda: (ok, lines)).port, "/healthz")
    assert (got_status, body.decode()) == (status, expected)


def test_healthz_that_raises_is_503_and_server_keeps_serving(make_server: Make) -> None:
    def broken() -> tuple[bool, list[str]]:
        raise RuntimeError("boom")

    port = make_server(health=broken).port
    status, _, body = fetch(port, "/healthz")
    assert status == 503 and b"RuntimeError" in body
    assert fetch(port)[0] == 200


def test_metrics_render_failure_is_500_and_server_keeps_serving(build: Any) -> None:
    class Broken:
        def collect(self) -> Any:
            raise RuntimeError("collector bug")

    settings = HttpSettings(listen="127.0.0.1:0")
    srv = MetricsServer(Broken(), lambda: (True, []), settings, logging_getter())
    srv.start()
    try:
        assert fetch(srv.port)[0] == 500
        assert fetch(srv.port, "/healthz")[0] == 200
    finally:
        srv.stop()


def logging_getter() -> Any:
    import logging

    return logging.getLogger("tokenergy.test.http")


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/METRICS", "/favicon.ico", "/debug/pprof"])
def test_unknown_paths_are_404(make_server: Make, path: str) -> None:
    assert fetch(make_server().port, path)[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
def test_other_methods_are_405(make_server: Make, method: str) -> None:
    status, headers, _ = fetch(make_server().port, "/metrics", method=method)
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "path",
    ["/metrics?name[]=tokenergy_build_info", "/metrics?target=http://169.254.169.254/",
     "/metrics?module=x&url=http://10.0.0.1"],
)  # fmt: skip
def test_query_parameters_are_ignored(make_server: Make, path: str) -> None:
    port = make_server().port
    _, _, full = fetch(port)
    status, _, body = fetch(port, path)
    assert status == 200 and body == full


def test_client_that_half_closes_after_its_request_gets_the_answer(make_server: Make) -> None:
    with socket.create_connection(("127.0.0.1", make_server().port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok\n")


def test_absolute_form_target_is_served(make_server: Make) -> None:
    port = make_server().port
    reply = raw(port, b"GET http://elsewhere.example/healthz HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /metrics\r\n\r\n", b"400"),
        (b"GET metrics HTTP/1.1\r\n\r\n", b"400"),
        (b"G(T /metrics HTTP/1.1\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/2.0\r\n\r\n", b"505"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", b"431"),
        (b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\n\r\n", b"431"),
    ],
)
def test_bad_requests_get_a_clear_status(
    make_server: Make, request_bytes: bytes, status: bytes
) -> None:
    reply = raw(make_server().port, request_bytes)
    assert reply.split(b" ", 2)[1] == status
    assert b"Connection: close" in reply


# -- binding -------------------------------------------------------------------------------------


def test_port_zero_exposes_the_bound_port(make_server: Make) -> None:
    srv = make_server()
    host, port = srv.address
    assert host == "127.0.0.1" and port > 0 and srv.port == port
    assert fetch(port)[0] == 200


def other_local_ipv4() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return str(addr.address)
    return None


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return True
    return False


def test_loopback_bind_is_not_reachable_from_other_addresses(make_server: Make) -> None:
    loopback = make_server(listen="127.0.0.1:0")
    everywhere = make_server(listen="0.0.0.0:0")
    # Control: 127.0.0.2 reaches a wildcard listener, so a refusal below means the bind.
    assert fetch(everywhere.port, host="127.0.0.2")[0] == 200
    assert refused("127.0.0.2", loopback.port)
    ip = other_local_ipv4()
    if ip is not None:
        assert not refused(ip, everywhere.port)
        assert refused(ip, loopback.port)


def test_ipv6_loopback_and_dual_stack(make_server: Make) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        srv = make_server(listen="[::1]:0")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    assert srv.address[0] == "::1"
    assert fetch(srv.port, host="::1")[0] == 200
    assert refused("127.0.0.1", srv.port)
    if socket.has_dualstack_ipv6():
        dual = make_server(listen="[::]:0")
        assert fetch(dual.port, host="::1")[0] == 200
        assert fetch(dual.port, host="127.0.0.1")[0] == 200


def test_bind_failure_names_the_address(make_server: Make) -> None:
    taken = make_server()
    srv = MetricsServer(
        registry=None,  # type: ignore[arg-type]
        health=lambda: (True, []),
        settings=HttpSettings(listen=f"127.0.0.1:{taken.port}"),
        log=logging_getter(),
    )
    with pytest.raises(OSError, match=f"127.0.0.1:{taken.port}"):
        srv.start()


# -- load, limits and slow clients ---------------------------------------------------------------


async def _get_many(port: int, n: int, path: str = "/metrics") -> list[bytes]:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    for _, writer in conns:  # every connection is open before any request is sent
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    async def read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        data = await asyncio.wait_for(reader.read(), timeout=30)
        writer.close()
        return data

    return await asyncio.gather(*(read(r, w) for r, w in conns))


def test_200_concurrent_scrapes_are_all_served_without_leaks(make_server: Make) -> None:
    fds, threads = fd_count(), threading.active_count()
    srv = make_server(max_connections=4, max_open_connections=256)
    replies = asyncio.run(_get_many(srv.port, 200))
    statuses = [r.split(b" ", 2)[1] for r in replies]
    assert statuses == [b"200"] * 200
    assert all(r.rstrip().endswith(b"1.0") for r in replies), "every body is complete"
    # Bounded threads: the event loop plus at most max_connections workers.
    assert threading.active_count() <= threads + 1 + 4
    srv.stop()
    assert threading.active_count() == threads
    assert fd_count() == fds


def test_idle_connections_are_shed_oldest_first_for_a_prompt_request(make_server: Make) -> None:
    srv = make_server(max_open_connections=5, client_timeout_seconds=5.0)
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(5)]
    try:
        time.sleep(1.2)  # connections under 1 s old are never shed
        assert fetch(srv.port)[0] == 200, "a complete request beats idle sockets"
        idle[0].settimeout(2.0)
        with contextlib.suppress(ConnectionResetError):
            assert idle[0].recv(1) == b"", "the oldest idle connection was closed"
        idle[-1].sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        idle[-1].settimeout(2.0)
        assert idle[-1].recv(64).startswith(b"HTTP/1.1 200"), "the newest idle one was kept"
    finally:
        for s in idle:
            s.close()


def test_connections_beyond_the_open_limit_get_503_when_all_are_working(make_server: Make) -> None:
    release = threading.Event()

    def slow_health() -> tuple[bool, list[str]]:
        release.wait(5)
        return True, []

    srv = make_server(health=slow_health, max_open_connections=3, client_timeout_seconds=5.0)
    busy = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
    try:
        for s in busy:
            s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        time.sleep(0.3)
        reply = raw(srv.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in reply
    finally:
        release.set()
        for s in busy:
            s.close()
    time.sleep(0.3)
    assert fetch(srv.port)[0] == 200, "capacity comes back when clients leave"


def test_request_queued_longer_than_the_client_timeout_gets_503(make_server: Make) -> None:
    release = threading.Event()

    def slow_health() -> tuple[bool, list[str]]:
        release.wait(5)
        return True, []

    srv = make_server(health=slow_health, max_connections=1, client_timeout_seconds=1.0)
    results: dict[str, int] = {}
    first = threading.Thread(target=lambda: results.update(a=fetch(srv.port, "/healthz")[0]))
    first.start()
    time.sleep(0.2)
    second = threading.Thread(target=lambda: results.update(b=fetch(srv.port)[0]))
    second.start()
    time.sleep(1.3)  # the queued request is now older than the client timeout
    release.set()
    first.join()
    second.join()
    assert results == {"a": 200, "b": 503}


def test_slow_clients_do_not_block_others_and_are_dropped(make_server: Make) -> None:
    srv = make_server(max_connections=2, client_timeout_seconds=3.0)
    started = time.monotonic()
    slow = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(20)]
    stop = threading.Event()

    def drip() -> None:  # one byte a second per connection, never completing the head
        for byte in b"GET /metrics HTTP/1.1\r\nX":
            for s in slow:
                with_suppressed(s.send, bytes([byte]))
            if stop.wait(1.0):
                return

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        time.sleep(0.3)
        latencies = []
        for _ in range(5):
            t0 = time.monotonic()
            assert fetch(srv.port)[0] == 200
            latencies.append(time.monotonic() - t0)
        # Were the 2 workers held by slow clients, each request would wait ~3 s.
        assert max(latencies) < 1.5, latencies
        # Slow clients are dropped at the client timeout.
        closed_after = []
        for s in slow:
            s.settimeout(6.0)
            try:
                while s.recv(1024):
                    pass
            except OSError:
                pass
            closed_after.append(time.monotonic() - started)
        assert min(closed_after) > 2.5 and max(closed_after) < 6.0, closed_after
    finally:
        stop.set()
        dripper.join()
        for s in slow:
            s.close()


def with_suppressed(fn: Callable[[bytes], object], arg: bytes) -> None:
    with contextlib.suppress(OSError):
        fn(arg)


def test_stop_lets_in_flight_requests_finish(make_server: Make) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_health() -> tuple[bool, list[str]]:
        entered.set()
        release.wait(5)
        return True, ["finished"]

    srv = make_server(health=slow_health)
    port = srv.port
    result: dict[str, Any] = {}
    client = threading.Thread(target=lambda: result.update(r=fetch(port, "/healthz")))
    client.start()
    assert entered.wait(5)
    stopper = threading.Thread(target=srv.stop, kwargs={"grace_seconds": 3.0})
    stopper.start()
    time.sleep(0.3)
    assert refused("127.0.0.1", port), "the listener closes at once"
    release.set()
    stopper.join(5)
    client.join(5)
    assert result["r"][0] == 200 and result["r"][2] == b"ok\nfinished\n"


def test_stop_is_bounded_when_a_request_never_finishes(make_server: Make) -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck() -> tuple[bool, list[str]]:
        entered.set()
        release.wait(10)
        return True, []

    srv = make_server(health=stuck)
    threading.Thread(
        target=lambda: with_suppressed(lambda _: fetch(srv.port, "/healthz"), b"")
    ).start()
    assert entered.wait(5)
    t0 = time.monotonic()
    srv.stop(grace_seconds=0.5)
    assert time.monotonic() - t0 < 2.0
    release.set()


def test_start_stop_twice_and_context_manager(build: Any) -> None:
    from agent.clock import ManualClock
    from exporters.prometheus import SnapshotCollector, build_registry

    registry = build_registry(SnapshotCollector(lambda: None, ManualClock(), "x"))
    srv = MetricsServer(registry, lambda: (True, []), HttpSettings(listen="127.0.0.1:0"),
                        logging_getter())  # fmt: skip
    with srv:
        assert fetch(srv.port)[0] == 200
    srv.stop()  # a second stop is harmless
