"""Fixtures for the hardening tests: the whole agent (``build_agent``) over simulated edges.

Every test here drives the agent the production code path builds: ``agent.cli.build_agent``
wires ``GpuMonitor`` + ``NvmlBackend`` over a ``SimulatedNvml``, one ``ServerScraper`` per
upstream (real HTTP on 127.0.0.1, port 0), the ``Ledger``, the ``Sampler``, the
``SnapshotCollector`` and the ``MetricsServer``. Cycles run on demand (``Harness.cycle``) with a
``ManualClock``, so virtual time moves only when a test says so; only deadlines and hangs
cost real time. Everything started here is stopped at teardown, even when a test fails.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.cli import Agent, build_agent
from agent.clock import Clock, ManualClock
from agent.config import load_settings
from agent.readings import Snapshot
from agent.simulation.nvml import SimulatedNvml

LOG_NAME = "tokenergy.test.hardening"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PROMTOOL = shutil.which("promtool")

Labels = frozenset[tuple[str, str]]


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


class Samples(dict[tuple[str, Labels], float]):
    """Every sample of one exposition, ``(name, labels) -> value``."""

    @classmethod
    def parse(cls, text: str) -> Samples:
        """Parse Prometheus text format 0.0.4; a duplicate series fails the test.

        Args:
            text: The exposition.

        Returns:
            The samples.
        """
        out = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in out, f"duplicate series in the agent's output: {key}"
                out[key] = sample.value
        return out

    def pick(self, name: str, **labels: str) -> dict[Labels, float]:
        """The samples of one metric whose labels include ``labels``."""
        want = set(labels.items())
        return {k[1]: v for k, v in self.items() if k[0] == name and want <= k[1]}

    def value(self, name: str, **labels: str) -> float:
        """The value of exactly one matching sample."""
        found = self.pick(name, **labels)
        assert len(found) == 1, f"{name}{labels}: expected one sample, got {found}"
        return next(iter(found.values()))

    def assert_finite(self) -> None:
        """No NaN, no infinity and no NVML sentinel (>= 9e18) anywhere in the output."""
        bad = {k: v for k, v in self.items() if not math.isfinite(v) or abs(v) >= 9e18}
        assert not bad, f"non-finite or sentinel values exported: {bad}"


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    """Run ``promtool check metrics`` on an exposition (caller skips when promtool is absent)."""
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


# -- the whole agent ---------------------------------------------------------------------------


@dataclass
class Harness:
    """A built and started agent whose sampling cycles run on demand.

    Attributes:
        agent: The wired agent (HTTP server and GPU monitor started, sampler loop not).
        nvml: The simulated NVML under it.
        clock: The virtual clock every part shares.
    """

    agent: Agent
    nvml: SimulatedNvml
    clock: Clock

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.agent.port}"

    def cycle(self, advance_seconds: float = 1.0) -> Snapshot:
        """Advance virtual time, then run one sampling cycle and publish its Snapshot."""
        if advance_seconds and isinstance(self.clock, ManualClock):
            self.clock.advance(advance_seconds)
        snap: Snapshot = self.agent.sampler.run_cycle()
        return snap

    def get(self, path: str = "/metrics", **kwargs: Any) -> httpx.Response:
        """One request to the agent's HTTP endpoint (plain HTTP, 5 s timeout)."""
        return httpx.get(self.base + path, timeout=5.0, **kwargs)

    def metrics(self) -> Samples:
        """Scrape /metrics and parse it; the scrape must answer 200."""
        response = self.get()
        assert response.status_code == 200, response.text
        return Samples.parse(response.text)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in extra.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = val
    return out


MakeAgent = Callable[..., Harness]


@pytest.fixture
def make_agent() -> Iterator[MakeAgent]:
    """Build and start agents; each is stopped at teardown.

    Call as ``make_agent(gpus=[...], servers=[{...}], nvml=..., **sections)`` where sections
    are settings overrides (``scrape={"read_timeout_seconds": 0.2}``...). GPU reads get a
    short real-time deadline so a hang costs little wall time.
    """
    built: list[Agent] = []

    def make(
        *,
        gpus: Sequence[str] = ("H100-SXM-80GB", "H100-SXM-80GB"),
        servers: Sequence[dict[str, Any]] = (),
        nvml: SimulatedNvml | None = None,
        clock: Clock | None = None,
        before_start: Callable[[SimulatedNvml], None] | None = None,
        **sections: dict[str, Any],
    ) -> Harness:
        clock = clock or ManualClock()
        nvml = nvml or SimulatedNvml(list(gpus), clock)
        overrides = _deep_merge(
            {
                "servers": list(servers),
                "gpu": {"read_timeout_seconds": 0.3, "reinit_backoff_seconds": 1.0},
                "scrape": {"read_timeout_seconds": 1.0, "connect_timeout_seconds": 0.5},
                "sampling": {"interval_seconds": 1.0, "window_seconds": 10.0},
                "http": {"listen": "127.0.0.1:0", "client_timeout_seconds": 3.0},
            },
            sections,
        )
        settings = load_settings(None, overrides, use_env=False)
        agent = build_agent(settings, nvml, clock, logging.getLogger(LOG_NAME))
        built.append(agent)
        if before_start is not None:
            before_start(nvml)
        agent.server.start()
        agent.monitor.start()
        return Harness(agent=agent, nvml=nvml, clock=clock)

    yield make
    for agent in built:
        agent.stop()


# -- upstream inference servers ----------------------------------------------------------------


