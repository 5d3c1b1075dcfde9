"""Real-NVML tests: need an NVIDIA GPU and driver; skipped when NVML cannot initialise.

Run: python -m pytest -m gpu tests/gpu   (or tests/gpu/run.sh for the numbers too)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.clock import SystemClock
from agent.config import GpuSettings
from agent.gpu.monitor import GpuMonitor
from agent.gpu.nvml import NvmlBackend, import_pynvml

pytestmark = pytest.mark.gpu

LOAD_SECONDS = 8.0


@pytest.fixture(scope="module")
def nvml() -> Iterator[Any]:
    """The real pynvml, initialised; skips the module when NVML cannot start."""
    pynvml = import_pynvml()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML cannot initialise here: {type(exc).__name__}: {exc}")
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def test_open_and_read_every_device(nvml: Any) -> None:
    backend = NvmlBackend(nvml, logging.getLogger("tokenergy.test.gpu"))
    backend.open()
    try:
        devices = backend.devices()
        assert devices, "NVML initialised but listed no GPU"
        assert backend.driver_version()
        for device in devices:
            assert device.uuid.startswith("GPU-")
            assert device.name
            reading = backend.read(device.index)
            assert reading.uuid == device.uuid
            assert reading.power_watts is None or 0.0 < reading.power_watts < 2000.0
            assert reading.power_limit_watts is None or 10.0 < reading.power_limit_watts < 2000.0
            if device.energy_source == "counter":
                assert reading.energy_joules is not None and reading.energy_joules > 0.0
            else:
                assert reading.energy_joules is None
            if reading.utilization_ratio is not None:
                assert 0.0 <= reading.utilization_ratio <= 1.0
            if reading.memory_total_bytes is not None:
                assert reading.memory_total_bytes > 1024**3
                assert 0 <= (reading.memory_used_bytes or 0) <= reading.memory_total_bytes
            assert all(p.pid > 0 for p in reading.processes)
    finally:
        backend.close()


def test_monitor_reads_every_device(nvml: Any) -> None:
    log = logging.getLogger("tokenergy.test.gpu")
    monitor = GpuMonitor(NvmlBackend(nvml, log), SystemClock(), GpuSettings(), log)
    try:
        monitor.start()
        assert monitor.nvml_up()
        statuses = monitor.poll()
        assert statuses and all(s.up for s in statuses)
        assert monitor.error_counts() == {}
    finally:
        monitor.close()


def _cuda_nvml_index(torch: Any, backend: NvmlBackend) -> int:
    """The NVML index of CUDA device 0 (CUDA and NVML may order devices differently)."""
    uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None)
    if uuid is not None:
        for device in backend.devices():
            if device.uuid.removeprefix("GPU-") == str(uuid).removeprefix("GPU-"):
                return device.index
    return 0


def test_energy_counter_rises_under_matmul_load(nvml: Any) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    log = logging.getLogger("tokenergy.test.gpu")
    backend = NvmlBackend(nvml, log)
    backend.open()
    try:
        index = _cuda_nvml_index(torch, backend)
        device = next(d for d in backend.devices() if d.index == index)
        if device.energy_source != "counter":
            pytest.skip(f"GPU {index} ({device.name}) has no energy counter")
        idle = backend.read(index)
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        started = time.monotonic()
        while time.monotonic() - started < LOAD_SECONDS:
            for _ in range(20):
                a @ b
            torch.cuda.synchronize()
        elapsed = time.monotonic() - started
        loaded = backend.read(index)
    finally:
        backend.close()
    assert idle.energy_joules is not None and loaded.energy_joules is not None
    delta = loaded.energy_joules - idle.energy_joules
    assert delta > 0.0
    mean_watts = delta / elapsed
    assert mean_watts > (idle.power_watts or 0.0), (mean_watts, idle.power_watts)
    assert loaded.power_limit_watts is None or mean_watts < 1.2 * loaded.power_limit_watts
