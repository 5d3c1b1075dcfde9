"""The HTTP scraper against real local servers on 127.0.0.1."""

from __future__ import annotations

import gzip
import io
import os
import socket
import ssl
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import CollectorRegistry, Counter, start_http_server

from agent.clock import ManualClock
from agent.config import ScrapeSettings, ServerSettings
from agent.servers.inspect import inspect_command
from agent.servers.scraper import (
    ACCEPT,
    MAX_TOKEN_BYTES,
    ReceiveBuffers,
    ScrapeError,
    ServerScraper,
    accept_encoding,
    read_token_file,
)
from agent.simulation.expositions import SimModelCounters, render_exposition

FIXTURES = Path(__file__).parent / "fixtures"
VLLM = (FIXTURES / "vllm_v1.prom").read_bytes()
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"

Serve = Callable[..., Any]


def _scraper(url: str, scrape: ScrapeSettings | None = None, **server: Any) -> ServerScraper:
    settings = scrape or ScrapeSettings(connect_timeout_seconds=1.0, read_timeout_seconds=2.0)
    config = ServerSettings.model_validate({"name": "s", "url": url, **server})
    return ServerScraper(config, settings)


def _fail(scraper: ServerScraper) -> ScrapeError:
    with pytest.raises(ScrapeError) as info:
        scraper.scrape()
    return info.value


def test_scrapes_and_reads_a_vllm_server(serve: Serve) -> None:
    server = serve(lambda path: {"body": VLLM})
    reading = _scraper(server.url()).scrape()
    assert reading.engine == "vllm"
    assert reading.models[0].model == LLAMA
    assert reading.models[0].input_tokens == 1_234_567
    (seen,) = server.seen
    assert seen.headers["accept"] == ACCEPT == "text/plain;version=0.0.4"
    assert "authorization" not in seen.headers


def test_reads_a_gzip_body(serve: Serve) -> None:
    server = serve(
        lambda path: {"body": gzip.compress(VLLM), "headers": {"Content-Encoding": "gzip"}}
    )
    assert _scraper(server.url()).scrape().models[0].output_tokens == 456_789
    # On loopback the agent asks for no compression (it costs the server CPU for nothing),
    # yet a server that compresses anyway is still read.
    assert server.seen[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "identity"),
        ("127.3.2.1", "identity"),
        ("::1", "identity"),
        ("[::1]", "identity"),
        ("localhost", "identity"),
        ("10.0.0.7", "gzip"),
        ("vllm.default.svc", "gzip"),
        ("2001:db8::1", "gzip"),
    ],
)
def test_compression_is_asked_only_of_remote_targets(host: str, expected: str) -> None:
    assert accept_encoding(host) == expected


def test_truncated_gzip_is_a_parse_error(serve: Serve) -> None:
    body = gzip.compress(VLLM)[:-40]
    server = serve(lambda path: {"body": body, "headers": {"Content-Encoding": "gzip"}})
    error = _fail(_scraper(server.url()))
    assert (error.reason, error.message) == ("parse", "gzip body is truncated")


def test_server_that_never_answers_times_out(serve: Serve) -> None:
    server = serve(lambda path: {"body": VLLM, "delay": 30.0})
    scrape = ScrapeSettings(connect_timeout_seconds=1.0, read_timeout_seconds=0.3)
    started = time.monotonic()
    error = _fail(_scraper(server.url(), scrape))
    assert error.reason == "timeout"
    assert time.monotonic() - started < 5.0


def test_server_that_drips_bytes_hits_the_total_deadline(serve: Serve) -> None:
    server = serve(lambda path: {"body": VLLM, "drip": 0.05})
    scrape = ScrapeSettings(connect_timeout_seconds=1.0, read_timeout_seconds=0.5)
    started = time.monotonic()
    error = _fail(_scraper(server.url(), scrape))
    assert error.reason == "timeout"
    assert "within 0.5 s" in error.message
    assert time.monotonic() - started < 5.0


