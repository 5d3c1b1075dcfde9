"""What one scrape costs the agent on the HTTP side, per client library, and how many connections.

8 servers on 127.0.0.1 (``http.server``, HTTP/1.1 keep-alive, Content-Length, no compression as
the agent asks of loopback targets) run in a **child process**, each serving the same 1.37 MB
vLLM-style body, so the CPU measured (``time.process_time`` of this process, every thread) is
the client's alone. Each round scrapes the 8 servers at once, one thread per server, as the
sampler does; only the body is fetched (no parsing). Clients:

* ``httpx, one shared client``: the agent before issue 12/16, one ``httpx.Client`` with a
  2-connection pool (1 kept alive) shared by every server; the baseline of the ratios.
* ``httpx, client per server``: one ``httpx.Client`` per server, streamed like the old scraper.
* ``urllib3, pool per server``: one ``HTTPConnectionPool(maxsize=1)`` per server.
* ``tokenergy (http.client)``: the agent's ``ServerScraper.fetch`` (standard library
  ``http.client`` on a socket whose every receive is bounded by the exchange's deadline).

Connections are counted by the servers (accepted sockets). Requests per connection over 10
minutes at the default 5 s interval = 120 scrapes / connections opened per server.

Rerun: ``python tests/benchmarks/bench_http.py [ROUNDS]`` (default 30 rounds = 240
scrapes per batch, 3 batches per client; CPU of the quietest batch).
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx
import urllib3

from agent.config import ScrapeSettings, ServerSettings
from agent.servers.scraper import ServerScraper

SERVERS = 8
BATCHES = 3
BODY_BYTES = 1_370_000
FIXTURE = Path(__file__).parents[1] / "servers" / "fixtures" / "vllm_v1.prom"
HEADERS = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "identity"}


def make_body(size: int = BODY_BYTES) -> bytes:
    """A vLLM V1 exposition of about ``size`` bytes: the fixture, repeated per model name."""
    base = FIXTURE.read_text()
    parts, total, i = [], 0, 0
    while total < size:
        part = base.replace("meta-llama/Llama-3.1-8B-Instruct", f"model-{i}")
        parts.append(part)
        total += len(part)
        i += 1
    return "".join(parts).encode()[:size].rsplit(b"\n", 1)[0] + b"\n"


# -- servers in a child process -----------------------------------------------------------------


def _serve(body: bytes, count: int, pipe: Connection) -> None:
    accepted = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    class Counting(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[Any, Any]:
            request = super().get_request()
            with lock:
                accepted[0] += 1
            return request

    ports: list[int] = []
    for _ in range(count):
        server = Counting(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ports.append(server.server_port)
    pipe.send(ports)
    while True:
        command = pipe.recv()
        if command == "count":
            with lock:
                pipe.send(accepted[0])
        else:
            return


@dataclass
class Servers:
    """The child process and its ports."""

    process: BaseProcess
    pipe: Connection
    ports: list[int]

    def accepted(self) -> int:
        """Connections accepted by all servers so far."""
        self.pipe.send("count")
        return int(self.pipe.recv())

    def close(self) -> None:
        """Stop the child."""
        self.pipe.send("stop")
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


def start_servers(body: bytes, count: int = SERVERS) -> Servers:
    """Start ``count`` servers of ``body`` in a child process."""
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("fork").Process(
        target=_serve, args=(body, count, theirs), daemon=True
    )
    process.start()
    return Servers(process, ours, ours.recv())


# -- clients ------------------------------------------------------------------------------------

Fetch = Callable[[], bytes]


def httpx_shared(urls: Sequence[str]) -> tuple[list[Fetch], Callable[[], None]]:
    """The old agent: one client, 2 connections (1 kept alive), shared by every server."""
    client = httpx.Client(
        timeout=httpx.Timeout(3.0, connect=1.0),
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        trust_env=False,
    )
    return [_httpx_fetch(client, url) for url in urls], client.close


def httpx_per_server(urls: Sequence[str]) -> tuple[list[Fetch], Callable[[], None]]:
    """One httpx client per server."""
    clients = [httpx.Client(timeout=httpx.Timeout(3.0, connect=1.0), trust_env=False) for _ in urls]

    def close() -> None:
        for client in clients:
            client.close()

    return [_httpx_fetch(c, u) for c, u in zip(clients, urls, strict=True)], close


def _httpx_fetch(client: httpx.Client, url: str) -> Fetch:
    def fetch() -> bytes:
        with client.stream("GET", url, headers=HEADERS) as response:
            return b"".join(response.iter_raw())

    return fetch


def urllib3_per_server(urls: Sequence[str]) -> tuple[list[Fetch], Callable[[], None]]:
    """One urllib3 pool (one connection) per server."""
    pools = [
        urllib3.HTTPConnectionPool(
            "127.0.0.1", int(u.rsplit(":", 1)[1].split("/")[0]), maxsize=1, retries=False
        )
        for u in urls
    ]

    def fetcher(pool: urllib3.HTTPConnectionPool) -> Fetch:
        def fetch() -> bytes:
            response = pool.request(
                "GET", "/metrics", headers=HEADERS, preload_content=False, timeout=3.0
            )
            data = response.read()
            response.release_conn()
            return data

        return fetch

    def close() -> None:
        for pool in pools:
            pool.close()

    return [fetcher(p) for p in pools], close


def tokenergy(urls: Sequence[str]) -> tuple[list[Fetch], Callable[[], None]]:
    """The agent's scraper: its own connection per server, deadline over the exchange."""
    scrape = ScrapeSettings(max_body_bytes=16 * 1024 * 1024)
    scrapers = [
        ServerScraper(ServerSettings(name=f"s{i}", url=u), scrape) for i, u in enumerate(urls)
    ]

    def close() -> None:
        for scraper in scrapers:
            scraper.close()

    def fetcher(scraper: ServerScraper) -> Fetch:
        def fetch() -> bytes:
            return scraper.fetch().body

        return fetch

    return [fetcher(s) for s in scrapers], close


