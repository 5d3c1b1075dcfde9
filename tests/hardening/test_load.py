"""§7 D: load on the whole agent's /metrics (storms, idle and slow clients).

Server-level versions with tighter limits are in tests/exporters/test_http.py
(test_200_concurrent_scrapes_are_all_served_without_leaks,
test_connections_beyond_the_open_limit_get_503, test_slow_clients_do_not_block_others...).
These run the same attacks against the agent as ``build_agent`` wires it, with live GPUs and
a server behind, and add what only the whole agent can show: a scrape storm makes no NVML
call and no upstream request (every /metrics renders the last Snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from typing import Any

NVML_READS = ("nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEnergyConsumption")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _agent_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request" not in t.name)


async def _get_many(port: int, n: int) -> list[bytes]:
    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=30)
        writer.close()
        return data

    return await asyncio.gather(*(one() for _ in range(n)))


def test_200_concurrent_scrapes_cost_no_nvml_call_and_leak_nothing(
    make_agent: Any, make_vllm: Any
) -> None:
    """Case 28: 200 at once: all answered in full, no NVML or upstream call, fds/threads flat."""
    vllm = make_vllm(generation=100)
    harness = make_agent(
        servers=[{"name": "vllm", "url": vllm.url}],
        http={"client_timeout_seconds": 20.0},  # default 16 workers: 512 open connections
    )
    harness.cycle(0)
    vllm.state.generation += 5
    harness.cycle()
    harness.metrics()  # the worker pool grows on first use
    fds, threads = _fds(), _agent_threads()
    nvml_calls = [harness.nvml.calls(f) for f in NVML_READS]
    upstream_requests = len(vllm.upstream.requests)

    t0 = time.monotonic()
    replies = asyncio.run(_get_many(harness.agent.port, 200))
    elapsed = time.monotonic() - t0

    assert [r.split(b" ", 2)[1] for r in replies] == [b"200"] * 200, "every scrape served"
    assert all(b"tokenergy_tokens_total{model=" in r for r in replies), "every body complete"
    assert all(r.rstrip().endswith(b"0.0") or r.rstrip().endswith(b"1.0") for r in replies)
    assert [harness.nvml.calls(f) for f in NVML_READS] == nvml_calls, "scrapes never call NVML"
    assert len(vllm.upstream.requests) == upstream_requests, "scrapes never call upstreams"
    assert _agent_threads() <= threads - 1 + 16, "threads: at most the 16 workers, never 200"
    time.sleep(0.2)  # let the event loop close the last sockets
    assert _fds() <= fds, "no descriptor leaked"
    assert elapsed < 20.0


def test_idle_and_slow_clients_do_not_block_a_normal_scrape(
    make_agent: Any, make_vllm: Any
) -> None:
    """Case 31: 100 idle connections and 10 one-byte-a-second clients; a scrape still answers.

    Within the open-connection limit (32 x ``max_connections`` = 512 by default); beyond it
    new clients get 503 until the idle ones time out (tests/exporters/test_http.py,
    test_connections_beyond_the_open_limit_get_503).
    """
    vllm = make_vllm(generation=100)
    harness = make_agent(
        servers=[{"name": "vllm", "url": vllm.url}],
        http={"client_timeout_seconds": 2.0},
    )
    harness.cycle(0)
    harness.metrics()
    fds, threads = _fds(), _agent_threads()
    port = harness.agent.port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    stop = threading.Event()

    def drip() -> None:
        for byte in b"GET /metrics HTTP/1.1\r\nX":
            for s in slow:
                with contextlib.suppress(OSError):
                    s.send(bytes([byte]))
            if stop.wait(1.0):
                return

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        time.sleep(0.3)
        assert _agent_threads() == threads + 1, "only the dripper: clients hold no thread"
        latencies = []
        for _ in range(5):
            t0 = time.monotonic()
            assert harness.get().status_code == 200
            latencies.append(time.monotonic() - t0)
        assert max(latencies) < 1.5, latencies
        # Every one of them is dropped at the client timeout (2 s), not held forever.
        t0 = time.monotonic()
        for s in idle + slow:
            s.settimeout(5.0)
            with contextlib.suppress(OSError):
                while s.recv(4096):
                    pass
        assert time.monotonic() - t0 < 4.0
    finally:
        stop.set()
        dripper.join()
        for s in idle + slow:
            s.close()
    time.sleep(0.2)
    assert _fds() <= fds
    assert harness.get().status_code == 200
