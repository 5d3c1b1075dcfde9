"""What one scrape of the simulated vLLM server costs, in CPU seconds.

Serves the demo's vLLM server (V1, 2 data-parallel ranks, one model) on 127.0.0.1 and scrapes
it N times with one keep-alive httpx client. Reports, per scrape:

- handler CPU: ``time.thread_time`` of the server's request thread (parse the request, render
  the exposition, write the response);
- render CPU: rendering the exposition alone;
- process CPU: ``time.process_time`` of the whole process (client included) per round trip.

Baseline, side by side: the same server serving a pre-rendered body of the same text (HTTP
transport alone), so the ratio shows what rendering adds.

Rerun: ``.venv/bin/python tests/benchmarks/bench_simulated_scrape.py [N]`` (default N = 500).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import httpx

from agent.clock import SystemClock
from agent.simulation.expositions import SimModelCounters, render_exposition
from agent.simulation.servers import SimulatedServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _measure(server: SimulatedServer, n: int) -> tuple[float, float, int]:
    """Returns (handler CPU s per scrape, process CPU s per scrape, body bytes)."""
    server.start()
    try:
        with httpx.Client(timeout=5) as client:
            body = client.get(server.url).content  # warm up
            requests0, cpu0 = server.request_cpu()
            process0 = time.process_time()
            for _ in range(n):
                client.get(server.url).raise_for_status()
            process = time.process_time() - process0
            requests1, cpu1 = server.request_cpu()
    finally:
        server.stop()
    return (cpu1 - cpu0) / (requests1 - requests0), process / n, len(body)


def main(argv: Sequence[str]) -> int:
    """Run the benchmark and print the table."""
    n = int(argv[1]) if len(argv) > 1 else 500
    clock = SystemClock()
    live = SimulatedServer("vllm", "vllm", [MODEL], wall=clock.wall, ranks=2)
    live.advance(
        MODEL,
        prompt_tokens=123_456_789,
        generation_tokens=23_456_789,
        cached_prompt_tokens=40_000_000,
        requests_finished=456_789,
        requests_running=120,
        requests_waiting=4,
        kv_cache_usage=0.62,
    )
    text = live.exposition()
    t0 = time.thread_time()
    for _ in range(n):
        live.exposition()
    render = (time.thread_time() - t0) / n

    def fixed(
        engine: str,
        models: Sequence[SimModelCounters],
        *,
        ranks: int = 1,
        start_time_seconds: float,
    ) -> str:
        return text

    baseline = SimulatedServer("vllm", "vllm", [MODEL], wall=clock.wall, ranks=2, render=fixed)
    handler, process, size = _measure(live, n)
    base_handler, base_process, base_size = _measure(baseline, n)
    assert size == base_size
    print(f"simulated vLLM scrape, {n} scrapes, body {size:,} bytes, 2 ranks, 1 model")
    print(f"{'measure':<34}{'live render':>14}{'fixed body':>14}{'ratio':>8}")
    print(
        f"{'handler thread CPU / scrape (ms)':<34}{handler * 1e3:>14.3f}"
        f"{base_handler * 1e3:>14.3f}{handler / base_handler:>8.2f}"
    )
    print(
        f"{'process CPU / scrape (ms)':<34}{process * 1e3:>14.3f}"
        f"{base_process * 1e3:>14.3f}{process / base_process:>8.2f}"
    )
    print(f"{'render alone (ms)':<34}{render * 1e3:>14.3f}{0.0:>14.3f}{'-':>8}")
    print(f"render_exposition = {render_exposition.__module__}.{render_exposition.__name__}")
    print("rerun: .venv/bin/python tests/benchmarks/bench_simulated_scrape.py [N]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
