"""§7 A and B: GPU/NVML faults and upstream faults, through the whole agent.

Unit-level versions of most cases live in tests/gpu_backend (GpuMonitor, NvmlBackend, energy
meter) and tests/servers (scraper); these tests check what a Prometheus scraping the agent
would see: /metrics answers, which series are there, and whether the counters stay true.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any

import pytest

from agent.clock import ManualClock, SystemClock
from agent.simulation.nvml import SimulatedNvml

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
OUT = {"type": "output", "server": "vllm", "model": MODEL}
Harness = Any
MakeAgent = Any
MakeVllm = Any


def _with_vllm(make_agent: MakeAgent, make_vllm: MakeVllm, **kw: Any) -> tuple[Harness, Any]:
    vllm = make_vllm(generation=1_000, prompt=5_000)
    harness = make_agent(servers=[{"name": "vllm", "url": vllm.url, "gpus": [0, 1]}], **kw)
    return harness, vllm.state


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _agent_threads() -> int:
    """Live threads, less the fake upstreams' per-connection handler threads."""
    return sum(1 for t in threading.enumerate() if "process_request" not in t.name)


def _timed_get(harness: Harness) -> float:
    t0 = time.monotonic()
    harness.metrics()
    return time.monotonic() - t0


# -- A. GPU / NVML -----------------------------------------------------------------------------


def test_nvml_hang_on_one_gpu_keeps_metrics_fast_and_never_piles_up(
    make_agent: MakeAgent, make_vllm: MakeVllm
) -> None:
    """Case 1: a hung power read on GPU 1 leaves it stale; the rest is served; it recovers."""
    harness, state = _with_vllm(make_agent, make_vllm)
    harness.cycle()
    harness.metrics()  # the HTTP worker pool grows on first use
    harness.nvml.hang("nvmlDeviceGetPowerUsage", 60.0, index=1)
    state.generation += 10
    harness.cycle()
    threads, blocked = _agent_threads(), harness.nvml.blocked_calls()
    assert blocked == 1
    for _ in range(10):
        assert _timed_get(harness) < 2.0, "/metrics renders the snapshot, never waits on NVML"
    for _ in range(2):
        harness.cycle()
    samples = harness.metrics()
    uuid0, uuid1 = harness.nvml.uuid(0), harness.nvml.uuid(1)
    assert samples.value("tokenergy_gpu_up", uuid=uuid1) == 0
    assert samples.value("tokenergy_gpu_up", uuid=uuid0) == 1
    assert samples.value("tokenergy_tokens_total", **OUT) == 10, "servers still counted"
    assert samples.value("tokenergy_nvml_errors_total", gpu="1", error="timeout") == 3
    assert harness.nvml.blocked_calls() == blocked, "no second call into the hung GPU"
    assert _agent_threads() == threads, "no thread per hung call"
    samples.assert_finite()

    harness.nvml.release_hangs()
    harness.cycle()
    harness.cycle()
    samples = harness.metrics()
    assert samples.value("tokenergy_gpu_up", uuid=uuid1) == 1
    assert samples.value("tokenergy_gpu_power_watts", uuid=uuid1) > 0


def test_lost_gpu_is_down_without_nan_and_logged_once(
    make_agent: MakeAgent, make_vllm: MakeVllm, caplog: pytest.LogCaptureFixture
) -> None:
    """Case 2: GPU_IS_LOST on GPU 1: gpu_up 0, no power sample, no NaN, one log line."""
    harness, state = _with_vllm(make_agent, make_vllm)
    harness.cycle()
    caplog.set_level(logging.INFO)
    harness.nvml.lose_gpu(1)
    for _ in range(5):
        state.generation += 3
        harness.cycle()
    samples = harness.metrics()
    uuid1 = harness.nvml.uuid(1)
    assert samples.value("tokenergy_gpu_up", uuid=uuid1) == 0
    assert not samples.pick("tokenergy_gpu_power_watts", uuid=uuid1), "no frozen power"
    assert samples.value("tokenergy_gpu_up", uuid=harness.nvml.uuid(0)) == 1
    assert samples.value("tokenergy_tokens_total", **OUT) == 15
    assert samples.value("tokenergy_nvml_errors_total", gpu="1", error="gpu_lost") == 5
    samples.assert_finite()
    lost_lines = [r for r in caplog.records if "GPU 1" in r.getMessage()]
    assert len(lost_lines) == 1, [r.getMessage() for r in lost_lines]


