"""The seeded workload: determinism, scenario shapes, fault timing, exact integer totals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.simulation.workload import (
    DEMO_SERVERS,
    DIURNAL_PERIOD_SECONDS,
    PREFILL_SPREAD_TICKS,
    SCENARIOS,
    TICK_SECONDS,
    FaultEvent,
    Scenario,
    UnknownScenarioError,
    Workload,
    make_scenario,
    ticks_until,
)

SERVER_NAMES = [p.name for p in DEMO_SERVERS]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_seed_same_workload(scenario: str) -> None:
    a, b = Workload(scenario, 7), Workload(scenario, 7)
    for name in SERVER_NAMES:
        for k in (0, 1, 399, 400, 401, 1234):
            assert a.tick(name, k) == b.tick(name, k)


@pytest.mark.parametrize("scenario", ["steady", "bursty", "diurnal"])
def test_different_seed_different_workload(scenario: str) -> None:
    a, b = Workload(scenario, 1), Workload(scenario, 2)
    ticks_a = [a.tick("vllm", k).generation_tokens for k in range(200)]
    ticks_b = [b.tick("vllm", k).generation_tokens for k in range(200)]
    assert ticks_a != ticks_b


def test_tick_is_independent_of_call_order() -> None:
    w = Workload("bursty", 3)
    forward = [w.tick("sglang", k) for k in range(50)]
    backward = [w.tick("sglang", k) for k in reversed(range(50))]
    assert forward == list(reversed(backward))


def test_unknown_scenario_names_the_choices() -> None:
    with pytest.raises(UnknownScenarioError, match="steady"):
        make_scenario("stedy")


@pytest.mark.parametrize("value", [-1.0, math.inf, math.nan])
def test_bad_fault_time_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="fault_at_seconds"):
        make_scenario("gpu-lost", fault_at_seconds=value)


def test_negative_tick_is_refused() -> None:
    with pytest.raises(ValueError, match="tick"):
        Workload("steady", 0).tick("vllm", -1)


def test_unknown_server_is_named() -> None:
    with pytest.raises(KeyError, match="nope"):
        Workload("steady", 0).tick("nope", 0)


@pytest.mark.parametrize(
    ("scenario", "kind", "target"),
    [
        ("gpu-lost", "lose_gpu", 3),
        ("driver-reload", "reload_driver", None),
        ("server-restart", "restart_server", "vllm"),
        ("server-down", "server_down", "sglang"),
        ("nvml-hang", "nvml_hang", 0),
    ],
)
def test_fault_scenarios_have_their_event_at_the_set_time(
    scenario: str, kind: str, target: int | str | None
) -> None:
    s = make_scenario(scenario, fault_at_seconds=12.5, recover_after_seconds=4.0)
    first = s.events[0]
    assert s.base == "steady"
    assert first.kind == kind
    assert first.at_seconds == 12.5
    assert first.tick == 250
    assert target in (first.gpu, first.server, None)
    if scenario == "server-down":
        assert s.events[1].kind == "server_up"
        assert s.events[1].at_seconds == 16.5
    if scenario == "nvml-hang":
        assert first.duration_seconds == 4.0


def test_server_down_produces_nothing_only_while_down() -> None:
    w = Workload(make_scenario("server-down", fault_at_seconds=1.0, recover_after_seconds=1.0), 5)
    down = [w.tick("sglang", k) for k in range(20, 40)]
    assert all(not t.active and t.generation_tokens == 0 and t.prompt_tokens == 0 for t in down)
    assert all(u == 0.0 for t in down for u in t.utilization)
    assert w.tick("sglang", 19).active
    assert w.tick("sglang", 40).active
    assert sum(w.tick("sglang", k).generation_tokens for k in range(40, 60)) > 0
    # Other servers are not affected.
    assert all(w.tick("vllm", k).active for k in range(20, 40))


def test_lost_gpu_silences_its_server_for_good() -> None:
    w = Workload(make_scenario("gpu-lost", fault_at_seconds=2.0), 5)
    assert w.tick("llamacpp", 39).active
    assert not any(w.tick("llamacpp", k).active for k in (40, 41, 500, 5000))
    assert w.tick("vllm", 5000).active


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bursts_are_shorter_than_a_second(seed: int) -> None:
    w = Workload("bursty", seed)
    high = [w.demand("vllm", k) > 0.5 for k in range(ticks_until(60.0))]
    runs, current = [], 0
    for h in high:
        if h:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    assert len(runs) > 20, "a minute of bursty load should have many bursts"
    assert max(runs) * TICK_SECONDS < 1.0
    # And the load really swings: low between bursts.
    assert min(w.demand("vllm", k) for k in range(ticks_until(60.0))) < 0.2


def test_diurnal_completes_a_cycle_within_a_demo() -> None:
    w = Workload("diurnal", 0)
    period_ticks = ticks_until(DIURNAL_PERIOD_SECONDS)
    night = sum(w.demand("vllm", k) for k in range(0, 20)) / 20
    noon = sum(w.demand("vllm", k) for k in range(period_ticks // 2 - 10, period_ticks // 2 + 10))
    next_night = sum(w.demand("vllm", k) for k in range(period_ticks, period_ticks + 20)) / 20
    assert night < 0.2
    assert noon / 20 > 0.8
    assert next_night < 0.2
    assert DIURNAL_PERIOD_SECONDS <= 180.0


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_cumulative_equals_the_sum_of_ticks_exactly(name: str) -> None:
    w = Workload("steady", 11)
    running = [0, 0, 0]
    for k in range(300):
        t = w.tick(name, k)
        running[0] += t.prompt_tokens
        running[1] += t.generation_tokens
        running[2] += t.cached_prompt_tokens
    assert w.cumulative(name, 300) == tuple(running)
    assert all(isinstance(x, int) for x in running)


def test_steady_rates_are_realistic() -> None:
    # An 8B model on one H100 at ~70 % load: a few thousand output tokens/s per GPU.
    w = Workload("steady", 0)
    seconds = 30.0
    _, gen, _ = w.cumulative("vllm", ticks_until(seconds))
    per_gpu = gen / seconds / 2
    assert 2000 < per_gpu < 4500
    util = [u for k in range(100) for u in w.tick("vllm", k).utilization]
    assert 0.6 < sum(util) / len(util) < 0.8
    _, gen_cpp, _ = w.cumulative("llamacpp", ticks_until(seconds))
    assert gen_cpp / seconds < per_gpu / 3, "llama.cpp is the least efficient server"


@pytest.mark.parametrize(
    ("elapsed", "ticks"), [(0.0, 0), (-1.0, 0), (0.049, 0), (0.05, 1), (20.0, 400), (1.0, 20)]
)
def test_ticks_until(elapsed: float, ticks: int) -> None:
    assert ticks_until(elapsed) == ticks


@settings(max_examples=200, deadline=None)
@given(
    scenario=st.sampled_from(SCENARIOS),
    seed=st.integers(min_value=0, max_value=2**63),
    server=st.sampled_from(SERVER_NAMES),
    tick=st.integers(min_value=0, max_value=10**7),
)
def test_tick_invariants(scenario: str, seed: int, server: str, tick: int) -> None:
    t = Workload(scenario, seed).tick(server, tick)
    assert 0 <= t.cached_prompt_tokens <= t.prompt_tokens
    assert t.generation_tokens >= 0
    assert t.arrivals >= 0 and t.finished >= 0
    assert t.requests_running >= 0 and t.requests_waiting >= 0
    assert 0.0 <= t.kv_cache_usage <= 1.0
    assert all(0.0 <= u <= 1.0 for u in t.utilization)
    assert len(t.utilization) == len(Workload(scenario, seed).profile(server).gpus)
    w = Workload(scenario, seed)
    recent = range(max(0, tick - PREFILL_SPREAD_TICKS + 1), tick + 1)
    if all(w.tick(server, j).arrivals == 0 for j in recent):
        # A prompt is processed over the ticks after its request arrived, never before.
        assert t.prompt_tokens == 0


def test_a_prompt_is_counted_whole_over_the_ticks_after_its_arrival() -> None:
    w = Workload("bursty", 3)
    n = 400
    prompts = [w._prompts("llamacpp", k)[1] for k in range(n)]
    counted = [w.tick("llamacpp", k).prompt_tokens for k in range(n)]
    assert sum(prompts) > 0
    # Each prompt is counted over the ticks after its arrival, exactly once: all of it when
    # the spread fits before tick n, the part processed so far otherwise.
    done = sum(p for k, p in enumerate(prompts) if k + PREFILL_SPREAD_TICKS <= n)
    in_flight = sum(prompts[n - PREFILL_SPREAD_TICKS :])
    assert done <= sum(counted) <= done + in_flight
    assert sum(counted[:PREFILL_SPREAD_TICKS]) <= sum(prompts[:PREFILL_SPREAD_TICKS])


def test_faults_scenario_silences_servers_at_the_right_ticks() -> None:
    s = make_scenario("faults", fault_at_seconds=10.0, recover_after_seconds=5.0)
    assert [e.at_seconds for e in s.events] == [10.0, 15.0, 20.0, 25.0, 30.0, 35.0]
    w = Workload(s, 1)
    assert w.active("sglang", ticks_until(20.0) - 1)
    assert not w.active("sglang", ticks_until(20.0))
    assert w.active("sglang", ticks_until(25.0))
    assert w.active("llamacpp", ticks_until(35.0) - 1)
    assert not w.active("llamacpp", ticks_until(35.0))
    assert all(w.active("vllm", k) for k in range(0, ticks_until(60.0), 7))


def test_events_are_kept_in_time_order() -> None:
    s = Scenario("x", "steady", (FaultEvent(5.0, "server_up"), FaultEvent(1.0, "server_down")))
    assert [e.at_seconds for e in s.events] == [1.0, 5.0]