@dataclass
class Reply:
    """What a fake upstream answers: status, headers, body (bytes, or a callable of the request)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Upstream:
    """A small HTTP server on 127.0.0.1 that answers with ``reply`` and records every request.

    Attributes:
        reply: Called with (path, headers) for every GET; returns the answer.
        requests: ``(path, headers)`` of every request received, in order.
        client_ports: The client's source port of every request, in order.
    """

    reply: Callable[[str, dict[str, str]], Reply]
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None
    client_ports: list[int] = field(default_factory=list)
    """The agent's source port of every request (one per TCP connection it used)."""

    @property
    def port(self) -> int:
        """The bound port."""
        assert self.server is not None
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/metrics``."""
        return f"http://127.0.0.1:{self.port}/metrics"


MakeUpstream = Callable[..., Upstream]


@pytest.fixture
def make_upstream() -> Iterator[MakeUpstream]:
    """Start fake upstreams (threaded ``http.server``); each is shut down at teardown.

    Call as ``make_upstream(reply, port=0)``; a port given again reopens a stopped upstream.
    """
    started: list[http.server.ThreadingHTTPServer] = []

    def make(reply: Callable[[str, dict[str, str]], Reply], port: int = 0) -> Upstream:
        upstream = Upstream(reply)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if server.socket.fileno() == -1:
                    # Stopped: a kept-alive connection gets no answer, as from an exited process.
                    self.close_connection = True
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                upstream.requests.append((self.path, headers))
                upstream.client_ports.append(int(self.client_address[1]))
                answer = upstream.reply(self.path, headers)
                self.send_response(answer.status)
                for name, val in answer.headers.items():
                    self.send_header(name, val)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the agent gave up (size limit): fine
                    self.wfile.write(answer.body)

            def log_message(self, format: str, *args: object) -> None:
                return

        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        upstream.server = server
        started.append(server)
        return upstream

    yield make
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A socket that listens but never accepts: connects succeed, no answer ever comes.

    The kernel completes the handshakes into the backlog, so a scrape hangs until its own
    deadline while this side holds no thread and no per-connection descriptor.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    yield sock
    sock.close()


def vllm_body(
    generation: int | str, prompt: int | str = 0, *, model: str = MODEL, extra: str = ""
) -> bytes:
    """A minimal vLLM V1 exposition with one model's token counters."""
    label = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return (
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        f'vllm:prompt_tokens_total{{engine="0",model_name="{label}"}} {prompt}\n'
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        f'vllm:generation_tokens_total{{engine="0",model_name="{label}"}} {generation}\n' + extra
    ).encode()


@dataclass
class VllmState:
    """Live token counters of a fake vLLM upstream; ``reply`` serves them."""

    generation: int = 0
    prompt: int = 0

    def reply(self, path: str, headers: dict[str, str]) -> Reply:
        """The exposition of the current counters (text format 0.0.4)."""
        return Reply(
            body=vllm_body(self.generation, self.prompt),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


@dataclass
class Vllm:
    """A fake vLLM upstream and its live counters (set ``generation``/``prompt`` freely)."""

    state: VllmState
    upstream: Upstream

    @property
    def url(self) -> str:
        """Its /metrics URL."""
        return self.upstream.url


@pytest.fixture
def make_vllm(make_upstream: MakeUpstream) -> Callable[..., Vllm]:
    """Start a fake vLLM: ``make_vllm(generation=0, prompt=0)``."""

    def make(generation: int = 0, prompt: int = 0) -> Vllm:
        state = VllmState(generation=generation, prompt=prompt)
        return Vllm(state, make_upstream(state.reply))

    return make


@pytest.fixture
def kit() -> Any:
    """This module's helpers (``vllm_body``, ``promtool_check``, ``fd_count``, ``PROMTOOL``...).

    Tests run with ``--import-mode=importlib`` and cannot import a conftest, so the helpers
    travel as a fixture, like the other test folders' ``build`` fixtures.
    """
    return sys.modules[__name__]


# -- hostile upstreams on raw sockets ----------------------------------------------------------

RawBehaviour = Callable[[socket.socket, threading.Event], None]
"""What a raw upstream does with one accepted connection until ``stop`` is set."""


@dataclass
class RawUpstream:
    """A TCP listener on 127.0.0.1 that runs a behaviour per connection (hostile servers).

    Attributes:
        port: The bound port.
        accepted: Connections accepted so far.
    """

    port: int
    accepted: int = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/metrics``."""
        return f"http://127.0.0.1:{self.port}/metrics"


MakeRawUpstream = Callable[[RawBehaviour], RawUpstream]


def read_request(conn: socket.socket) -> bytes:
    """Read one request head (up to the blank line) from a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def make_raw_upstream() -> Iterator[MakeRawUpstream]:
    """Start raw-socket upstreams: ``make_raw_upstream(behaviour)``; all stop at teardown.

    ``behaviour(conn, stop)`` runs on its own daemon thread per accepted connection; it
    should return soon after ``stop`` is set. OSErrors (the agent hung up) end it quietly.
    """
    stop = threading.Event()
    listeners: list[socket.socket] = []

    def make(behaviour: RawBehaviour) -> RawUpstream:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.05)
        listeners.append(listener)
        upstream = RawUpstream(port=int(listener.getsockname()[1]))

        def serve(conn: socket.socket) -> None:
            with conn, contextlib.suppress(OSError):
                behaviour(conn, stop)

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except (TimeoutError, OSError):
                    continue
                upstream.accepted += 1
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return upstream

    yield make
    stop.set()
    for listener in listeners:
        listener.close()