def test_driver_reload_keeps_energy_monotonic_and_equal_to_the_truth(
    make_agent: MakeAgent,
) -> None:
    """Case 3: the driver reloads; the agent re-inits by itself; energy stays true (< 2 %)."""
    harness = make_agent(gpus=["H100-SXM-80GB"])
    nvml, uuid = harness.nvml, harness.nvml.uuid(0)
    harness.cycle(0)
    start_exported = harness.metrics().value("tokenergy_gpu_energy_joules_total", uuid=uuid)
    start_true = nvml.true_energy_joules(0)
    exported = [start_exported]
    for step in range(40):
        nvml.set_load(0, (step % 5) / 4)
        if step == 10:
            nvml.reload_driver(downtime_seconds=2.0)
        harness.cycle(0.5)
        exported.append(harness.metrics().value("tokenergy_gpu_energy_joules_total", uuid=uuid))
    assert all(b >= a for a, b in itertools.pairwise(exported)), exported
    assert nvml.calls("nvmlInit") >= 2, "NVML was initialised again after the reload"
    assert harness.metrics().value("tokenergy_nvml_up") == 1
    true_increase = nvml.true_energy_joules(0) - start_true
    assert exported[-1] - start_exported == pytest.approx(true_increase, rel=0.02)


@pytest.mark.parametrize(
    ("profile", "unsupported"),
    [("P100-16GB", None), ("H100-SXM-80GB", "energy")],
    ids=["pre-volta", "energy-not-supported"],
)
def test_unsupported_energy_is_integrated_without_sentinels(
    make_agent: MakeAgent, profile: str, unsupported: str | None
) -> None:
    """Case 5: no energy counter: integrated power, collector still up, no sentinel values."""

    def before(nvml: SimulatedNvml) -> None:
        if unsupported:
            nvml.set_not_supported(0, unsupported)

    harness = make_agent(gpus=[profile], before_start=before)
    harness.nvml.set_load(0, 0.5)
    harness.cycle(0)
    for _ in range(10):
        harness.cycle(1.0)
    samples = harness.metrics()
    samples.assert_finite()
    assert samples.pick("tokenergy_gpu_info", energy_source="integrated")
    assert samples.value("tokenergy_collector_success", collector="nvml") == 1
    assert samples.value("tokenergy_gpu_up", gpu="0") == 1
    energy = samples.value("tokenergy_gpu_energy_joules_total", gpu="0")
    # Ten 1 s intervals at constant power: integration is exact up to the first reading.
    assert energy == pytest.approx(10 * harness.nvml.true_power_watts(0), rel=0.05)


def test_mig_mode_change_keeps_one_whole_gpu_series(make_agent: MakeAgent) -> None:
    """Case 6: MIG on and off: the same GPU-level series, no per-instance energy, no errors.

    In MIG mode NVML has no whole-GPU utilization or memory figure, so those two go absent
    (never a sentinel); that they come back is the next test.
    """
    core = (
        "tokenergy_gpu_info",
        "tokenergy_gpu_up",
        "tokenergy_gpu_power_watts",
        "tokenergy_gpu_energy_joules_total",
        "tokenergy_gpu_power_limit_watts",
    )
    harness = make_agent(gpus=["H100-SXM-80GB", "H100-SXM-80GB"])
    harness.cycle(0)
    before = {k for k in harness.metrics() if k[0].startswith("tokenergy_gpu_")}
    for enabled in (True, False):
        harness.nvml.set_mig(0, enabled)
        harness.cycle()
        samples = harness.metrics()
        now = {k for k in samples if k[0].startswith("tokenergy_gpu_")}
        assert {k for k in now if k[0] in core} == {k for k in before if k[0] in core}
        assert now <= before, f"MIG {enabled}: new series {now - before}"
        assert len(samples.pick("tokenergy_gpu_energy_joules_total")) == 2
        assert not samples.pick("tokenergy_nvml_errors_total")
        samples.assert_finite()


