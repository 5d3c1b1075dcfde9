"""The agent's HTTP endpoint: /metrics, /healthz and a landing page, hardened for hostile clients.

Why asyncio from the standard library, and not prometheus_client's server or a WSGI server:

- prometheus_client's ``start_http_server`` starts one thread per connection with no bound and
  no timeouts, and has no basic auth (prometheus/client_python:
  prometheus_client/exposition.py, ``ThreadingWSGIServer``).
- waitress buffers requests well but has no TLS; cheroot does TLS but its built-in adapter
  performs the handshake on the accept thread and a worker sits in a blocking read while a
  slow client trickles in its request; gunicorn is a process manager, not an embeddable
  server, and its multiprocess model breaks custom collectors.
- asyncio (stdlib, maintained with CPython) gives non-blocking accept, reads and TLS
  handshakes (``loop.start_tls``) on one event-loop thread. A connection costs a small object,
  not a thread, until its request head has fully arrived, so clients that send one byte a
  second cannot tie up the workers that render /metrics.

How a connection is served:

1. Accept (event loop), in small batches so a storm cannot take every descriptor at once.
   The open-connection limit (default ``64 * max_connections``) is lowered to fit the
   process's open-file limit, less ``reserved_fds`` kept for scraping servers and NVML. At
   the limit, the oldest connection that has not sent a complete request (idle or slow),
   taken from the client address holding the most of them, is shed to make room; only
   connections younger than a second are spared, since a scraper's request is on its way.
   When every open connection is already working on a request, a plain-HTTP client gets an
   immediate ``503`` and a TLS client is closed.
2. TLS handshake, if configured, and reading the request head (event loop, non-blocking).
   One short deadline, ``header_timeout_seconds`` (capped at ``client_timeout_seconds``),
   covers both from accept; a client that has not sent a complete head by then is dropped.
   Heads over ``max_head_bytes`` get ``431``. Lines may end in CRLF or a bare LF.
3. Parsing and basic auth (event loop): a credential verified before is answered from the
   cache at once; an unknown one goes to a small bcrypt pool (``auth_workers`` threads, at
   most ``max_pending_auth`` checks queued, more get ``429``), never to the rendering
   workers, so a flood of wrong passwords cannot queue in front of a valid scraper. A
   refusal is held as long as a check at the file's highest bcrypt cost takes.
4. Rendering (a ``ThreadPoolExecutor`` of ``max_connections`` threads). Requests beyond
   ``max_connections`` queue in the pool; a request that waited longer than
   ``client_timeout_seconds`` gets ``503`` (its scraper has given up by then).
5. Writing (event loop): the response is written, the connection closed (``Connection:
   close``, no keep-alive, so an idle client never holds anything). A client that does not
   read it within ``client_timeout_seconds`` is aborted.

Failures never become tracebacks: errors asyncio reports (an accept out of descriptors) and
unexpected errors in a connection's callbacks end that connection and are logged as one
logfmt line per kind per 10 s, with the count of repeats left out.

Threads: one event-loop thread, at most ``max_connections`` rendering workers and
``auth_workers`` bcrypt workers, whatever the load.

Requests: ``GET`` and ``HEAD`` only (405 otherwise); query strings are ignored, so there is
no way to make the agent fetch anything (no SSRF surface) and no ``name[]`` filtering work.
Basic auth, when configured, applies to every path except ``auth_excluded_paths``.

The web config file is re-read when it, or a certificate, key or CA file it names, changes:
each new connection compares their size, inode and mtime (a few ``stat`` calls), and on
:meth:`MetricsServer.reload_web_config` (the CLI calls it on SIGHUP). A change
that does not load (bad YAML, unreadable key) is logged and the previous config stays in
force, so a botched rotation never turns TLS or auth off.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import io
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from prometheus_client.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    choose_encoder,
    generate_latest,
)
from prometheus_client.registry import Collector

from agent.config import HttpSettings, split_listen
from agent.logs import OncePer, describe
from exporters.webconfig import (
    BasicAuth,
    WebConfig,
    WebConfigError,
    file_signature,
    load_web_config,
    peer_has_allowed_san,
)

Health = Callable[[], tuple[bool, list[str]]]
"""Returns (healthy, lines naming degraded parts) for /healthz."""

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_LANDING = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>tokenergy</title></head>
<body>
<h1>tokenergy</h1>
<p>Tokens per joule, joules per token and cost per token of LLM inference, per GPU and server.</p>
<ul>
<li><a href="metrics">metrics</a>: Prometheus exposition (text or OpenMetrics)</li>
<li><a href="healthz">healthz</a>: 200 while sampling runs, 503 when it has stalled</li>
</ul>
</body>
</html>
"""


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain; charset=utf-8"

    def encode(self, head_only: bool, extra: tuple[tuple[str, str], ...]) -> bytes:
        headers = {
            "Content-Type": self.content_type,
            "Content-Length": str(len(self.body)),
            "Date": formatdate(usegmt=True),
            "Connection": "close",
            "X-Content-Type-Options": "nosniff",
        }
        # The response's own headers win over the web config's extra security headers.
        headers.update((name, value) for name, value in extra if name not in headers)
        headers.update(self.headers)
        status = f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}\r\n"
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = (status + lines + "\r\n").encode("latin-1")
        return head if head_only else head + self.body


