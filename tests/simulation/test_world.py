"""The demo world in virtual time: scenarios, fault timing, exact truth, servers over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.clock import ManualClock
from agent.config import ServerSettings
from agent.simulation.workload import SCENARIOS, TICK_SECONDS, ticks_until
from agent.simulation.world import (
    DEMO_GPUS,
    PID_BASE,
    DemoWorld,
    demo_servers_config,
    truth_delta,
)

SERVERS = ("vllm", "sglang", "llamacpp")
MODELS = {
    "vllm": "meta-llama/Llama-3.1-8B-Instruct",
    "sglang": "Qwen/Qwen2.5-7B-Instruct",
    "llamacpp": "",
}


def _run(world: DemoWorld, clock: ManualClock, seconds: float, step: float = 0.5) -> None:
    """Advance virtual time by ``seconds`` in steps, stepping the world after each."""
    end = clock.monotonic() + seconds
    while clock.monotonic() < end - 1e-9:
        clock.advance(min(step, end - clock.monotonic()))
        world.step(clock.monotonic())


def _world(scenario: str = "steady", seed: int = 1, **kwargs: Any) -> tuple[DemoWorld, ManualClock]:
    clock = ManualClock()
    world = DemoWorld(scenario, seed, clock, **kwargs)
    world.begin(clock.monotonic())
    return world, clock


@pytest.fixture
def started() -> Iterator[tuple[DemoWorld, ManualClock]]:
    world, clock = _world("steady", 3)
    world.start()
    yield world, clock
    world.stop()


def _energy_counter_joules(world: DemoWorld, index: int) -> float:
    nvml = world.nvml
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    return float(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)) / 1000.0


def _tokens(truth: dict[str, Any], server: str) -> tuple[int, int]:
    m = truth["servers"][server]["models"][MODELS[server]]
    return m["input_tokens"], m["output_tokens"]


def test_layout_matches_the_demo_contract(started: tuple[DemoWorld, ManualClock]) -> None:
    world, _ = started
    infos = {s.name: s for s in world.servers()}
    assert set(infos) == set(SERVERS)
    assert infos["vllm"].gpu_indices == (0, 1)
    assert infos["sglang"].gpu_indices == (2,)
    assert infos["llamacpp"].gpu_indices == (3,)
    assert infos["vllm"].models == (MODELS["vllm"],)
    assert infos["llamacpp"].models == ("",)
    assert len(DEMO_GPUS) == 5
    assert all(pid >= PID_BASE for s in infos.values() for pid in s.pids)
    assert len({pid for s in infos.values() for pid in s.pids}) == 4
    for s in infos.values():
        assert s.url.startswith("http://127.0.0.1:") and s.url.endswith("/metrics")


def test_servers_config_is_valid_agent_settings(started: tuple[DemoWorld, ManualClock]) -> None:
    world, _ = started
    config = demo_servers_config(world)
    parsed = [ServerSettings(**c) for c in config]
    assert [p.name for p in parsed] == list(SERVERS)
    assert parsed[0].gpus == [0, 1]
    assert parsed[0].engine == "vllm"


def test_nothing_moves_before_begin() -> None:
    clock = ManualClock()
    world = DemoWorld("steady", 1, clock)
    clock.advance(5)
    world.step(clock.monotonic())
    assert all(_tokens(world.truth(), s) == (0, 0) for s in SERVERS)
    world.begin(clock.monotonic())
    with pytest.raises(RuntimeError, match="already"):
        world.begin(clock.monotonic())
    _run(world, clock, 1.0)
    assert all(_tokens(world.truth(), s)[1] > 0 for s in SERVERS)
    assert world.elapsed_seconds == pytest.approx(1.0)


def test_step_back_in_time_changes_nothing() -> None:
    world, clock = _world()
    _run(world, clock, 2.0)
    before = world.truth()
    world.step(clock.monotonic() - 1.0)
    assert world.truth() == before


@pytest.mark.parametrize("step", [0.05, 0.5, 3.0])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_token_truth_is_exact_whatever_the_step(scenario: str, step: float) -> None:
    world, clock = _world(scenario, 9, fault_at_seconds=2.0, recover_after_seconds=2.0)
    _run(world, clock, 7.0, step)
    truth = world.truth()
    end = ticks_until(7.0)
    for server in SERVERS:
        prompt, generation, _ = world.workload.cumulative(server, end)
        assert _tokens(truth, server) == (prompt, generation)


@pytest.mark.parametrize(
    ("scenario", "kinds"),
    [
        ("gpu-lost", ["lose_gpu"]),
        ("driver-reload", ["reload_driver"]),
        ("server-restart", ["restart_server"]),
        ("server-down", ["server_down", "server_up"]),
        ("nvml-hang", ["nvml_hang"]),
        ("faults", ["reload_driver", "restart_server"]),
        ("steady", []),
        ("bursty", []),
        ("diurnal", []),
    ],
)
def test_faults_fire_at_their_time(scenario: str, kinds: list[str]) -> None:
    world, clock = _world(scenario, 2, fault_at_seconds=20.0, recover_after_seconds=15.0)
    _run(world, clock, 19.9, 0.05)
    assert world.fired() == []
    _run(world, clock, 0.1, 0.05)
    fired = world.fired()
    assert [f.event.kind for f in fired] == kinds[:1]
    if fired:
        assert fired[0].tick == ticks_until(20.0)
        assert 20.0 - 1e-6 <= fired[0].elapsed_seconds < 20.0 + 2 * TICK_SECONDS
    _run(world, clock, 20.0, 0.05)
    fired = world.fired()
    assert [f.event.kind for f in fired] == kinds
    if len(fired) == 2:
        assert fired[1].tick == ticks_until(35.0)


def test_server_restart_resets_served_counters_but_truth_continues() -> None:
    world, clock = _world("server-restart", 4, fault_at_seconds=5.0)
    _run(world, clock, 4.9, 0.05)
    served_before = world.server("vllm").state().served[MODELS["vllm"]].generation_tokens
    truth_before = _tokens(world.truth(), "vllm")[1]
    assert served_before == truth_before > 0
    _run(world, clock, 0.2, 0.05)
    state = world.server("vllm").state()
    assert state.restarts == 1
    served_after = state.served[MODELS["vllm"]].generation_tokens
    truth_after = _tokens(world.truth(), "vllm")[1]
    assert 0 < served_after < served_before
    # Ticks before 5.0 s went to the old counters; the new ones hold only what came after.
    _, before_restart, _ = world.workload.cumulative("vllm", ticks_until(5.0))
    _, until_now, _ = world.workload.cumulative("vllm", ticks_until(5.1))
    assert served_after == until_now - before_restart
    assert truth_after == until_now


def test_server_down_refuses_then_recovers_on_the_same_port() -> None:
    world, clock = _world("server-down", 4, fault_at_seconds=2.0, recover_after_seconds=2.0)
    world.start()
    try:
        url = world.server("sglang").url
        _run(world, clock, 2.5, 0.05)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=2)
        assert httpx.get(world.server("vllm").url, timeout=5).status_code == 200
        tokens_down = _tokens(world.truth(), "sglang")
        _run(world, clock, 1.0, 0.05)
        assert _tokens(world.truth(), "sglang") == tokens_down  # a down server makes nothing
        assert world.gpu_loads()[2] == 0.0
        _run(world, clock, 1.0, 0.05)
        assert world.server("sglang").url == url
        assert httpx.get(url, timeout=5).status_code == 200
        _run(world, clock, 1.0, 0.05)
        assert _tokens(world.truth(), "sglang")[1] > tokens_down[1]
    finally:
        world.stop()


def test_gpu_lost_makes_nvml_fail_for_that_gpu_only() -> None:
    world, clock = _world("gpu-lost", 4, fault_at_seconds=1.0)
    _run(world, clock, 2.0, 0.05)
    nvml = world.nvml
    nvml.nvmlInit()
    with pytest.raises(Exception, match=r"(?i)lost|unknown"):
        handle = nvml.nvmlDeviceGetHandleByIndex(3)
        nvml.nvmlDeviceGetPowerUsage(handle)
    assert _energy_counter_joules(world, 0) > 0
    assert 3 not in world.gpu_loads()
    generated = _tokens(world.truth(), "llamacpp")[1]
    _run(world, clock, 2.0, 0.05)
    assert _tokens(world.truth(), "llamacpp")[1] == generated


def test_driver_reload_restarts_the_energy_counter_but_not_truth() -> None:
    world, clock = _world("driver-reload", 4, fault_at_seconds=3.0)
    _run(world, clock, 2.9, 0.05)
    counter_before = _energy_counter_joules(world, 0)
    truth_before = world.truth()["gpus"][world.nvml.uuid(0)]["energy_joules"]
    _run(world, clock, 0.5, 0.05)
    counter_after = _energy_counter_joules(world, 0)
    truth_after = world.truth()["gpus"][world.nvml.uuid(0)]["energy_joules"]
    assert counter_after < counter_before
    assert truth_after > truth_before


@pytest.mark.parametrize("scenario", ["steady", "bursty", "diurnal"])
def test_energy_truth_equals_the_nvml_counter_without_faults(scenario: str) -> None:
    world, clock = _world(scenario, 6)
    _run(world, clock, 10.0, 0.05)
    truth = world.truth()
    for uuid, gpu in truth["gpus"].items():
        assert uuid == world.nvml.uuid(gpu["index"])
        # The counter is integer millijoules.
        assert _energy_counter_joules(world, gpu["index"]) == pytest.approx(
            gpu["energy_joules"], abs=1.001e-3
        )


def test_energy_truth_is_conserved_across_servers_and_spare() -> None:
    world, clock = _world("steady", 6)
    _run(world, clock, 5.0)
    truth = world.truth()
    total = sum(g["energy_joules"] for g in truth["gpus"].values())
    attributed = sum(s["energy_joules"] for s in truth["servers"].values())
    assert attributed + truth["unattributed_energy_joules"] == pytest.approx(total, rel=1e-12)
    spare = next(g for g in truth["gpus"].values() if g["index"] == 4)
    assert truth["unattributed_energy_joules"] == spare["energy_joules"]


def test_steady_energy_per_token_is_realistic() -> None:
    # ML.ENERGY's longitudinal study (Llama 3.1 8B, H100): well-batched 8B-class on H100
    # ~0.1-0.2 J/output token at board power; llama.cpp serves far fewer tokens for the power.
    world, clock = _world("steady", 0)
    _run(world, clock, 5.0)
    first = world.truth()
    _run(world, clock, 60.0)
    delta = truth_delta(world.truth(), first)
    vllm = delta["servers"]["vllm"]
    j_per_token = vllm["energy_joules"] / vllm["models"][MODELS["vllm"]]["output_tokens"]
    assert 0.1 <= j_per_token <= 0.5
    watts = vllm["energy_joules"] / 60.0 / 2
    assert 400 <= watts <= 600
    cpp = delta["servers"]["llamacpp"]
    assert cpp["energy_joules"] / cpp["models"][""]["output_tokens"] > 2 * j_per_token


def test_truth_delta_subtracts_every_number() -> None:
    world, clock = _world("steady", 5)
    _run(world, clock, 3.0)
    first = world.truth()
    _run(world, clock, 3.0)
    last = world.truth()
    delta = truth_delta(last | {"exposition": "x 1\n"}, first)
    assert delta["exposition"] == "x 1\n"
    for server in SERVERS:
        p0, g0, _ = world.workload.cumulative(server, ticks_until(3.0))
        p1, g1, _ = world.workload.cumulative(server, ticks_until(6.0))
        assert _tokens(delta, server) == (p1 - p0, g1 - g0)
        assert delta["servers"][server]["energy_joules"] == pytest.approx(
            last["servers"][server]["energy_joules"] - first["servers"][server]["energy_joules"]
        )
    assert delta["unattributed_energy_joules"] > 0


# Token counter sample names per engine (see agent/servers/profiles.py).
SAMPLES = {
    "vllm": ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"),
    "sglang": ("sglang:prompt_tokens_total", "sglang:generation_tokens_total"),
    "llamacpp": ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total"),
}


def test_served_expositions_sum_to_truth(started: tuple[DemoWorld, ManualClock]) -> None:
    world, clock = started
    _run(world, clock, 4.0, 0.25)
    truth = world.truth()
    with httpx.Client(timeout=5) as client:
        for info in world.servers():
            families = list(text_string_to_metric_families(client.get(info.url).text))
            expected = truth["servers"][info.name]["models"][MODELS[info.name]]
            for sample_name, key in zip(
                SAMPLES[info.engine], ("input_tokens", "output_tokens"), strict=True
            ):
                names = {sample_name}
                if sample_name == "llamacpp:prompt_tokens_total":
                    # llama-server counts the prompt-cache hits apart.
                    names.add("llamacpp:prompt_tokens_cached_total")
                served = sum(s.value for f in families for s in f.samples if s.name in names)
                assert served == expected[key] > 0


def test_engine_profiles_read_the_truth(started: tuple[DemoWorld, ManualClock]) -> None:
    profiles = pytest.importorskip("agent.servers.profiles")
    world, clock = started
    _run(world, clock, 4.0, 0.25)
    truth = world.truth()
    with httpx.Client(timeout=5) as client:
        for info in world.servers():
            reading = profiles.read_exposition(client.get(info.url).content, info.engine)
            by_model = {m.model: m for m in reading.models}
            model = MODELS[info.name]
            assert set(by_model) == {model}
            expected = truth["servers"][info.name]["models"][model]
            assert by_model[model].input_tokens == expected["input_tokens"]
            assert by_model[model].output_tokens == expected["output_tokens"]


def test_processes_are_listed_on_their_gpus(started: tuple[DemoWorld, ManualClock]) -> None:
    world, _ = started
    nvml = world.nvml
    nvml.nvmlInit()
    for info in world.servers():
        for gpu, pid in zip(info.gpu_indices, info.pids, strict=True):
            handle = nvml.nvmlDeviceGetHandleByIndex(gpu)
            listed = [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)]
            assert listed == [pid]


def test_nvml_hang_blocks_calls_on_gpu_0_only() -> None:
    world, clock = _world("nvml-hang", 4, fault_at_seconds=1.0, recover_after_seconds=30.0)
    nvml = world.nvml
    nvml.nvmlInit()
    hung_handle = nvml.nvmlDeviceGetHandleByIndex(0)
    _run(world, clock, 1.0, 0.05)
    assert [f.event.kind for f in world.fired()] == ["nvml_hang"]
    done = threading.Event()

    def read() -> None:
        nvml.nvmlDeviceGetPowerUsage(hung_handle)
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert not done.wait(0.3)
        assert nvml.blocked_calls() == 1
        assert _energy_counter_joules(world, 1) > 0  # other GPUs answer
    finally:
        nvml.release_hangs()
    assert done.wait(5)
    reader.join(5)


def test_bursty_load_swings_within_a_second() -> None:
    world, clock = _world("bursty", 8)
    seen = []
    for _ in range(40):
        _run(world, clock, TICK_SECONDS, TICK_SECONDS)
        seen.append(world.gpu_loads()[0])
    assert max(seen) > 0.7
    assert min(seen) < 0.25


def test_faults_scenario_fires_every_fault_in_turn() -> None:
    world, clock = _world("faults", 3, fault_at_seconds=1.0, recover_after_seconds=1.0)
    _run(world, clock, 7.0, 0.05)
    fired = world.fired()
    assert [f.event.kind for f in fired] == [
        "reload_driver",
        "restart_server",
        "server_down",
        "server_up",
        "nvml_hang",
        "lose_gpu",
    ]
    assert [f.tick for f in fired] == [ticks_until(float(t)) for t in (1, 2, 3, 4, 5, 6)]
    world.nvml.release_hangs()
    end = ticks_until(7.0)
    truth = world.truth()
    for server in SERVERS:
        prompt, generation, _ = world.workload.cumulative(server, end)
        assert _tokens(truth, server) == (prompt, generation)