def test_utilization_and_memory_come_back_after_mig_is_turned_off(make_agent: MakeAgent) -> None:
    """Case 6, second half: after MIG off, the whole-GPU figures return within a minute."""
    harness = make_agent(gpus=["H100-SXM-80GB"])
    harness.cycle(0)
    harness.nvml.set_mig(0, True)
    harness.cycle()
    assert not harness.metrics().pick("tokenergy_gpu_utilization_ratio")
    harness.nvml.set_mig(0, False)
    for _ in range(70):  # 70 s at the 1 s GPU interval
        harness.cycle()
    samples = harness.metrics()
    assert samples.pick("tokenergy_gpu_utilization_ratio")
    assert samples.pick("tokenergy_gpu_memory_total_bytes")


@pytest.mark.parametrize("reason", ["library_not_found", "driver_not_loaded"])
def test_no_driver_serves_200_with_nvml_down_and_still_scrapes(
    make_agent: MakeAgent, make_vllm: MakeVllm, reason: str
) -> None:
    """Case 8: no NVML at all: 200, nvml_up 0, servers still scraped; NVML found later."""
    harness, state = _with_vllm(
        make_agent, make_vllm, before_start=lambda nvml: nvml.fail_init(reason)
    )
    harness.cycle(0)
    state.generation += 7
    harness.cycle()
    samples = harness.metrics()
    assert samples.value("tokenergy_nvml_up") == 0
    assert samples.value("tokenergy_collector_success", collector="nvml") == 0
    assert not samples.pick("tokenergy_gpu_up")
    assert samples.value("tokenergy_server_up", server="vllm") == 1
    assert samples.value("tokenergy_tokens_total", **OUT) == 7
    assert harness.get("/healthz").status_code == 200, "alive: the loop runs"

    harness.nvml.fail_init(None)
    harness.cycle(70.0)  # past the longest backoff
    samples = harness.metrics()
    assert samples.value("tokenergy_nvml_up") == 1
    assert len(samples.pick("tokenergy_gpu_up")) == 2


def test_slow_nvml_init_does_not_delay_http(make_agent: MakeAgent) -> None:
    """Case 9: nvmlInit takes long: HTTP answers at once, without GPU series; then GPUs come."""
    t0 = time.monotonic()
    harness = make_agent(before_start=lambda nvml: nvml.hang("nvmlInit", 20.0))
    assert time.monotonic() - t0 < 2.0, "start does not wait for nvmlInit"
    assert harness.get("/healthz").status_code == 503, "not ready before the first cycle"
    harness.cycle(0)
    assert _timed_get(harness) < 2.0, "nvmlInit hangs for 20 s"
    samples = harness.metrics()
    assert samples.value("tokenergy_nvml_up") == 0
    assert not samples.pick("tokenergy_gpu_up")
    assert harness.get("/healthz").status_code == 200
    harness.nvml.release_hangs()
    harness.cycle()
    assert len(harness.metrics().pick("tokenergy_gpu_up")) == 2


