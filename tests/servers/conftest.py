"""Real HTTP servers on 127.0.0.1 for the scraper and inspect tests."""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Reply:
    """What the local server answers.

    Attributes:
        status: HTTP status code.
        body: Body bytes, sent as they are (already compressed when a test wants gzip).
        headers: Extra response headers.
        delay: Seconds to wait before answering (cut short when the server stops).
        drip: Seconds between 1-byte writes of the body (a slow server); 0 = all at once.
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drip: float = 0.0


@dataclass
class Seen:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    client_port: int


Respond = Callable[[str], "dict[str, object]"]
"""Maps a request path to the keyword arguments of a :class:`Reply`."""


class LocalServer:
    """A threaded HTTP/1.1 server with keep-alive, answering ``Reply(**respond(path))``."""

    def __init__(self, respond: Respond, tls: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle(self) -> None:
                # A client that hangs up early, as the timeout tests do, is expected.
                with contextlib.suppress(OSError):
                    super().handle()

            def do_GET(self) -> None:
                owner.seen.append(
                    Seen(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        self.client_address[1],
                    )
                )
                reply = Reply(**owner.respond(self.path))  # type: ignore[arg-type]
                if reply.delay and owner.stopping.wait(reply.delay):
                    return
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if reply.drip:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for i in range(len(reply.body)):
                        if owner.stopping.wait(reply.drip):
                            return
                        try:
                            self.wfile.write(reply.body[i : i + 1])
                            self.wfile.flush()
                        except OSError:  # the client gave up, as it should
                            return
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                del format, args

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str = "/metrics") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., LocalServer]]:
    """Start local servers for one test; all are stopped after it."""
    started: list[LocalServer] = []

    def start(respond: Respond, tls: ssl.SSLContext | None = None) -> LocalServer:
        server = LocalServer(respond, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
