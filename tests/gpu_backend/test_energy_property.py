"""Property test of the agent's energy counters over an hour of simulated faults.

Over an hour of virtual time with bursty load, a driver reload and a lost GPU, every poll hands
out finite joules >= 0, and for each counter GPU that stays up their sum (what the ledger
accumulates) matches the simulated truth within 0.1 %.

What the agent can observe: the NVML counter sees everything except the energy spent between
the last read before a reload and the reload itself (the old counter is gone, the new one
starts at the reload). The test computes that unobservable gap from the ground truth and
checks (a) agent == truth - gap within 0.1 %, (b) agent <= truth (nothing doubled), and
(c) the gap is at most one poll interval at full power.
"""

from __future__ import annotations

import itertools
import logging
import math
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import ManualClock
from agent.config import GpuSettings
from agent.gpu.monitor import GpuMonitor
from agent.gpu.nvml import NvmlBackend
from agent.simulation.nvml import GPU_PROFILES, SimulatedNvml

HOUR = 3600.0
ALL_PROFILES = tuple(GPU_PROFILES)  # H100, A100, L4, and the counter-less P100


def bursty_schedule(
    rng: random.Random, gpus: int, mean_burst: float, mean_gap: float, peak: float
) -> list[tuple[float, int, float]]:
    """(time s, gpu, load) events: bursts of random length and height, idle in between."""
    events: list[tuple[float, int, float]] = []
    for gpu in range(gpus):
        t = rng.uniform(0.0, mean_gap)
        while t < HOUR:
            events.append((t, gpu, rng.uniform(0.1, peak)))
            t += rng.expovariate(1.0 / mean_burst)
            events.append((t, gpu, 0.0))
            t += rng.expovariate(1.0 / mean_gap)
    return sorted(events)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    poll_seconds=st.sampled_from([1.0, 2.0, 5.0]),
    mean_burst=st.floats(0.2, 20.0),
    mean_gap=st.floats(0.2, 60.0),
    peak=st.floats(0.2, 1.0),
    reload_at=st.floats(10.0, HOUR - 10.0),
    reload_downtime=st.floats(0.0, 30.0),
    lost_gpu=st.integers(0, len(ALL_PROFILES) - 1),
    lost_at=st.floats(0.0, HOUR),
    driver_uptime=st.sampled_from([0.0, 3 * 86_400.0]),
)
def test_energy_counters_over_an_hour(
    seed: int,
    poll_seconds: float,
    mean_burst: float,
    mean_gap: float,
    peak: float,
    reload_at: float,
    reload_downtime: float,
    lost_gpu: int,
    lost_at: float,
    driver_uptime: float,
) -> None:
    clock = ManualClock(start=0.0)
    sim = SimulatedNvml(ALL_PROFILES, clock, seed=seed, driver_uptime_seconds=driver_uptime)
    n = sim.device_count()
    sim.lose_gpu(lost_gpu, at_seconds=lost_at)
    events = bursty_schedule(random.Random(seed), n, mean_burst, mean_gap, peak)
    events.append((reload_at, -1, reload_downtime))
    events.sort()
    log = logging.getLogger("tokenergy.test.property")
    monitor = GpuMonitor(
        NvmlBackend(sim, log),
        clock,
        GpuSettings(read_timeout_seconds=5.0, reinit_backoff_seconds=1.0),
        log,
    )
    # Per GPU: (poll time, truth at that time) of each successful read, and the truth at the
    # reload instant.
    reads: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    truth_at_reload = [0.0] * n
    totals = [0.0] * n
    i_event = 0
    try:
        monitor.start()
        t_poll = 0.0
        while t_poll <= HOUR:
            while i_event < len(events) and events[i_event][0] < t_poll:
                t, gpu, value = events[i_event]
                clock.advance(t - clock.monotonic())
                if gpu < 0:
                    truth_at_reload = [sim.true_energy_joules(i) for i in range(n)]
                    sim.reload_driver(downtime_seconds=value)
                else:
                    sim.set_load(gpu, value)
                i_event += 1
            clock.advance(t_poll - clock.monotonic())
            for status in monitor.poll():
                i = status.device.index
                added = status.energy_joules_added
                assert added >= 0 and math.isfinite(added)  # the ledger's total never decreases
                totals[i] += added
                if status.up:
                    reads[i].append((t_poll, sim.true_energy_joules(i)))
            t_poll += poll_seconds
    finally:
        monitor.close()

    for status in monitor.poll():
        totals[status.device.index] += status.energy_joules_added
    for i in range(n):
        profile = GPU_PROFILES[ALL_PROFILES[i]]
        if i == lost_gpu or not profile.energy_counter or len(reads[i]) < 2:
            continue
        seen = reads[i][-1][1] - reads[i][0][1]
        gap = 0.0
        for (t0, e0), (t1, _) in itertools.pairwise(reads[i]):
            if t0 <= reload_at < t1:
                gap = truth_at_reload[i] - e0
        assert gap <= poll_seconds * profile.max_watts + 1e-6
        expected = seen - gap
        assert abs(totals[i] - expected) <= 1e-3 * expected, (i, totals[i], expected, gap)
        assert totals[i] <= seen + 1e-3 * seen


def test_schedule_is_bursty() -> None:
    events = bursty_schedule(random.Random(1), 1, mean_burst=0.5, mean_gap=2.0, peak=1.0)
    on = [t1 - t0 for (t0, _, l0), (t1, _, _) in itertools.pairwise(events) if l0 > 0]
    assert len(events) > 1000
    assert sum(d < 1.0 for d in on) > len(on) / 2  # most bursts shorter than 1 s
