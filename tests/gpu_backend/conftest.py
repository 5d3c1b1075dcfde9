"""Fixtures for the GPU telemetry tests: a virtual clock, a simulated NVML and monitors.

Every monitor built through ``make_monitor`` is closed, and every simulated hang released,
at teardown, so a failing test never leaves a blocked thread behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.config import GpuSettings
from agent.gpu.monitor import GpuMonitor
from agent.gpu.nvml import NvmlBackend
from agent.simulation.nvml import SimulatedNvml

ALL_PROFILES = ("H100-SXM-80GB", "A100-40GB", "L4", "P100-16GB")

MonitorFactory = Callable[..., GpuMonitor]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1000.0)


@pytest.fixture
def sims() -> Iterator[list[SimulatedNvml]]:
    made: list[SimulatedNvml] = []
    yield made
    for sim in made:
        sim.release_hangs()


@pytest.fixture
def make_sim(clock: ManualClock, sims: list[SimulatedNvml]) -> Callable[..., SimulatedNvml]:
    def make(gpus: tuple[str, ...] = ALL_PROFILES, seed: int = 0) -> SimulatedNvml:
        sim = SimulatedNvml(gpus, clock, seed=seed)
        sims.append(sim)
        return sim

    return make


@pytest.fixture
def make_monitor(clock: ManualClock, sims: list[SimulatedNvml]) -> Iterator[MonitorFactory]:
    made: list[GpuMonitor] = []

    def make(nvml: Any, log: logging.Logger | None = None, **settings: Any) -> GpuMonitor:
        values: dict[str, Any] = {
            # Generous: a poll waits only as long as the reads take unless a call hangs, and a
            # busy test machine must not turn a slow thread switch into a "timeout".
            "read_timeout_seconds": 2.0,
            "reinit_backoff_seconds": 1.0,
            "reinit_backoff_max_seconds": 60.0,
        }
        values.update(settings)
        logger = log or logging.getLogger("tokenergy.test.gpu")
        monitor = GpuMonitor(NvmlBackend(nvml, logger), clock, GpuSettings(**values), logger)
        made.append(monitor)
        return monitor

    yield make
    for sim in sims:
        sim.release_hangs()
    for monitor in made:
        monitor.close()
