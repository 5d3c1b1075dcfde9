"""Smoke tests: each benchmark's core functions run at a tiny size and give finite numbers.

No timing is asserted here (performance claims come from running the benchmarks); these only
keep the benchmarks runnable as the code they measure changes.
"""

from __future__ import annotations

import dataclasses
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
    servers = bench.start_servers(n_servers=2, n_models=1, ranks=2)
    try:
        agent = bench.make_agent(servers.urls, gpus=2)
        agent.server.start()
        try:
            costs = bench.measure_cycles(agent, servers.urls, 1, 1000)
            renders = bench.measure_render(agent.registry, 1)
            loop = bench.run_loop(agent, 1.0, 0.5)
            requests, accepted = servers.counts()
            opened = [s.connections_opened for s in agent.scrapers.values()]
        finally:
            agent.stop()
    finally:
        servers.close()
    assert _finite(costs.cycle_s, costs.gpu_poll_s, costs.render_s, costs.naive_cycle_s)
    assert costs.cycle_s > 0 and costs.naive_cycle_s > 0
    assert (costs.servers, costs.gpus) == (2, 2)
    # prometheus_client's two encoders, then the agent's own two, each plain and gzip.
    assert len(renders) == 8
    assert all(r.plain_bytes > 0 and _finite(r.ms) for r in renders)
    assert [r.gzip_bytes > 0 for r in renders] == [False, True] * 4
    assert [r.name.split(",")[1].split("+")[0].strip() for r in renders[::2]] == [
        "prometheus_client",
        "prometheus_client",
        "tokenergy",
        "tokenergy",
    ]
    assert loop and all(_finite(r.rss_mb, r.cpu_percent) and r.rss_mb > 0 for r in loop)
    # The warm-up and measured cycles reuse one kept-alive connection per server; the naive
    # cycle's httpx client opens one more of its own.
    assert opened == [1, 1]
    assert 0 < bench.peak_rss_mb() < 100_000
    assert all(r >= 3 for r in requests) and accepted == [2, 2]
    text = bench.headline_table(costs)
    assert "% of one core" in text and "previous" in text
    growth = bench.growth_table("servers", "server", [1, 2], [costs, costs])
    assert "slope: cycle 0.000 ms per server" in growth


def test_overhead_loop_result_reads_connections() -> None:
    bench = _load("bench_overhead")
    result = bench.LoopResult(
        n_models=3,
        body_bytes=1_400_000,
        seconds=600.0,
        rss_before_mb=40.0,
        rows=[bench.LoopRow(60.0, 50.0, 0.3), bench.LoopRow(120.0, 51.0, 0.5)],
        rss_after_mb=51.0,
        max_rss_mb=52.0,
        requests=[121, 100],
        connections=[1, 2],
        accepted=[2, 3],
        thread_cpu_s={"sampler": 1.0, "scrape-* (all servers)": 3.0},
    )
    assert abs(result.mean_cpu - 0.4) < 1e-12
    assert result.requests_per_connection == 50.0
    text = bench.loop_table(result)
    assert "target < 0.5 %: MET" in text and "target < 60 MB: MET" in text
    assert "scrape-* (all servers) 75 %, sampler 25 %" in text
    heavy = dataclasses.replace(result, n_models=5, rss_after_mb=71.0)
    assert "target < 0.8 %: MET" in bench.loop_table(heavy)
    assert "target < 70 MB: MISSED" in bench.loop_table(heavy)
    assert bench.slope([1.0, 8.0, 32.0], [2.0, 9.0, 33.0]) == (1.0, 1.0)


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


def test_parser_core_functions_give_finite_rows() -> None:
    bench = _load("bench_parser")
    old = bench.load_old_parser()
    rows = bench.extraction_rows((1,), old, repeats=1)
    # header, render row, then the seven methods, each with ms and a ratio for the one body.
    assert len(rows) == 9 and all(len(r) == 3 for r in rows)
    assert all(_finite(float(r[1])) and float(r[1]) > 0 for r in rows[2:])
    hostile = bench.hostile_rows((4096, 16384), (4096,), old, repeats=1)
    assert len(hostile) == 1 + 2 * len(bench.hostile_lines(1024))
    assert "prometheus_client" in bench.table(rows)


def test_lane_table_measures_every_way() -> None:
    bench = _load("bench_overhead")
    rows = bench.measure_lane(rounds=1, idle_seconds=0.0, servers=2)
    assert [r.mode for r in rows] == list(bench.LANE_MODES)
    assert all(len(r.scrape_ms) == 1 and r.scrape_ms[0] > 0 for r in rows)
    text = bench.lane_table(rows)
    assert all(mode in text for mode in bench.LANE_MODES) and "1.00x" in text


def test_cycle_core_functions_give_finite_rows() -> None:
    bench = _load("bench_cycle")
    now = bench.measure(1, main_seconds=0.3)
    assert all(_finite(now[key]) for key, _ in bench.ROWS)
    assert now["cycle"] > 0 and now["ledger"] > 0 and now["gpu_poll"] > 0
    assert now["body_kb"] > 10  # the 8 x 3 x 8 exposition, not an empty one
    assert "1.00x" in bench.table(now, now, "HEAD")
    threads = bench.loop(1.0, 0.0)  # the loop's own first cycle is 5 s after the start one
    assert "sampler" in threads and all(_finite(v) and v >= 0 for v in threads.values())
    assert "agent outside the scrape threads" in bench.loop_table(threads, threads, 1.0, 0, 0)


def test_energy_integration_core_functions_give_finite_rows() -> None:
    bench = _load("bench_energy_integration")
    errors, ratio = bench.run("bursty", 1.0, 0, 60.0)
    assert errors and all(_finite(e) for e in errors) and _finite(ratio)
    # The counter column (the baseline) is exact in simulation.
    assert abs(errors[-1]) < 1e-6


def test_ledger_core_functions_give_finite_rows() -> None:
    bench = _load("bench_ledger")
    cost = bench._advance_cost(2, 2, 1, 10.0, 5.0)
    assert _finite(cost) and cost > 0


def test_anatomy_core_functions_give_finite_rows() -> None:
    bench = _load("bench_anatomy")
    results = bench.simulate(seed=0, minutes=2.0)
    assert results and all(_finite(r.in_j_true, r.out_j_true) for r in results)
    assert all(r.in_j_true >= 0 and r.out_j_true > 0 for r in results)


def test_anatomy_estimates_are_within_ten_percent_of_the_truth() -> None:
    # Issue 14's bar, on one seed of the bursty demo (8 virtual minutes, half to settle):
    # J per input and per output token within 10 % of the truth, the truth inside the stated
    # uncertainty, and the cache savings within 10 % of the energy the simulator did not spend.
    bench = _load("bench_anatomy")
    for r in bench.simulate(seed=2, minutes=8.0):
        assert r.method == "regression", r.server
        assert r.a is not None and r.a_se is not None and r.b is not None and r.b_se is not None
        assert abs(r.a - r.a_true) <= 3 * r.a_se, r
        assert abs(r.b - r.b_true) <= 3 * r.b_se, r
        assert r.in_j is not None and r.out_j is not None
        assert abs(r.in_j / r.in_j_true - 1) < 0.10, r
        assert abs(r.out_j / r.out_j_true - 1) < 0.10, r
        assert abs(r.saved / r.saved_true - 1) < 0.10, r
        # The phase-time baseline would have put far less on input than the truth.
        assert r.time_in_fraction is not None and r.time_in_fraction < 0.5 * r.true_in_fraction
