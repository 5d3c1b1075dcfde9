"""What the agent costs its node: CPU per cycle, % of a core, resident memory, /metrics render.

Setup, as on a busy 8-GPU inference node:

- the agent, built by ``agent.cli.build_agent`` exactly as ``tokenergy run`` builds it, over a
  ``SimulatedNvml`` of 8 ``H100-SXM-80GB`` on the system clock, default settings (scrape and
  snapshot every 5 s, GPU poll every 1 s, 60 s ratio window), /metrics on 127.0.0.1;
- 8 simulated vLLM V1 servers on 127.0.0.1, one per GPU, each with 8 data-parallel engines
  (``render_exposition("vllm", ..., ranks=8)``, real V1 histograms, about 0.4 MB a body),
  counters advancing every second; and a Prometheus stand-in scraping the agent's /metrics
  every 15 s. The servers and the Prometheus stand-in run in a **child process**, so the CPU
  this process uses (``time.process_time``, every thread) is the agent's alone.

Measured:

1. CPU s per sampling cycle (``sampler.run_cycle``: 8 scrapes + parse, GPU poll, ledger,
   Snapshot) and per GPU poll (``monitor.poll``); the % of one core at the defaults is
   (one cycle + 4 GPU polls + a third of a /metrics render) / 5 s. Baseline, side by side:
   the do-it-yourself cycle (same GPU poll, the same 8 bodies fetched with httpx and parsed
   with ``prometheus_client.parser``), and both at a 1 s scrape interval.
2. The real loop (``agent.start()``) for ``--minutes``: CPU % and RSS every minute (RSS must
   not grow), against the targets (< 1 % of one core, < 80 MB RSS).
3. /metrics render time and size: text 0.0.4 and OpenMetrics, plain and gzip; the baseline
   is one vLLM server's own /metrics body.

The simulated NVML costs Python time that real NVML calls (C, microseconds) do not, so the
GPU poll figure is an upper bound. The host is shared (2 cores, other jobs running): the
numbers are CPU time, not wall time, so contention inflates them only slightly (caches).

Rerun: ``python tests/benchmarks/bench_overhead.py [--minutes 10] [--quick]``
(``--quick``: a 60 s loop with RSS every 10 s).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import logging
import math
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

import httpx
import psutil
from prometheus_client import exposition, openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from agent.cli import Agent, build_agent
from agent.clock import SystemClock
from agent.config import HttpSettings, ServerSettings, Settings
from agent.simulation.nvml import SimulatedNvml
from agent.simulation.servers import SimulatedServer

GPUS = 8
RANKS = 8
MODEL = "meta-llama/Llama-3.1-70B-Instruct"
PROMETHEUS_INTERVAL_SECONDS = 15.0
TARGET_CORE_PERCENT = 1.0
TARGET_RSS_MB = 80.0
MB = 1024 * 1024


# -- child process: the servers and the Prometheus stand-in --------------------------------


def serve(n_servers: int, ranks: int, stdin: IO[str], stdout: IO[str]) -> None:
    """Child process body: serve ``n_servers`` vLLM servers until stdin closes.

    Prints one JSON line ``{"urls": [...]}``; then each stdin line ``URL INTERVAL`` starts a
    thread that GETs URL every INTERVAL s (the Prometheus stand-in).
    """
    clock = SystemClock()
    servers = [
        SimulatedServer(f"vllm{i}", "vllm", [MODEL], wall=clock.wall, ranks=ranks)
        for i in range(n_servers)
    ]
    for s in servers:
        s.advance(
            MODEL,
            prompt_tokens=50_000_000,
            generation_tokens=9_000_000,
            cached_prompt_tokens=20_000_000,
            requests_finished=80_000,
        )
        s.start()
    stop = threading.Event()

    def workload() -> None:
        rng = random.Random(7)
        while not stop.wait(1.0):
            for s in servers:
                out = rng.randint(1_000, 4_000)
                s.advance(
                    MODEL,
                    prompt_tokens=4 * out,
                    generation_tokens=out,
                    cached_prompt_tokens=out,
                    requests_finished=out // 400,
                    requests_running=rng.randint(20, 120),
                    requests_waiting=rng.randint(0, 9),
                    kv_cache_usage=rng.uniform(0.3, 0.9),
                )

    def prometheus(url: str, interval: float) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.wait(interval):
                with contextlib.suppress(httpx.HTTPError):
                    client.get(url, headers={"Accept-Encoding": "gzip"})

    threading.Thread(target=workload, daemon=True).start()
    stdout.write(json.dumps({"urls": [s.url for s in servers]}) + "\n")
    stdout.flush()
    for line in stdin:
        url, interval = line.split()
        threading.Thread(target=prometheus, args=(url, float(interval)), daemon=True).start()
    stop.set()
    for s in servers:
        s.stop()


@dataclass
class ServerProcess:
    """The child process holding the simulated servers."""

    proc: subprocess.Popen[str]
    urls: list[str]

    def scrape_agent(self, url: str, interval_seconds: float) -> None:
        """Ask the child to scrape ``url`` every ``interval_seconds`` (Prometheus stand-in)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{url} {interval_seconds}\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """Close stdin (the child exits) and wait."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_servers(n_servers: int = GPUS, ranks: int = RANKS) -> ServerProcess:
    """Start the child process with ``n_servers`` simulated vLLM servers."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(n_servers), "--ranks", str(ranks)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("the server process exited before printing its URLs")
    return ServerProcess(proc, json.loads(line)["urls"])


