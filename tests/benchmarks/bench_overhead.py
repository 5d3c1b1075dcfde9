"""What the agent costs its node: CPU per cycle, % of a core, resident memory, connections.

Setup, as on a busy 8-GPU inference node (issue 16):

- the agent, built by ``agent.cli.build_agent`` exactly as ``tokenergy run`` builds it, over a
  ``SimulatedNvml`` of ``H100-SXM-80GB`` on the system clock, default settings (scrape and
  snapshot every 5 s, GPU poll every 1 s, 60 s ratio window), /metrics on 127.0.0.1;
- simulated vLLM V1 servers on 127.0.0.1, one per GPU (round-robin when there are more servers
  than GPUs), each with 8 data-parallel engines and 1, 3 or 5 served models, every V1
  histogram with its real buckets: bodies of 0.48, 1.41 and 2.34 MB (the renderer
  ``render_exposition`` that ``bench_parser.py`` uses, written by the simulated server as text:
  the prometheus_client app would cost the child 0.3-0.6 s per 1.4-2.3 MB body and starve a
  2-core host); counters advance every second; a Prometheus stand-in scrapes the agent's
  /metrics every 15 s. Servers and the Prometheus stand-in run in a **child process**, so the
  CPU measured (``time.process_time``: every thread of the agent's process) is the agent's.

Measured, each beside its baseline in the same run:

1. CPU per sampling cycle (``sampler.run_cycle``: the scrapes + parse, ledger, snapshot), per
   GPU poll and per /metrics render; CPU per 5 s period = one cycle + 4 GPU polls (none when
   every GPU has a working energy counter, as the simulated H100 do) + a third of
   a render; % of one core = that / 5 s. Baseline: the do-it-yourself cycle (same GPU poll;
   the same bodies fetched with httpx and parsed by ``prometheus_client.parser``), and the
   previous release's recorded figures (issue 16: 8 H100 x 8 servers x 1.37 MB, 10 minutes).
2. The real loop (the sampler's own thread, as ``agent.start()`` runs it), each in a fresh
   process (one run's heap does not inflate another's RSS): CPU % and RSS per period, CPU per
   thread, connections the agent opened per server and requests per connection. At 1.41 MB
   for ``--minutes`` (the headline) and at 2.34 MB for ``--short-minutes``, with glibc's
   malloc defaults (``--tuned`` adds both sizes with :data:`MALLOC_TUNABLES`, a deployment
   setting: the page faults it saved went away when bodies stopped being held whole).
3. Growth: CPU per cycle and per 5 s period against servers (1, 8, 32), GPUs (1, 8, 64) and
   body size (0.48, 1.41, 2.34 MB), with the least-squares slope (ms per extra server, GPU, MB).
4. /metrics render time and size, text 0.0.4 and OpenMetrics, plain and gzip.
5. The scrape lane: CPU per scrape of the 8 servers scraped by the caller's thread in turn,
   by 8 worker threads at once (the sampler before), by the same 8 threads taking turns (a
   shared lock) and in turn on one worker thread (:class:`agent.workers.InTurn`, the
   sampler now), each round after 1 s idle.

The simulated NVML is Python; real NVML calls are C (microseconds), so the GPU poll figure is
an upper bound. The host is shared (2 cores, other jobs running): CPU time, not wall time, is
measured, so contention inflates the numbers only slightly (caches).

Rerun: ``python tests/benchmarks/bench_overhead.py [--minutes 10] [--short-minutes 3]
[--quick]``
(``--quick``: 1-minute loops, fewer cycles; ``--profile``: cProfile of the scrape path and of a
cycle instead of the benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import gzip
import importlib.util
import io
import json
import logging
import math
import os
import pstats
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import psutil
from prometheus_client import exposition, openmetrics
from prometheus_client.registry import CollectorRegistry

from agent.cli import Agent, build_agent
from agent.clock import SystemClock
from agent.config import HttpSettings, ScrapeSettings, ServerSettings, Settings
from agent.servers.scraper import ServerScraper
from agent.simulation.expositions import SimModelCounters, render_exposition
from agent.simulation.nvml import SimulatedNvml
from agent.simulation.servers import CONTENT_TYPE, SimulatedServer
from agent.workers import InTurn, Worker, WorkerPool
from exporters.http import GZIP_LEVEL
from exporters.prometheus import SnapshotRegistry

GPUS = 8
SERVERS = 8
RANKS = 8
MODEL_STEM = "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8-dynamic"
BODY_MODELS = {0.5: 1, 1.4: 3, 2.3: 5}
"""Nominal body size, MB -> served models per server (8 engines each): 0.48, 1.41, 2.34 MB."""
HEADLINE_MODELS = 3
PROMETHEUS_INTERVAL_SECONDS = 15.0
GROWTH_SERVERS = (1, 8, 32)
GROWTH_GPUS = (1, 8, 64)
MB = 1024 * 1024

MALLOC_TUNABLES = (
    "glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=16777216:"
    "glibc.malloc.mmap_threshold=16777216"
)
"""glibc settings of the tuned loops (``GLIBC_TUNABLES``): one malloc arena for every thread,
and freed memory kept up to 16 MB instead of handed back to the kernel after every body (each
1.4 MB body otherwise costs ~350 page faults to receive and as many for each copy)."""

TARGETS = {3: (0.5, 60.0), 5: (0.8, 70.0)}
"""Models per server -> (max % of one core, max RSS MB after the run) of issue 16."""

PREVIOUS = {
    "body": "1.37 MB (2.3 MB for the RSS line)",
    "core_percent": "1.4-1.9",
    "cycle_ms": 70.0,
    "scrape_ms": 8.8,
    "core_percent_2_3": "2.3",
    "rss_mb_2_3": 84.0,
    "peak_rss_mb_2_3": 103.0,
}
"""The previous release, as recorded in issue 16: 8 simulated H100, 8 local servers with
8 data-parallel engines, defaults, 10 minutes."""


def model_names(n: int) -> list[str]:
    """``n`` distinct served-model names."""
    return [f"{MODEL_STEM}-{i}" for i in range(n)]


# -- child process: the servers and the Prometheus stand-in --------------------------------


class KeepAliveServer:
    """One simulated vLLM server's /metrics over HTTP/1.1 keep-alive, as uvicorn serves vLLM.

    The body is ``SimulatedServer.exposition()`` (``render_exposition``, the renderer
    ``bench_parser.py`` uses), rendered ahead by :meth:`refresh` so an answer never waits for
    the renderer (0.1 s per 1.4 MB body: 32 servers rendered on demand would pass the
    agent's 3 s deadline); the simulated server's own text listener speaks HTTP/1.0 (a
    connection per request), which would hide whether the agent keeps its connection.
    """

    def __init__(self, sim: SimulatedServer) -> None:
        self.sim = sim
        self.body = b""
        self.refresh()
        self.requests = 0
        self.accepted = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall

            def setup(self) -> None:
                owner.accepted += 1
                super().setup()

            def do_GET(self) -> None:
                owner.requests += 1
                body = owner.body
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/metrics"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def refresh(self) -> None:
        """Render the body the next requests get."""
        self.body = self.sim.exposition().encode()


def serve(n_servers: int, n_models: int, ranks: int, stdin: IO[str], stdout: IO[str]) -> None:
    """Child process body: serve ``n_servers`` vLLM servers until stdin closes.

    Prints one JSON line ``{"urls": [...]}``. Then each stdin line is either ``URL INTERVAL``
    (start a thread that GETs URL every INTERVAL s: the Prometheus stand-in) or ``COUNT``
    (print ``{"requests": [...], "accepted": [...]}``: /metrics requests each server answered
    and TCP connections it accepted).
    """
    clock = SystemClock()
    names = model_names(n_models)
    sims = [
        SimulatedServer(f"vllm{i}", "vllm", names, wall=clock.wall, ranks=ranks)
        for i in range(n_servers)
    ]
    for s in sims:
        for m in names:
            s.advance(
                m,
                prompt_tokens=50_000_000,
                generation_tokens=9_000_000,
                cached_prompt_tokens=20_000_000,
                requests_finished=80_000,
            )
    servers = [KeepAliveServer(s) for s in sims]
    stop = threading.Event()

    def renderer() -> None:
        # A fresh body per server every 5 s (the scrape interval): counters move between
        # scrapes, and the child spends 0.1 s per 1.4 MB body, not per request.
        started = time.monotonic()
        while not stop.wait(max(0.0, 5.0 - (time.monotonic() - started))):
            started = time.monotonic()
            for server in servers:
                server.refresh()

    def workload() -> None:
        rng = random.Random(7)
        while not stop.wait(1.0):
            for s in sims:
                for m in names:
                    out = rng.randint(1_000, 4_000)
                    s.advance(
                        m,
                        prompt_tokens=4 * out,
                        generation_tokens=out,
                        cached_prompt_tokens=out,
                        requests_finished=out // 400,
                        requests_running=rng.randint(20, 120),
                        requests_waiting=rng.randint(0, 9),
                        kv_cache_usage=rng.uniform(0.3, 0.9),
                    )

    def prometheus(url: str, interval: float) -> None:
        while not stop.wait(interval):
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, timeout=10) as answer,
            ):
                answer.read()

    threading.Thread(target=workload, daemon=True).start()
    threading.Thread(target=renderer, daemon=True).start()
    stdout.write(json.dumps({"urls": [s.url for s in servers]}) + "\n")
    stdout.flush()
    for line in stdin:
        if line.strip() == "COUNT":
            counts = {
                "requests": [s.requests for s in servers],
                "accepted": [s.accepted for s in servers],
            }
            stdout.write(json.dumps(counts) + "\n")
            stdout.flush()
            continue
        url, interval = line.split()
        threading.Thread(target=prometheus, args=(url, float(interval)), daemon=True).start()
    stop.set()
    for server in servers:
        server.http.shutdown()
        server.http.server_close()


@dataclass
class ServerProcess:
    """The child process holding the simulated servers."""

    proc: subprocess.Popen[str]
    urls: list[str]

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def scrape_agent(self, url: str, interval_seconds: float) -> None:
        """Ask the child to scrape ``url`` every ``interval_seconds`` (Prometheus stand-in)."""
        self._send(f"{url} {interval_seconds}")

    def counts(self) -> tuple[list[int], list[int]]:
        """(/metrics requests answered, TCP connections accepted) per server so far."""
        self._send("COUNT")
        assert self.proc.stdout is not None
        data = json.loads(self.proc.stdout.readline())
        return [int(n) for n in data["requests"]], [int(n) for n in data["accepted"]]

    def close(self) -> None:
        """Close stdin (the child exits) and wait."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _child_env(tunables: str | None = None) -> dict[str, str]:
    """This environment, with the ``agent`` package this process runs first on the path."""
    import agent

    root = str(Path(agent.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    return env


def start_servers(
    n_servers: int = SERVERS, n_models: int = HEADLINE_MODELS, ranks: int = RANKS
) -> ServerProcess:
    """Start the child process with ``n_servers`` simulated vLLM servers."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(n_servers), str(n_models), str(ranks)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("the server process exited before printing its URLs")
    return ServerProcess(proc, json.loads(line)["urls"])


# -- the agent -----------------------------------------------------------------------------


def make_agent(urls: Sequence[str], gpus: int = GPUS, **sampling: float) -> Agent:
    """The agent as ``tokenergy run`` builds it, servers on GPUs round-robin, /metrics local."""
    settings = Settings(
        servers=[
            ServerSettings(name=f"vllm{i}", url=u, engine="vllm", gpus=[i % gpus])
            for i, u in enumerate(urls)
        ],
        http=HttpSettings(listen="127.0.0.1:0"),
        sampling=sampling or {},
    )
    log = logging.getLogger("bench_overhead")
    log.setLevel(logging.WARNING)
    nvml = SimulatedNvml(["H100-SXM-80GB"] * gpus, SystemClock(), seed=1)
    for i in range(gpus):
        nvml.set_load(i, 0.6 + 0.3 * (i % 8) / 8)
    return build_agent(settings, nvml, SystemClock(), log)


@contextlib.contextmanager
def headline_agent() -> Iterator[Agent]:
    """The headline setup (8 GPUs, 8 servers x 1.41 MB), GPUs started, one cycle run."""
    child = start_servers(SERVERS, HEADLINE_MODELS)
    try:
        agent = make_agent(child.urls)
        try:
            agent.monitor.start()
            agent.sampler.run_cycle()
            yield agent
        finally:
            agent.stop()
    finally:
        child.close()


def _cpu_per_call(
    fn: Callable[[], object],
    n: int,
    batches: int = 3,
    before: Callable[[], object] | None = None,
) -> float:
    """Process CPU s per call of ``fn`` (every thread of this process), median of batches.

    ``before``, given, runs untimed ahead of each call (a new Snapshot before a render).
    """
    per: list[float] = _BENCH_CYCLE.cpu_per_call(fn, n, batches, before)
    return statistics.median(per)


def _load_bench_cycle() -> Any:
    """``bench_cycle.py`` by path (a script, not a package module): its CPU-timing loop."""
    spec = importlib.util.spec_from_file_location(
        "_bench_cycle", Path(__file__).with_name("bench_cycle.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BENCH_CYCLE = _load_bench_cycle()


def _naive_cycle(agent: Agent, urls: Sequence[str]) -> Callable[[], float]:
    """The do-it-yourself cycle: GPU poll, then fetch (httpx) + prometheus_client parse."""
    import httpx  # only here: the loop processes measure RSS without it
    from prometheus_client.parser import text_string_to_metric_families

    client = httpx.Client(timeout=30)

    def cycle() -> float:
        agent.monitor.poll()
        total = 0.0
        for url in urls:
            body = client.get(url).text
            for family in text_string_to_metric_families(body):
                if family.name == "vllm:generation_tokens":
                    total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        return total

    return cycle


@dataclass(frozen=True)
class CycleCosts:
    """CPU seconds per call, measured in this process, for one setup."""

    servers: int
    gpus: int
    body_bytes: int
    cycle_s: float
    gpu_poll_s: float
    render_s: float
    naive_cycle_s: float | None
    interval_s: float
    gpu_interval_s: float
    polls_between: bool = True

    def period_s(self, cycle_s: float | None = None, interval_s: float | None = None) -> float:
        """CPU s per scrape interval: a cycle, the GPU polls between cycles, the renders.

        No polls between cycles when every GPU's energy comes from its counter.
        """
        cycle = self.cycle_s if cycle_s is None else cycle_s
        interval = self.interval_s if interval_s is None else interval_s
        gpu_interval = min(self.gpu_interval_s, interval)
        polls_between = max(0.0, interval / gpu_interval - 1.0) if self.polls_between else 0.0
        renders = interval / PROMETHEUS_INTERVAL_SECONDS
        return cycle + polls_between * self.gpu_poll_s + renders * self.render_s

    def core_percent(self, cycle_s: float | None = None, interval_s: float | None = None) -> float:
        """% of one core at ``interval_s`` (default: the configured interval)."""
        interval = self.interval_s if interval_s is None else interval_s
        return 100.0 * self.period_s(cycle_s, interval) / interval


def measure_cycles(
    agent: Agent, urls: Sequence[str], n: int, body_bytes: int, naive: bool = True
) -> CycleCosts:
    """CPU per sampling cycle, per GPU poll, per /metrics render (and per naive cycle)."""
    agent.monitor.start()
    agent.sampler.run_cycle()  # warm up: discovery, connections, first ledger step
    cycle = _cpu_per_call(agent.sampler.run_cycle, n)
    poll = _cpu_per_call(agent.monitor.poll, 4 * n)
    # What /metrics answers Prometheus: the agent's text body, gzipped, for a new Snapshot.
    registry = agent.registry
    body: Callable[[], bytes] = (
        (lambda: registry.exposition(False))
        if isinstance(registry, SnapshotRegistry)
        else (lambda: exposition.generate_latest(registry))
    )
    render = _cpu_per_call(_zipped(body, GZIP_LEVEL), n, before=agent.sampler.run_cycle)
    naive_s: float | None = None
    if naive:
        naive_fn = _naive_cycle(agent, urls)
        naive_fn()
        naive_s = _cpu_per_call(naive_fn, max(1, n // 4), batches=2)
    return CycleCosts(
        servers=len(urls),
        gpus=len(agent.monitor.poll()),
        body_bytes=body_bytes,
        cycle_s=cycle,
        gpu_poll_s=poll,
        render_s=render,
        naive_cycle_s=naive_s,
        interval_s=agent.settings.sampling.interval_seconds,
        gpu_interval_s=agent.settings.gpu.interval_seconds,
        polls_between=not agent.monitor.counters_cover_energy(),
    )


def measure_setup(
    servers: int, gpus: int, n_models: int, n: int, naive: bool = False
) -> CycleCosts:
    """Start a child with ``servers`` servers, build an agent over ``gpus`` GPUs, measure."""
    child = start_servers(servers, n_models)
    try:
        body = served_bytes(child.urls[0])
        agent = make_agent(child.urls, gpus=gpus)
        try:
            return measure_cycles(agent, child.urls, n, body, naive=naive)
        finally:
            agent.stop()
    finally:
        child.close()


def served_bytes(url: str) -> int:
    """Size of the body ``url`` serves now, bytes."""
    with urllib.request.urlopen(url, timeout=30) as answer:
        return len(answer.read())


def render_body(n_models: int) -> bytes:
    """The body one server of the benchmark serves (same renderer, same sizes)."""
    return render_exposition(
        "vllm",
        [SimModelCounters(model=m) for m in model_names(n_models)],
        ranks=RANKS,
        start_time_seconds=1.7e9,
    ).encode()


@dataclass(frozen=True)
class RenderRow:
    """One /metrics encoding."""

    name: str
    ms: float
    plain_bytes: int
    gzip_bytes: int


def measure_render(
    registry: CollectorRegistry, n: int, new_snapshot: Callable[[], object] | None = None
) -> list[RenderRow]:
    """CPU time and size of each /metrics encoding, each for a new Snapshot.

    prometheus_client's encoders (what /metrics used before, gzip level 6) and the agent's
    own (``SnapshotRegistry.exposition``, gzip level :data:`exporters.http.GZIP_LEVEL`);
    ``new_snapshot`` runs before each call, untimed.
    """
    rows = []
    baselines: tuple[tuple[str, Callable[[], bytes]], ...] = (
        ("text 0.0.4, prometheus_client", lambda: exposition.generate_latest(registry)),
        (
            "OpenMetrics, prometheus_client",
            lambda: openmetrics.exposition.generate_latest(registry),  # type: ignore[no-untyped-call]
        ),
    )
    ours: tuple[tuple[str, Callable[[], bytes]], ...] = ()
    if isinstance(registry, SnapshotRegistry):
        ours = (
            ("text 0.0.4, tokenergy", lambda: registry.exposition(False)),
            ("OpenMetrics, tokenergy", lambda: registry.exposition(True)),
        )
    for name, encode in (*baselines, *ours):
        level = 6 if "prometheus_client" in name else GZIP_LEVEL
        body = encode()
        zipped = gzip.compress(body, compresslevel=level)
        ms = _cpu_per_call(encode, n, before=new_snapshot) * 1e3
        gz_ms = _cpu_per_call(_zipped(encode, level), n, before=new_snapshot)
        rows.append(RenderRow(name, ms, len(body), 0))
        rows.append(RenderRow(f"{name} + gzip {level}", gz_ms * 1e3, len(body), len(zipped)))
    return rows


def _zipped(encode: Callable[[], bytes], level: int) -> Callable[[], bytes]:
    return lambda: gzip.compress(encode(), compresslevel=level)


# -- the real loop -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopRow:
    """One reporting period of the real loop."""

    t_s: float
    rss_mb: float
    cpu_percent: float


@dataclass(frozen=True)
class LoopResult:
    """The real loop in a fresh process: periods, memory, connections."""

    n_models: int
    body_bytes: int
    seconds: float
    rss_before_mb: float
    rows: list[LoopRow]
    rss_after_mb: float
    max_rss_mb: float
    requests: list[int]
    connections: list[int]
    accepted: list[int]
    thread_cpu_s: dict[str, float]
    tunables: str = ""

    @property
    def mean_cpu(self) -> float:
        """Mean % of one core over the periods."""
        return statistics.fmean(r.cpu_percent for r in self.rows)

    @property
    def requests_per_connection(self) -> float:
        """Fewest requests per connection over the servers."""
        return min(r / max(1, c) for r, c in zip(self.requests, self.connections, strict=True))


def peak_rss_mb() -> float:
    """Peak RSS of this process image, MB: ``VmHWM``, which ``exec`` resets.

    ``ru_maxrss`` is not used: Linux carries it over ``exec``, so a process started by the
    benchmark would report the (larger) benchmark's peak.
    """
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def thread_cpu() -> dict[str, float]:
    """CPU s (user + system) per thread name of this process, scrape threads summed."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "other (exited or native)")
        name = "scrape-* (all servers)" if name.startswith("scrape-") else name
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def run_loop(
    agent: Agent,
    seconds: float,
    every_seconds: float,
    out: IO[str] | None = None,
    threads: dict[str, float] | None = None,
) -> list[LoopRow]:
    """Run the real sampling loop; every ``every_seconds`` record RSS and CPU % since the last.

    ``threads``, given, receives :func:`thread_cpu` taken before the loop thread stops.
    """
    me = psutil.Process()
    rows: list[LoopRow] = []
    agent.sampler.start()
    start = time.monotonic()
    last_t, last_cpu = start, time.process_time()
    try:
        while time.monotonic() - start < seconds - 1e-6:
            time.sleep(max(0.0, min(every_seconds, seconds - (time.monotonic() - start))))
            now, cpu = time.monotonic(), time.process_time()
            row = LoopRow(
                t_s=now - start,
                rss_mb=me.memory_info().rss / MB,
                cpu_percent=100.0 * (cpu - last_cpu) / (now - last_t),
            )
            rows.append(row)
            if out is not None:
                print(
                    f"  t={row.t_s:6.0f} s  RSS {row.rss_mb:6.1f} MB  CPU {row.cpu_percent:5.2f} %",
                    file=out,
                    flush=True,
                )
            last_t, last_cpu = now, cpu
        if threads is not None:
            threads.update(thread_cpu())
    finally:
        agent.sampler.stop()
    return rows


def loop_in_this_process(
    n_models: int, seconds: float, every_seconds: float, n_servers: int = SERVERS
) -> LoopResult:
    """The agent's real loop beside a fresh child of servers; measured in this process."""
    rss_before = psutil.Process().memory_info().rss / MB
    child = start_servers(n_servers, n_models)
    try:
        body = served_bytes(child.urls[0])
        agent = make_agent(child.urls)
        threads: dict[str, float] = {}
        try:
            # agent.start() without its sampler.start(): run_loop starts the loop thread.
            agent.server.start()
            agent.monitor.start()
            agent.sampler.run_cycle()
            gc.freeze()  # as run_command does once the agent has started
            child.scrape_agent(
                f"http://127.0.0.1:{agent.port}/metrics", PROMETHEUS_INTERVAL_SECONDS
            )
            rows = run_loop(agent, seconds, every_seconds, sys.stderr, threads)
            requests, accepted = child.counts()
            connections = [s.connections_opened for s in agent.scrapers.values()]
        finally:
            agent.stop()
        rss_after = psutil.Process().memory_info().rss / MB
    finally:
        child.close()
    for r in rows:
        if not (math.isfinite(r.rss_mb) and math.isfinite(r.cpu_percent)):
            raise RuntimeError(f"non-finite measurement {r}")
    return LoopResult(
        n_models=n_models,
        body_bytes=body,
        seconds=seconds,
        rss_before_mb=rss_before,
        rows=rows,
        rss_after_mb=rss_after,
        max_rss_mb=peak_rss_mb(),
        requests=requests,
        connections=connections,
        accepted=accepted,
        thread_cpu_s=threads,
    )


def loop_in_fresh_process(
    n_models: int, seconds: float, every_seconds: float, tunables: str = ""
) -> LoopResult:
    """:func:`loop_in_this_process` in a new interpreter (its own heap, its own RSS).

    ``tunables``: its ``GLIBC_TUNABLES`` (empty: glibc's defaults).
    """
    done = subprocess.run(
        [sys.executable, __file__, "--loop", str(n_models), str(seconds), str(every_seconds)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        env=_child_env(tunables),
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    data["tunables"] = tunables
    data["rows"] = [LoopRow(**r) for r in data["rows"]]
    return LoopResult(**data)


# -- report --------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through the points: (slope, intercept)."""
    fit = statistics.linear_regression(xs, ys)
    return fit.slope, fit.intercept


def headline_table(costs: CycleCosts) -> str:
    """Per-cycle CPU at the headline setup, beside the DIY cycle and the previous release."""
    lines = [
        f"per-cycle CPU: {costs.gpus} simulated H100, {costs.servers} vLLM V1 servers x {RANKS} "
        f"DP engines, {costs.body_bytes / 1e6:.2f} MB bodies, defaults (scrape 5 s, GPU 1 s)",
        f"{'':<44}{'tokenergy':>11}{'DIY':>11}{'DIY/tok':>9}{'previous':>11}{'prev/tok':>9}",
    ]
    naive = costs.naive_cycle_s or math.nan
    prev_cycle = PREVIOUS["cycle_ms"]
    assert isinstance(prev_cycle, float)
    rows: list[tuple[str, float, float, float | None]] = [
        ("CPU per cycle, all scrapes + ledger (ms)", costs.cycle_s, naive, prev_cycle / 1e3),
        (
            "CPU per server scrape (ms)",
            costs.cycle_s / costs.servers,
            naive / costs.servers,
            float(str(PREVIOUS["scrape_ms"])) / 1e3,
        ),
        ("CPU per GPU poll, all GPUs (ms)", costs.gpu_poll_s, costs.gpu_poll_s, None),
        ("CPU per /metrics render (ms)", costs.render_s, costs.render_s, None),
        ("CPU per 5 s period (ms)", costs.period_s(), costs.period_s(naive), None),
    ]
    for label, tok, diy, prev in rows:
        prev_text = f"{prev * 1e3:>11.2f}{_ratio(prev, tok):>9}" if prev is not None else ""
        lines.append(
            f"{label:<44}{tok * 1e3:>11.2f}{diy * 1e3:>11.2f}{_ratio(diy, tok):>9}{prev_text}"
        )
    for interval in (costs.interval_s, 1.0):
        tok = costs.core_percent(interval_s=interval)
        diy = costs.core_percent(naive, interval)
        label = f"% of one core, scrape every {interval:g} s (estimate)"
        prev_col = f"{PREVIOUS['core_percent']:>11}" if interval == costs.interval_s else ""
        lines.append(f"{label:<44}{tok:>11.3f}{diy:>11.3f}{_ratio(diy, tok):>9}{prev_col}")
    lines.append(
        "DIY = same GPU poll; bodies fetched with httpx, parsed by prometheus_client.parser; "
        "previous = issue 16's recorded run of the previous release (1.37 MB bodies)"
    )
    return "\n".join(lines)


def loop_table(result: LoopResult) -> str:
    """The real loop's periods and verdicts."""
    target_cpu, target_rss = TARGETS.get(result.n_models, (math.nan, math.nan))
    lines = [
        f"real loop, {result.seconds / 60:g} min, {len(result.requests)} servers x "
        f"{result.body_bytes / 1e6:.2f} MB bodies, fresh process, "
        f"{'GLIBC_TUNABLES=' + result.tunables if result.tunables else 'glibc malloc defaults'}"
        " (the real loop; a Prometheus stand-in scrapes /metrics every 15 s)",
        f"{'t (s)':>8}{'RSS (MB)':>12}{'CPU % core':>12}",
        f"{'before':>8}{result.rss_before_mb:>12.1f}{'-':>12}",
    ]
    for row in result.rows:
        lines.append(f"{row.t_s:>8.0f}{row.rss_mb:>12.1f}{row.cpu_percent:>12.3f}")
    first, last = result.rows[0], result.rows[-1]
    lines.append(f"{'after':>8}{result.rss_after_mb:>12.1f}{'-':>12}")
    mean = result.mean_cpu
    prev = (
        f"previous {PREVIOUS['core_percent']} %"
        if result.n_models == HEADLINE_MODELS
        else f"previous {PREVIOUS['core_percent_2_3']} %, RSS {PREVIOUS['rss_mb_2_3']:g} MB "
        f"(peak {PREVIOUS['peak_rss_mb_2_3']:g})"
    )
    lines.append(
        f"mean CPU {mean:.3f} % of one core (target < {target_cpu:g} %: "
        f"{'MET' if mean < target_cpu else 'MISSED'}); RSS after {result.rss_after_mb:.1f} MB "
        f"(target < {target_rss:g} MB: {'MET' if result.rss_after_mb < target_rss else 'MISSED'})"
        f"; RSS first->last period {last.rss_mb - first.rss_mb:+.1f} MB; "
        f"peak (VmHWM) {result.max_rss_mb:.1f} MB; {prev}"
    )
    lines.append(
        f"connections opened per server {result.connections} (servers accepted "
        f"{result.accepted}, incl. the benchmark's one size probe of the first); /metrics "
        "requests per server "
        f"{result.requests}; fewest requests per connection {result.requests_per_connection:.0f}"
        f" (10 min at 5 s = 120)"
    )
    total = sum(result.thread_cpu_s.values())
    shares = ", ".join(
        f"{name} {100 * cpu / total:.0f} %"
        for name, cpu in sorted(result.thread_cpu_s.items(), key=lambda kv: -kv[1])
        if cpu > 0
    )
    lines.append(f"CPU by thread, whole process life ({total:.1f} s): {shares}")
    return "\n".join(lines)


def growth_table(name: str, unit: str, xs: Sequence[float], costs: Sequence[CycleCosts]) -> str:
    """CPU per cycle and per period against one dimension, with the least-squares slopes."""
    lines = [
        f"{name:>10}{'servers':>9}{'GPUs':>6}{'body MB':>9}{'cycle ms':>10}{'GPU poll ms':>13}"
        f"{'render ms':>11}{'5 s period ms':>15}{'% core':>8}{'vs first':>10}"
    ]
    for x, c in zip(xs, costs, strict=True):
        lines.append(
            f"{x:>10.3g}{c.servers:>9}{c.gpus:>6}{c.body_bytes / 1e6:>9.2f}{c.cycle_s * 1e3:>10.2f}"
            f"{c.gpu_poll_s * 1e3:>13.3f}{c.render_s * 1e3:>11.2f}{c.period_s() * 1e3:>15.2f}"
            f"{c.core_percent():>8.3f}{_ratio(c.period_s(), costs[0].period_s()):>10}"
        )
    cycle_slope, cycle_icpt = slope(xs, [c.cycle_s * 1e3 for c in costs])
    period_slope, period_icpt = slope(xs, [c.period_s() * 1e3 for c in costs])
    lines.append(
        f"slope: cycle {cycle_slope:.3f} ms per {unit} (intercept {cycle_icpt:.2f} ms); "
        f"5 s period {period_slope:.3f} ms per {unit} (intercept {period_icpt:.2f} ms)"
    )
    return "\n".join(lines)


def render_table(renders: Sequence[RenderRow], vllm_body_bytes: int) -> str:
    """/metrics encodings beside one vLLM server's body."""
    lines = [
        f"{'/metrics encoding (CPU)':<26}{'ms':>8}{'bytes':>10}{'gzip':>9}"
        f"{'vLLM body':>12}{'vLLM/ours':>11}"
    ]
    for r in renders:
        sent = r.gzip_bytes or r.plain_bytes
        lines.append(
            f"{r.name:<26}{r.ms:>8.2f}{r.plain_bytes:>10,}{r.gzip_bytes or '-':>9}"
            f"{vllm_body_bytes:>12,}{_ratio(vllm_body_bytes, sent):>11}"
        )
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------


def run(
    minutes: float,
    short_minutes: float,
    every_seconds: float,
    cycles: int,
    out: IO[str],
    tuned: bool = False,
) -> None:
    """The whole benchmark, printing each table as it is measured.

    Args:
        minutes: Length of the headline real loop (1.41 MB bodies, glibc defaults), min.
        short_minutes: Length of the other loops (2.34 MB; with ``tuned``, both sizes with
            :data:`MALLOC_TUNABLES`), min.
        every_seconds: Reporting period of the loops, s.
        cycles: Cycles per CPU batch at the headline setup (half that per growth point).
        out: Where the tables go.
        tuned: Also run the loops with :data:`MALLOC_TUNABLES`.
    """
    started = time.monotonic()
    print(
        f"tokenergy agent overhead (issue 16); host: {psutil.cpu_count()} logical cores shared "
        "with other jobs; CPU = process time of the agent's process; servers in a child process",
        file=out,
        flush=True,
    )
    headline = measure_setup(SERVERS, GPUS, HEADLINE_MODELS, cycles, naive=True)
    print("\n" + headline_table(headline), file=out, flush=True)

    short = max(3, cycles // 2)
    by_servers = [
        headline if s == SERVERS else measure_setup(s, GPUS, HEADLINE_MODELS, short)
        for s in GROWTH_SERVERS
    ]
    by_gpus = [
        headline if g == GPUS else measure_setup(SERVERS, g, HEADLINE_MODELS, short)
        for g in GROWTH_GPUS
    ]
    by_body = [
        headline if m == HEADLINE_MODELS else measure_setup(SERVERS, GPUS, m, short)
        for m in BODY_MODELS.values()
    ]
    print(f"\ngrowth (CPU; {short} cycles x 3 batches per point, 8x8x1.41 MB from above)", file=out)
    print(growth_table("servers", "server", GROWTH_SERVERS, by_servers), file=out)
    print(growth_table("GPUs", "GPU", GROWTH_GPUS, by_gpus), file=out)
    print(
        growth_table("body MB", "MB", [c.body_bytes / 1e6 for c in by_body], by_body),
        file=out,
        flush=True,
    )

    with headline_agent() as agent:
        renders = measure_render(agent.registry, max(3, cycles), agent.sampler.run_cycle)
    print("\n" + render_table(renders, len(render_body(HEADLINE_MODELS))), file=out)
    print("\n" + lane_table(measure_lane()), file=out, flush=True)
    loops: tuple[tuple[int, float, str], ...] = ((BODY_MODELS[2.3], short_minutes, ""),)
    if tuned:
        loops += (
            (HEADLINE_MODELS, short_minutes, MALLOC_TUNABLES),
            (BODY_MODELS[2.3], short_minutes, MALLOC_TUNABLES),
        )
    loops += ((HEADLINE_MODELS, minutes, ""),)  # the headline, longest, last
    for n_models, length, tunables in loops:
        result = loop_in_fresh_process(n_models, length * 60.0, every_seconds, tunables)
        print("\n" + loop_table(result), file=out, flush=True)

    print(
        f"\n({(time.monotonic() - started) / 60:.1f} min wall; rerun: python "
        "tests/benchmarks/bench_overhead.py [--minutes 10] [--short-minutes 3] [--quick])",
        file=out,
        flush=True,
    )


@dataclass(frozen=True)
class LaneRow:
    """CPU per scrape of one way to run the 8 servers' scrapes."""

    mode: str
    scrape_ms: list[float]


LANE_MODES = (
    "one thread, in turn (reference)",
    "8 threads at once (before)",
    "8 threads taking turns (a lock)",
    "in turn on one worker (InTurn)",
)
"""How 8 servers' scrapes are run in the lane table; the last is the sampler's way."""


def measure_lane(
    rounds: int = 16, idle_seconds: float = 1.0, servers: int = SERVERS
) -> list[LaneRow]:
    """CPU per scrape (all threads of this process) of 8 servers x 1.41 MB bodies, 4 ways.

    Each round scrapes every server once after ``idle_seconds`` idle (the real loop idles
    5 s between cycles: caches go cold); the ways take turns round by round, so the host's
    drift hits them alike. Worker threads are started once, as the sampler's are.
    """
    child = start_servers(servers, HEADLINE_MODELS)
    rounds_of: dict[str, Callable[[], None]] = {}
    pool = WorkerPool("bench-scrape")
    scrapers: list[ServerScraper] = []
    try:
        for i, mode in enumerate(LANE_MODES):
            mine = [
                ServerScraper(
                    ServerSettings(name=f"vllm{i}-{j}", url=u, engine="vllm"), ScrapeSettings()
                )
                for j, u in enumerate(child.urls)
            ]
            scrapers += mine
            rounds_of[mode] = _lane_round(mine, i, pool)
            rounds_of[mode]()  # connections, memo
        per: dict[str, list[float]] = {mode: [] for mode in LANE_MODES}
        for _ in range(rounds):
            for mode in LANE_MODES:
                time.sleep(idle_seconds)
                t0 = time.process_time()
                rounds_of[mode]()
                per[mode].append((time.process_time() - t0) / servers * 1e3)
    finally:
        pool.close()
        for scraper in scrapers:
            scraper.close()
        child.close()
    return [LaneRow(mode, per[mode]) for mode in LANE_MODES]


def _lane_round(
    scrapers: Sequence[ServerScraper], way: int, pool: WorkerPool
) -> Callable[[], None]:
    """One round of scrapes, the ``way``-th of :data:`LANE_MODES`."""
    calls = [s.scrape for s in scrapers]
    if way == 0:

        def here() -> None:
            for call in calls:
                call()

        return here
    if way == 3:

        def in_turn() -> None:
            batch = InTurn(calls, pool.idle())
            assert batch.wait(patience=0.2, timeout=30.0) == []  # one wake-up, as the sampler
            for future in batch.futures:
                future.result()

        return in_turn
    workers = [Worker(f"bench-lane-{way}-{j}") for j in range(len(calls))]
    turn = threading.Lock()

    def taking_turns(call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            held = turn.acquire(timeout=0.2)
            try:
                return call()
            finally:
                if held:
                    turn.release()

        return run

    wrapped = calls if way == 1 else [taking_turns(call) for call in calls]

    def one_round() -> None:
        futures = [w.submit(call) for w, call in zip(workers, wrapped, strict=True)]
        for future in futures:
            future.result()

    return one_round


def lane_table(rows: Sequence[LaneRow]) -> str:
    """The lane rows, with the ratio to the first (the caller's thread in turn)."""
    base = statistics.median(rows[0].scrape_ms)
    base_min = min(rows[0].scrape_ms)
    width = max(len(row.mode) for row in rows)
    lines = [
        "scrape lane: CPU per scrape, 8 servers x 1.41 MB, each round after 1 s idle, the "
        f"ways in turn ({len(rows[0].scrape_ms)} rounds each)",
        f"{'way':{width}s} {'median ms':>9s} {'min ms':>7s} {'max ms':>7s} "
        f"{'median vs first':>15s} {'min vs first':>12s}",
    ]
    for row in rows:
        median = statistics.median(row.scrape_ms)
        low = min(row.scrape_ms)
        lines.append(
            f"{row.mode:{width}s} {median:9.2f} {low:7.2f} {max(row.scrape_ms):7.2f} "
            f"{median / base:14.2f}x {low / base_min:11.2f}x"
        )
    return "\n".join(lines)


def profile(cycles: int, out: IO[str], top: int = 18) -> None:
    """Profile (cProfile) the 8 scrapes run serially on this thread, then of whole cycles.

    ``run_cycle`` scrapes on worker threads, which cProfile does not see; the first profile
    runs each server's ``scrape()`` here, the second shows the cycle's own thread (ledger,
    snapshot, waiting).
    """
    with headline_agent() as agent:
        for title, fn in (
            ("8 scrapes, serially", lambda: [s.scrape() for s in agent.scrapers.values()]),
            ("sampler.run_cycle (its own thread)", agent.sampler.run_cycle),
        ):
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(cycles):
                fn()
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
            print(f"\n== {title}, {cycles} times, by own time ==", file=out)
            print(text.getvalue(), file=out, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="the headline real loop's length (10)"
    )
    parser.add_argument(
        "--short-minutes", type=float, default=3.0, help="the other loops' length (3)"
    )
    parser.add_argument("--quick", action="store_true", help="1-minute loops, fewer cycles")
    parser.add_argument("--cycles", type=int, default=12, help="cycles per CPU batch (12)")
    parser.add_argument("--profile", action="store_true", help="cProfile a cycle instead")
    parser.add_argument("--lane", action="store_true", help="only the scrape-lane table")
    parser.add_argument(
        "--tuned", action="store_true", help="also the loops with GLIBC_TUNABLES (+6 min)"
    )
    parser.add_argument("--serve", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--loop", nargs=3, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        n_servers, n_models, ranks = args.serve
        serve(n_servers, n_models, ranks, sys.stdin, sys.stdout)
        return 0
    if args.loop is not None:
        n_models, seconds, every = args.loop
        result = loop_in_this_process(int(n_models), seconds, every)
        print(json.dumps(asdict(result)))
        return 0
    if args.profile:
        profile(args.cycles, sys.stdout)
        return 0
    if args.lane:
        print(lane_table(measure_lane()))
        return 0
    if args.quick:
        run(1.0, 1.0, 15.0, max(3, args.cycles // 2), sys.stdout, args.tuned)
    else:
        every = 30.0 if args.minutes <= 5 else 60.0
        run(args.minutes, args.short_minutes, every, args.cycles, sys.stdout, args.tuned)
    return 0


if __name__ == "__main__":
    sys.exit(main())