def test_stop_shuts_nvml_down_and_ends_every_agent_thread(make_agent: MakeAgent) -> None:
    """Case 10 (in process): stop during sampling calls nvmlShutdown and leaves no thread."""
    threads = set(threading.enumerate())
    harness = make_agent()
    harness.agent.sampler.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    harness.agent.stop()
    assert time.monotonic() - t0 < 5.0
    assert harness.nvml.calls("nvmlShutdown") == 1
    left = [t.name for t in set(threading.enumerate()) - threads if t.is_alive()]
    assert not left, f"threads left running: {left}"


# -- B. upstream targets and the agent itself --------------------------------------------------


def test_target_down_is_server_up_0_while_gpus_and_others_are_served(
    make_agent: MakeAgent, make_vllm: MakeVllm, make_upstream: Any
) -> None:
    """Case 12: a refused target: server_up 0, reason refused, counters frozen; recovers."""
    good_vllm, bad_vllm = make_vllm(generation=10), make_vllm(generation=10)
    good, bad, good_up, bad_up = good_vllm.state, bad_vllm.state, good_vllm, bad_vllm.upstream
    harness = make_agent(
        servers=[
            {"name": "good", "url": good_up.url, "gpus": [0]},
            {"name": "bad", "url": bad_up.url, "gpus": [1]},
        ]
    )
    harness.cycle(0)
    bad.generation += 5
    harness.cycle()
    assert bad_up.server is not None
    port = bad_up.port
    bad_up.server.shutdown()
    bad_up.server.server_close()
    for _ in range(3):
        good.generation += 1
        bad.generation += 100  # real tokens, unseen while down
        harness.cycle()
    samples = harness.metrics()
    assert samples.value("tokenergy_server_up", server="bad") == 0
    assert samples.value("tokenergy_server_up", server="good") == 1
    assert samples.value("tokenergy_scrape_errors_total", server="bad", reason="refused") == 3
    assert samples.value("tokenergy_tokens_total", server="bad", type="output") == 5
    assert samples.value("tokenergy_tokens_total", server="good", type="output") == 3
    assert len(samples.pick("tokenergy_gpu_up")) == 2

    # Back on the same port, same process: the tokens of the outage are counted, once.
    make_upstream(bad.reply, port=port)
    harness.cycle()
    bad.generation += 2
    harness.cycle()
    samples = harness.metrics()
    assert samples.value("tokenergy_server_up", server="bad") == 1
    assert samples.value("tokenergy_tokens_total", server="bad", type="output") == 5 + 300 + 2


def test_slow_target_100_scrapes_keep_threads_and_fds_flat(
    make_agent: MakeAgent, make_vllm: MakeVllm, silent_listener: Any
) -> None:
    """Case 13: a target that never answers, 100 cycles: deadline kept, no leak of anything."""
    good_up = make_vllm(generation=10)
    good = good_up.state
    port = silent_listener.getsockname()[1]
    harness = make_agent(
        servers=[
            {"name": "good", "url": good_up.url, "gpus": [0]},
            {"name": "slow", "url": f"http://127.0.0.1:{port}/metrics", "gpus": [1]},
        ],
        scrape={"read_timeout_seconds": 0.03, "connect_timeout_seconds": 0.03},
    )
    _agent_threads()
    for _ in range(3):  # warm-up: pools, keep-alive connections
        harness.cycle()
    harness.metrics()
    fds, threads = _fd_count(), _agent_threads()
    longest = 0.0
    for i in range(100):
        good.generation += 1
        t0 = time.monotonic()
        harness.cycle()
        longest = max(longest, time.monotonic() - t0)
        if i % 25 == 0:
            assert _timed_get(harness) < 2.0
    assert longest < 0.03 + 0.5 + 0.5, "a cycle waits at most the scrape deadline"
    samples = harness.metrics()
    assert samples.value("tokenergy_server_up", server="slow") == 0
    assert samples.value("tokenergy_scrape_errors_total", server="slow", reason="timeout") >= 100
    assert samples.value("tokenergy_tokens_total", server="good", type="output") == 100
    assert _agent_threads() <= threads
    assert _fd_count() <= fds + 2, "sockets to the slow target are closed"