# -- the agent -----------------------------------------------------------------------------


def make_agent(urls: Sequence[str], gpus: int = GPUS, **sampling: float) -> Agent:
    """The agent as ``tokenergy run`` builds it, one server per GPU, /metrics on 127.0.0.1."""
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
        nvml.set_load(i, 0.6 + 0.04 * i)
    return build_agent(settings, nvml, SystemClock(), log)


def _cpu_per_call(fn: Callable[[], object], n: int) -> float:
    """Process CPU s per call of ``fn`` (every thread of this process), median of 3 batches."""
    per: list[float] = []
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        per.append((time.process_time() - t0) / n)
    return statistics.median(per)


def _naive_cycle(agent: Agent, client: httpx.Client, urls: Sequence[str]) -> Callable[[], float]:
    """The do-it-yourself cycle: GPU poll, then fetch + prometheus_client parse every body."""

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
    """CPU seconds per call, measured in this process."""

    cycle_s: float
    gpu_poll_s: float
    naive_cycle_s: float
    render_s: float
    interval_s: float
    gpu_interval_s: float

    def core_percent(self, cycle_s: float, interval_s: float) -> float:
        """% of one core: one cycle + the GPU polls between cycles + Prometheus renders."""
        gpu_interval = min(self.gpu_interval_s, interval_s)
        polls_between = max(0.0, interval_s / gpu_interval - 1.0)
        per_interval = cycle_s + polls_between * self.gpu_poll_s
        per_interval += self.render_s * interval_s / PROMETHEUS_INTERVAL_SECONDS
        return 100.0 * per_interval / interval_s


