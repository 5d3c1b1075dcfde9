"""One kept-alive HTTP/1.1 connection to one origin, with a deadline over the whole exchange.

An edge (does I/O). Built on the standard library's ``http.client``: it parses status lines,
headers (at most 100, each at most 64 KiB), chunked bodies and ``100 Continue``. This module
adds what the scraper needs and ``http.client`` (like httpx and urllib3) lacks: **every**
socket operation of an exchange (connect, TLS handshake, send, each receive of the status
line, the headers, any number of ``100 Continue`` answers and the body) waits at most until
one absolute deadline. A server that sends one byte a second, or ``100 Continue`` forever,
is cut at the deadline, not at "timeout per receive". httpx and urllib3 apply their read
timeout to each receive, so such a server keeps them busy for as long as it likes.

Why not httpx or urllib3: tests/benchmarks/bench_http.py measures the client CPU of a 1.37 MB
body and the connections opened, and the standard library path costs the least (numbers in
tests/benchmarks/README.md); it also needs no third-party code on the scrape path.

Name resolution (``getaddrinfo``) cannot be interrupted; a hung resolver is bounded by the
sampler, which takes a server whose scrape stalls off the shared scrape thread (the others
go on) and reports ``timeout`` at its deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import math
import select
import socket
import ssl
from collections.abc import Callable

__all__ = ["DeadlineExceededError", "OriginConnection"]

# Status line and headers; a body is received straight into the reader's own buffer.
_BUFFER_BYTES = 8 * 1024
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class DeadlineExceededError(TimeoutError):
    """The exchange's deadline passed before it completed."""


class _DeadlineReader(io.RawIOBase):
    """Raw reader of a socket whose every receive waits at most until the deadline.

    The socket is non-blocking: a receive first takes what has arrived (one system call,
    the common case in a body), and only when nothing has it waits for the socket with
    ``poll`` until the deadline. A blocking receive with a timeout costs four calls per read
    (the timeout set again, TCP_QUICKACK, poll, recv): about 90 per 1.4 MB body.
    """

    def __init__(self, owner: _DeadlineSocket) -> None:
        super().__init__()
        self._owner = owner
        self._sock = owner.raw
        self._remaining = owner.remaining
        self._poller = select.poll()
        self._poller.register(self._sock, select.POLLIN)
        owner.readers += 1

    def close(self) -> None:
        if not self.closed:
            self._owner.reader_closed()
        super().close()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        sock = self._sock
        while True:
            try:
                return sock.recv_into(buffer)
            except (BlockingIOError, ssl.SSLWantReadError):
                pass  # nothing yet (or not a whole TLS record): wait for more
            left = self._remaining()
            if left <= 0:
                raise DeadlineExceededError("deadline passed while receiving")
            if _QUICKACK is not None:
                # About to wait: acknowledge at once. A server that writes headers and body
                # separately with Nagle on (http.server does) otherwise waits for our delayed
                # ACK, 40 ms per exchange on a kept-alive connection. Linux clears the flag,
                # so it is set before each wait.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            if not self._poller.poll(max(1, math.ceil(left * 1000))):
                raise DeadlineExceededError("deadline passed while receiving")


class _DeadlineSocket:
    """What ``http.client`` sees as its socket: sends and receives bounded by the deadline.

    The socket stays non-blocking between sends (see :class:`_DeadlineReader`).
    """

    def __init__(self, sock: socket.socket, remaining: Callable[[], float]) -> None:
        self.raw = sock
        self.remaining = remaining
        self.readers = 0
        self._closing = False
        sock.settimeout(0.0)

    def sendall(self, data: bytes) -> None:
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceededError("deadline passed before sending")
        self.raw.settimeout(left)
        try:
            self.raw.sendall(data)
        except TimeoutError:
            raise DeadlineExceededError("deadline passed while sending") from None
        finally:
            with contextlib.suppress(OSError):  # closed by a failed send
                self.raw.settimeout(0.0)

    def makefile(self, mode: str) -> io.BufferedReader:
        if mode != "rb":  # pragma: no cover - http.client only reads
            raise ValueError(f"unsupported mode {mode!r}")
        return io.BufferedReader(_DeadlineReader(self), _BUFFER_BYTES)

    def close(self) -> None:
        # As socket.makefile does: http.client closes the connection while the response
        # is still being read (`Connection: close`), so the socket lives until its reader
        # is closed too.
        self._closing = True
        if self.readers == 0:
            self.raw.close()

    def reader_closed(self) -> None:
        self.readers -= 1
        if self._closing and self.readers == 0:
            self.raw.close()


