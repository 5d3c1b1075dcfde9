"""The energy glitch guard through the GPU monitor: an impossible NVML counter jump.

The NVML module is a parameter of ``NvmlBackend``; here it is the simulated NVML behind a thin
wrapper that answers one energy read with an absurd value (1e15 mJ = 1e12 J), as a driver bug
or a corrupted read would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.gpu.monitor import GpuMonitor
from agent.simulation.nvml import SimulatedNvml


class GlitchingNvml:
    """Delegates to a simulated NVML; ``glitch_next`` answers the next energy reads wrongly."""

    def __init__(self, sim: SimulatedNvml) -> None:
        self._sim = sim
        self.glitch_next = 0
        self.glitch_millijoules = 10**15

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sim, name)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:  # noqa: N802 (NVML's name)
        value = int(self._sim.nvmlDeviceGetTotalEnergyConsumption(handle))
        if self.glitch_next:
            self.glitch_next -= 1
            return self.glitch_millijoules
        return value


def test_an_impossible_energy_jump_is_not_counted_logged_once_and_counted_as_an_error(
    make_sim: Callable[..., SimulatedNvml],
    make_monitor: Callable[..., GpuMonitor],
    clock: ManualClock,
    caplog: Any,
) -> None:
    sim = make_sim(("H100-SXM-80GB",))
    sim.set_load(0, 0.5)
    nvml = GlitchingNvml(sim)
    log = logging.getLogger("tokenergy.test.energy_guard")
    monitor = make_monitor(nvml, log=log)
    monitor.poll()
    start = sim.true_energy_joules(0)
    handed = 0.0
    glitched = 0.0
    with caplog.at_level(logging.WARNING, log.name):
        for i in range(10):
            before = sim.true_energy_joules(0)
            clock.advance(1.0)
            if i in (3, 6):
                nvml.glitch_next = 1
            status = monitor.poll()[0]
            handed += status.energy_joules_added
            if i in (3, 6):
                # The glitched interval counts nothing; the next one counts from the last
                # good value, so nothing is lost.
                assert status.energy_joules_added == 0.0
                glitched += sim.true_energy_joules(0) - before
    assert status.up
    assert handed == pytest.approx(sim.true_energy_joules(0) - start, rel=1e-9)
    assert glitched > 0
    assert monitor.error_counts()[("0", "implausible")] == 2
    lines = [r.getMessage() for r in caplog.records if "power limit allows" in r.getMessage()]
    assert len(lines) == 2, "logged when the problem starts, again after it had ended"
