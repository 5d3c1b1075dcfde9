"""HTTP(S) scraping of one inference server's Prometheus endpoint (an edge: does I/O).

One :class:`ServerScraper` per configured server; it owns no thread and holds no global state.
The ``httpx.Client`` is injected so connections stay alive across scrapes and tests can hand
in their own. What it guarantees:

* **Deadline.** Connect timeout ``connect_timeout_seconds``; the whole response (headers and
  body) must arrive within ``read_timeout_seconds``, checked after every chunk. A silent server
  is cut by the read timeout, which is set to the same deadline, so one scrape never takes
  more than about twice the deadline, even against a server that drips bytes.
* **Size.** At most ``max_body_bytes`` after decompression. The body is streamed and gzip is
  decoded here with a bounded output per step, so a gzip bomb costs at most the limit in
  memory; Content-Length is not trusted.
* **Credentials.** The bearer token file is read again at every scrape (rotated tokens work).
  The token never appears in an error message. It is sent only to the configured origin
  (scheme, host and port): redirects are followed by hand, at most
  :data:`MAX_REDIRECTS` times, and a redirect to another origin is followed without the
  Authorization header, as Prometheus does.
* **Errors** are :class:`ScrapeError` with a reason: ``timeout``, ``refused`` (DNS, connect,
  TLS, connection broken), ``http_status``, ``too_large``, ``parse``, or ``error`` (the token
  file cannot be used). A failure concerns this server only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import ssl
import zlib
from pathlib import Path
from typing import Literal

import httpx

from agent.clock import Clock, SystemClock
from agent.config import ScrapeSettings, ServerSettings
from agent.readings import ServerReading
from agent.servers.parser import ExpositionError, ParseLimits
from agent.servers.profiles import read_exposition

__all__ = [
    "ACCEPT",
    "MAX_REDIRECTS",
    "ScrapeError",
    "ScrapeReason",
    "ServerScraper",
    "accept_encoding",
    "make_client",
]

ScrapeReason = Literal["timeout", "refused", "http_status", "too_large", "parse", "error"]

# Same form as Prometheus's Accept header with scrape_protocols [PrometheusText0.0.4,
# OpenMetricsText1.0.0]: 0.0.4 first, since every server here speaks it.
ACCEPT = "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"
MAX_REDIRECTS = 3


class ScrapeError(Exception):
    """One failed scrape.

    Attributes:
        reason: ``timeout``, ``refused``, ``http_status``, ``too_large``, ``parse`` or
            ``error``; the ``reason`` label of ``tokenergy_scrape_errors_total``.
        message: What happened, for logs; never contains credentials.
    """

    def __init__(self, reason: ScrapeReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: ScrapeReason = reason
        self.message = message


def make_client(scrape: ScrapeSettings, ca_file: Path | None = None) -> httpx.Client:
    """Build the HTTP client for scraping (build one per server: CA bundles differ).

    Args:
        scrape: Timeouts.
        ca_file: CA bundle (PEM) to verify https servers; None = the system store.

    Returns:
        A keep-alive client that follows no redirects by itself and does not read proxy
        settings or netrc from the environment.
    """
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else True
    )
    return httpx.Client(
        timeout=httpx.Timeout(scrape.read_timeout_seconds, connect=scrape.connect_timeout_seconds),
        follow_redirects=False,
        verify=verify,
        trust_env=False,
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
    )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, port)


def _redacted(url: httpx.URL) -> str:
    return str(url.copy_with(username=None, password=None)) if url.userinfo else str(url)


def accept_encoding(host: str) -> str:
    """The Accept-Encoding to send to ``host``.

    Compressing costs the inference server CPU in the process that serves requests (about
    2.8 ms per 8-engine vLLM body, tests/benchmarks/bench_server_cost.py) and saves nothing
    on the loopback interface, so a sidecar or a same-host agent asks for no compression;
    remote targets get gzip, as Prometheus asks.

    Args:
        host: The target's host name or IP address.

    Returns:
        ``identity`` for loopback targets, else ``gzip``.
    """
    if host.lower() in ("localhost", "localhost.localdomain"):
        return "identity"
    try:
        return "identity" if ipaddress.ip_address(host.strip("[]")).is_loopback else "gzip"
    except ValueError:
        return "gzip"


class ServerScraper:
    """Scrapes and reads one server.

    Args:
        server: The server's settings (URL, engine, token file).
        scrape: Timeouts and limits.
        client: The HTTP client (see :func:`make_client`).
        clock: Monotonic clock for the total deadline; the system clock by default.
    """

    def __init__(
        self,
        server: ServerSettings,
        scrape: ScrapeSettings,
        client: httpx.Client,
        clock: Clock | None = None,
    ) -> None:
        self._server = server
        self._scrape = scrape
        self._client = client
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._limits = ParseLimits.from_settings(scrape)
        self._url = httpx.URL(server.url)

    @property
    def name(self) -> str:
        """The server's configured name."""
        return self._server.name

    def scrape(self) -> ServerReading:
        """Fetch the exposition and read it with the server's engine profile.

        Returns:
            The reading; ``start_time_seconds`` falls back to the ``Process-Start-Time-Unix``
            response header (llama.cpp) when the body has none.

        Raises:
            ScrapeError: On any failure, with its reason.
        """
        body, start_header = self.fetch()
        try:
            reading = read_exposition(body, self._server.engine, self._limits)
        except ExpositionError as exc:
            raise ScrapeError("parse", str(exc)) from None
        if reading.start_time_seconds is None and start_header is not None:
            reading = dataclasses.replace(reading, start_time_seconds=start_header)
        return reading

    def fetch(self) -> tuple[bytes, float | None]:
        """Fetch the raw body (decompressed) within the deadline and size limit.

        Returns:
            The body and the ``Process-Start-Time-Unix`` header value when present.

        Raises:
            ScrapeError: On any failure, with its reason.
        """
        deadline = self._clock.monotonic() + self._scrape.read_timeout_seconds
        token = self._read_token()
        url = self._url
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Accept": ACCEPT, "Accept-Encoding": accept_encoding(url.host)}
            if token is not None and _origin(url) == origin:
                headers["Authorization"] = f"Bearer {token}"
            result = self._get(url, headers, deadline)
            if isinstance(result, httpx.URL):
                url = result
                continue
            return result
        raise ScrapeError(
            "http_status", f"more than {MAX_REDIRECTS} redirects from {_redacted(self._url)}"
        )

    def _read_token(self) -> str | None:
        path = self._server.bearer_token_file
        if path is None:
            return None
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
            raise ScrapeError("error", f"cannot read bearer token file {path}: {problem}") from None
        if not token:
            raise ScrapeError("error", f"bearer token file {path} is empty")
        if not all(0x21 <= ord(c) <= 0x7E for c in token):
            # Never echo the token: say only what is wrong with it.
            raise ScrapeError(
                "error",
                f"bearer token file {path} holds characters not allowed in an HTTP header "
                "(spaces, control or non-ASCII characters)",
            )
        return token

    def _get(
        self, url: httpx.URL, headers: dict[str, str], deadline: float
    ) -> tuple[bytes, float | None] | httpx.URL:
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise ScrapeError(
                "timeout", f"deadline of {self._scrape.read_timeout_seconds} s passed"
            )
        timeout = httpx.Timeout(
            remaining, connect=min(self._scrape.connect_timeout_seconds, remaining)
        )
        shown = _redacted(url)
        try:
            with self._client.stream(
                "GET", url, headers=headers, timeout=timeout, follow_redirects=False
            ) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    if not location:
                        raise ScrapeError(
                            "http_status",
                            f"HTTP {response.status_code} without Location from {shown}",
                        )
                    return url.join(location)
                if response.status_code != 200:
                    raise ScrapeError(
                        "http_status",
                        f"HTTP {response.status_code} {response.reason_phrase} from {shown}",
                    )
                body = self._read_body(response, deadline)
                return body, _start_header(response)
        except httpx.TimeoutException:
            raise ScrapeError(
                "timeout",
                f"no complete answer from {shown} within {self._scrape.read_timeout_seconds} s",
            ) from None
        except httpx.ConnectError as exc:
            raise ScrapeError("refused", f"cannot connect to {shown}: {_short(exc)}") from None
        except httpx.TransportError as exc:
            raise ScrapeError("refused", f"connection to {shown} broken: {_short(exc)}") from None
        except httpx.InvalidURL as exc:
            raise ScrapeError("refused", f"invalid URL {shown}: {exc}") from None

    def _read_body(self, response: httpx.Response, deadline: float) -> bytes:
        limit = self._scrape.max_body_bytes
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
            raise ScrapeError("parse", f"unsupported Content-Encoding {encoding!r}")
        declared = response.headers.get("content-length", "")
        if encoding in ("identity", "") and declared.isdigit() and int(declared) > limit:
            raise ScrapeError(
                "too_large", f"Content-Length {declared} bytes is over max_body_bytes={limit}"
            )
        decoder: zlib._Decompress | None = None
        if encoding in ("gzip", "x-gzip"):
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            decoder = zlib.decompressobj()
        parts: list[bytes] = []
        size = 0
        # No chunk size: chunks come as received, so the deadline is checked between them.
        for chunk in response.iter_raw():
            if self._clock.monotonic() > deadline:
                raise ScrapeError(
                    "timeout", f"body not complete within {self._scrape.read_timeout_seconds} s"
                )
            pieces = [chunk] if decoder is None else _inflate(decoder, chunk, limit - size + 1)
            for piece in pieces:
                size += len(piece)
                if size > limit:
                    raise ScrapeError(
                        "too_large", f"body is over max_body_bytes={limit} (after decompression)"
                    )
                parts.append(piece)
        if decoder is not None and not decoder.eof:
            raise ScrapeError("parse", f"{encoding} body is truncated")
        return b"".join(parts)


def _inflate(decoder: zlib._Decompress, data: bytes, budget: int) -> list[bytes]:
    """Decompress one network chunk, never producing more than ``budget`` bytes."""
    out: list[bytes] = []
    produced = 0
    try:
        while data and produced < budget and not decoder.eof:
            piece = decoder.decompress(data, budget - produced)
            out.append(piece)
            produced += len(piece)
            data = decoder.unconsumed_tail
    except zlib.error as exc:
        raise ScrapeError("parse", f"bad compressed body: {exc}") from None
    return out


def _start_header(response: httpx.Response) -> float | None:
    value = response.headers.get("process-start-time-unix")
    if value is None:
        return None
    try:
        parsed = float(value)
    except ValueError:
        return None
    return parsed if parsed > 0 and parsed == parsed and parsed != float("inf") else None


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
