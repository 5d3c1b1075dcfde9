"""The HTTP scraper against real local servers on 127.0.0.1."""

from __future__ import annotations

import gzip
import shutil
import socket
import ssl
import subprocess
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.clock import ManualClock
from agent.config import ScrapeSettings, ServerSettings
from agent.servers.scraper import (
    ACCEPT,
    ScrapeError,
    ServerScraper,
    accept_encoding,
    make_client,
)

FIXTURES = Path(__file__).parent / "fixtures"
VLLM = (FIXTURES / "vllm_v1.prom").read_bytes()
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"

Serve = Callable[..., Any]


def _scraper(
    url: str,
    scrape: ScrapeSettings | None = None,
    client: httpx.Client | None = None,
    **server: Any,
) -> ServerScraper:
    settings = scrape or ScrapeSettings(connect_timeout_seconds=1.0, read_timeout_seconds=2.0)
    config = ServerSettings.model_validate({"name": "s", "url": url, **server})
    return ServerScraper(config, settings, client or make_client(settings))


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
    assert seen.headers["accept"] == ACCEPT
    assert seen.headers["accept"].startswith("text/plain;version=0.0.4")
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

    scraper = ServerScraper(config, scrape, make_client(scrape), clock=JumpingClock())
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


def test_gzip_bomb_stops_at_the_limit_with_bounded_memory(serve: Serve) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    bomb = b"".join(compressor.compress(chunk) for _ in range(256)) + compressor.flush()
    assert len(bomb) < 1 << 20  # 256 MiB of zeros in well under 1 MiB
    server = serve(lambda path: {"body": bomb, "headers": {"Content-Encoding": "gzip"}})
    scrape = ScrapeSettings(read_timeout_seconds=5.0, max_body_bytes=4 << 20)
    scraper = _scraper(server.url(), scrape)
    tracemalloc.start()
    try:
        error = _fail(scraper)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.reason == "too_large"
    assert "after decompression" in error.message
    assert peak < 3 * (4 << 20)


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
    reading = _scraper(first.url(), bearer_token_file=token_file).scrape()
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
    client = make_client(settings)  # even sharing one client
    scrapers = [_scraper(bad.url(), settings, client), _scraper(good.url(), settings, client)]
    outcomes = []
    for scraper in scrapers:
        try:
            outcomes.append(scraper.scrape().engine)
        except ScrapeError as exc:
            outcomes.append(exc.reason)
    assert outcomes == ["http_status", "vllm"]


def test_start_time_header_of_llamacpp(serve: Serve) -> None:
    body = (FIXTURES / "llamacpp.prom").read_bytes()
    server = serve(
        lambda path: {"body": body, "headers": {"Process-Start-Time-Unix": "1767225600"}}
    )
    reading = _scraper(server.url()).scrape()
    assert (reading.engine, reading.start_time_seconds) == ("llamacpp", 1767225600.0)


def test_explicit_engine_from_settings(serve: Serve) -> None:
    server = serve(lambda path: {"body": VLLM})
    error = _fail(_scraper(server.url(), engine="sglang"))
    assert error.reason == "parse"
    assert "no sglang metrics found" in error.message


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_with_a_ca_file(serve: Serve, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = serve(lambda path: {"body": VLLM}, tls)
    settings = ScrapeSettings()
    trusted = _scraper(server.url(), settings, make_client(settings, ca_file=cert), ca_file=cert)
    assert trusted.scrape().engine == "vllm"
    error = _fail(_scraper(server.url(), settings, make_client(settings)))
    assert error.reason == "refused"