def test_deadline_is_measured_on_the_injected_clock(serve: Serve) -> None:
    clock = ManualClock()
    server = serve(lambda path: {"body": VLLM})
    scrape = ScrapeSettings(read_timeout_seconds=2.0)
    config = ServerSettings(name="s", url=server.url())

    class JumpingClock:
        """Jumps past the deadline after the request starts."""

        def __init__(self) -> None:
            self.calls = 0

        def monotonic(self) -> float:
            self.calls += 1
            if self.calls > 2:
                clock.advance(10.0)
            return clock.monotonic()

        def wall(self) -> float:
            return clock.wall()

        def sleep(self, seconds: float) -> None:
            clock.sleep(seconds)

    scraper = ServerScraper(config, scrape, clock=JumpingClock())
    assert _fail(scraper).reason == "timeout"


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = _fail(_scraper(f"http://127.0.0.1:{port}/metrics"))
    assert error.reason == "refused"
    assert f"127.0.0.1:{port}" in error.message


@pytest.mark.parametrize("status", [404, 500, 503])
def test_error_status(serve: Serve, status: int) -> None:
    server = serve(lambda path: {"status": status, "body": b"<html>down</html>"})
    error = _fail(_scraper(server.url()))
    assert error.reason == "http_status"
    assert f"HTTP {status}" in error.message


def test_html_error_page_with_200_is_a_parse_error(serve: Serve) -> None:
    page = (FIXTURES / "html_error.html").read_bytes()
    server = serve(lambda path: {"body": page, "headers": {"Content-Type": "text/html"}})
    error = _fail(_scraper(server.url()))
    assert error.reason == "parse"
    assert "not a Prometheus exposition" in error.message


@pytest.mark.parametrize("drip", [0.0, 0.0001])
def test_body_over_the_limit_is_too_large(serve: Serve, drip: float) -> None:
    # With Content-Length (refused up front) and streamed without it (counted while read).
    body = VLLM[:4096] if drip else VLLM
    server = serve(lambda path: {"body": body, "drip": drip})
    scrape = ScrapeSettings(read_timeout_seconds=5.0, max_body_bytes=1024)
    error = _fail(_scraper(server.url(), scrape))
    assert error.reason == "too_large"
    assert "max_body_bytes=1024" in error.message


@pytest.mark.parametrize(
    ("unit", "reason", "problem", "most"),
    [
        # Exposition lines: read as they are decompressed until the size limit, a few
        # 64 KiB pieces at a time.
        (b"x 1\n" * (1 << 18), "too_large", "after decompression", 512 << 10),
        # Zeros, no newline: held as one line until it is over max_line_bytes (256 KiB).
        (b"\0" * (1 << 20), "parse", "over the limit max_line_bytes=", 5 * (256 << 10)),
    ],
    ids=["lines", "zeros"],
)
def test_gzip_bomb_stops_with_bounded_memory(
    serve: Serve, unit: bytes, reason: str, problem: str, most: int
) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(compressor.compress(unit) for _ in range(256)) + compressor.flush()
    assert len(bomb) < 1 << 20  # 256 MiB in well under 1 MiB
    server = serve(lambda path: {"body": bomb, "headers": {"Content-Encoding": "gzip"}})
    scrape = ScrapeSettings(read_timeout_seconds=5.0, max_body_bytes=4 << 20)
    scraper = _scraper(server.url(), scrape)
    tracemalloc.start()
    try:
        error = _fail(scraper)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.reason == reason
    assert problem in error.message
    # Far less than the 4 MiB the limit lets through (reading it whole took over 4 MiB).
    assert peak < most