CLIENTS: dict[str, Callable[[Sequence[str]], tuple[list[Fetch], Callable[[], None]]]] = {
    "httpx, one shared client (before)": httpx_shared,
    "httpx, client per server": httpx_per_server,
    "urllib3, pool per server": urllib3_per_server,
    "tokenergy (http.client)": tokenergy,
}


@dataclass(frozen=True)
class Row:
    """One client's cost."""

    client: str
    scrapes: int
    cpu_ms: float
    connections: int


def measure(name: str, servers: Servers, body_bytes: int, rounds: int) -> Row:
    """Scrape every server ``rounds`` times at once (one thread each); CPU and connections."""
    urls = [f"http://127.0.0.1:{p}/metrics" for p in servers.ports]
    fetches, close = CLIENTS[name](urls)
    try:
        for fetch in fetches:  # warm up: imports, first connection
            assert len(fetch()) == body_bytes
        accepted0 = servers.accepted()
        sizes: list[int] = []

        def scrape(fetch: Fetch) -> None:
            sizes.append(len(fetch()))

        batches = []
        for _ in range(BATCHES):
            cpu0 = time.process_time()
            for _ in range(rounds):
                threads = [threading.Thread(target=scrape, args=(f,)) for f in fetches]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            batches.append(time.process_time() - cpu0)
        assert sizes == [body_bytes] * len(fetches) * rounds * BATCHES
        connections = servers.accepted() - accepted0
    finally:
        close()
    # The quietest batch: the host is shared, other jobs only ever add CPU time.
    return Row(name, len(sizes), 1000 * min(batches) / (rounds * len(fetches)), connections)


def table(rows: Sequence[Row], body_bytes: int, servers: int) -> str:
    """The report: CPU per scrape, connections, requests per connection, ratios."""
    base = rows[0]
    lines = [
        f"HTTP client cost: {servers} servers on 127.0.0.1 (child process), body "
        f"{body_bytes:,} bytes, identity; {servers} scrapes at once per round",
        "",
        f"{'client':36} {'scrapes':>7} {'CPU ms/scrape':>13} {'vs before':>9} "
        f"{'connections':>11} {'req/conn':>8} {'req/conn 10 min':>15}",
    ]
    for row in rows:
        per_conn = row.scrapes / row.connections if row.connections else float("inf")
        # 120 scrapes per server in 10 min: the first connection plus the run's churn rate.
        ten = 120 / (1 + 120 * row.connections / row.scrapes)
        lines.append(
            f"{row.client:36} {row.scrapes:>7} {row.cpu_ms:>13.2f} "
            f"{base.cpu_ms / row.cpu_ms:>8.2f}x {row.connections:>11} {per_conn:>8.1f} "
            f"{ten:>15.1f}"
        )
    lines += [
        "",
        f"CPU = process time of the client process (every thread) per scrape, best of {BATCHES}"
        " batches; vs before = CPU of the shared httpx client / this row's",
        "connections = TCP connections the servers accepted during the run (after a warm-up"
        " scrape of each server)",
        "req/conn 10 min = 120 scrapes per server (5 s interval) / (1 + the connections the"
        " run's churn opens in 120 scrapes)",
        "rerun: python tests/benchmarks/bench_http.py [ROUNDS]",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Run every client against the same servers and print the table."""
    rounds = int(argv[0]) if argv else 30
    body = make_body()
    servers = start_servers(body)
    try:
        rows = [measure(name, servers, len(body), rounds) for name in CLIENTS]
    finally:
        servers.close()
    print(table(rows, len(body), SERVERS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
