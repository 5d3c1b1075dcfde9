"""Simulated inference servers: real HTTP listeners on localhost serving exposition text.

A :class:`SimulatedServer` holds the live counters of one inference server (per model) and
serves ``GET /metrics`` with :func:`agent.simulation.expositions.render_exposition` of them,
in the server's own engine format (vLLM V1 with data-parallel ranks, SGLang, llama.cpp...).
It is an edge: it starts a listener thread and reads no clock of its own (the start time it
shows comes from the injected ``wall`` function).

Faults: :meth:`SimulatedServer.restart` resets the served counters (as a process restart does)
while the lifetime totals, the ground truth, keep counting; :meth:`SimulatedServer.set_down`
closes the listener (connection refused) and reopens it on the same port later.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from agent.simulation.expositions import SimModelCounters, render_exposition

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Content type of the Prometheus text format 0.0.4, as the real servers send it."""

MAX_CONCURRENT_REQUESTS = 16
"""Requests served at once; further connections are closed at once (never queued to hang)."""

CLIENT_TIMEOUT_SECONDS = 5.0
"""Socket timeout of a request, s: a client that stalls cannot hold a thread longer."""

_log = logging.getLogger(__name__)


class Renderer(Protocol):
    """Signature of :func:`agent.simulation.expositions.render_exposition`."""

    def __call__(
        self,
        engine: str,
        models: Sequence[SimModelCounters],
        *,
        ranks: int = 1,
        start_time_seconds: float,
    ) -> str:
        """Render exposition text of ``models`` in ``engine``'s format."""
        ...


@dataclass(frozen=True, slots=True)
class ModelCounts:
    """Cumulative token and request counts of one model (ints, so totals stay exact).

    Attributes:
        prompt_tokens: Prompt tokens processed (cache hits included), tokens.
        generation_tokens: Generated tokens, tokens.
        cached_prompt_tokens: Prompt tokens served from the prefix cache, tokens.
        requests_finished: Finished requests, count.
    """

    prompt_tokens: int = 0
    generation_tokens: int = 0
    cached_prompt_tokens: int = 0
    requests_finished: int = 0

    def plus(
        self,
        prompt_tokens: int,
        generation_tokens: int,
        cached_prompt_tokens: int,
        requests_finished: int,
    ) -> ModelCounts:
        """These counts with the given increments added."""
        return ModelCounts(
            self.prompt_tokens + prompt_tokens,
            self.generation_tokens + generation_tokens,
            self.cached_prompt_tokens + cached_prompt_tokens,
            self.requests_finished + requests_finished,
        )


@dataclass(frozen=True, slots=True)
class _Gauges:
    requests_running: int = 0
    requests_waiting: int = 0
    kv_cache_usage: float = 0.0


@dataclass(frozen=True, slots=True)
class ServerState:
    """A consistent copy of a server's counters at one instant.

    Attributes:
        served: Counters as ``/metrics`` shows them (reset by a restart), per model.
        lifetime: Counters since the server object was created (never reset), per model.
        start_time_seconds: Unix time the current process "started", s.
        restarts: How many times the server restarted.
        down: True while the listener is closed.
    """

    served: dict[str, ModelCounts]
    lifetime: dict[str, ModelCounts]
    start_time_seconds: float
    restarts: int
    down: bool


