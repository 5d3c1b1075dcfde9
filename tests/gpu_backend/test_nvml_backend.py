"""NvmlBackend over the simulated NVML: probing, units, error mapping, unsupported fields, MIG."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.gpu import nvml as nv
from agent.gpu.errors import (
    GpuDriverError,
    GpuError,
    GpuLost,
    GpuReadError,
    GpuTimeout,
    GpuUnavailable,
)
from agent.gpu.nvml import NvmlBackend, import_pynvml
from agent.simulation.nvml import GPU_PROFILES, SimulatedNvml

SimFactory = Callable[..., SimulatedNvml]


class PatchedNvml:
    """The simulated NVML with some functions replaced or hidden (an injected fake module)."""

    def __init__(self, sim: SimulatedNvml, **replace: Any) -> None:
        self._sim = sim
        self._replace = replace

    def __getattr__(self, name: str) -> Any:
        if name in self._replace:
            value = self._replace[name]
            if value is None:
                raise AttributeError(name)
            return value
        return getattr(self._sim, name)


def raising(error: type[BaseException]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise error()

    return call


def test_import_pynvml_returns_the_real_binding() -> None:
    module = import_pynvml()
    assert module.__name__ == "pynvml"
    assert module.NVMLError_GpuIsLost is nv.NVMLError_GpuIsLost


def test_open_probes_identity_and_capabilities(make_sim: SimFactory) -> None:
    sim = make_sim()
    backend = NvmlBackend(sim)
    backend.open()
    devices = backend.devices()
    assert [d.index for d in devices] == [0, 1, 2, 3]
    assert [d.name for d in devices] == [p.nvml_name for p in GPU_PROFILES.values()]
    assert [d.uuid for d in devices] == [sim.uuid(i) for i in range(4)]
    assert [d.energy_source for d in devices] == ["counter", "counter", "counter", "integrated"]
    assert not any(d.mig_enabled for d in devices)
    assert backend.driver_version() == "550.54.15"


def test_read_converts_units_at_the_boundary(make_sim: SimFactory, clock: ManualClock) -> None:
    sim = SimulatedNvml(["A100-40GB"], clock, driver_uptime_seconds=3 * 86_400.0)
    sim.set_processes(0, [4242, 4343], used_memory_bytes=8 * 1024**3)
    sim.set_load(0, 0.5)
    backend = NvmlBackend(sim)
    backend.open()
    counter_start = backend.read(0).energy_joules
    assert counter_start is not None and counter_start > 1e6  # driver loaded days ago
    clock.advance(10.0)
    reading = backend.read(0)
    profile = GPU_PROFILES["A100-40GB"]
    power = profile.idle_watts + 0.5 * (profile.max_watts - profile.idle_watts)
    assert reading.uuid == sim.uuid(0)
    assert reading.power_watts == pytest.approx(power)  # NVML mW -> W
    assert reading.energy_joules == pytest.approx(counter_start + power * 10.0)  # mJ -> J
    assert reading.utilization_ratio == 0.5  # percent -> 0..1
    assert reading.power_limit_watts == 400.0
    assert reading.memory_total_bytes == 40 * 1024**3
    assert reading.memory_used_bytes == 16 * 1024**3  # v2: allocated, reserved apart
    assert [(p.pid, p.used_memory_bytes) for p in reading.processes] == [
        (4242, 8 * 1024**3),
        (4343, 8 * 1024**3),
    ]
    assert [p.utilization_ratio for p in reading.processes] == [0.25, 0.25]


def test_process_utilization_is_zero_when_nvml_has_no_samples(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    sim = make_sim(("H100-SXM-80GB",))
    sim.set_processes(0, [77])  # load stays 0: NVML answers NOT_FOUND
    backend = NvmlBackend(sim)
    backend.open()
    assert [p.utilization_ratio for p in backend.read(0).processes] == [0.0]


def test_pynvml_success_error_on_zero_samples_means_no_samples(make_sim: SimFactory) -> None:
    # pynvml raises NVMLError(NVML_SUCCESS) when the first call reports zero samples.
    sim = make_sim(("H100-SXM-80GB",))
    sim.set_processes(0, [77])

    def zero_samples(handle: Any, last_seen: int) -> Any:
        raise nv.NVMLError(0)

    backend = NvmlBackend(PatchedNvml(sim, nvmlDeviceGetProcessUtilization=zero_samples))
    backend.open()
    assert backend.devices()[0].energy_source == "counter"
    assert [p.utilization_ratio for p in backend.read(0).processes] == [0.0]


def test_strings_returned_as_bytes_are_decoded(make_sim: SimFactory) -> None:
    sim = make_sim(("L4",))
    patched = PatchedNvml(
        sim,
        nvmlDeviceGetUUID=lambda h: sim.nvmlDeviceGetUUID(h).encode(),
        nvmlDeviceGetName=lambda h: sim.nvmlDeviceGetName(h).encode(),
        nvmlSystemGetDriverVersion=lambda: b"535.104.05",
    )
    backend = NvmlBackend(patched)
    backend.open()
    device = backend.devices()[0]
    assert device.uuid == sim.uuid(0)
    assert device.name == "NVIDIA L4"
    assert backend.driver_version() == "535.104.05"


READ_ERRORS: list[tuple[type[BaseException], type[GpuError]]] = [
    (nv.NVMLError_GpuIsLost, GpuLost),
    (nv.NVMLError_Unknown, GpuLost),
    (nv.NVMLError_GpuNotFound, GpuLost),
    (nv.NVMLError_ResetRequired, GpuLost),
    (nv.NVMLError_Uninitialized, GpuDriverError),
    (nv.NVMLError_LibRmVersionMismatch, GpuDriverError),
    (nv.NVMLError_DriverNotLoaded, GpuDriverError),
    (nv.NVMLError_LibraryNotFound, GpuUnavailable),
    (nv.NVMLError_Timeout, GpuTimeout),
    (nv.NVMLError_InvalidArgument, GpuReadError),
    (nv.NVMLError_InsufficientSize, GpuReadError),
]


@pytest.mark.parametrize(("nvml_error", "expected"), READ_ERRORS)
def test_read_maps_nvml_errors_to_the_exception_tree(
    make_sim: SimFactory, nvml_error: type[BaseException], expected: type[GpuError]
) -> None:
    sim = make_sim(("H100-SXM-80GB",))
    backend = NvmlBackend(PatchedNvml(sim, nvmlDeviceGetPowerUsage=raising(nvml_error)))
    backend.open()
    with pytest.raises(expected, match="nvmlDeviceGetPowerUsage on GPU 0") as info:
        backend.read(0)
    assert type(info.value) is expected
    assert isinstance(info.value.__cause__, nvml_error)


UNSUPPORTED_ERRORS = [
    nv.NVMLError_NotSupported,
    nv.NVMLError_FunctionNotFound,
    nv.NVMLError_NoPermission,
]


@pytest.mark.parametrize("nvml_error", UNSUPPORTED_ERRORS)
def test_unsupported_field_is_none_and_not_asked_again(
    make_sim: SimFactory, nvml_error: type[BaseException]
) -> None:
    sim = make_sim(("H100-SXM-80GB",))
    calls = []

    def limit(handle: Any) -> Any:
        calls.append(handle)
        raise nvml_error()

    backend = NvmlBackend(PatchedNvml(sim, nvmlDeviceGetEnforcedPowerLimit=limit))
    backend.open()
    first = backend.read(0)
    second = backend.read(0)
    assert first.power_limit_watts is None and second.power_limit_watts is None
    assert first.power_watts is not None
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("field_name", "attribute"),
    [
        ("power", "power_watts"),
        ("energy", "energy_joules"),
        ("utilization", "utilization_ratio"),
        ("memory", "memory_used_bytes"),
        ("power_limit", "power_limit_watts"),
    ],
)
def test_not_supported_field_reads_as_none(
    make_sim: SimFactory, field_name: str, attribute: str
) -> None:
    sim = make_sim(("H100-SXM-80GB",))
    sim.set_not_supported(0, field_name)
    backend = NvmlBackend(sim)
    backend.open()
    reading = backend.read(0)
    assert getattr(reading, attribute) is None
    others = {"power_watts", "energy_joules", "utilization_ratio", "power_limit_watts"} - {
        attribute
    }
    assert all(getattr(reading, other) is not None for other in others)


def test_energy_not_supported_at_open_means_integrated(make_sim: SimFactory) -> None:
    sim = make_sim(("H100-SXM-80GB", "H100-SXM-80GB"))
    sim.set_not_supported(1, "energy")
    backend = NvmlBackend(sim)
    backend.open()
    assert [d.energy_source for d in backend.devices()] == ["counter", "integrated"]
    assert backend.read(1).energy_joules is None
    calls = sim.calls("nvmlDeviceGetTotalEnergyConsumption")
    backend.read(1)
    assert sim.calls("nvmlDeviceGetTotalEnergyConsumption") == calls


def test_binding_without_a_function_still_reads(make_sim: SimFactory) -> None:
    # Old bindings lack newer functions: the field is None, the rest is read.
    sim = make_sim(("H100-SXM-80GB",))
    sim.set_processes(0, [5])
    backend = NvmlBackend(
        PatchedNvml(
            sim,
            nvmlDeviceGetTotalEnergyConsumption=None,
            nvmlDeviceGetProcessUtilization=None,
            nvmlDeviceGetMigMode=None,
        )
    )
    backend.open()
    assert backend.devices()[0].energy_source == "integrated"
    reading = backend.read(0)
    assert reading.energy_joules is None
    assert reading.power_watts == 70.0
    assert [(p.pid, p.utilization_ratio) for p in reading.processes] == [(5, None)]


def test_memory_info_v1_fallback_on_old_drivers(make_sim: SimFactory) -> None:
    sim = make_sim(("L4",))
    sim.set_processes(0, [1], used_memory_bytes=1024**3)

    def memory_v1_only(handle: Any, version: int | None = None) -> Any:
        if version:
            raise nv.NVMLError_FunctionNotFound()
        return sim.nvmlDeviceGetMemoryInfo(handle)

    backend = NvmlBackend(PatchedNvml(sim, nvmlDeviceGetMemoryInfo=memory_v1_only))
    backend.open()
    reading = backend.read(0)
    # v1 `used` includes the driver's reserved memory.
    assert reading.memory_used_bytes == 1024**3 + GPU_PROFILES["L4"].reserved_memory_bytes


def test_mig_gpu_is_read_as_a_whole_gpu_without_errors(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    sim = make_sim(("A100-40GB", "A100-40GB"))
    sim.set_mig(0, True)
    sim.set_processes(0, [11, 12])
    sim.set_load(0, 1.0)
    backend = NvmlBackend(sim)
    backend.open()
    assert [d.mig_enabled for d in backend.devices()] == [True, False]
    counter_start = backend.read(0).energy_joules
    assert counter_start is not None
    clock.advance(5.0)
    reading = backend.read(0)
    assert reading.power_watts == 380.0
    assert reading.energy_joules == pytest.approx(counter_start + 380.0 * 5.0)
    assert reading.utilization_ratio is None  # not supported on MIG
    assert reading.memory_used_bytes is None  # parent handle without privileges
    assert [(p.pid, p.utilization_ratio) for p in reading.processes] == [(11, None), (12, None)]
    assert backend.read(1).utilization_ratio == 0.0


@pytest.mark.parametrize(
    ("reason", "nvml_error"),
    [
        ("library_not_found", nv.NVMLError_LibraryNotFound),
        ("driver_not_loaded", nv.NVMLError_DriverNotLoaded),
    ],
)
def test_init_failure_is_gpu_unavailable(
    make_sim: SimFactory, reason: str, nvml_error: type[BaseException]
) -> None:
    sim = make_sim()
    sim.fail_init(reason)
    backend = NvmlBackend(sim)
    with pytest.raises(GpuUnavailable, match="nvmlInit") as info:
        backend.open()
    assert isinstance(info.value.__cause__, nvml_error)
    assert backend.devices() == ()


def test_gpu_lost_while_probing_is_left_out(make_sim: SimFactory, caplog: Any) -> None:
    sim = make_sim(("H100-SXM-80GB", "L4", "A100-40GB"))
    sim.lose_gpu(1)
    backend = NvmlBackend(sim, logging.getLogger("probe"))
    with caplog.at_level(logging.WARNING, "probe"):
        backend.open()
    assert [d.index for d in backend.devices()] == [0, 2]
    assert "GPU 1 left out" in caplog.text


def test_lost_gpu_read_raises_gpu_lost_while_others_read(make_sim: SimFactory) -> None:
    sim = make_sim(("H100-SXM-80GB", "L4"))
    backend = NvmlBackend(sim)
    backend.open()
    sim.lose_gpu(0)
    with pytest.raises(GpuLost):
        backend.read(0)
    assert backend.read(1).power_watts == 16.0


def test_driver_reload_invalidates_the_session(make_sim: SimFactory) -> None:
    sim = make_sim(("H100-SXM-80GB",))
    backend = NvmlBackend(sim)
    backend.open()
    sim.reload_driver()
    with pytest.raises(GpuDriverError):
        backend.read(0)
    backend.close()
    backend.open()
    assert backend.read(0).energy_joules == 0.0


def test_unknown_index_names_the_known_ones(make_sim: SimFactory) -> None:
    backend = NvmlBackend(make_sim(("L4",)))
    with pytest.raises(GpuReadError, match="call open first"):
        backend.read(0)
    backend.open()
    with pytest.raises(GpuReadError, match="no GPU with index 3; known indices: 0"):
        backend.read(3)


def test_close_shuts_nvml_down_once_and_never_raises(make_sim: SimFactory) -> None:
    sim = make_sim(("L4",))
    backend = NvmlBackend(sim)
    backend.close()  # never opened: nothing to do
    backend.open()
    backend.close()
    backend.close()
    assert sim.calls("nvmlShutdown") == 1
    sim.reload_driver()
    backend.open()
    sim.reload_driver()  # the session is gone: nvmlShutdown fails, close still returns
    backend.close()
    assert sim.calls("nvmlShutdown") == 2
