"""Cost of one Ledger.advance and of one discover() call, on this machine.

Rerun: python tests/benchmarks/bench_ledger.py (about 2 min: the worst row first fills a
3600-interval window).

Baseline: one GPU, one server, one model, 60 s window at 5 s (12 intervals kept). Each
other row is compared with it. The ratio window is recomputed from the kept intervals on
every advance, so the cost grows with intervals x models: the last row is the worst case the
settings allow at a 1 s interval (a 3600 s window).
"""

from __future__ import annotations

import time

from agent.accounting.ledger import Ledger
from agent.config import PricingSettings, ServerSettings
from agent.discovery import PsutilProcessTable, discover
from agent.readings import (
    GpuDevice,
    GpuProcess,
    GpuReading,
    GpuStatus,
    ServerReading,
    ServerStatus,
    TokenReading,
)


def _advance_cost(n_gpus: int, n_servers: int, n_models: int, window: float, dt: float) -> float:
    ledger = Ledger(PricingSettings(carbon_g_per_kwh=366.0), window)
    assignment = {
        f"s{s}": [f"GPU-{g}" for g in range(n_gpus) if g % n_servers == s] for s in range(n_servers)
    }
    owners = {1000 + s: f"s{s}" for s in range(n_servers)}
    warm = int(window / dt) + 1
    runs = warm + 400
    started = 0.0
    for i in range(runs):
        if i == warm:
            started = time.perf_counter()
        t = i * dt
        gpus = [
            GpuStatus(
                GpuDevice(g, f"GPU-{g}", "NVIDIA H100 80GB HBM3", "counter"),
                True,
                GpuReading(
                    g,
                    f"GPU-{g}",
                    500.0,
                    500.0 * t,
                    0.8,
                    None,
                    None,
                    None,
                    (GpuProcess(1000 + g % n_servers, utilization_ratio=0.5),),
                ),
                500.0 * dt if i else 0.0,  # joules the meter hands over per interval
            )
            for g in range(n_gpus)
        ]
        servers = [
            ServerStatus(
                f"s{s}",
                True,
                ServerReading(
                    "vllm",
                    tuple(TokenReading(f"m{m}", 3000.0 * t, 1000.0 * t) for m in range(n_models)),
                ),
            )
            for s in range(n_servers)
        ]
        ledger.advance(t, gpus, servers, assignment, owners)
    return (time.perf_counter() - started) / (runs - warm)


def _discover_cost() -> float:
    servers = [
        ServerSettings(name=f"s{i}", url=f"http://127.0.0.1:{8000 + i}/metrics", gpus="auto")
        for i in range(3)
    ]
    table = PsutilProcessTable()
    started = time.perf_counter()
    for _ in range(20):
        discover(servers, [], table)
    return (time.perf_counter() - started) / 20


def main() -> None:
    rows = [
        ("baseline: 1 GPU, 1 server x 1 model, 60 s / 5 s", (1, 1, 1, 60.0, 5.0)),
        ("demo: 5 GPUs, 3 servers x 1 model, 60 s / 5 s", (5, 3, 1, 60.0, 5.0)),
        ("node: 8 GPUs, 8 servers x 4 models, 60 s / 1 s", (8, 8, 4, 60.0, 1.0)),
        ("worst: 8 GPUs, 8 servers x 4 models, 3600 s / 1 s", (8, 8, 4, 3600.0, 1.0)),
    ]
    base = None
    print(f"{'scenario':<55} {'ms/advance':>11} {'x baseline':>11}")
    for name, args in rows:
        cost = _advance_cost(*args)
        base = base or cost
        print(f"{name:<55} {cost * 1e3:>11.3f} {cost / base:>11.1f}")
    print(
        f"{'discover(): 3 auto servers, psutil, this host':<55} {_discover_cost() * 1e3:>11.3f}"
        f" {'(per call)':>11}"
    )


if __name__ == "__main__":
    main()