class _Listener(ThreadingHTTPServer):
    """A threading HTTP server with a cap on concurrent requests."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: SimulatedServer) -> None:
        self.owner = owner
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        super().__init__(address, _Handler)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        if not self._slots.acquire(blocking=False):
            # Over the cap: drop the connection now instead of queueing a thread.
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Listener
    protocol_version = "HTTP/1.0"
    timeout = CLIENT_TIMEOUT_SECONDS

    def handle(self) -> None:
        start = time.thread_time()
        try:
            super().handle()
        finally:
            self.server.owner._account_cpu(time.thread_time() - start)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/metrics":
            self._reply(404, b"not found; try /metrics\n", "text/plain; charset=utf-8")
            return
        try:
            body = self.server.owner.exposition().encode()
        except Exception:  # a renderer bug must not kill the listener
            _log.exception("rendering the exposition of %s failed", self.server.owner.name)
            self._reply(500, b"exposition failed\n", "text/plain; charset=utf-8")
            return
        self._reply(200, body, CONTENT_TYPE)

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # A scrape every few seconds would flood the demo's terminal.
        return


class SimulatedServer:
    """One simulated inference server with a real HTTP ``/metrics`` on localhost.

    Thread-safe: counters change under a lock, and each request renders a consistent copy.

    Args:
        name: Server name (the agent's ``server`` label).
        engine: Exposition format: ``vllm``, ``sglang``, ``llamacpp`` (and whatever else the
            renderer supports).
        models: Served model names ("" for an engine without a model label).
        wall: Unix time source, s, for the process start time the exposition shows.
        ranks: Data-parallel ranks (vLLM ``engine`` label values), >= 1.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one at :meth:`start`.
        render: Exposition renderer (default :func:`render_exposition`).

    Raises:
        ValueError: When ``models`` is empty or repeats, or ``ranks`` < 1.
    """

    def __init__(
        self,
        name: str,
        engine: str,
        models: Sequence[str],
        *,
        wall: Callable[[], float],
        ranks: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        render: Renderer = render_exposition,
    ) -> None:
        if not models:
            raise ValueError(f"server {name!r} needs at least one model")
        if len(set(models)) != len(models):
            raise ValueError(f"server {name!r}: model names repeat: {list(models)}")
        if ranks < 1:
            raise ValueError(f"server {name!r}: ranks must be >= 1, got {ranks}")
        self.name = name
        self.engine = engine
        self.models: tuple[str, ...] = tuple(models)
        self.ranks = ranks
        self.host = host
        self._port = port
        self._wall = wall
        self._render = render
        self._lock = threading.Lock()
        self._served = {m: ModelCounts() for m in self.models}
        self._lifetime = {m: ModelCounts() for m in self.models}
        self._gauges = {m: _Gauges() for m in self.models}
        self._start_time = wall()
        self._restarts = 0
        self._down = False
        self._started = False
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None
        self._cpu_seconds = 0.0
        self._requests = 0
        # Serialises start/stop/set_down against each other (not against requests).
        self._life = threading.Lock()

    # -- listening ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (known after :meth:`start` when created with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """Full URL of ``/metrics``."""
        return f"http://{self.host}:{self._port}/metrics"

    def start(self) -> None:
        """Open the listener (idempotent); with port 0, a free port is picked and kept.

        Raises:
            OSError: When the port cannot be bound.
        """
        with self._life:
            self._started = True
            if self._listener is None and not self._down:
                self._open()

    def stop(self) -> None:
        """Close the listener and wait for its thread (idempotent)."""
        with self._life:
            self._started = False
            self._close()

    def set_down(self, down: bool) -> None:
        """Take the server off the network (connection refused) or bring it back.

        Coming back reopens the listener on the same port (if :meth:`start` was called and
        :meth:`stop` was not). Counters are untouched.

        Args:
            down: True to close the listener, False to reopen it.

        Raises:
            OSError: When the port cannot be bound again (someone else took it).
        """
        with self._life:
            with self._lock:
                self._down = down
            if down:
                self._close()
            elif self._listener is None and self._started:
                self._open()

    def _open(self) -> None:
        listener = _Listener((self.host, self._port), self)
        self._port = listener.server_address[1]
        thread = threading.Thread(
            target=listener.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sim-server-{self.name}",
            daemon=True,
        )
        thread.start()
        self._listener, self._thread = listener, thread

    def _close(self) -> None:
        listener, thread = self._listener, self._thread
        self._listener = self._thread = None
        if listener is not None:
            listener.shutdown()
            listener.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    # -- counters ----------------------------------------------------------------------------

    def advance(
        self,
        model: str,
        *,
        prompt_tokens: int = 0,
        generation_tokens: int = 0,
        cached_prompt_tokens: int = 0,
        requests_finished: int = 0,
        requests_running: int | None = None,
        requests_waiting: int | None = None,
        kv_cache_usage: float | None = None,
    ) -> None:
        """Add token and request increments and set the load gauges of one model.

        Args:
            model: One of the server's models.
            prompt_tokens: Prompt tokens to add, >= 0.
            generation_tokens: Generated tokens to add, >= 0.
            cached_prompt_tokens: Cached prompt tokens to add, >= 0.
            requests_finished: Finished requests to add, >= 0.
            requests_running: New running-requests gauge, or None to keep it.
            requests_waiting: New waiting-requests gauge, or None to keep it.
            kv_cache_usage: New KV-cache usage, 0..1, or None to keep it.

        Raises:
            KeyError: When the server does not serve ``model``.
            ValueError: When an increment is negative (counters only go up).
        """
        increments = (prompt_tokens, generation_tokens, cached_prompt_tokens, requests_finished)
        if min(increments) < 0:
            raise ValueError(f"server {self.name!r}: counter increments must be >= 0: {increments}")
        with self._lock:
            if model not in self._served:
                raise KeyError(f"server {self.name!r} does not serve model {model!r}")
            self._served[model] = self._served[model].plus(*increments)
            self._lifetime[model] = self._lifetime[model].plus(*increments)
            gauges = self._gauges[model]
            if requests_running is not None:
                gauges = replace(gauges, requests_running=requests_running)
            if requests_waiting is not None:
                gauges = replace(gauges, requests_waiting=requests_waiting)
            if kv_cache_usage is not None:
                gauges = replace(gauges, kv_cache_usage=kv_cache_usage)
            self._gauges[model] = gauges

    def restart(self) -> None:
        """Simulate a process restart: served counters and gauges go to 0, start time moves.

        The lifetime totals keep counting: nothing is lost from the ground truth.
        """
        with self._lock:
            self._served = {m: ModelCounts() for m in self.models}
            self._gauges = {m: _Gauges() for m in self.models}
            # A restarted process starts strictly later (real `_created` moves forward).
            self._start_time = max(self._wall(), self._start_time + 1e-3)
            self._restarts += 1

    def state(self) -> ServerState:
        """A consistent copy of the counters."""
        with self._lock:
            return ServerState(
                served=dict(self._served),
                lifetime=dict(self._lifetime),
                start_time_seconds=self._start_time,
                restarts=self._restarts,
                down=self._down,
            )

    def counters(self) -> tuple[SimModelCounters, ...]:
        """The served counters in the renderer's input type."""
        with self._lock:
            return self._counters_locked()

    def _counters_locked(self) -> tuple[SimModelCounters, ...]:
        out = []
        for m in self.models:
            c, g = self._served[m], self._gauges[m]
            out.append(
                SimModelCounters(
                    model=m,
                    prompt_tokens=c.prompt_tokens,
                    generation_tokens=c.generation_tokens,
                    cached_prompt_tokens=c.cached_prompt_tokens,
                    requests_running=g.requests_running,
                    requests_waiting=g.requests_waiting,
                    kv_cache_usage=g.kv_cache_usage,
                    requests_finished=c.requests_finished,
                )
            )
        return tuple(out)

    def exposition(self) -> str:
        """The exposition text ``/metrics`` serves now."""
        with self._lock:
            models = self._counters_locked()
            start = self._start_time
        return self._render(self.engine, models, ranks=self.ranks, start_time_seconds=start)

    # -- cost accounting ---------------------------------------------------------------------

    def _account_cpu(self, seconds: float) -> None:
        with self._lock:
            self._cpu_seconds += seconds
            self._requests += 1

    def request_cpu(self) -> tuple[int, float]:
        """``(requests handled, CPU seconds their handler threads used)`` since creation."""
        with self._lock:
            return self._requests, self._cpu_seconds
