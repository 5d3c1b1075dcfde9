"""Simulated inference servers: real HTTP listeners on localhost serving ``/metrics``.

A :class:`SimulatedServer` holds the live counters of one inference server (per model and
data-parallel rank) and serves ``GET /metrics`` the way the engine does:

- vLLM, SGLang and LMDeploy through prometheus_client registries and the engine's own app
  (prometheus-fastapi-instrumentator for vLLM, prometheus_client's ASGI app for SGLang and
  LMDeploy; see :mod:`agent.simulation.engines`), on uvicorn in a thread;
- llama.cpp, TGI, Triton, Dynamo and NIM, whose servers write the text with C++/Rust/Go
  libraries, with :func:`agent.simulation.expositions.render_exposition`, on a bounded
  threading HTTP server.

It is an edge: it starts listener threads and reads no clock of its own (the start times it
shows come from the injected ``wall`` and ``monotonic`` functions).

Faults: :meth:`SimulatedServer.restart` resets the served counters (as a process restart does)
while the lifetime totals, the ground truth, keep counting; :meth:`SimulatedServer.restart_rank`
does so for one data-parallel rank; :meth:`SimulatedServer.drop_rank_series` leaves one rank's
series out of the next scrape; :meth:`SimulatedServer.set_down` closes the listener
(connection refused) and reopens it on the same port later. Tokens made between the last
scrape and a restart are gone from the server itself; :attr:`ServerState.lost` counts them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from agent.simulation.engines import APP_ENGINES, AsgiListener, EngineApp, build_engine_app
from agent.simulation.expositions import SimModelCounters, render_exposition

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Content type of the Prometheus text format 0.0.4, as the C++/Rust/Go servers send it."""

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
        served: Counters as ``/metrics`` shows them (reset by a restart), per model, summed
            over ranks.
        lifetime: Counters since the server object was created (never reset), per model.
        start_time_seconds: Unix time the current process "started", s.
        restarts: How many times the server (or one of its ranks) restarted.
        down: True while the listener is closed.
        lost: Per model, the counts made between the last scrape and a restart of the server
            or a rank: no scraper could have seen them. ``lifetime - lost`` is what a scraper
            that saw every scrape may count from the start.
        ranks: Per model, the served counters of each rank.
    """

    served: dict[str, ModelCounts]
    lifetime: dict[str, ModelCounts]
    start_time_seconds: float
    restarts: int
    down: bool
    lost: dict[str, ModelCounts] = field(default_factory=dict)
    ranks: dict[str, tuple[ModelCounts, ...]] = field(default_factory=dict)


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
        self._reply(200, body, CONTENT_TYPE, self.server.owner.response_headers())

    def _reply(
        self, status: int, body: bytes, content_type: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # A scrape every few seconds would flood the demo's terminal.
        return


class SimulatedServer:
    """One simulated inference server with a real HTTP ``/metrics`` on localhost.

    Thread-safe: counters change under a lock, and each request shows a consistent copy.

    Args:
        name: Server name (the agent's ``server`` label).
        engine: ``vllm``, ``sglang``, ``lmdeploy`` (served by prometheus_client and the
            engine's app), or an engine :func:`render_exposition` writes (``llamacpp``...).
        models: Served model names ("" for an engine without a model label).
        wall: Unix time source, s, for the process start time the exposition shows.
        ranks: Data-parallel ranks (vLLM ``engine``, SGLang ``dp_rank``, LMDeploy ``engine``
            label values), >= 1. Increments are spread over them.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one at :meth:`start`.
        render: Exposition renderer; given, it serves every engine as text (tests).
        monotonic: Monotonic time source, s: llama.cpp's ``Process-Start-Time-Unix`` header
            holds the server's start in monotonic microseconds (default: ``wall``).

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
        render: Renderer | None = None,
        monotonic: Callable[[], float] | None = None,
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
        self._monotonic = monotonic or wall
        self._render: Renderer = render or render_exposition
        self.uses_app = render is None and engine in APP_ENGINES
        self._lock = threading.Lock()
        self._served = {m: [ModelCounts()] * ranks for m in self.models}
        self._scraped = {m: [ModelCounts()] * ranks for m in self.models}
        self._lifetime = {m: ModelCounts() for m in self.models}
        self._lost = {m: ModelCounts() for m in self.models}
        self._gauges = {m: _Gauges() for m in self.models}
        self._start_time = wall()
        self._start_monotonic = self._monotonic()
        self._restarts = 0
        self._advances = 0
        self._dropped: set[int] = set()
        self._down = False
        self._started = False
        self._listener: _Listener | AsgiListener | None = None
        self._thread: threading.Thread | None = None
        self._cpu_seconds = 0.0
        self._requests = 0
        self._app: EngineApp | None = self._build_app() if self.uses_app else None
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
        if self.uses_app:
            asgi = AsgiListener(
                self._dispatch,
                self.host,
                self._port,
                max_concurrency=MAX_CONCURRENT_REQUESTS,
                timeout_seconds=CLIENT_TIMEOUT_SECONDS,
            )
            self._port = asgi.port
            self._listener = asgi
            return
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
        if isinstance(listener, AsgiListener):
            listener.close()
        elif listener is not None:
            listener.shutdown()
            listener.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    # -- the engine app ----------------------------------------------------------------------

    def _build_app(self) -> EngineApp:
        return build_engine_app(
            self.engine,
            start_time_seconds=lambda: self._start_time,
            ranks=self.ranks,
            pull=self._pull,
            account_cpu=self._account_cpu,
        )

    async def _dispatch(self, scope: Any, receive: Any, send: Any) -> None:
        # The current process's app: a restart swaps in a new one (new registry).
        app = self._app
        assert app is not None
        await app.app(scope, receive, send)

    def _pull(self) -> list[tuple[int, SimModelCounters]]:
        """The per-rank counters one scrape shows; remembers them as seen."""
        with self._lock:
            dropped, self._dropped = self._dropped, set()
            out = []
            for m in self.models:
                g = self._gauges[m]
                per_rank = self._served[m]
                for r, c in enumerate(per_rank):
                    if r in dropped:
                        continue
                    self._scraped[m][r] = c
                    out.append((r, _sim_counters(m, c, g, r, self.ranks)))
            return out

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

        The increments are spread over the ranks (the remainder goes to a rotating rank).

        Args:
            model: One of the server's models.
            prompt_tokens: Prompt tokens to add, >= 0.
            generation_tokens: Generated tokens to add, >= 0.
            cached_prompt_tokens: Cached prompt tokens to add, >= 0 (<= prompt tokens for a
                consistent split).
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
            offset = self._advances % self.ranks
            self._advances += 1
            columns = [_spread(v, self.ranks, offset) for v in increments]
            per_rank = self._served[model]
            for r in range(self.ranks):
                per_rank[r] = per_rank[r].plus(*(col[r] for col in columns))
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

        The lifetime totals keep counting: nothing is lost from the ground truth. The engine
        app (and its registry) is built anew, as a new process builds it.
        """
        with self._lock:
            for m in self.models:
                for r in range(self.ranks):
                    self._lose(m, r)
            self._served = {m: [ModelCounts()] * self.ranks for m in self.models}
            self._scraped = {m: [ModelCounts()] * self.ranks for m in self.models}
            self._gauges = {m: _Gauges() for m in self.models}
            # A restarted process starts strictly later (real `_created` moves forward).
            self._start_time = max(self._wall(), self._start_time + 1e-3)
            self._start_monotonic = max(self._monotonic(), self._start_monotonic + 1e-3)
            self._restarts += 1
            if self.uses_app:
                self._app = self._build_app()

    def restart_rank(self, rank: int) -> None:
        """Restart one data-parallel rank: its series start again from 0, the others go on.

        Raises:
            ValueError: When the server has no such rank.
        """
        self._check_rank(rank)
        with self._lock:
            for m in self.models:
                self._lose(m, rank)
                self._served[m][rank] = ModelCounts()
                self._scraped[m][rank] = ModelCounts()
            self._restarts += 1

    def drop_rank_series(self, rank: int) -> None:
        """Leave one rank's series out of the next scrape only (they come back after).

        Raises:
            ValueError: When the server has no such rank.
        """
        self._check_rank(rank)
        with self._lock:
            self._dropped.add(rank)

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.ranks:
            raise ValueError(f"server {self.name!r} has ranks 0..{self.ranks - 1}, not {rank}")

    def _lose(self, model: str, rank: int) -> None:
        """Count as lost what rank ``rank`` made since its last scrape (lock held)."""
        now, seen = self._served[model][rank], self._scraped[model][rank]
        self._lost[model] = self._lost[model].plus(
            max(0, now.prompt_tokens - seen.prompt_tokens),
            max(0, now.generation_tokens - seen.generation_tokens),
            max(0, now.cached_prompt_tokens - seen.cached_prompt_tokens),
            max(0, now.requests_finished - seen.requests_finished),
        )

    def state(self) -> ServerState:
        """A consistent copy of the counters."""
        with self._lock:
            return ServerState(
                served={m: _total(c) for m, c in self._served.items()},
                lifetime=dict(self._lifetime),
                start_time_seconds=self._start_time,
                restarts=self._restarts,
                down=self._down,
                lost=dict(self._lost),
                ranks={m: tuple(c) for m, c in self._served.items()},
            )

    def counters(self) -> tuple[SimModelCounters, ...]:
        """The served counters in the renderer's input type (summed over ranks)."""
        with self._lock:
            return self._counters_locked()

    def _counters_locked(self) -> tuple[SimModelCounters, ...]:
        return tuple(
            _sim_counters(m, _total(self._served[m]), self._gauges[m], 0, 1) for m in self.models
        )

    def exposition(self) -> str:
        """The exposition text ``/metrics`` serves now (counts as a scrape)."""
        app = self._app
        if app is not None:
            from prometheus_client import generate_latest

            return generate_latest(app.registry).decode()
        with self._lock:
            models = self._counters_locked()
            for m in self.models:
                self._scraped[m] = list(self._served[m])
            start = self._start_time
        return self._render(self.engine, models, ranks=self.ranks, start_time_seconds=start)

    def response_headers(self) -> list[tuple[str, str]]:
        """Extra headers of a ``/metrics`` response written as text."""
        if self.engine == "llamacpp":
            # llama-server sends its start as monotonic microseconds (despite the name).
            with self._lock:
                return [("Process-Start-Time-Unix", str(int(self._start_monotonic * 1e6)))]
        return []

    # -- cost accounting ---------------------------------------------------------------------

    def _account_cpu(self, seconds: float) -> None:
        with self._lock:
            self._cpu_seconds += seconds
            self._requests += 1

    def request_cpu(self) -> tuple[int, float]:
        """``(requests handled, CPU seconds spent on them)`` since creation.

        Text engines: the handler thread's CPU. Engine apps: the thread CPU of rendering the
        registry (the app's own routing is not counted).
        """
        with self._lock:
            return self._requests, self._cpu_seconds


def _spread(total: int, parts: int, offset: int) -> list[int]:
    """Split ``total`` into ``parts`` ints that sum to it; the remainder starts at ``offset``."""
    base, extra = divmod(total, parts)
    return [base + (1 if (r - offset) % parts < extra else 0) for r in range(parts)]


def _total(per_rank: Sequence[ModelCounts]) -> ModelCounts:
    out = ModelCounts()
    for c in per_rank:
        out = out.plus(
            c.prompt_tokens, c.generation_tokens, c.cached_prompt_tokens, c.requests_finished
        )
    return out


def _sim_counters(
    model: str, c: ModelCounts, g: _Gauges, rank: int, ranks: int
) -> SimModelCounters:
    """One rank's renderer input: its counters and its share of the load gauges."""
    return SimModelCounters(
        model=model,
        prompt_tokens=c.prompt_tokens,
        generation_tokens=c.generation_tokens,
        cached_prompt_tokens=c.cached_prompt_tokens,
        requests_running=_spread(g.requests_running, ranks, 0)[rank],
        requests_waiting=_spread(g.requests_waiting, ranks, 0)[rank],
        kv_cache_usage=g.kv_cache_usage,
        requests_finished=c.requests_finished,
    )