def _text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    return _Response(status, (message + "\n").encode("utf-8"), headers)


_OVERLOADED = _text(503, "too many connections; retry later", (("Retry-After", "1"),))
_UNAUTHORIZED = _text(401, "unauthorized", (("WWW-Authenticate", 'Basic realm="tokenergy"'),))
_AUTH_BUSY = _text(
    429, "too many credential checks in progress; retry later", (("Retry-After", "1"),)
)
_HEAD_END = re.compile(rb"\r?\n\r?\n")

GZIP_LEVEL = 1
"""zlib level of gzipped /metrics: 4x less CPU than level 6 for a body 15-20 % larger (a
107 kB exposition: 0.2 ms and 8.7 kB against 0.8 ms and 7.4 kB)."""


def _is_version(value: str) -> bool:
    """``1``, ``1.0`` or ``1.0.0``: ASCII digits in at most three dot-separated parts."""
    parts = value.split(".")
    return len(parts) <= 3 and all(p.isascii() and p.isdigit() for p in parts)


def _choose_format(accept: str) -> tuple[Callable[[Collector], bytes], str]:
    """The encoder and content type for an Accept header; a malformed one gets text 0.0.4.

    Media ranges whose ``version`` is not a dotted number are dropped before
    prometheus_client's negotiation, which raises on them.
    """
    kept = []
    for media in accept.split(","):
        params = [p.strip() for p in media.split(";")[1:]]
        versions = [p.split("=", 1)[1].strip() for p in params if p.startswith("version=")]
        if all(_is_version(v) for v in versions):
            kept.append(media)
    try:
        return choose_encoder(",".join(kept))
    except Exception:  # a header prometheus_client cannot read: the default format
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4


@runtime_checkable
class WritesExposition(Protocol):
    """A registry that writes its own exposition (``exporters.prometheus.SnapshotRegistry``)."""

    def exposition(self, openmetrics: bool = False) -> bytes:
        """The text 0.0.4 (or OpenMetrics 1.0) exposition, UTF-8."""
        ...


_SAME_NAMES = ("", "underscores", "allow-utf-8")
"""Name escapings that leave legacy names as they are (every tokenergy name is one)."""


def _encode(registry: Collector, encoder: Callable[[Collector], bytes], content_type: str) -> bytes:
    """The body for the negotiated format; the registry's own writer where it has one.

    Its bytes are those of prometheus_client's encoder for the same format; for a name
    escaping that rewrites names (``dots``, ``values``) prometheus_client's encoder writes.
    """
    escaping = content_type.partition("escaping=")[2].strip()
    if isinstance(registry, WritesExposition) and escaping in _SAME_NAMES:
        return registry.exposition(content_type.startswith("application/openmetrics-text"))
    return encoder(registry)


