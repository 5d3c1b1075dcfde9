"""What the agent's scrapes cost the inference server it watches, in % of one core.

A simulated vLLM V1 server (``agent.simulation.servers.SimulatedServer``, one model, 2 and 8
data-parallel engines, about 0.1 and 0.4 MB a body) is scraped N times by the agent's own
scraper (``ServerScraper``: one kept-alive connection, ``Accept-Encoding: gzip``). Server
CPU per scrape is the ``time.thread_time`` of the server's request-handler thread (parse the
request, render the exposition, write the response), so the client's CPU is not counted.

Real vLLM renders /metrics with ``prometheus_client`` in its API-server process
(vllm-project/vllm, vllm/v1/metrics; with ``--api-server-count > 1`` through
``MultiProcessCollector``, which also reads every process's mmap files per scrape). The
simulated vLLM does the same (a ``prometheus_client`` registry behind
prometheus-fastapi-instrumentator); a second column renders the same families with
``prometheus_client.generate_latest`` alone (parsed once, re-rendered per scrape), and
``gzip`` of the body at level 6 for a server that compresses when the scraper asks.

% of one core = CPU per scrape / scrape interval, for the agent at its default 5 s, for
Prometheus at 15 s (the baseline every vLLM deployment already pays), and at 1 s.

Rerun: ``python tests/benchmarks/bench_server_cost.py [N]`` (default N = 200).
"""

from __future__ import annotations

import gzip
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from agent.clock import SystemClock
from agent.config import ScrapeSettings, ServerSettings
from agent.servers.scraper import ServerScraper
from agent.simulation.servers import SimulatedServer

MODEL = "meta-llama/Llama-3.1-70B-Instruct"
INTERVALS = (("tokenergy, default 5 s", 5.0), ("Prometheus, 15 s", 15.0), ("any scraper, 1 s", 1.0))


@dataclass(frozen=True)
class Cost:
    """Server-side CPU of one scrape, s, and the body size, bytes."""

    ranks: int
    body_bytes: int
    handler_s: float
    render_s: float
    client_python_render_s: float
    gzip_s: float


class _Replay(Collector):
    """Yields parsed families again: what prometheus_client renders in a real server."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _thread_cpu(call: Callable[[], object], n: int) -> float:
    """CPU s of this thread per call, median of 3 batches of ``n``."""
    per = []
    for _ in range(3):
        t0 = time.thread_time()
        for _ in range(n):
            call()
        per.append((time.thread_time() - t0) / n)
    return statistics.median(per)


def measure(ranks: int, n: int) -> Cost:
    """Scrape a simulated vLLM with ``ranks`` engines ``n`` times; server CPU per scrape."""
    clock = SystemClock()
    server = SimulatedServer("vllm", "vllm", [MODEL], wall=clock.wall, ranks=ranks)
    server.advance(
        MODEL,
        prompt_tokens=123_456_789,
        generation_tokens=23_456_789,
        cached_prompt_tokens=40_000_000,
        requests_finished=456_789,
        requests_running=120,
        requests_waiting=4,
        kv_cache_usage=0.62,
    )
    server.start()
    scrape = ScrapeSettings()
    scraper = ServerScraper(ServerSettings(name="vllm", url=server.url, engine="vllm"), scrape)
    try:
        scraper.scrape()  # warm up: connection, first render
        requests0, cpu0 = server.request_cpu()
        for i in range(n):
            server.advance(MODEL, generation_tokens=1_000 + i)
            scraper.scrape()
        requests1, cpu1 = server.request_cpu()
    finally:
        scraper.close()
        server.stop()
    text = server.exposition()
    body = text.encode()
    families = list(text_string_to_metric_families(text))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Replay(families))
    reps = max(3, n // 10)
    return Cost(
        ranks=ranks,
        body_bytes=len(body),
        handler_s=(cpu1 - cpu0) / (requests1 - requests0),
        render_s=_thread_cpu(server.exposition, reps),
        client_python_render_s=_thread_cpu(lambda: generate_latest(registry), reps),
        gzip_s=_thread_cpu(lambda: gzip.compress(body, compresslevel=6), reps),
    )


def table(costs: Sequence[Cost], n: int) -> str:
    """The printed tables."""
    lines = [f"server-side CPU per /metrics scrape of a simulated vLLM V1, {n} scrapes each", ""]
    lines.append(
        f"{'engines':>8}{'body':>11}{'sim handler':>13}{'sim render':>12}"
        f"{'client_python':>15}{'gzip -6':>9}   (ms of CPU per scrape)"
    )
    for c in costs:
        lines.append(
            f"{c.ranks:>8}{c.body_bytes:>11,}{c.handler_s * 1e3:>13.2f}"
            f"{c.render_s * 1e3:>12.2f}{c.client_python_render_s * 1e3:>15.2f}"
            f"{c.gzip_s * 1e3:>9.2f}"
        )
    lines += ["", "% of one core of the server process = CPU per scrape / interval"]
    head = f"{'engines':>8}  {'scraper':<24}{'sim':>9}{'real-ish':>10}{'vs Prom 15 s':>14}"
    lines.append(head)
    for c in costs:
        real = c.client_python_render_s + c.gzip_s
        for label, interval in INTERVALS:
            lines.append(
                f"{c.ranks:>8}  {label:<24}{100 * c.handler_s / interval:>8.3f}%"
                f"{100 * real / interval:>9.3f}%{15.0 / interval:>13.1f}x"
            )
    lines += [
        "sim = the simulated server's handler thread (fast renderer, no gzip); real-ish = "
        "prometheus_client render + gzip of the same families, a proxy for real vLLM",
        "vs Prom 15 s = this scraper's cost / Prometheus' 15 s scrape of the same endpoint",
        "rerun: python tests/benchmarks/bench_server_cost.py [N]",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Run and print."""
    n = int(argv[1]) if len(argv) > 1 else 200
    print(table([measure(ranks, n) for ranks in (2, 8)], n))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