class _Connection(http.client.HTTPConnection):
    """``http.client`` connection whose socket is bounded by the owner's deadline."""

    def __init__(self, owner: OriginConnection) -> None:
        super().__init__(owner.host, owner.port)
        self._owner = owner

    def connect(self) -> None:
        owner = self._owner
        left = owner.remaining()
        if left <= 0:
            raise DeadlineExceededError("deadline passed before connecting")
        sock = socket.create_connection(
            (owner.host, owner.port), timeout=min(owner.connect_timeout, left)
        )
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if owner.tls is not None:
                left = owner.remaining()
                if left <= 0:
                    raise DeadlineExceededError("deadline passed before the TLS handshake")
                # CPython bounds the whole handshake by the socket timeout.
                sock.settimeout(min(owner.connect_timeout, left))
                sock = owner.tls.wrap_socket(sock, server_hostname=owner.host)
        except BaseException:
            sock.close()
            raise
        owner.connections_opened += 1
        self.sock = _DeadlineSocket(sock, owner.remaining)


class OriginConnection:
    """At most one open connection to ``scheme://host:port``, reused while the server allows.

    Not thread-safe: one exchange at a time (the sampler never runs two scrapes of a server
    at once).

    Args:
        host: Host name or IP address.
        port: TCP port.
        tls: TLS context for https, None for plain http.
        connect_timeout: Longest wait for the TCP connect and the TLS handshake, each, s.
        monotonic: Monotonic clock, s; the deadline given to :meth:`request` is on it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.connections_opened = 0
        self._monotonic = monotonic
        self._deadline = 0.0
        self._conn: _Connection | None = None

    def remaining(self) -> float:
        """Seconds left before the current exchange's deadline."""
        return self._deadline - self._monotonic()

    def request(
        self, target: str, headers: dict[str, str], deadline: float
    ) -> http.client.HTTPResponse:
        """Send ``GET target`` and read the final status line and headers.

        A reused connection that the server closed while idle is detected and replaced;
        a request that fails on a reused connection before any answer came is sent once
        more on a new one. The caller reads the body with ``response.read`` (bounded by the
        same deadline) and then calls :meth:`done` or :meth:`close`.

        Args:
            target: Path and query, e.g. ``/metrics``.
            headers: Request headers (``Host`` is added).
            deadline: Absolute time on ``monotonic`` when the whole exchange must be over.

        Returns:
            The response, positioned at the start of its body.

        Raises:
            DeadlineExceededError: The deadline passed.
            OSError: Name resolution, connection, TLS or transport failure.
            http.client.HTTPException: The answer is not valid HTTP/1.x.
        """
        self._deadline = deadline
        for attempt in (0, 1):
            reused = self._conn is not None and self._alive(self._conn)
            if not reused:
                self.close()
                self._conn = _Connection(self)
            conn = self._conn
            assert conn is not None
            try:
                conn.request("GET", target, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if not reused or attempt == 1:
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def done(self, response: http.client.HTTPResponse) -> None:
        """Keep the connection for the next exchange unless the answer ends it.

        Args:
            response: The response whose body was read to its end.
        """
        if response.will_close or not response.isclosed():
            self.close()

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @staticmethod
    def _alive(conn: _Connection) -> bool:
        sock = conn.sock
        if not isinstance(sock, _DeadlineSocket):
            return False
        try:
            # An idle keep-alive socket that is readable was closed by the server (or holds
            # bytes nobody asked for): either way it cannot carry the next exchange.
            poller = select.poll()
            poller.register(sock.raw, select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False