def test_upstream_restart_continues_the_agent_counter(
    make_agent: MakeAgent, make_vllm: MakeVllm
) -> None:
    """Case 14: upstream 10 000 -> 5 (restart): the agent counter goes on, +5, never down."""
    harness, state = _with_vllm(make_agent, make_vllm)
    state.generation = 10_000
    harness.cycle(0)
    state.generation = 10_400
    harness.cycle()
    assert harness.metrics().value("tokenergy_tokens_total", **OUT) == 400
    state.generation = 5  # restarted process: counter starts again
    harness.cycle()
    assert harness.metrics().value("tokenergy_tokens_total", **OUT) == 405
    state.generation = 25
    harness.cycle()
    assert harness.metrics().value("tokenergy_tokens_total", **OUT) == 425


def test_agent_restart_starts_its_counters_once_from_zero(
    make_agent: MakeAgent, make_vllm: MakeVllm
) -> None:
    """Case 15: no state file: a new agent starts at 0 (one reset) and counts only new tokens."""
    upstream = make_vllm(generation=1_000)
    state = upstream.state
    server = [{"name": "vllm", "url": upstream.url}]
    first = make_agent(servers=server)
    first.cycle(0)
    state.generation += 50
    first.cycle()
    assert first.metrics().value("tokenergy_tokens_total", **OUT) == 50
    first.agent.stop()
    state.generation += 30  # tokens while no agent ran are not seen by anyone
    second = make_agent(servers=server)
    second.cycle(0)
    assert second.metrics().value("tokenergy_tokens_total", **OUT) == 0
    state.generation += 20
    second.cycle()
    assert second.metrics().value("tokenergy_tokens_total", **OUT) == 20


class _JumpingWallClock(ManualClock):
    """Monotonic time as ManualClock; wall time jumps by ``jump_seconds`` when asked."""

    def __init__(self) -> None:
        super().__init__()
        self.jump_seconds = 0.0

    def wall(self) -> float:
        return super().wall() + self.jump_seconds


def test_wall_clock_jumps_do_not_touch_energy(make_agent: MakeAgent) -> None:
    """Case 16: wall clock steps +-1 h while integrating power: increments follow monotonic."""
    clock = _JumpingWallClock()
    harness = make_agent(gpus=["P100-16GB"], clock=clock)
    harness.nvml.set_load(0, 1.0)
    harness.cycle(0)
    start = harness.metrics().value("tokenergy_gpu_energy_joules_total", gpu="0")
    exported = [start]
    for jump in (3600.0, -3600.0, 7200.0, -7200.0, 0.0):
        clock.jump_seconds = jump
        harness.cycle(1.0)
        exported.append(harness.metrics().value("tokenergy_gpu_energy_joules_total", gpu="0"))
    increments = [b - a for a, b in itertools.pairwise(exported)]
    watts = harness.nvml.true_power_watts(0)
    assert increments == pytest.approx([watts] * 5, rel=0.01), increments


def test_metrics_never_empty_while_the_sampler_loop_runs(
    make_agent: MakeAgent, make_vllm: MakeVllm
) -> None:
    """Case 17 (no config reload exists): snapshots swap atomically, no empty 200 ever."""
    upstream = make_vllm(generation=1)
    state = upstream.state
    harness = make_agent(
        servers=[{"name": "vllm", "url": upstream.url}],
        clock=SystemClock(),
        sampling={"interval_seconds": 0.05, "window_seconds": 1.0},
    )
    harness.cycle(0)
    harness.agent.sampler.start()
    try:
        counts = []
        for _ in range(40):
            state.generation += 1
            samples = harness.metrics()
            counts.append(len(samples.pick("tokenergy_gpu_up")))
            assert samples.pick("tokenergy_tokens_total", **OUT)
    finally:
        harness.agent.sampler.stop()
    assert counts == [2] * 40
