"""The simulated NVML itself: exact energy, power averaging, faults, validation, threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from agent.clock import ManualClock
from agent.gpu import nvml as nv
from agent.simulation.nvml import GPU_PROFILES, SimHandle, SimulatedNvml

SimFactory = Callable[..., SimulatedNvml]


def opened(sim: SimulatedNvml) -> list[SimHandle]:
    sim.nvmlInit()
    return [sim.nvmlDeviceGetHandleByIndex(i) for i in range(sim.device_count())]


def test_energy_counter_is_the_exact_integral_of_piecewise_power(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    sim = make_sim(("A100-40GB",))
    (h,) = opened(sim)
    counter0 = sim.nvmlDeviceGetTotalEnergyConsumption(h)
    expected = 0.0
    for load, seconds in [(0.0, 3.0), (1.0, 0.25), (0.3, 7.5), (0.0, 0.125), (0.9, 2.0)]:
        sim.set_load(0, load)
        clock.advance(seconds)
        expected += (55.0 + 325.0 * load) * seconds
    assert sim.true_energy_joules(0) == pytest.approx(expected, rel=1e-12)
    counter_mj = sim.nvmlDeviceGetTotalEnergyConsumption(h) - counter0
    assert abs(counter_mj - expected * 1000.0) <= 1.0  # whole mJ


@pytest.mark.parametrize(
    ("profile", "after_step_seconds", "expected_watts"),
    [
        ("H100-SXM-80GB", 0.25, 0.75 * 70.0 + 0.25 * 650.0),  # 1 s trailing average
        ("H100-SXM-80GB", 1.5, 650.0),
        ("L4", 0.5, 0.5 * 16.0 + 0.5 * 72.0),
        ("A100-40GB", 0.25, 380.0),  # GA100: instantaneous
        ("P100-16GB", 0.25, 240.0),
    ],
)
def test_reported_power_follows_the_profile(
    make_sim: SimFactory,
    clock: ManualClock,
    profile: str,
    after_step_seconds: float,
    expected_watts: float,
) -> None:
    sim = make_sim((profile,))
    (h,) = opened(sim)
    clock.advance(5.0)
    sim.set_load(0, 1.0)
    clock.advance(after_step_seconds)
    assert sim.nvmlDeviceGetPowerUsage(h) == round(expected_watts * 1000.0)


def test_power_average_at_start_covers_only_the_time_since_start(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    sim = make_sim(("H100-SXM-80GB",))
    (h,) = opened(sim)
    assert sim.nvmlDeviceGetPowerUsage(h) == 70_000
    clock.advance(0.5)
    assert sim.nvmlDeviceGetPowerUsage(h) == 70_000


def test_counter_starts_at_zero_or_at_the_driver_uptime(clock: ManualClock) -> None:
    fresh = SimulatedNvml(["L4"], clock)
    old = SimulatedNvml(["L4"], clock, driver_uptime_seconds=86_400.0)
    (h_fresh,) = opened(fresh)
    (h_old,) = opened(old)
    clock.advance(10.0)
    assert fresh.nvmlDeviceGetTotalEnergyConsumption(h_fresh) == 160_000
    assert fresh.true_energy_joules(0) == 160.0
    assert old.nvmlDeviceGetTotalEnergyConsumption(h_old) == (86_400 + 10) * 16_000
    assert old.true_energy_joules(0) == 160.0


def test_pre_volta_profile_has_no_energy_counter(make_sim: SimFactory) -> None:
    sim = make_sim(("P100-16GB",))
    (h,) = opened(sim)
    with pytest.raises(nv.NVMLError_NotSupported):
        sim.nvmlDeviceGetTotalEnergyConsumption(h)
    assert not GPU_PROFILES["P100-16GB"].energy_counter


def test_reload_restarts_the_counter_and_kills_the_session(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    sim = make_sim(("L4",))
    (h,) = opened(sim)
    clock.advance(100.0)
    assert sim.nvmlDeviceGetTotalEnergyConsumption(h) > 100_000
    sim.reload_driver(downtime_seconds=5.0)
    with pytest.raises(nv.NVMLError_Uninitialized):
        sim.nvmlDeviceGetPowerUsage(h)
    with pytest.raises(nv.NVMLError_DriverNotLoaded):
        sim.nvmlInit()
    clock.advance(5.0)
    sim.nvmlInit()
    with pytest.raises(nv.NVMLError_Uninitialized):
        sim.nvmlDeviceGetPowerUsage(h)  # handles from before the reload stay dead
    new = sim.nvmlDeviceGetHandleByIndex(0)
    assert sim.nvmlDeviceGetTotalEnergyConsumption(new) == 16.0 * 5.0 * 1000.0


def test_lost_from_a_given_time(make_sim: SimFactory, clock: ManualClock) -> None:
    sim = make_sim(("L4", "L4"))
    h0, h1 = opened(sim)
    sim.lose_gpu(0, at_seconds=clock.monotonic() + 10.0)
    sim.nvmlDeviceGetPowerUsage(h0)
    clock.advance(10.0)
    with pytest.raises(nv.NVMLError_GpuIsLost):
        sim.nvmlDeviceGetPowerUsage(h0)
    with pytest.raises(nv.NVMLError_GpuIsLost):
        sim.nvmlDeviceGetHandleByIndex(0)
    assert sim.nvmlDeviceGetPowerUsage(h1) == 16_000


def test_calls_before_init_are_uninitialized(make_sim: SimFactory) -> None:
    sim = make_sim(("L4",))
    with pytest.raises(nv.NVMLError_Uninitialized):
        sim.nvmlDeviceGetCount()
    with pytest.raises(nv.NVMLError_Uninitialized):
        sim.nvmlShutdown()


def test_hang_blocks_until_released(make_sim: SimFactory) -> None:
    sim = make_sim(("L4", "L4"))
    h0, h1 = opened(sim)
    sim.hang("nvmlDeviceGetPowerUsage", 60.0, index=0)
    results: list[int] = []
    caller = threading.Thread(target=lambda: results.append(sim.nvmlDeviceGetPowerUsage(h0)))
    caller.start()
    caller.join(0.2)
    assert caller.is_alive() and results == []
    assert sim.nvmlDeviceGetPowerUsage(h1) == 16_000  # another GPU is not affected
    assert sim.nvmlDeviceGetTotalEnergyConsumption(h0) >= 0  # another function neither
    sim.release_hangs()
    caller.join(10.0)
    assert results == [16_000]
    assert sim.blocked_calls() == 1


def test_hang_ends_by_itself_after_its_real_time(make_sim: SimFactory) -> None:
    sim = make_sim(("L4",))
    (h,) = opened(sim)
    sim.hang("*", 0.05)
    started = time.monotonic()
    sim.nvmlDeviceGetName(h)
    assert time.monotonic() - started >= 0.04
    started = time.monotonic()
    sim.nvmlDeviceGetName(h)
    assert sim.blocked_calls() == 1


def test_fail_init_then_recover(make_sim: SimFactory) -> None:
    sim = make_sim(("L4",))
    sim.fail_init("library_not_found")
    with pytest.raises(nv.NVMLError_LibraryNotFound):
        sim.nvmlInit()
    sim.fail_init(None)
    sim.nvmlInit()
    assert sim.nvmlDeviceGetCount() == 1


def test_uuids_are_stable_per_seed(clock: ManualClock) -> None:
    a = SimulatedNvml(["L4", "L4"], clock, seed=7)
    b = SimulatedNvml(["L4", "L4"], clock, seed=7)
    c = SimulatedNvml(["L4", "L4"], clock, seed=8)
    assert [a.uuid(i) for i in range(2)] == [b.uuid(i) for i in range(2)]
    assert a.uuid(0) != a.uuid(1)
    assert a.uuid(0) != c.uuid(0)
    assert a.uuid(0).startswith("GPU-")


BAD_CONTROL = [
    (
        lambda s: SimulatedNvml(["H200"], ManualClock()),
        r"unknown GPU profile\(s\) 'H200'; known: H100",
    ),
    (lambda s: s.set_load(0, 1.5), "within 0..1"),
    (lambda s: SimulatedNvml(["L4"], ManualClock(), driver_uptime_seconds=-1), ">= 0"),
    (lambda s: s.set_load(9, 0.5), "no simulated GPU 9"),
    (lambda s: s.set_not_supported(0, "fan"), "unknown field 'fan'; known: power"),
    (lambda s: s.hang("nvmlDeviceGetFanSpeed", 1.0), "no NVML function"),
    (lambda s: s.fail_init("gremlins"), "unknown init failure 'gremlins'"),
    (lambda s: s.set_mig(1, True), "does not support MIG"),
    (lambda s: s.set_processes(0, [1, 2], used_memory_bytes=80 * 1024**3), "do not fit"),
]


@pytest.mark.parametrize(("call", "message"), BAD_CONTROL)
def test_bad_control_calls_name_the_problem(
    make_sim: SimFactory, call: Callable[[SimulatedNvml], object], message: str
) -> None:
    sim = make_sim(("H100-SXM-80GB", "L4"))
    with pytest.raises(ValueError, match=message):
        call(sim)


def test_thread_safe_under_a_concurrent_driver(make_sim: SimFactory, clock: ManualClock) -> None:
    sim = make_sim(("H100-SXM-80GB",))
    (h,) = opened(sim)
    counter0 = sim.nvmlDeviceGetTotalEnergyConsumption(h)
    truth0 = sim.true_energy_joules(0)
    stop = threading.Event()

    def drive() -> None:
        i = 0
        while not stop.is_set():
            sim.set_load(0, (i % 10) / 10)
            clock.advance(0.01)
            i += 1

    driver = threading.Thread(target=drive)
    driver.start()
    counters = []
    try:
        for _ in range(300):
            counters.append(sim.nvmlDeviceGetTotalEnergyConsumption(h))
    finally:
        stop.set()
        driver.join()
    assert counters == sorted(counters)
    counter1 = sim.nvmlDeviceGetTotalEnergyConsumption(h)
    truth1 = sim.true_energy_joules(0)
    assert truth1 > truth0
    assert abs((counter1 - counter0) / 1000.0 - (truth1 - truth0)) <= 2e-3