def measure_cycles(agent: Agent, urls: Sequence[str], n: int) -> CycleCosts:
    """CPU per sampling cycle, per GPU poll, per naive cycle and per /metrics render."""
    agent.monitor.start()
    agent.sampler.run_cycle()  # warm up: discovery, connections, first ledger step
    cycle = _cpu_per_call(agent.sampler.run_cycle, n)
    poll = _cpu_per_call(agent.monitor.poll, 4 * n)
    with httpx.Client(timeout=10) as client:
        naive = _naive_cycle(agent, client, urls)
        naive()
        naive_s = _cpu_per_call(naive, max(1, n // 2))
    render = _cpu_per_call(lambda: exposition.generate_latest(agent.registry), n)
    return CycleCosts(
        cycle_s=cycle,
        gpu_poll_s=poll,
        naive_cycle_s=naive_s,
        render_s=render,
        interval_s=agent.settings.sampling.interval_seconds,
        gpu_interval_s=agent.settings.gpu.interval_seconds,
    )


@dataclass(frozen=True)
class RenderRow:
    """One /metrics encoding."""

    name: str
    ms: float
    plain_bytes: int
    gzip_bytes: int


def measure_render(registry: CollectorRegistry, n: int) -> list[RenderRow]:
    """Time (wall, single thread) and size of each /metrics encoding, with gzip level 6."""
    rows = []
    encoders: tuple[tuple[str, Callable[[CollectorRegistry], bytes]], ...] = (
        ("text 0.0.4", exposition.generate_latest),
        ("OpenMetrics 1.0", openmetrics.exposition.generate_latest),
    )
    for name, encode in encoders:
        body = encode(registry)
        zipped = gzip.compress(body, compresslevel=6)
        t0 = time.perf_counter()
        for _ in range(n):
            encode(registry)
        ms = (time.perf_counter() - t0) / n * 1e3
        t0 = time.perf_counter()
        for _ in range(n):
            gzip.compress(encode(registry), compresslevel=6)
        gz_ms = (time.perf_counter() - t0) / n * 1e3
        rows.append(RenderRow(name, ms, len(body), 0))
        rows.append(RenderRow(name + " + gzip", gz_ms, len(body), len(zipped)))
    return rows


@dataclass(frozen=True)
class LoopRow:
    """One reporting period of the real loop."""

    t_s: float
    rss_mb: float
    cpu_percent: float


def run_loop(
    agent: Agent, seconds: float, every_seconds: float, out: IO[str] | None = None
) -> list[LoopRow]:
    """Run the real sampling loop; every ``every_seconds`` record RSS and CPU % since the last."""
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
    finally:
        agent.sampler.stop()
    return rows


# -- report --------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def report(
    costs: CycleCosts,
    renders: Sequence[RenderRow],
    loop: Sequence[LoopRow],
    rss_before_mb: float,
    vllm_body_bytes: int,
    minutes: float,
) -> str:
    """The printed tables."""
    lines: list[str] = []
    add = lines.append
    add(
        f"tokenergy agent overhead: {GPUS} simulated H100 + {GPUS} vLLM V1 servers x {RANKS} "
        f"DP engines ({vllm_body_bytes / 1e6:.2f} MB each), servers in a child process"
    )
    add(f"host: {psutil.cpu_count()} logical cores shared with other jobs; CPU = process time")
    add("")
    add(f"{'per-cycle CPU':<46}{'tokenergy':>12}{'naive':>12}{'naive/tok':>11}")
    add(
        f"{'CPU per cycle, 8 scrapes + GPU poll (ms)':<46}{costs.cycle_s * 1e3:>12.2f}"
        f"{costs.naive_cycle_s * 1e3:>12.2f}{_ratio(costs.naive_cycle_s, costs.cycle_s):>11}"
    )
    add(
        f"{'CPU per GPU poll, 8 GPUs (ms)':<46}{costs.gpu_poll_s * 1e3:>12.2f}"
        f"{costs.gpu_poll_s * 1e3:>12.2f}{'1.00x':>11}"
    )
    add(
        f"{'CPU per /metrics render (ms, every 15 s)':<46}{costs.render_s * 1e3:>12.2f}"
        f"{costs.render_s * 1e3:>12.2f}{'1.00x':>11}"
    )
    for interval in (costs.interval_s, 1.0):
        ours = costs.core_percent(costs.cycle_s, interval)
        naive = costs.core_percent(costs.naive_cycle_s, interval)
        label = f"% of one core, scrape every {interval:g} s, GPU 1 s"
        add(f"{label:<46}{ours:>12.3f}{naive:>12.3f}{_ratio(naive, ours):>11}")
    add("naive = same GPU poll, bodies fetched with httpx and parsed by prometheus_client")
    add("")
    target_ok = costs.core_percent(costs.cycle_s, costs.interval_s) < TARGET_CORE_PERCENT
    add(
        f"target < {TARGET_CORE_PERCENT:g} % of one core at the defaults (estimate): "
        f"{'MET' if target_ok else 'MISSED'}"
    )
    add("")
    add(f"real loop, {minutes:g} min (agent.start(); Prometheus stand-in scrapes every 15 s)")
    add(f"{'t (s)':>8}{'RSS (MB)':>12}{'CPU % core':>12}")
    add(f"{'before':>8}{rss_before_mb:>12.1f}{'-':>12}")
    for row in loop:
        add(f"{row.t_s:>8.0f}{row.rss_mb:>12.1f}{row.cpu_percent:>12.3f}")
    if loop:
        mean_cpu = statistics.fmean(r.cpu_percent for r in loop)
        peak_rss = max(r.rss_mb for r in loop)
        growth = loop[-1].rss_mb - loop[0].rss_mb
        add(
            f"mean CPU {mean_cpu:.3f} % of one core (target < {TARGET_CORE_PERCENT:g} %: "
            f"{'MET' if mean_cpu < TARGET_CORE_PERCENT else 'MISSED'}); "
            f"peak RSS {peak_rss:.1f} MB (target < {TARGET_RSS_MB:g} MB: "
            f"{'MET' if peak_rss < TARGET_RSS_MB else 'MISSED'}); "
            f"RSS first->last period {growth:+.1f} MB; "
            f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB"
        )
    add("")
    add(
        f"{'/metrics encoding':<26}{'ms':>8}{'bytes':>10}{'gzip':>9}"
        f"{'vLLM body':>11}{'vLLM/ours':>11}"
    )
    for r in renders:
        sent = r.gzip_bytes or r.plain_bytes
        add(
            f"{r.name:<26}{r.ms:>8.2f}{r.plain_bytes:>10,}{r.gzip_bytes or '-':>9}"
            f"{vllm_body_bytes:>11,}{_ratio(vllm_body_bytes, sent):>11}"
        )
    add("")
    add("rerun: python tests/benchmarks/bench_overhead.py [--minutes 10] [--quick]")
    return "\n".join(lines)


def run(minutes: float, every_seconds: float, cycles: int, out: IO[str] | None) -> str:
    """The whole benchmark; returns the report text."""
    rss_before = psutil.Process().memory_info().rss / MB
    servers = start_servers()
    try:
        body = httpx.get(servers.urls[0], timeout=10).content
        agent = make_agent(servers.urls)
        agent.server.start()
        try:
            costs = measure_cycles(agent, servers.urls, cycles)
            renders = measure_render(agent.registry, max(3, cycles))
            servers.scrape_agent(
                f"http://127.0.0.1:{agent.port}/metrics", PROMETHEUS_INTERVAL_SECONDS
            )
            loop = run_loop(agent, minutes * 60.0, every_seconds, out)
        finally:
            agent.stop()
    finally:
        servers.close()
    for r in loop:
        if not (math.isfinite(r.rss_mb) and math.isfinite(r.cpu_percent)):
            raise RuntimeError(f"non-finite measurement {r}")
    return report(costs, renders, loop, rss_before, len(body), minutes)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="real-loop length (10)")
    parser.add_argument("--quick", action="store_true", help="60 s loop, RSS every 10 s")
    parser.add_argument("--cycles", type=int, default=20, help="cycles per CPU batch (20)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ranks", type=int, default=RANKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.ranks, sys.stdin, sys.stdout)
        return 0
    minutes, every = (1.0, 10.0) if args.quick else (args.minutes, 60.0)
    print(run(minutes, every, args.cycles, sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
