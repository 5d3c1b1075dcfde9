"""Smoke tests: each benchmark's core functions run at a tiny size and give finite numbers.

No timing is asserted here (performance claims come from running the benchmarks); these only
keep the benchmarks runnable as the code they measure changes.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_smoke_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def test_overhead_core_functions_give_finite_rows() -> None:
    bench = _load("bench_overhead")
    servers = bench.start_servers(n_servers=2, ranks=2)
    try:
        agent = bench.make_agent(servers.urls, gpus=2)
        agent.server.start()
        try:
            costs = bench.measure_cycles(agent, servers.urls, 1)
            renders = bench.measure_render(agent.registry, 1)
            loop = bench.run_loop(agent, 1.0, 0.5)
        finally:
            agent.stop()
    finally:
        servers.close()
    assert _finite(costs.cycle_s, costs.gpu_poll_s, costs.naive_cycle_s, costs.render_s)
    assert costs.cycle_s > 0 and costs.naive_cycle_s > 0
    assert len(renders) == 4
    assert all(r.plain_bytes > 0 and _finite(r.ms) for r in renders)
    assert [r.gzip_bytes > 0 for r in renders] == [False, True, False, True]
    assert loop and all(_finite(r.rss_mb, r.cpu_percent) and r.rss_mb > 0 for r in loop)
    text = bench.report(costs, renders, loop, 10.0, 1000, 1.0 / 60)
    assert "% of one core" in text and "rerun:" in text


def test_accuracy_core_functions_give_finite_rows() -> None:
    bench = _load("bench_accuracy")
    rows = bench.summarise([bench.simulate(seed=0, seconds=120.0)])
    assert {r.method for r in rows} == set(bench.METHODS)
    assert all(r.windows > 0 and _finite(r.mean_abs, r.worst_abs) for r in rows)
    agent = next(r for r in rows if r.method == bench.METHODS[0])
    # The counter path is exact in simulation up to whole-mJ rounding.
    assert agent.worst_abs < 1e-4
    assert "DIY30/this" in bench.table(rows, 1, 120.0, 0.0)


def test_server_cost_core_functions_give_finite_rows() -> None:
    bench = _load("bench_server_cost")
    cost = bench.measure(ranks=1, n=3)
    assert cost.body_bytes > 10_000
    assert _finite(cost.handler_s, cost.render_s, cost.client_python_render_s, cost.gzip_s)
    assert cost.handler_s > 0 and cost.client_python_render_s > 0
    assert "Prometheus, 15 s" in bench.table([cost], 3)


def test_http_core_functions_give_finite_rows() -> None:
    bench = _load("bench_http")
    body = bench.make_body(200_000)
    servers = bench.start_servers(body, count=2)
    try:
        rows = [bench.measure(name, servers, len(body), 2) for name in bench.CLIENTS]
    finally:
        servers.close()
    assert [r.client for r in rows] == list(bench.CLIENTS)
    assert all(r.scrapes == 4 * bench.BATCHES and _finite(r.cpu_ms) for r in rows)
    assert all(r.cpu_ms > 0 for r in rows)
    # Per-server clients keep their warm-up connection: no new one during the run.
    assert [r.connections for r in rows[1:]] == [0, 0, 0]
    assert "req/conn 10 min" in bench.table(rows, len(body), 2)
