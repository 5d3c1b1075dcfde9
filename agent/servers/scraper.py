"""HTTP(S) scraping of one inference server's Prometheus endpoint (an edge: does I/O).

One :class:`ServerScraper` per configured server, owning its own kept-alive connection
(:class:`~agent.servers.transport.OriginConnection`): nothing one server does touches the
connection of another. It owns no thread and holds no global state. What it guarantees:

* **Deadline.** ``read_timeout_seconds`` bounds the whole exchange: reading the token file,
  name resolution aside (see the transport module), connect (each attempt at most
  ``connect_timeout_seconds``), TLS, the request, the status line, the headers, any number
  of ``100 Continue`` answers, redirects and the body. Every receive waits at most until the
  deadline, so a server that drips bytes or sends ``100 Continue`` forever is cut at it.
* **Size.** At most ``max_body_bytes`` after decompression. gzip/deflate are decoded here
  with a bounded output per step, so a gzip bomb costs at most the limit in memory; a
  Content-Length over the limit is refused before reading.
* **Credentials.** The bearer token file is read again at every scrape (rotated tokens work),
  without blocking (a FIFO or other non-regular file is refused) and at most
  :data:`MAX_TOKEN_BYTES`. The token never appears in an error message and is sent only to
  the configured origin (scheme, host and port).
* **Redirects** are followed by hand, at most :data:`MAX_REDIRECTS` times, within the same
  origin only, unless the server sets ``cross_origin_redirects = true`` (then the other
  origin gets no Authorization header, as Prometheus does). No byte of a redirect target's
  answer is put in an error message.
* **Errors** are :class:`ScrapeError` with a reason: ``timeout``, ``dns`` (the host name
  does not resolve), ``refused`` (connect, TLS, connection broken, invalid HTTP),
  ``http_status``, ``too_large``, ``parse``, or ``error`` (the token or CA file cannot be
  used). A failure concerns this server only.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit

from agent import __version__
from agent.clock import Clock, SystemClock
from agent.config import ScrapeSettings, ServerSettings
from agent.readings import ServerReading
from agent.servers.parser import PIECE_BYTES, ExpositionError, ParseLimits
from agent.servers.profiles import ExpositionStream, ReadMemo
from agent.servers.transport import DeadlineExceededError, OriginConnection
from agent.urls import HttpUrl, parse_http_url

__all__ = [
    "ACCEPT",
    "MAX_REDIRECTS",
    "MAX_TOKEN_BYTES",
    "Fetched",
    "ReceiveBuffers",
    "ScrapeError",
    "ScrapeReason",
    "ServerScraper",
    "accept_encoding",
    "read_token_file",
    "scrape_url",
]

ScrapeReason = Literal["timeout", "dns", "refused", "http_status", "too_large", "parse", "error"]

# The classic text format is the one every engine serves. prometheus_client (vLLM, SGLang,
# LMDeploy...) answers OpenMetrics whenever Accept lists `application/openmetrics-text` at all,
# whatever its q-weight, and from 0.23 escapes `vllm:x` to `vllm_x` there (escaping=underscores
# by default): prometheus/client_python, prometheus_client/exposition.py `choose_encoder`.
# Asking for 0.0.4 alone keeps the names as the engines wrote them; an OpenMetrics answer from
# a server that ignores Accept is still read (the parser knows `# EOF`).
ACCEPT = "text/plain;version=0.0.4"
MAX_REDIRECTS = 3
MAX_TOKEN_BYTES = 64 * 1024
"""Largest bearer token file read, bytes (service-account JWTs are 1-2 KB)."""

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# One read of a compressed body (see PIECE_BYTES).
_CHUNK = PIECE_BYTES
_USER_AGENT = f"tokenergy/{__version__}"


class ScrapeError(Exception):
    """One failed scrape.

    Attributes:
        reason: ``timeout``, ``dns``, ``refused``, ``http_status``, ``too_large``, ``parse``
            or ``error``; the ``reason`` label of ``tokenergy_scrape_errors_total``.
        message: What happened, for logs; never contains credentials.
    """

    def __init__(self, reason: ScrapeReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: ScrapeReason = reason
        self.message = message


@dataclass(frozen=True)
class Fetched:
    """One fetched exposition.

    Attributes:
        body: The body, decompressed.
        content_type: The response's Content-Type header, or None.
        redirected_from: The configured origin when the body came from another origin
            (a followed cross-origin redirect), else None.
    """

    body: bytes
    content_type: str | None
    redirected_from: str | None = None


def _parse_url(url: str) -> HttpUrl:
    try:
        return parse_http_url(url)
    except ValueError as exc:
        raise ScrapeError("refused", f"invalid URL: {exc}") from None


def scrape_url(server: ServerSettings) -> str:
    """The URL scraped for a server: its ``url``, with llama.cpp router-mode parameters.

    llama-server in router mode (``--models-dir``) answers ``/metrics`` with HTTP 400 and
    serves one model's metrics at ``/metrics?model=NAME``; ``autoload=false`` keeps a scrape
    from loading a model that is not loaded (ggml-org/llama.cpp, tools/server README,
    "Using multiple models"). ``model`` in the settings adds both; a URL that already names a
    model gets ``autoload=false`` unless it sets ``autoload`` itself.

    Args:
        server: The server's settings.

    Returns:
        The URL to request.
    """
    parts = urlsplit(server.url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if server.model is not None:
        query = [(k, v) for k, v in query if k not in ("model", "autoload")]
        query += [("model", server.model), ("autoload", "false")]
    elif any(k == "model" for k, _ in query) and not any(k == "autoload" for k, _ in query):
        query.append(("autoload", "false"))
    else:
        return server.url
    return parts._replace(query=urlencode(query, quote_via=quote)).geturl()


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


RECEIVE_BYTES = 256 * 1024
"""Size of a shared receive buffer, bytes: a 1.4 MB body in 6 network reads, not 22."""


class ReceiveBuffers:
    """Receive buffers shared by the scrapers of one agent.

    The sampler scrapes its servers in turn on one thread, so one buffer serves them all and
    stays in the CPU cache; a scrape moved to a thread of its own (a stalled server) takes
    another. Buffers are kept for the life of the agent: a buffer over glibc's 128 KiB mmap
    threshold, freed and allocated again, would be page-faulted in at every scrape.

    Args:
        size: Bytes per buffer.
        keep: Most free buffers kept (more are left to the garbage collector).
    """

    def __init__(self, size: int = RECEIVE_BYTES, keep: int = 4) -> None:
        self.size = size
        self._keep = keep
        self._free = [bytearray(size)]  # made up front, as the agent starts

    def take(self) -> bytearray:
        """A buffer of :attr:`size` bytes for one scrape; give it back after."""
        try:
            return self._free.pop()  # atomic: scrapes on other threads may take one too
        except IndexError:
            return bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        """Give back a buffer :meth:`take` lent."""
        if len(self._free) < self._keep:
            self._free.append(buffer)


class ServerScraper:
    """Scrapes and reads one server over its own kept-alive connection.

    Args:
        server: The server's settings (URL, engine, token file, CA file, redirects).
        scrape: Timeouts and limits.
        clock: Monotonic clock for the deadline; the system clock by default (socket waits
            are real time, so production always uses the system clock).
        buffers: Receive buffers shared with the agent's other scrapers; None = its own.
    """

    def __init__(
        self,
        server: ServerSettings,
        scrape: ScrapeSettings,
        clock: Clock | None = None,
        buffers: ReceiveBuffers | None = None,
    ) -> None:
        self._server = server
        self._scrape = scrape
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._limits = ParseLimits.from_settings(scrape)
        self._url_text = scrape_url(server)
        # The configured URL, parsed, and its Accept-Encoding: the same at every scrape.
        self._url: tuple[HttpUrl, str] | None = None
        self._tls: ssl.SSLContext | None = None
        self._home: OriginConnection | None = None
        self._opened_elsewhere = 0
        # Label sets and series keys this server repeats at every scrape, and a lent receive
        # buffer: a scrape allocates no body-sized (nor piece-sized) memory.
        self._memo = ReadMemo()
        self._buffers = buffers if buffers is not None else ReceiveBuffers(keep=1)

    @property
    def name(self) -> str:
        """The server's configured name."""
        return self._server.name

    @property
    def connections_opened(self) -> int:
        """TCP connections this scraper has opened since it was built."""
        home = self._home.connections_opened if self._home is not None else 0
        return home + self._opened_elsewhere

    def close(self) -> None:
        """Close the kept-alive connection (a later scrape opens a new one)."""
        if self._home is not None:
            self._home.close()

    def scrape(self) -> ServerReading:
        """Fetch the exposition and read it with the server's engine profile.

        The body is read as it arrives, one network read at a time (see
        :class:`~agent.servers.profiles.ExpositionStream`): no copy of it is kept.

        Returns:
            The reading. llama.cpp's ``Process-Start-Time-Unix`` header is not used: it holds
            the process start in monotonic microseconds since boot, not a Unix time.

        Raises:
            ScrapeError: On any failure, with its reason.
        """
        streams: list[ExpositionStream] = []
        buffer = self._buffers.take()

        def open_body(content_type: str | None) -> ExpositionStream:
            # The Content-Type tells OpenMetrics (and its name escaping) from the classic text.
            stream = ExpositionStream(
                self._server.engine,
                self._limits,
                content_type,
                memo=self._memo,
                buffer=buffer,
            )
            streams.append(stream)
            return stream

        try:
            redirected_from = self._fetch(open_body)
            return streams[-1].result().reading
        except ExpositionError as exc:
            raise _parse_error(exc, redirected_from) from None
        finally:
            self._buffers.give(buffer)

    def fetch(self) -> Fetched:
        """Fetch the raw body (decompressed) within the deadline and size limit.

        Returns:
            The body and its Content-Type.

        Raises:
            ScrapeError: On any failure, with its reason.
        """
        bodies: list[_Collected] = []

        def open_body(content_type: str | None) -> _Collected:
            bodies.append(_Collected(content_type))
            return bodies[-1]

        redirected_from = self._fetch(open_body)
        body = bodies[-1]
        return Fetched(b"".join(body.parts), body.content_type, redirected_from)

    def _fetch(self, open_body: Callable[[str | None], _Sink]) -> str | None:
        """Fetch the body into the sink ``open_body`` makes for the final answer.

        Args:
            open_body: Called once, with the answer's Content-Type, when its body starts.

        Returns:
            The configured origin when the body came from another origin (a followed
            cross-origin redirect), else None.

        Raises:
            ScrapeError: On any failure, with its reason (a sink's ExpositionError is a
                ``parse`` failure).
        """
        timeout = self._scrape.read_timeout_seconds
        deadline = self._clock.monotonic() + timeout
        if self._url is None:
            parsed = _parse_url(self._url_text)
            self._url = parsed, accept_encoding(parsed.host)
        url = configured = self._url[0]
        home_encoding = self._url[1]
        home = url.origin
        auth = self._authorization(url)
        if self._clock.monotonic() > deadline:
            raise ScrapeError("timeout", f"reading the bearer token file took over {timeout} s")
        for _ in range(MAX_REDIRECTS + 1):
            same = url.origin == home
            encoding = home_encoding if url is configured else accept_encoding(url.host)
            headers = {
                "Accept": ACCEPT,
                "Accept-Encoding": encoding,
                "User-Agent": _USER_AGENT,
            }
            if auth is not None and same:
                headers["Authorization"] = auth
            conn = self._connection(url) if same else self._stranger(url)
            try:
                result = self._exchange(
                    conn, url, headers, deadline, elsewhere=not same, open_body=open_body
                )
            except ExpositionError as exc:
                raise _parse_error(exc, None if same else configured.shown()) from None
            finally:
                if not same:
                    conn.close()
                    self._opened_elsewhere += conn.connections_opened
            if result is None:
                return None if same else configured.shown()
            url = result
            if url.origin != home and not self._server.cross_origin_redirects:
                raise ScrapeError(
                    "http_status",
                    f"{configured.shown()} redirects to another origin "
                    f"({url.origin_text()}); not followed (set cross_origin_redirects = true "
                    "for this server to allow it)",
                )
        raise ScrapeError(
            "http_status",
            f"more than {MAX_REDIRECTS} redirects from {configured.shown()}",
        )

    # -- pieces ------------------------------------------------------------------------------

    def _connection(self, url: HttpUrl) -> OriginConnection:
        if self._home is None:
            self._home = self._open(url)
        return self._home

    def _stranger(self, url: HttpUrl) -> OriginConnection:
        return self._open(url)

    def _open(self, url: HttpUrl) -> OriginConnection:
        return OriginConnection(
            url.host,
            url.port,
            self._tls_context() if url.scheme == "https" else None,
            self._scrape.connect_timeout_seconds,
            self._clock.monotonic,
        )

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            ca_file = self._server.ca_file
            try:
                self._tls = ssl.create_default_context(
                    cafile=str(ca_file) if ca_file is not None else None
                )
            except (OSError, ssl.SSLError) as exc:
                problem = _short(exc)
                raise ScrapeError("error", f"cannot load ca_file {ca_file}: {problem}") from None
        return self._tls

    def _authorization(self, url: HttpUrl) -> str | None:
        token = self._read_token()
        if token is not None:
            return f"Bearer {token}"
        if url.username is not None:
            pair = f"{url.username}:{url.password or ''}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return None

    def _read_token(self) -> str | None:
        path = self._server.bearer_token_file
        if path is None:
            return None
        raw = read_token_file(path)
        try:
            token = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ScrapeError("error", f"cannot read bearer token file {path}: not UTF-8") from None
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

    def _exchange(
        self,
        conn: OriginConnection,
        url: HttpUrl,
        headers: dict[str, str],
        deadline: float,
        elsewhere: bool,
        open_body: Callable[[str | None], _Sink],
    ) -> HttpUrl | None:
        shown = url.shown()
        timeout = self._scrape.read_timeout_seconds
        try:
            response = conn.request(url.target, headers, deadline)
            try:
                return self._answer(conn, response, url, elsewhere, deadline, open_body)
            except BaseException:
                response.close()
                conn.close()
                raise
        except ScrapeError:
            raise
        except (DeadlineExceededError, TimeoutError):
            problem = f"no complete answer from {shown} within {timeout} s"
            raise ScrapeError("timeout", problem) from None
        except socket.gaierror as exc:
            raise ScrapeError("dns", f"cannot resolve {url.host}: {_short(exc)}") from None
        except ssl.SSLError as exc:
            raise ScrapeError("refused", f"TLS with {shown} failed: {_short(exc)}") from None
        except ConnectionRefusedError:
            raise ScrapeError("refused", f"cannot connect to {shown}: connection refused") from None
        except (OSError, http.client.HTTPException) as exc:
            what = "invalid HTTP answer" if isinstance(exc, http.client.HTTPException) else ""
            detail = what if elsewhere and what else _short(exc)
            raise ScrapeError("refused", f"connection to {shown} broken: {detail}") from None

    def _answer(
        self,
        conn: OriginConnection,
        response: http.client.HTTPResponse,
        url: HttpUrl,
        elsewhere: bool,
        deadline: float,
        open_body: Callable[[str | None], _Sink],
    ) -> HttpUrl | None:
        shown = url.shown()
        status = response.status
        if 100 <= status < 200:
            # http.client skips only `100 Continue`; the final answer follows this one on
            # the wire, so the connection cannot be reused.
            response.close()
            conn.close()
            raise ScrapeError("http_status", self._status_message(response, url, elsewhere))
        if status in _REDIRECTS:
            location = response.getheader("location", "")
            _discard(conn, response)
            if not location:
                raise ScrapeError("http_status", f"HTTP {status} without Location from {shown}")
            try:
                return _parse_url(urljoin(url.shown(), location.strip()))
            except ScrapeError:
                raise ScrapeError(
                    "http_status", f"HTTP {status} from {shown} with an unusable Location"
                ) from None
        if status != 200:
            _discard(conn, response)
            raise ScrapeError("http_status", self._status_message(response, url, elsewhere))
        self._read_body(response, deadline, open_body(response.getheader("content-type")))
        conn.done(response)
        return None

    def _status_message(
        self, response: http.client.HTTPResponse, url: HttpUrl, elsewhere: bool
    ) -> str:
        status = response.status
        phrase = "" if elsewhere else f" {_printable(response.reason)}"
        text = f"HTTP {status}{phrase} from {url.shown()}"
        llamacpp = self._server.engine in ("auto", "llamacpp")
        if 100 <= status < 200:
            return f"unexpected informational answer {text}"
        if status == 501 and llamacpp:
            return (
                f"{text}: the metrics endpoint is off "
                "(llama.cpp: start llama-server with --metrics)"
            )
        if status == 400 and llamacpp and "model=" not in url.target:
            return (
                f"{text}: a llama-server in router mode (--models-dir) needs a model: set "
                'model = "NAME" for this server'
            )
        return text

    def _read_body(self, response: http.client.HTTPResponse, deadline: float, sink: _Sink) -> None:
        """Feed the body to ``sink`` one network read (at most :data:`_CHUNK`) at a time."""
        limit = self._scrape.max_body_bytes
        encoding = (response.getheader("content-encoding") or "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
            raise ScrapeError("parse", f"unsupported Content-Encoding {encoding!r}")
        declared = response.length  # from Content-Length; None when chunked or until close
        if encoding in ("identity", "") and declared is not None and declared > limit:
            raise ScrapeError(
                "too_large", f"Content-Length {declared} bytes is over max_body_bytes={limit}"
            )
        decoder: zlib._Decompress | None = None
        if encoding in ("gzip", "x-gzip"):
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            decoder = zlib.decompressobj()
        size = 0
        too_large = f"body is over max_body_bytes={limit} (after decompression)"
        if decoder is None:
            # Straight into the sink's buffer: the body is copied once, by the kernel.
            while True:
                room = sink.space()
                count = response.readinto(room)
                room.release()
                if not count:
                    break
                if self._clock.monotonic() > deadline:
                    raise DeadlineExceededError("deadline passed while reading the body")
                size += count
                if size > limit:
                    raise ScrapeError("too_large", too_large)
                sink.commit(count)
        while decoder is not None and (chunk := response.read(_CHUNK)):
            if self._clock.monotonic() > deadline:
                raise DeadlineExceededError("deadline passed while reading the body")
            for piece in _inflate(decoder, chunk, limit - size + 1):
                size += len(piece)
                if size > limit:
                    raise ScrapeError("too_large", too_large)
                sink.feed(piece)
        if response.length:
            # http.client ends a short Content-Length body quietly; it is truncated.
            raise http.client.IncompleteRead(b"", response.length)
        if decoder is not None and not decoder.eof:
            raise ScrapeError("parse", f"{encoding} body is truncated")


class _Sink(Protocol):
    """Where a body goes as it arrives."""

    def space(self) -> memoryview:
        """Room to receive the next bytes into."""
        ...

    def commit(self, count: int) -> None:
        """Take the ``count`` bytes just received into :meth:`space`."""

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the body."""


class _Collected:
    """A sink that keeps the whole body (``fetch``: ``inspect`` shows it)."""

    def __init__(self, content_type: str | None) -> None:
        self.content_type = content_type
        self.parts: list[bytes | memoryview] = []
        self._room = memoryview(bytearray(PIECE_BYTES))

    def space(self) -> memoryview:
        if not self._room:
            self._room = memoryview(bytearray(PIECE_BYTES))
        return self._room[:]  # the caller releases its view, not ours

    def commit(self, count: int) -> None:
        self.parts.append(self._room[:count])
        self._room = self._room[count:]

    def feed(self, data: bytes) -> None:
        self.parts.append(data)


def _parse_error(exc: ExpositionError, redirected_from: str | None) -> ScrapeError:
    if redirected_from is not None:
        # The answer of a redirect target is not shown: it may be any internal service.
        return ScrapeError(
            "parse",
            f"the answer of a redirect target of {redirected_from} is not a readable "
            "exposition (content not shown)",
        )
    return ScrapeError("parse", str(exc))


def read_token_file(path: Path, limit: int = MAX_TOKEN_BYTES) -> bytes:
    """Read a bearer token file without blocking and without reading more than ``limit``.

    The file is opened non-blocking and must be a regular file: a FIFO (a hung secret mount,
    a mistake) would otherwise block the scrape, and shutdown, until a writer appears.

    Args:
        path: The file.
        limit: Largest size accepted, bytes.

    Returns:
        The file's bytes.

    Raises:
        ScrapeError: ``error`` when the file cannot be opened, is not a regular file or is
            over ``limit``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ScrapeError(
            "error", f"cannot read bearer token file {path}: {exc.strerror or exc}"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ScrapeError("error", f"bearer token file {path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ScrapeError("error", f"bearer token file {path} is over {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise ScrapeError(
            "error", f"cannot read bearer token file {path}: {exc.strerror or exc}"
        ) from None
    finally:
        os.close(fd)


def _discard(conn: OriginConnection, response: http.client.HTTPResponse) -> None:
    """Drop an unwanted body: read a short one to keep the connection, else close it."""
    if response.length is not None and response.length <= 64 * 1024:
        response.read()
        conn.done(response)
    else:
        response.close()
        conn.close()


def _inflate(decoder: zlib._Decompress, data: bytes, budget: int) -> Iterator[bytes]:
    """Decompress one network chunk in pieces of at most :data:`_CHUNK` bytes.

    Never more than ``budget`` bytes in all: a gzip bomb costs at most the limit.
    """
    produced = 0
    try:
        while produced < budget and not decoder.eof:
            cap = min(_CHUNK, budget - produced)
            piece = decoder.decompress(data, cap)
            data = decoder.unconsumed_tail
            if piece:
                produced += len(piece)
                yield piece
            # A piece of `cap` bytes may leave output inside zlib even with no input left.
            if not data and len(piece) < cap:
                return
    except zlib.error as exc:
        raise ScrapeError("parse", f"bad compressed body: {exc}") from None


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text[:60])


def _short(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return text[:200]