def _gzip_wanted(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` accepts gzip with a q-value above 0 (RFC 9110 §12.5.3)."""
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name:
            qualities[name.lower()] = q
    if "gzip" in qualities:
        return qualities["gzip"] > 0
    return qualities.get("*", 0.0) > 0


@dataclass
class _Request:
    method: str
    path: str
    headers: http.client.HTTPMessage


def _parse_head(head: bytes) -> _Request | _Response:
    """Parse a request line and headers (the bytes before the blank line).

    Lines may end in CRLF or a bare LF (RFC 9112 §2.2 lets a server accept LF).
    """
    lines = [line.removesuffix(b"\r") for line in head.split(b"\n")]
    line, rest = lines[0], b"\r\n".join(lines[1:])
    parts = line.decode("latin-1").split(" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]):
        return _text(400, "malformed request line")
    method, target, version = parts
    if not version.startswith("HTTP/1."):
        return _text(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if target.startswith("/"):
        path = target.split("?", 1)[0].split("#", 1)[0]
    elif target.startswith(("http://", "https://")):
        path = urlsplit(target).path or "/"
    else:
        return _text(400, "malformed request target")
    try:
        headers = http.client.parse_headers(io.BytesIO(rest + b"\r\n\r\n"))
    except http.client.HTTPException:
        return _text(431, "too many or too long header lines")
    return _Request(method, path, headers)


class _App:
    """Routing, auth and rendering; runs on the worker threads."""

    def __init__(self, registry: Collector, health: Health, log: logging.Logger) -> None:
        self._registry = registry
        self._health = health
        self._log = log
        self.auth = BasicAuth()

    def respond(self, request: _Request) -> _Response:
        """Route an authorized request (credentials are checked before, on the event loop)."""
        if request.method not in ("GET", "HEAD"):
            return _text(405, "only GET and HEAD are allowed", (("Allow", "GET, HEAD"),))
        if request.path == "/metrics":
            return self._metrics(request)
        if request.path == "/healthz":
            return self._healthz()
        if request.path == "/":
            return _Response(200, _LANDING, content_type="text/html; charset=utf-8")
        return _text(404, "not found; see / for the endpoints")

    @staticmethod
    def needs_auth(request: _Request, config: WebConfig | None) -> bool:
        return (
            config is not None
            and bool(config.users)
            and request.path not in config.auth_excluded_paths
        )

    def _metrics(self, request: _Request) -> _Response:
        encoder, content_type = _choose_format(request.headers.get("Accept", ""))
        try:
            body = _encode(self._registry, encoder, content_type)
        except Exception:  # a bug in rendering must not take the server down
            self._log.exception("rendering /metrics failed")
            return _text(500, "rendering metrics failed; see the agent's log")
        headers: tuple[tuple[str, str], ...] = (("Vary", "Accept, Accept-Encoding"),)
        if _gzip_wanted(request.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers += (("Content-Encoding", "gzip"),)
        return _Response(200, body, headers, content_type)

    def _healthz(self) -> _Response:
        try:
            ok, lines = self._health()
        except Exception as exc:
            self._log.exception("health check failed")
            return _text(503, f"unhealthy\nhealth check failed: {type(exc).__name__}")
        body = "\n".join(["ok" if ok else "unhealthy", *lines])
        return _text(200 if ok else 503, body)


class _Conn(asyncio.Protocol):
    """One client connection, driven by the event loop.

    Every callback is guarded: an unexpected error (a reset socket, no memory for a
    thread) ends this connection with one rate-limited log line, never a traceback.
    """

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.transport: asyncio.BaseTransport | None = None
        self.buffer = bytearray()
        # TLS: set while the handshake runs. The TLS layer can hand over the first request
        # before start_tls() returns the TLS transport; it waits in the buffer until then,
        # or a reply would go out in plaintext on the raw socket.
        self.handshaking = False
        self.state = "head"  # head -> working -> writing -> closed
        self.accepted_at = 0.0
        self.config: WebConfig | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.peer_eof = False
        self.peer = ""

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        try:
            self.server._admit(self)
        except Exception as exc:
            self.server._trouble("admitting a connection failed", exc)
            self.close(abort=True)

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:
            self.server._trouble("reading a request failed", exc)
            self.close(abort=True)

    def _received(self, data: bytes) -> None:
        if self.state != "head":
            return
        self.buffer += data
        if self.handshaking:
            return
        found = _HEAD_END.search(self.buffer)
        end = found.start() if found is not None else -1
        if (end < 0 and len(self.buffer) > self.server._max_head_bytes) or (
            end > self.server._max_head_bytes
        ):
            self.reply(_text(431, "request head too large"), head_only=False)
            return
        if end < 0:
            return
        head = bytes(self.buffer[:end])
        self.buffer.clear()
        self.state = "working"
        self.server._started_work(self)
        self.server._dispatch(self, head)

    def eof_received(self) -> bool | None:
        self.peer_eof = True
        if self.state == "head":  # the client gave up before finishing its request
            self.close(abort=True)
            return None
        # A client may half-close after its request (printf | nc): keep the plain socket open
        # to answer. TLS has no half-close. After a reply, None lets asyncio close it.
        tls = self.transport is not None and self.transport.get_extra_info("sslcontext")
        return self.state == "working" and not tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()

    # -- helpers -------------------------------------------------------------------------------

    def reply(self, response: _Response, head_only: bool, linger: float | None = None) -> None:
        """Write the response and end the connection.

        Plain TCP: half-close (FIN) and keep draining until the client closes, so request
        bytes we never read cannot turn the close into a reset that destroys the response.
        TLS: close (close_notify). Either way, a client that does not finish within
        ``linger`` (default: the client timeout) s is aborted.
        """
        if self.state in ("writing", "closed") or self.transport is None:
            return
        self.state = "writing"
        extra = self.config.headers if self.config is not None else ()
        transport = self.transport
        assert isinstance(transport, asyncio.WriteTransport)
        try:
            transport.write(response.encode(head_only, extra))
            # Read (and drop) again: a paused reader would also stall asyncio's TLS shutdown.
            if isinstance(transport, asyncio.ReadTransport) and not transport.is_reading():
                transport.resume_reading()
            if transport.can_write_eof() and not self.peer_eof:
                transport.write_eof()
            else:
                transport.close()
        except OSError:  # the client reset the connection first (shutdown: ENOTCONN)
            self.close(abort=True)
            return
        self.arm(self.server._timeout if linger is None else linger)

    def arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self.expire)

    def expire(self) -> None:
        if self.state in ("head", "writing"):
            self.server._log.debug("client too slow (state %s); dropped", self.state)
            self.close(abort=True)

    def close(self, abort: bool) -> None:
        if self.transport is not None:
            if abort:
                # Even when already closing: a TLS close waits for the peer's close_notify.
                self.transport.abort()  # type: ignore[attr-defined]
            elif not self.transport.is_closing():
                self.transport.close()
        if abort:
            self.finish()

    def finish(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self.timer is not None:
            self.timer.cancel()
        self.server._forget(self)


class MetricsServer:
    """HTTP(S) server for /metrics, /healthz and /, with bounded threads and client timeouts.

    Args:
        registry: What /metrics renders (a ``CollectorRegistry``).
        health: Returns ``(ok, lines)``; /healthz answers 200 when ok, else 503, with the
            lines (degraded parts) in the body.
        settings: Listen address, worker count (``max_connections``), client and header
            timeouts, and the web config file (loaded here, the one place it is loaded).
        log: Logger; passwords and Authorization headers are never logged.
        web_config: TLS and basic auth (see :mod:`exporters.webconfig`); None = plain HTTP.
            When None, ``settings.web_config_file`` is loaded if set.
        max_open_connections: Most connections open at once (reading, queued, being
            served or written); default ``max(64, 64 * max_connections)``, lowered to fit
            the process's open-file limit less ``reserved_fds``.
        max_head_bytes: Largest request line plus headers accepted, bytes.
        reserved_fds: File descriptors kept free for scraping servers, NVML and logs.
        auth_workers: Threads that run bcrypt checks (away from the rendering workers).
        max_pending_auth: Most credential checks queued or running; more get ``429``.
        open_file_limit: The soft RLIMIT_NOFILE; read from the process when None.

    Raises:
        WebConfigError: When ``settings.web_config_file`` is set and cannot be used.
    """

    def __init__(
        self,
        registry: Collector,
        health: Health,
        settings: HttpSettings,
        log: logging.Logger,
        web_config: WebConfig | None = None,
        *,
        max_open_connections: int | None = None,
        max_head_bytes: int = 32 * 1024,
        reserved_fds: int = 64,
        auth_workers: int = 2,
        max_pending_auth: int = 32,
        open_file_limit: int | None = None,
    ) -> None:
        if web_config is None and settings.web_config_file is not None:
            web_config = load_web_config(settings.web_config_file)
        self._settings = settings
        self._log = log
        self._app = _App(registry, health, log)
        self._config = web_config
        self._timeout = settings.client_timeout_seconds
        self._header_timeout = min(settings.header_timeout_seconds, self._timeout)
        self._workers = settings.max_connections
        wanted = max_open_connections or max(64, 64 * settings.max_connections)
        limit = _open_file_limit() if open_file_limit is None else open_file_limit
        budget = max(16, limit - _open_fds() - reserved_fds) if limit > 0 else 4 * wanted
        # asyncio accepts a batch per wake-up and may accept ~3 batches before admitting any;
        # those, and the 503s still draining, must fit in the budget as well.
        self._accept_batch = max(1, min(64, budget // 16))
        self._max_rejected = max(1, min(16, budget // 16))
        room = budget - 3 * self._accept_batch - self._max_rejected
        self._max_open = max(1, min(wanted, room))
        # A connection younger than this is not shed: it is likely a scraper whose request
        # is on its way; idle attackers are older.
        self._min_idle_age = min(1.0, self._header_timeout / 2)
        self._max_head_bytes = max_head_bytes
        self._auth_workers = auth_workers
        self._max_pending_auth = max_pending_auth
        self._pending_auth = 0
        self._conns: set[_Conn] = set()
        # Connections still reading their head, oldest first, per client address.
        self._idle: dict[str, OrderedDict[_Conn, None]] = {}
        self._rejected: set[_Conn] = set()  # answered 503 at the limit, draining before close
        self._tasks: set[asyncio.Task[None]] = set()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._auth_pool: ThreadPoolExecutor | None = None
        self._aserver: asyncio.Server | None = None
        self._once = OncePer(10.0)
        self._pending_work = 0

    # -- public ------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was asked for."""
        if self._sock is None:
            raise RuntimeError("the server is not started")
        name = self._sock.getsockname()
        return str(name[0]), int(name[1])

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self.address[1]

    @property
    def scheme(self) -> str:
        """``https`` when TLS is configured, else ``http``."""
        return "https" if self._config is not None and self._config.tls is not None else "http"

    @property
    def max_open_connections(self) -> int:
        """The open-connection limit in force (after fitting the open-file limit)."""
        return self._max_open

    def start(self) -> None:
        """Bind the listener and start serving in the background.

        Raises:
            OSError: When the address cannot be bound (in use, not local, no permission);
                the message names the address.
            RuntimeError: When the event-loop thread cannot be started (no memory).
        """
        if self._thread is not None:
            raise RuntimeError("the server is already started")
        self._sock = _bind(self._settings.listen)
        try:
            if self._config is not None:
                self._app.auth.prepare(self._config.users)
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="http")
            self._auth_pool = ThreadPoolExecutor(
                max_workers=self._auth_workers, thread_name_prefix="http-auth"
            )
            self._loop = asyncio.new_event_loop()
            self._loop.set_exception_handler(self._loop_error)
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(ready,), name="http-loop", daemon=True
            )
            self._thread.start()
        except BaseException:
            self._sock.close()
            if self._loop is not None:
                self._loop.close()
            self._sock = self._loop = self._thread = self._pool = self._auth_pool = None
            raise
        ready.wait()
        future = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        future.result()
        host, port = self.address
        self._log.info(
            "serving %s on %s port %d", self.scheme, host, port,
            extra={"max_open_connections": self._max_open},
        )  # fmt: skip

    def reload_web_config(self) -> None:
        """Re-read the web config now (SIGHUP), whether or not its files look changed.

        A config that does not load is logged and the one in force stays.
        """
        loop = self._loop
        if loop is None or self._config is None:
            self._log.info("no web config to re-read")
            return
        loop.call_soon_threadsafe(self._current_config, True)

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop listening, let in-flight requests finish within ``grace_seconds``, then close.

        Connections still sending their request are closed at once; requests being handled
        get up to ``grace_seconds`` to be answered; anything left is aborted.

        Args:
            grace_seconds: Longest wait for in-flight requests, s.
        """
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(grace_seconds), loop).result(
                grace_seconds + 5.0
            )
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5.0)
            if not thread.is_alive():
                loop.close()
            if self._pool is not None:
                # Workers still busy past the grace period are left to finish on their own.
                self._pool.shutdown(wait=self._pending_work == 0, cancel_futures=True)
            if self._auth_pool is not None:
                self._auth_pool.shutdown(wait=False, cancel_futures=True)
            if self._sock is not None:
                self._sock.close()
            self._loop = self._thread = self._pool = self._auth_pool = self._aserver = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- event loop side -----------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.run_forever()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        # asyncio accepts up to ``backlog`` sockets per wake-up before any is admitted; a
        # small batch keeps a storm from taking every descriptor at once. The kernel queue
        # is then widened again, so a burst waits there instead of being refused.
        self._aserver = await loop.create_server(
            lambda: _Conn(self), sock=self._sock, backlog=self._accept_batch
        )
        self._sock.listen(min(socket.SOMAXCONN, 4096))

    async def _close(self, grace_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if self._aserver is not None:
            self._aserver.close()
        for conn in list(self._conns):
            if conn.state == "head":
                conn.close(abort=True)
        deadline = loop.time() + grace_seconds
        while self._conns and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in [*self._conns, *self._rejected]:
            conn.close(abort=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Errors asyncio reports (accept out of descriptors...): one line per kind per 10 s."""
        message = str(context.get("message", "event loop error"))
        exc = context.get("exception")
        self._trouble(message, exc if isinstance(exc, BaseException) else None)

    def _trouble(self, what: str, exc: BaseException | None) -> None:
        """Log an unexpected condition once per interval, without a traceback."""
        reason = describe(exc) if exc is not None else ""
        key = f"{what}|{type(exc).__name__}|{getattr(exc, 'errno', '')}"
        left_out = self._once.ready(key)
        if left_out is None:
            return
        self._log.warning(
            what,
            extra={"error": reason or "-", "repeats_left_out": left_out},
        )

    def _current_config(self, force: bool = False) -> WebConfig | None:
        """The web config in force, reloaded when its files changed (or when forced)."""
        config = self._config
        if config is None:
            return None
        if not force and file_signature(config.files()) == config.signature:
            return config
        try:
            fresh = load_web_config(config.path)
        except WebConfigError as exc:
            self._log.error(
                "web config changed but cannot be used; keeping the previous one: %s", exc
            )
            # Remember the broken state so the error is logged once per change, not per request.
            self._config = replace(config, signature=file_signature(config.files()))
            return self._config
        self._log.info("web config %s reloaded", config.path)
        self._config = fresh
        return fresh

    def _admit(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        transport = conn.transport
        assert transport is not None
        peername = transport.get_extra_info("peername")
        conn.peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        if len(self._conns) >= self._max_open:
            self._shed_oldest_idle()
        if len(self._conns) >= self._max_open:
            self._refuse(conn)
            return
        self._conns.add(conn)
        self._idle.setdefault(conn.peer, OrderedDict())[conn] = None
        conn.accepted_at = time.monotonic()
        conn.config = self._current_config()
        conn.arm(self._header_timeout)
        if conn.config is not None and conn.config.tls is not None:
            assert isinstance(transport, asyncio.ReadTransport)
            transport.pause_reading()
            conn.handshaking = True
            task = loop.create_task(self._handshake(conn, conn.config))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _shed_oldest_idle(self) -> None:
        """Close the oldest unfinished connection of the address that holds the most.

        Per-address fairness: a client that opens hundreds of idle sockets loses its own
        oldest first, not another client's handshake in progress.
        """
        if not self._idle:
            return
        busiest = max(self._idle.values(), key=len)
        oldest = next(iter(busiest))
        if time.monotonic() - oldest.accepted_at < self._min_idle_age:
            # The busiest address only has fresh connections; try the oldest of any address.
            oldest = min((next(iter(d)) for d in self._idle.values()), key=lambda c: c.accepted_at)
            if time.monotonic() - oldest.accepted_at < self._min_idle_age:
                return
        self._shed(oldest, "open-connection limit")

    def _shed(self, conn: _Conn, why: str) -> None:
        self._trouble(f"{why} reached; oldest idle connection shed", None)
        conn.close(abort=True)
        self._forget(conn)

    def _refuse(self, conn: _Conn) -> None:
        """Every open connection is working on a request: answer 503 (plain) or close (TLS)."""
        transport = conn.transport
        assert transport is not None
        self._trouble(f"connection limit {self._max_open} reached; refusing clients", None)
        config = self._config
        if (config is None or config.tls is None) and len(self._rejected) < self._max_rejected:
            self._rejected.add(conn)
            conn.reply(_OVERLOADED, head_only=False, linger=1.0)
        else:
            transport.abort()  # type: ignore[attr-defined]
            conn.state = "closed"

    def _started_work(self, conn: _Conn) -> None:
        """The head is in: the connection is no longer idle, nor sheddable."""
        idle = self._idle.get(conn.peer)
        if idle is not None:
            idle.pop(conn, None)
            if not idle:
                del self._idle[conn.peer]
        conn.arm(self._timeout)

    async def _handshake(self, conn: _Conn, config: WebConfig) -> None:
        assert config.tls is not None and conn.transport is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(
                conn.transport,
                conn,
                config.tls.context,
                server_side=True,
                ssl_handshake_timeout=self._header_timeout,
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            self._log.debug("TLS handshake failed: %s", exc)
            conn.close(abort=True)
            return
        if new is None:
            conn.close(abort=True)
            return
        conn.transport = new
        allowed = config.tls.client_allowed_sans
        if allowed and not peer_has_allowed_san(new.get_extra_info("peercert"), allowed):
            self._log.debug("client certificate has none of the allowed SANs; refused")
            conn.close(abort=True)
            return
        conn.handshaking = False
        if conn.buffer:
            conn.data_received(b"")  # a request that arrived with the end of the handshake

    def _dispatch(self, conn: _Conn, head: bytes) -> None:
        """Parse the head and check credentials on the loop; bcrypt and rendering elsewhere.

        A credential already verified (cached) goes straight to the rendering workers; an
        unknown one waits for the small bcrypt pool, so a flood of wrong passwords never
        queues in front of a scraper that authenticated before.
        """
        transport = conn.transport
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        parsed = _parse_head(head)
        if isinstance(parsed, _Response):
            conn.reply(parsed, head_only=False)
            return
        config = conn.config
        if not self._app.needs_auth(parsed, config):
            self._render(conn, parsed)
            return
        users = config.users if config is not None else {}
        header = parsed.headers.get("Authorization")
        verdict = self._app.auth.cached(users, header)
        if verdict is True:
            self._render(conn, parsed)
        elif verdict is False:
            self._log.debug("authentication failed for %s %s", parsed.method, parsed.path)
            conn.reply(_UNAUTHORIZED, head_only=False)
        elif self._pending_auth >= self._max_pending_auth:
            self._trouble("too many credential checks at once; answering 429", None)
            conn.reply(_AUTH_BUSY, head_only=False)
        else:
            self._verify(conn, parsed, users, header)

    def _verify(
        self, conn: _Conn, request: _Request, users: Mapping[str, bytes], header: str | None
    ) -> None:
        loop = asyncio.get_running_loop()
        assert self._auth_pool is not None
        self._pending_auth += 1
        try:
            check = loop.run_in_executor(self._auth_pool, self._app.auth.verify, users, header)
        except RuntimeError as exc:  # no thread could be started (memory limit)
            self._pending_auth -= 1
            self._trouble("cannot start a worker thread", exc)
            conn.reply(_text(503, "server busy; retry later", (("Retry-After", "1"),)), False)
            return

        def done(fut: asyncio.Future[tuple[bool, float]]) -> None:
            self._pending_auth -= 1
            if fut.cancelled() or conn.state != "working":
                conn.close(abort=True)
                return
            exc = fut.exception()
            if exc is not None:
                self._trouble("checking credentials failed", exc)
                conn.reply(_UNAUTHORIZED, head_only=False)
                return
            ok, hold = fut.result()
            if ok:
                self._render(conn, request)
                return
            self._log.debug("authentication failed for %s %s", request.method, request.path)
            # Held as long as the slowest hash takes, so timing tells no user names.
            loop.call_later(hold, conn.reply, _UNAUTHORIZED, False)

        check.add_done_callback(done)

    def _render(self, conn: _Conn, request: _Request) -> None:
        loop = asyncio.get_running_loop()
        assert self._pool is not None
        try:
            work = loop.run_in_executor(self._pool, self._work, request, conn.accepted_at)
        except RuntimeError as exc:  # no thread could be started (memory limit)
            self._trouble("cannot start a worker thread", exc)
            conn.reply(_text(503, "server busy; retry later", (("Retry-After", "1"),)), False)
            return
        self._pending_work += 1

        def done(fut: asyncio.Future[tuple[_Response, bool]]) -> None:
            self._pending_work -= 1
            if fut.cancelled():
                conn.close(abort=True)
                return
            exc = fut.exception()
            if exc is not None:
                self._trouble("request handling failed", exc)
                conn.reply(_text(500, "internal error"), head_only=False)
                return
            response, head_only = fut.result()
            try:
                conn.reply(response, head_only)
            except Exception as error:  # never leave a client hanging on a bug in writing
                self._trouble("writing a response failed", error)
                conn.close(abort=True)

        work.add_done_callback(done)

    # -- worker side -------------------------------------------------------------------------

    def _work(self, request: _Request, accepted_at: float) -> tuple[_Response, bool]:
        waited = time.monotonic() - accepted_at
        if waited > self._timeout:
            return _text(503, "server busy; retry later", (("Retry-After", "1"),)), False
        response = self._app.respond(request)
        self._log.debug("%s %s -> %d", request.method, request.path, response.status)
        return response, request.method == "HEAD"

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        self._rejected.discard(conn)
        idle = self._idle.get(conn.peer)
        if idle is not None:
            idle.pop(conn, None)
            if not idle:
                del self._idle[conn.peer]


def _open_file_limit() -> int:
    """The soft RLIMIT_NOFILE, or 0 when unknown or unlimited."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 0 if soft == resource.RLIM_INFINITY else int(soft)


def _open_fds() -> int:
    """Descriptors this process has open now (Linux /proc; 0 elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _bind(listen: str) -> socket.socket:
    """Open the listening socket for ``ADDR:PORT`` (``[::]:PORT`` is dual-stack IPv6+IPv4)."""
    host, port = split_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {listen}: cannot resolve {host!r}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    dual = family == socket.AF_INET6 and host == "::" and socket.has_dualstack_ipv6()
    try:
        return socket.create_server(
            sockaddr[:2], family=family, backlog=min(socket.SOMAXCONN, 4096), dualstack_ipv6=dual
        )
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {listen}: {exc.strerror or exc}") from None
