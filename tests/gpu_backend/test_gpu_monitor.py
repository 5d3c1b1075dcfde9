"""GpuMonitor over NvmlBackend over the simulated NVML: every fault, in virtual time.

The only real-time waits are the read deadline (0.2 s here) while a simulated call hangs;
hangs are released by the test (and at teardown), so the suite stays fast.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.gpu.monitor import NVML_WIDE, GpuMonitor
from agent.readings import GpuStatus
from agent.simulation.nvml import SimulatedNvml

SimFactory = Callable[..., SimulatedNvml]
MonitorFactory = Callable[..., GpuMonitor]


def by_index(statuses: tuple[GpuStatus, ...]) -> dict[int, GpuStatus]:
    return {s.device.index: s for s in statuses}


class Handed:
    """A monitor's polls, with the joules each hands over summed per GPU, as the ledger does.

    The monitor keeps no energy total: each joule goes out in exactly one poll.
    """

    def __init__(self, monitor: GpuMonitor) -> None:
        self.monitor = monitor
        self.joules: dict[int, float] = {}

    def poll(self) -> tuple[GpuStatus, ...]:
        statuses = self.monitor.poll()
        for s in statuses:
            assert s.energy_joules_added >= 0
            i = s.device.index
            self.joules[i] = self.joules.get(i, 0.0) + s.energy_joules_added
        return statuses


def test_all_gpus_read_and_energy_counts_from_the_first_read(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim()
    for i in range(4):
        sim.set_load(i, 0.5)
    clock.advance(2.0)  # past the 1 s power average
    monitor = make_monitor(sim)
    handed = Handed(monitor)
    monitor.start()
    assert monitor.nvml_up()
    start = [sim.true_energy_joules(i) for i in range(4)]
    first = handed.poll()
    assert all(s.up and s.error is None for s in first)
    assert all(s.energy_joules_added == 0.0 for s in first)
    clock.advance(10.0)
    statuses = handed.poll()
    for i in by_index(statuses):
        truth = sim.true_energy_joules(i) - start[i]
        # counter GPUs exactly (whole mJ); the P100 integrates a constant power exactly too
        assert handed.joules[i] == pytest.approx(truth, abs=2e-3)
    assert [s.device.energy_source for s in statuses] == [
        "counter",
        "counter",
        "counter",
        "integrated",
    ]
    assert monitor.error_counts() == {}
    assert monitor.driver_version() == "550.54.15"
    assert [d.index for d in monitor.devices()] == [0, 1, 2, 3]


def test_poll_starts_the_monitor_when_start_was_not_called(
    make_sim: SimFactory, make_monitor: MonitorFactory
) -> None:
    monitor = make_monitor(make_sim(("L4",)))
    assert [s.up for s in monitor.poll()] == [True]


def test_lost_gpu_is_down_while_the_others_go_on(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock, caplog: Any
) -> None:
    sim = make_sim(("H100-SXM-80GB", "A100-40GB", "L4"))
    log = logging.getLogger("tokenergy.test.lost")
    monitor = make_monitor(sim, log=log)
    handed = Handed(monitor)
    handed.poll()
    clock.advance(1.0)
    before = by_index(handed.poll())
    joules_before = dict(handed.joules)
    sim.lose_gpu(1)
    with caplog.at_level(logging.WARNING, log.name):
        for _ in range(10):
            clock.advance(1.0)
            after = by_index(handed.poll())
    assert not after[1].up and after[1].error == "gpu_lost"
    assert handed.joules[1] == joules_before[1]
    assert after[1].reading == before[1].reading  # the last good reading, stale
    assert after[0].up and after[2].up
    assert handed.joules[0] > joules_before[0]
    assert monitor.nvml_up()
    assert monitor.error_counts() == {("1", "gpu_lost"): 10}
    assert sum("GPU 1" in r.getMessage() for r in caplog.records) == 1  # once, not per cycle


def test_driver_reload_reinitialises_with_backoff_in_virtual_time(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim(("H100-SXM-80GB", "L4"))
    sim.set_load(0, 0.8)
    monitor = make_monitor(sim, reinit_backoff_seconds=2.0, reinit_backoff_max_seconds=5.0)
    monitor.start()
    t0 = clock.monotonic()
    first_truth = [sim.true_energy_joules(i) for i in range(2)]
    handed = Handed(monitor)
    handed.poll()
    clock.advance(1.0)
    handed.poll()
    sim.reload_driver(downtime_seconds=10.0)  # right after a read: nothing unobservable
    init_times = []
    up_after: float | None = None
    for _ in range(30):
        clock.advance(1.0)
        inits = sim.calls("nvmlInit")
        statuses = handed.poll()
        if sim.calls("nvmlInit") > inits:
            init_times.append(clock.monotonic() - t0)
        if up_after is None and monitor.nvml_up():
            up_after = clock.monotonic() - t0
        if not monitor.nvml_up():
            assert all(not s.up for s in statuses)
            assert {s.error for s in statuses} <= {"driver", "unavailable"}
    # error seen at t=2; tries at +2, then +4, then +5 (capped), +5...; driver back at t=11
    assert init_times == [4.0, 8.0, 13.0]
    assert up_after == 13.0
    final = handed.poll()
    for i in range(2):
        truth = sim.true_energy_joules(i) - first_truth[i]
        assert final[i].up
        assert handed.joules[i] == pytest.approx(truth, abs=5e-3)
    assert monitor.error_counts()[("0", "driver")] == 1
    assert monitor.error_counts()[(NVML_WIDE, "unavailable")] == 2


def test_second_reload_hidden_above_the_old_counter_is_not_lost(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    # Two reloads in a row: after the first the counter is small (2 s of energy); the second
    # keeps the driver down 20 s, so the new counter (energy since then) passes the old one.
    sim = make_sim(("H100-SXM-80GB",))
    sim.set_load(0, 1.0)
    clock.advance(5.0)
    monitor = make_monitor(sim)
    handed = Handed(monitor)
    handed.poll()
    start = sim.true_energy_joules(0)
    sim.reload_driver()
    for _ in range(2):
        clock.advance(1.0)
        handed.poll()
    assert monitor.nvml_up()
    sim.reload_driver(downtime_seconds=20.0)
    for _ in range(40):
        clock.advance(1.0)
        status = handed.poll()[0]
    assert status.up
    assert handed.joules[0] == pytest.approx(sim.true_energy_joules(0) - start, rel=1e-9)


def test_backoff_doubles_up_to_the_maximum(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim(("L4",))
    sim.fail_init("driver_not_loaded")
    monitor = make_monitor(sim, reinit_backoff_seconds=1.0, reinit_backoff_max_seconds=8.0)
    t0 = clock.monotonic()
    monitor.start()
    times = [0.0]
    for _ in range(60):
        clock.advance(1.0)
        before = sim.calls("nvmlInit")
        monitor.poll()
        if sim.calls("nvmlInit") > before:
            times.append(clock.monotonic() - t0)
    assert times == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0, 31.0, 39.0, 47.0, 55.0]


@pytest.mark.parametrize("reason", ["library_not_found", "driver_not_loaded"])
def test_init_failure_means_nvml_down_and_no_crash(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock, reason: str
) -> None:
    sim = make_sim(("H100-SXM-80GB",))
    sim.fail_init(reason)
    monitor = make_monitor(sim)
    monitor.start()  # must not raise
    assert not monitor.nvml_up()
    assert monitor.poll() == ()
    assert monitor.devices() == ()
    assert monitor.error_counts() == {(NVML_WIDE, "unavailable"): 1}
    sim.fail_init(None)
    clock.advance(1.0)
    statuses = monitor.poll()
    assert monitor.nvml_up()
    assert [s.up for s in statuses] == [True]


def test_hung_call_leaves_that_gpu_stale_and_poll_returns(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim(("H100-SXM-80GB", "L4"))
    monitor = make_monitor(sim, read_timeout_seconds=0.5)
    monitor.poll()
    clock.advance(1.0)
    good = by_index(monitor.poll())
    sim.hang("nvmlDeviceGetPowerUsage", 60.0, index=1)
    clock.advance(1.0)
    started = time.monotonic()
    hung = by_index(monitor.poll())
    elapsed = time.monotonic() - started
    assert elapsed < 30.0  # far below the 60 s hang: the deadline, not the call, ended it
    assert not hung[1].up and hung[1].error == "timeout"
    assert hung[1].reading == good[1].reading
    assert hung[1].energy_joules_added == 0.0
    assert hung[0].up
    assert hung[0].energy_joules_added > 0.0
    assert monitor.nvml_up()


def test_hung_calls_never_pile_up_and_recover_after_release(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim(("H100-SXM-80GB", "L4"))
    sim.set_load(1, 1.0)
    monitor = make_monitor(sim, read_timeout_seconds=0.05)
    handed = Handed(monitor)
    handed.poll()
    first_truth = sim.true_energy_joules(1)
    sim.hang("*", 60.0, index=1)
    clock.advance(1.0)
    handed.poll()
    threads = set(threading.enumerate())
    for _ in range(8):
        clock.advance(1.0)
        statuses = handed.poll()
        assert not statuses[1].up and statuses[1].error == "timeout"
    assert set(threading.enumerate()) - threads == set()  # no new thread per poll
    assert sim.blocked_calls() == 1  # one call in the driver, none queued behind it
    assert monitor.error_counts()[("1", "timeout")] == 9
    sim.release_hangs()
    clock.advance(1.0)
    deadline = time.monotonic() + 10.0
    statuses = handed.poll()
    while not statuses[1].up and time.monotonic() < deadline:
        statuses = handed.poll()
    assert statuses[1].up and statuses[1].error is None
    # nothing lost over the hang: the counter delta covers it
    assert handed.joules[1] == pytest.approx(sim.true_energy_joules(1) - first_truth, abs=5e-3)


def test_hung_init_does_not_block_start_or_poll(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim(("L4",))
    sim.hang("nvmlInit", 60.0)
    monitor = make_monitor(sim, read_timeout_seconds=0.05)
    started = time.monotonic()
    monitor.start()
    assert monitor.poll() == ()
    assert time.monotonic() - started < 30.0
    assert not monitor.nvml_up()
    assert monitor.error_counts()[(NVML_WIDE, "timeout")] == 2
    assert sim.calls("nvmlInit") == 1  # the second poll waited on the same call
    sim.release_hangs()
    deadline = time.monotonic() + 10.0
    while not monitor.nvml_up() and time.monotonic() < deadline:
        monitor.poll()
    assert monitor.nvml_up()
    assert [s.up for s in monitor.poll()] == [True]


def test_energy_not_supported_is_integrated(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim(("H100-SXM-80GB",))
    sim.set_not_supported(0, "energy")
    sim.set_load(0, 1.0)
    clock.advance(5.0)
    handed = Handed(make_monitor(sim))
    handed.poll()
    for _ in range(10):
        clock.advance(1.0)
        status = handed.poll()[0]
    assert status.device.energy_source == "integrated"
    assert status.reading is not None and status.reading.energy_joules is None
    assert handed.joules[0] == pytest.approx(650.0 * 10.0)


def test_counters_cover_energy_only_while_every_gpu_is_read_with_its_counter(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim(("H100-SXM-80GB", "H100-SXM-80GB"))
    monitor = make_monitor(sim)
    assert not monitor.counters_cover_energy()  # nothing read yet
    monitor.poll()
    assert monitor.counters_cover_energy()
    sim.set_not_supported(1, "energy")
    clock.advance(1.0)
    monitor.poll()
    assert not monitor.counters_cover_energy()  # GPU 1's power is integrated now
    sim = make_sim(("H100-SXM-80GB", "H100-SXM-80GB"))
    monitor = make_monitor(sim)
    monitor.poll()
    assert monitor.counters_cover_energy()
    sim.lose_gpu(0)
    clock.advance(1.0)
    monitor.poll()
    assert not monitor.counters_cover_energy()  # a GPU down: keep polling to see it back


def test_field_that_becomes_unsupported_mid_run_switches_to_integration(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim(("A100-40GB",))
    sim.set_load(0, 0.2)
    handed = Handed(make_monitor(sim))
    handed.poll()
    start = sim.true_energy_joules(0)
    clock.advance(3.0)
    handed.poll()
    sim.set_not_supported(0, "energy")
    for _ in range(4):
        clock.advance(2.0)
        status = handed.poll()[0]
    assert status.up
    assert handed.joules[0] == pytest.approx(sim.true_energy_joules(0) - start)


def test_mig_gpu_is_read_as_whole_gpu_without_errors(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim(("H100-SXM-80GB", "A100-40GB"))
    sim.set_mig(0, True)
    sim.set_mig(1, True)
    sim.set_processes(1, [31, 32])
    sim.set_load(1, 0.5)
    monitor = make_monitor(sim)
    handed = Handed(monitor)
    handed.poll()
    start = sim.true_energy_joules(1)
    clock.advance(4.0)
    statuses = handed.poll()
    assert all(s.up and s.device.mig_enabled for s in statuses)
    assert monitor.error_counts() == {}
    reading = statuses[1].reading
    assert reading is not None
    assert reading.utilization_ratio is None
    assert [p.pid for p in reading.processes] == [31, 32]
    assert handed.joules[1] == pytest.approx(sim.true_energy_joules(1) - start)


def test_lost_gpu_stays_listed_after_a_reinit(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    sim = make_sim(("H100-SXM-80GB", "L4"))
    monitor = make_monitor(sim)
    monitor.poll()
    sim.lose_gpu(0)
    sim.reload_driver()
    for _ in range(5):
        clock.advance(1.0)
        statuses = by_index(monitor.poll())
    assert monitor.nvml_up()
    # NVML no longer lists it after the re-init: down, energy frozen, the others go on.
    assert not statuses[0].up and statuses[0].error == "missing"
    assert statuses[1].up


def test_close_stops_the_threads(make_sim: SimFactory, make_monitor: MonitorFactory) -> None:
    sim = make_sim(("L4", "L4"))
    before = set(threading.enumerate())
    monitor = make_monitor(sim)
    monitor.poll()
    started = set(threading.enumerate()) - before
    # one per GPU + one for init/shutdown
    assert {t.name for t in started} == {"tokenergy-nvml", "tokenergy-gpu-0", "tokenergy-gpu-1"}
    assert all(t.daemon for t in started)
    monitor.close()
    assert not any(t.is_alive() for t in started)
    assert sim.calls("nvmlShutdown") == 1
    assert all(not s.up for s in monitor.poll())


class ThreadLog:
    """The simulated NVML, noting which thread made each power read (of which GPU)."""

    def __init__(self, sim: SimulatedNvml) -> None:
        self._sim = sim
        self.reads: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sim, name)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:  # noqa: N802
        self.reads.append((threading.current_thread().name, handle.index))
        return int(self._sim.nvmlDeviceGetPowerUsage(handle))


def test_a_poll_reads_every_gpu_on_one_thread(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock
) -> None:
    # One thread wakes per poll (not one per GPU, which costs more than the reads).
    log = ThreadLog(make_sim(("H100-SXM-80GB",) * 4))
    monitor = make_monitor(log)
    for _ in range(5):
        log.reads.clear()
        clock.advance(1.0)
        assert all(s.up for s in monitor.poll())
        assert sorted(index for _, index in log.reads) == [0, 1, 2, 3]
        assert len({thread for thread, _ in log.reads}) == 1


@pytest.mark.parametrize("hung", [0, 1, 3])
def test_gpus_queued_behind_a_hung_one_are_read_in_the_same_poll(
    make_sim: SimFactory, make_monitor: MonitorFactory, clock: ManualClock, hung: int
) -> None:
    sim = make_sim(("H100-SXM-80GB",) * 4)
    for i in range(4):
        sim.set_load(i, 0.8)
    monitor = make_monitor(sim, read_timeout_seconds=0.5)
    handed = Handed(monitor)
    handed.poll()
    first_truth = sim.true_energy_joules(hung)
    sim.hang("nvmlDeviceGetPowerUsage", 60.0, index=hung)
    threads = set(threading.enumerate())
    for _ in range(4):
        clock.advance(1.0)
        started = time.monotonic()
        statuses = by_index(handed.poll())
        assert time.monotonic() - started < 30.0  # the deadline ended the poll, not the hang
        assert not statuses[hung].up and statuses[hung].error == "timeout"
        for i in set(range(4)) - {hung}:
            assert statuses[i].up, f"GPU {i} stale behind hung GPU {hung}"
            assert statuses[i].energy_joules_added > 0.0
    assert set(threading.enumerate()) - threads == set()  # no thread per poll or per stall
    assert sim.blocked_calls() == 1  # one call in the driver, none queued behind it
    sim.release_hangs()
    deadline = time.monotonic() + 10.0
    clock.advance(1.0)
    statuses = by_index(handed.poll())
    while not statuses[hung].up and time.monotonic() < deadline:
        statuses = by_index(handed.poll())
    assert all(s.up for s in statuses.values())
    assert handed.joules[hung] == pytest.approx(
        sim.true_energy_joules(hung) - first_truth, abs=5e-3
    )