def test_bearer_token_is_reread_and_never_shown(serve: Serve, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-secret-token\n")
    status = {"code": 200}
    server = serve(lambda path: {"status": status["code"], "body": VLLM})
    scraper = _scraper(server.url(), bearer_token_file=token_file)
    scraper.scrape()
    token_file.write_text("second-secret-token")
    scraper.scrape()
    assert [s.headers["authorization"] for s in server.seen] == [
        "Bearer first-secret-token",
        "Bearer second-secret-token",
    ]
    status["code"] = 401
    error = _fail(scraper)
    assert error.reason == "http_status"
    assert "secret" not in str(error) and "secret" not in repr(error)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read bearer token file"),
        ("", "is empty"),
        ("two secret-words", "characters not allowed in an HTTP header"),
        ("secret\x00nul", "characters not allowed in an HTTP header"),
    ],
)
def test_unusable_token_file(
    serve: Serve, tmp_path: Path, content: str | None, fragment: str
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    server = serve(lambda path: {"body": VLLM})
    error = _fail(_scraper(server.url(), bearer_token_file=token_file))
    assert error.reason == "error"
    assert fragment in error.message
    assert "secret" not in str(error)
    assert server.seen == []


def test_cross_origin_redirect_gets_no_authorization(serve: Serve, tmp_path: Path) -> None:
    other = serve(lambda path: {"body": VLLM})
    first = serve(lambda path: {"status": 302, "headers": {"Location": other.url("/moved")}})
    token_file = tmp_path / "token"
    token_file.write_text("secret")
    scraper = _scraper(first.url(), bearer_token_file=token_file, cross_origin_redirects=True)
    reading = scraper.scrape()
    assert reading.models[0].input_tokens == 1_234_567
    assert first.seen[0].headers["authorization"] == "Bearer secret"
    assert other.seen[0].path == "/moved"
    assert "authorization" not in other.seen[0].headers


def test_same_origin_redirect_keeps_authorization(serve: Serve, tmp_path: Path) -> None:
    server = serve(
        lambda path: (
            {"body": VLLM} if path == "/real" else {"status": 307, "headers": {"Location": "/real"}}
        )
    )
    token_file = tmp_path / "token"
    token_file.write_text("secret")
    _scraper(server.url(), bearer_token_file=token_file).scrape()
    assert [s.path for s in server.seen] == ["/metrics", "/real"]
    assert all(s.headers["authorization"] == "Bearer secret" for s in server.seen)


def test_redirect_loop_is_refused(serve: Serve) -> None:
    server = serve(lambda path: {"status": 302, "headers": {"Location": "/metrics"}})
    error = _fail(_scraper(server.url()))
    assert error.reason == "http_status"
    assert "more than 3 redirects" in error.message
    assert len(server.seen) == 4


def test_connection_is_kept_alive_across_scrapes(serve: Serve) -> None:
    server = serve(lambda path: {"body": VLLM})
    scraper = _scraper(server.url())
    for _ in range(3):
        scraper.scrape()
    assert len({s.client_port for s in server.seen}) == 1


def test_one_target_failing_does_not_touch_another(serve: Serve) -> None:
    good = serve(lambda path: {"body": VLLM})
    bad = serve(lambda path: {"status": 500})
    settings = ScrapeSettings()
    scrapers = [_scraper(bad.url(), settings), _scraper(good.url(), settings)]
    outcomes = []
    for scraper in scrapers:
        try:
            outcomes.append(scraper.scrape().engine)
        except ScrapeError as exc:
            outcomes.append(exc.reason)
    assert outcomes == ["http_status", "vllm"]


def test_llamacpp_start_header_is_not_taken_for_a_unix_time(serve: Serve) -> None:
    # llama-server writes monotonic microseconds since boot in this header, not Unix seconds.
    body = (FIXTURES / "llamacpp.prom").read_bytes()
    server = serve(
        lambda path: {"body": body, "headers": {"Process-Start-Time-Unix": "5234567890123"}}
    )
    reading = _scraper(server.url()).scrape()
    assert (reading.engine, reading.start_time_seconds) == ("llamacpp", None)


def test_explicit_engine_from_settings(serve: Serve) -> None:
    server = serve(lambda path: {"body": VLLM})
    error = _fail(_scraper(server.url(), engine="sglang"))
    assert error.reason == "parse"
    assert "no sglang metrics found" in error.message


# -- hostile servers on raw sockets --------------------------------------------------------

Behaviour = Callable[[socket.socket, threading.Event], None]


class RawServer:
    """A TCP listener on 127.0.0.1 that runs ``behaviour(conn, stop)`` for each connection."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.stop = threading.Event()
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self._behaviour = behaviour
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/metrics"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._behaviour(conn, self.stop)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Behaviour], RawServer]]:
    started: list[RawServer] = []

    def start(behaviour: Behaviour) -> RawServer:
        server = RawServer(behaviour)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def _timed_fail(scraper: ServerScraper) -> tuple[ScrapeError, float]:
    started = time.monotonic()
    error = _fail(scraper)
    return error, time.monotonic() - started


HOSTILE_SECONDS = 4.0  # how long each hostile server keeps it up; the deadline is 0.5 s


def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_deadline(
    raw_server: Callable[[Behaviour], RawServer],
) -> None:
    def trickle(conn: socket.socket, stop: threading.Event) -> None:
        _read_request(conn)
        until = time.monotonic() + HOSTILE_SECONDS
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
            if stop.wait(0.02) or time.monotonic() > until:
                return
            conn.sendall(bytes([byte]))

    server = raw_server(trickle)
    scrape = ScrapeSettings(connect_timeout_seconds=0.5, read_timeout_seconds=0.5)
    error, elapsed = _timed_fail(_scraper(server.url, scrape))
    assert error.reason == "timeout"
    assert "within 0.5 s" in error.message
    assert elapsed < HOSTILE_SECONDS / 2  # the deadline, not the server, ended it


def test_endless_100_continue_is_cut_at_the_deadline(
    raw_server: Callable[[Behaviour], RawServer],
) -> None:
    def flood(conn: socket.socket, stop: threading.Event) -> None:
        _read_request(conn)
        until = time.monotonic() + HOSTILE_SECONDS
        while not stop.wait(0.01) and time.monotonic() < until:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    server = raw_server(flood)
    scrape = ScrapeSettings(connect_timeout_seconds=0.5, read_timeout_seconds=0.5)
    error, elapsed = _timed_fail(_scraper(server.url, scrape))
    assert error.reason == "timeout"
    assert elapsed < HOSTILE_SECONDS / 2


def test_one_connection_carries_every_scrape(serve: Serve) -> None:
    server = serve(lambda path: {"body": VLLM})
    scraper = _scraper(server.url())
    for _ in range(120):
        scraper.scrape()
    assert scraper.connections_opened == 1
    assert len({s.client_port for s in server.seen}) == 1 and len(server.seen) == 120


def test_a_connection_the_server_closed_while_idle_costs_no_scrape(
    raw_server: Callable[[Behaviour], RawServer],
) -> None:
    def one_answer_then_close(conn: socket.socket, stop: threading.Event) -> None:
        _read_request(conn)
        conn.sendall(_answer(VLLM))  # keep-alive by HTTP/1.1 rules, then hang up anyway

    server = raw_server(one_answer_then_close)
    scraper = _scraper(server.url)
    for _ in range(3):
        time.sleep(0.05)
        assert scraper.scrape().engine == "vllm"
    assert scraper.connections_opened == server.accepted == 3


def test_dns_failure_has_its_own_reason() -> None:
    error = _fail(_scraper("http://tokenergy-test.invalid:9/metrics"))
    assert error.reason == "dns"
    assert "cannot resolve tokenergy-test.invalid" in error.message


def test_fifo_token_file_is_refused_without_blocking(serve: Serve, tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)  # no writer: a blocking open would never return
    server = serve(lambda path: {"body": VLLM})
    result: list[ScrapeError] = []

    def attempt() -> None:
        result.append(_fail(_scraper(server.url(), bearer_token_file=fifo)))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(3.0)
    if worker.is_alive():  # free the stuck thread before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO token file blocked the scrape")
    assert result[0].reason == "error"
    assert "is not a regular file" in result[0].message
    assert server.seen == []


def test_token_file_over_the_cap_is_refused(serve: Serve, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(b"a" * (MAX_TOKEN_BYTES + 1))
    server = serve(lambda path: {"body": VLLM})
    error = _fail(_scraper(server.url(), bearer_token_file=token_file))
    assert error.reason == "error"
    assert f"is over {MAX_TOKEN_BYTES} bytes" in error.message
    assert server.seen == []
    token_file.write_bytes(b"a" * MAX_TOKEN_BYTES)
    assert read_token_file(token_file) == b"a" * MAX_TOKEN_BYTES


def _tls_server(serve: Serve, tmp_path: Path) -> tuple[Any, Path]:
    ca = trustme.CA()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return serve(lambda path: {"body": VLLM}, tls), ca_file


def test_https_is_verified_with_the_servers_ca_file(serve: Serve, tmp_path: Path) -> None:
    server, ca_file = _tls_server(serve, tmp_path)
    assert server.url().startswith("https://127.0.0.1:")
    assert _scraper(server.url(), ca_file=ca_file).scrape().engine == "vllm"
    error = _fail(_scraper(server.url()))  # the system store does not know this CA
    assert error.reason == "refused"
    assert "TLS with" in error.message and "CERTIFICATE_VERIFY_FAILED" in error.message
    missing = _fail(_scraper(server.url(), ca_file=tmp_path / "absent.pem"))
    assert missing.reason == "error" and "cannot load ca_file" in missing.message


def test_inspect_uses_the_ca_file(serve: Serve, tmp_path: Path) -> None:
    server, ca_file = _tls_server(serve, tmp_path)
    out, err = io.StringIO(), io.StringIO()
    code = inspect_command(server.url(), "auto", True, io.BytesIO(), out, err, ca_file=ca_file)
    assert (code, err.getvalue()) == (0, "")
    assert '"engine": "vllm"' in out.getvalue()


def test_cross_origin_redirect_is_not_followed_by_default(serve: Serve) -> None:
    internal = serve(lambda path: {"body": b"internal-admin-secret\n"})
    first = serve(lambda path: {"status": 302, "headers": {"Location": internal.url("/")}})
    error = _fail(_scraper(first.url()))
    assert error.reason == "http_status"
    assert "cross_origin_redirects = true" in error.message
    assert internal.seen == []  # the agent never probed it


def test_a_redirect_targets_answer_is_never_shown(serve: Serve) -> None:
    internal = serve(lambda path: {"body": b"internal-admin-secret\n", "status": 200})
    first = serve(lambda path: {"status": 302, "headers": {"Location": internal.url("/")}})
    error = _fail(_scraper(first.url(), cross_origin_redirects=True))
    assert error.reason == "parse"
    assert "content not shown" in error.message
    assert "secret" not in str(error) and "internal-admin" not in str(error)
    assert len(internal.seen) == 1


def test_prometheus_client_server_answers_with_the_engines_names() -> None:
    # prometheus_client answers OpenMetrics, with `vllm:x` escaped to `vllm_x`, to any Accept
    # that lists openmetrics; the agent asks for the classic text format only.
    registry = CollectorRegistry()
    prompt = Counter("vllm:prompt_tokens", "Prompt tokens.", ["model_name"], registry=registry)
    output = Counter("vllm:generation_tokens", "Output.", ["model_name"], registry=registry)
    prompt.labels(LLAMA).inc(70)
    output.labels(LLAMA).inc(30)
    httpd, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/metrics"
        reading = _scraper(url).scrape()
        fetched = _scraper(url).fetch()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert reading.engine == "vllm"
    assert (reading.models[0].input_tokens, reading.models[0].output_tokens) == (70, 30)
    assert fetched.content_type is not None and "version=0.0.4" in fetched.content_type


def test_llamacpp_without_metrics_flag_gets_a_clear_error(serve: Serve) -> None:
    server = serve(
        lambda path: {"status": 501, "body": b'{"error":{"code":501,"message":"not supported"}}'}
    )
    error = _fail(_scraper(server.url(), engine="llamacpp"))
    assert error.reason == "http_status"
    assert "HTTP 501" in error.message and "start llama-server with --metrics" in error.message


def test_llamacpp_router_mode_scrapes_one_model_without_loading_it(serve: Serve) -> None:
    body = (FIXTURES / "llamacpp.prom").read_bytes()
    server = serve(
        lambda path: {"body": body} if "model=" in path else {"status": 400, "body": b"{}"}
    )
    error = _fail(_scraper(server.url(), engine="llamacpp"))
    assert error.reason == "http_status"
    assert 'set model = "NAME"' in error.message
    reading = _scraper(server.url(), engine="llamacpp", model="qwen/Qwen3 8B").scrape()
    assert reading.engine == "llamacpp"
    assert server.seen[-1].path == "/metrics?model=qwen%2FQwen3%208B&autoload=false"
    _scraper(server.url("/metrics?model=a"), engine="llamacpp").scrape()
    assert server.seen[-1].path == "/metrics?model=a&autoload=false"


def _chunked(body: bytes) -> bytes:
    pieces = [body[i : i + 7000] for i in range(0, len(body), 7000)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["gzip", "chunked", "gzip+chunked"])
def test_connection_is_kept_after_gzip_and_chunked_bodies(
    raw_server: Callable[[Behaviour], RawServer], framing: str
) -> None:
    body = gzip.compress(VLLM) if "gzip" in framing else VLLM
    head = b"HTTP/1.1 200 OK\r\n" + (b"Content-Encoding: gzip\r\n" if "gzip" in framing else b"")
    if "chunked" in framing:
        answer = head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body)
    else:
        answer = head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def keep_alive(conn: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set() and _read_request(conn):
            conn.sendall(answer)

    server = raw_server(keep_alive)
    scraper = _scraper(server.url)
    for _ in range(3):
        assert scraper.scrape().models[0].output_tokens == 456_789
    assert scraper.connections_opened == server.accepted == 1


def test_an_openmetrics_answer_with_escaped_names_is_read_by_its_content_type(
    serve: Serve,
) -> None:
    # A server that answers OpenMetrics whatever we ask (prometheus_client >= 0.23 does when
    # Accept lists it at all): sample names lose their colon, the TYPE line keeps it.
    from prometheus_client.openmetrics.exposition import generate_latest

    registry = CollectorRegistry()
    counter = Counter("sglang:prompt_tokens", "Prompt tokens.", ["model_name"], registry=registry)
    counter.labels("m1").inc(42)
    Counter("sglang:generation_tokens", "Gen.", ["model_name"], registry=registry).labels("m1").inc(
        5
    )
    body = generate_latest(registry)  # type: ignore[no-untyped-call]
    content_type = (
        "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores"
    )
    assert b"sglang_prompt_tokens_total" in body
    server = serve(lambda path: {"body": body, "headers": {"Content-Type": content_type}})
    reading = _scraper(server.url()).scrape()
    assert reading.engine == "sglang"
    assert [(m.model, m.input_tokens, m.output_tokens) for m in reading.models] == [
        ("m1", 42.0, 5.0)
    ]


@pytest.mark.parametrize("gzipped", [False, True], ids=["identity", "gzip"])
def test_a_large_body_is_read_as_it_arrives_without_holding_it(serve: Serve, gzipped: bool) -> None:
    # A 1.4 MB vLLM body (8 engines x 5 models, every V1 histogram): the scrape holds a few
    # 64 KiB network reads at a time, never the body (reading it whole peaked above 1.4 MB).
    models = [SimModelCounters(model=f"m{i}", prompt_tokens=1000 + i) for i in range(5)]
    body = render_exposition("vllm", models, ranks=8, start_time_seconds=1.7e9).encode()
    assert len(body) > 1_000_000
    answer: dict[str, Any] = {"body": gzip.compress(body) if gzipped else body}
    if gzipped:
        answer["headers"] = {"Content-Encoding": "gzip"}
    server = serve(lambda path: answer)
    scraper = _scraper(server.url())
    scraper.scrape()  # the steady state: what a scrape holds beside what the last one left
    tracemalloc.start()
    try:
        reading = scraper.scrape()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert {t.model: t.input_tokens for t in reading.models} == {
        f"m{i}": 1000 + i for i in range(5)
    }
    assert peak < 512 * 1024


def test_scrapers_in_turn_share_one_receive_buffer_and_a_failed_scrape_gives_it_back(
    serve: Serve,
) -> None:
    # Two servers with different bodies, scraped in turn through one 4 KiB buffer: each
    # body is read right through the other's leftovers, and one buffer served both.
    models = [SimModelCounters(model="m", prompt_tokens=1000)]
    big = render_exposition("vllm", models, ranks=8, start_time_seconds=1.7e9).encode()
    assert len(big) > 4096
    servers = [serve(lambda path: {"body": big}), serve(lambda path: {"body": VLLM})]
    broken = serve(lambda path: {"body": b"<html>oops</html>\n"})
    buffers = ReceiveBuffers(size=4096)
    settings = ScrapeSettings(connect_timeout_seconds=1.0, read_timeout_seconds=2.0)

    def scraper(url: str) -> ServerScraper:
        config = ServerSettings(name="s", url=url, engine="vllm")
        return ServerScraper(config, settings, buffers=buffers)

    first, second = (scraper(s.url()) for s in servers)
    for _ in range(3):
        assert [m.input_tokens for m in first.scrape().models] == [1000.0]
        assert second.scrape().models[0].input_tokens == 1_234_567
    with pytest.raises(ScrapeError, match="HTML"):
        scraper(broken.url()).scrape()
    lent = buffers.take()
    assert len(lent) == 4096
    assert b"vllm:" in lent  # the one buffer the scrapes used came back
    assert not any(buffers.take())  # and was the only one kept: the next is a fresh one
