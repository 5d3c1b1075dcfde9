"""Simulated NVML: a module-like object with pynvml's function names, for tests and the demo.

``NvmlBackend`` runs unchanged on it: the same ``nvml*`` functions, the same units (mW, mJ,
percent, bytes) and pynvml's own ``NVMLError`` subclasses (re-exported by ``agent.gpu.nvml``,
so this module never imports pynvml). Time comes from an injected clock, so tests run in
virtual time; the only real-time waits are the injected hangs.

Power model: board power follows the load given with :meth:`SimulatedNvml.set_load`, ``idle + (max
- idle) * load``, as a step function of time. The true energy is the exact integral of that step
function (integrated at every load change and every read). What ``nvmlDeviceGetPowerUsage`` returns
depends on the profile, as on real parts (NVIDIA nvml.h, nvmlDeviceGetPowerUsage): a trailing 1 s
average on Ampere (except GA100) and newer (H100, L4), the instantaneous value on GA100 and older
(A100, P100). The energy counter is the true energy since the last (simulated) driver load, in
whole mJ (from 0 at the start of the simulation, or from idle energy over ``driver_uptime_seconds``
before it); it restarts at 0 on :meth:`SimulatedNvml.reload_driver`, and is unsupported on the
pre-Volta P100.

Faults: :meth:`~SimulatedNvml.lose_gpu`, :meth:`~SimulatedNvml.reload_driver`,
:meth:`~SimulatedNvml.set_not_supported`, :meth:`~SimulatedNvml.hang`,
:meth:`~SimulatedNvml.fail_init`, :meth:`~SimulatedNvml.set_mig`. Thread-safe.
"""

from __future__ import annotations

import random
import threading
import time
import uuid as uuid_module
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.clock import Clock
from agent.gpu.nvml import (
    FIELD_FUNCTIONS,
    NVML_DEVICE_MIG_DISABLE,
    NVML_DEVICE_MIG_ENABLE,
    NVMLError,
    NVMLError_DriverNotLoaded,
    NVMLError_GpuIsLost,
    NVMLError_InvalidArgument,
    NVMLError_LibraryNotFound,
    NVMLError_NoPermission,
    NVMLError_NotFound,
    NVMLError_NotSupported,
    NVMLError_Uninitialized,
    nvmlMemory_v2,
)

_GIB = 1024**3
_MIB = 1024**2
_NOT_MIG = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId when MIG is off (nvml.h)


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """The simulated behaviour of one GPU model.

    Idle and full-load figures other than the H100's idle (~70 W) are round simulation
    values, not measurements.

    Attributes:
        nvml_name: What ``nvmlDeviceGetName`` returns.
        idle_watts: Board power at zero load, W.
        max_watts: Board power at full load, W.
        power_limit_watts: Enforced power limit, W.
        memory_total_bytes: Device memory, bytes.
        reserved_memory_bytes: Memory the driver reserves, bytes.
        energy_counter: True on Volta and newer (``nvmlDeviceGetTotalEnergyConsumption``).
        power_average_seconds: Window of the reported power average, s; 0 = instantaneous.
        mig_capable: True when the part supports MIG (``nvmlDeviceGetMigMode``).
    """

    nvml_name: str
    idle_watts: float
    max_watts: float
    power_limit_watts: float
    memory_total_bytes: int
    reserved_memory_bytes: int
    energy_counter: bool
    power_average_seconds: float
    mig_capable: bool


GPU_PROFILES = MappingProxyType(
    {
        "H100-SXM-80GB": GpuProfile(
            "NVIDIA H100 80GB HBM3", 70.0, 650.0, 700.0, 80 * _GIB, 512 * _MIB, True, 1.0, True
        ),
        "A100-40GB": GpuProfile(
            "NVIDIA A100-SXM4-40GB", 55.0, 380.0, 400.0, 40 * _GIB, 512 * _MIB, True, 0.0, True
        ),
        "L4": GpuProfile("NVIDIA L4", 16.0, 72.0, 72.0, 24 * _GIB, 256 * _MIB, True, 1.0, False),
        "P100-16GB": GpuProfile(
            "Tesla P100-PCIE-16GB", 30.0, 240.0, 250.0, 16 * _GIB, 256 * _MIB, False, 0.0, False
        ),
    }
)
"""Simulated GPU models by short name."""

INIT_FAILURES = MappingProxyType(
    {"library_not_found": NVMLError_LibraryNotFound, "driver_not_loaded": NVMLError_DriverNotLoaded}
)
"""``fail_init`` reasons and the pynvml error ``nvmlInit`` then raises."""

SIMULATED_DRIVER_VERSION = "550.54.15"


@dataclass(frozen=True, slots=True)
class SimHandle:
    """A device handle; handles from before a driver reload stop working."""

    index: int
    generation: int


@dataclass(frozen=True, slots=True)
class SimUtilization:
    """Like ``c_nvmlUtilization_t``: percent."""

    gpu: int
    memory: int


@dataclass(frozen=True, slots=True)
class SimMemory:
    """Like ``c_nvmlMemory_t`` / ``c_nvmlMemory_v2_t``: bytes."""

    total: int
    free: int
    used: int
    reserved: int = 0
    version: int = 0


@dataclass(frozen=True, slots=True)
class SimProcessInfo:
    """Like pynvml's process info object (``nvmlDeviceGetComputeRunningProcesses``)."""

    pid: int
    usedGpuMemory: int | None  # noqa: N815 (pynvml's field name)
    gpuInstanceId: int = _NOT_MIG  # noqa: N815
    computeInstanceId: int = _NOT_MIG  # noqa: N815


@dataclass(frozen=True, slots=True)
class SimProcessUtilizationSample:
    """Like ``c_nvmlProcessUtilizationSample_t``: percent, timestamp in µs since 1970."""

    pid: int
    timeStamp: int  # noqa: N815
    smUtil: int  # noqa: N815
    memUtil: int  # noqa: N815
    encUtil: int = 0  # noqa: N815
    decUtil: int = 0  # noqa: N815


@dataclass
class _Hang:
    function_name: str
    index: int | None
    deadline_real: float
    event: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Gpu:
    profile: GpuProfile
    uuid: str
    created_at: float
    last_t: float
    load: float = 0.0
    power_watts: float = 0.0
    energy_joules: float = 0.0  # true energy since the simulation started
    counter_base_joules: float = 0.0  # true energy at the last driver load (< 0: before start)
    pids: tuple[int, ...] = ()
    process_memory_bytes: int = 0
    lost_at: float | None = None
    mig: bool = False
    not_supported: set[str] = field(default_factory=set)
    # (t, energy at t, power from t on): enough history for the trailing power average.
    breakpoints: deque[tuple[float, float, float]] = field(default_factory=deque)

    def advance(self, now: float) -> None:
        if now > self.last_t:
            self.energy_joules += self.power_watts * (now - self.last_t)
            self.last_t = now

    def energy_at(self, t: float) -> float:
        """True energy at a past time t within the kept history, J."""
        base_t, base_e, base_p = self.breakpoints[0]
        for bp in self.breakpoints:
            if bp[0] <= t:
                base_t, base_e, base_p = bp
            else:
                break
        return base_e + base_p * (t - base_t)

    def reported_power(self, now: float) -> float:
        window = self.profile.power_average_seconds
        start = max(now - window, self.created_at)
        if window <= 0 or now <= start:
            return self.power_watts
        return (self.energy_joules - self.energy_at(start)) / (now - start)

    def set_power(self, now: float, watts: float) -> None:
        self.power_watts = watts
        self.breakpoints.append((now, self.energy_joules, watts))
        horizon = now - self.profile.power_average_seconds
        while len(self.breakpoints) > 1 and self.breakpoints[1][0] <= horizon:
            self.breakpoints.popleft()


class SimulatedNvml:
    """A simulated NVML library with ground truth, usable wherever ``pynvml`` is.

    Args:
        gpus: Profile names from ``GPU_PROFILES``, one per device, in index order.
        clock: Source of (virtual or real) monotonic time for power integration.
        seed: Seed of the UUIDs.
        driver_uptime_seconds: How long the simulated driver had been loaded, at idle, before
            the simulation started, s: the energy counters start at idle W x this. 0 (the
            default): the counters start at 0 and equal ``true_energy_joules`` until a reload.

    Raises:
        ValueError: When a profile name is unknown or the uptime is negative.
    """

    nvmlMemory_v2 = nvmlMemory_v2  # noqa: N815 (pynvml's name)
    NVML_DEVICE_MIG_ENABLE = NVML_DEVICE_MIG_ENABLE
    NVML_DEVICE_MIG_DISABLE = NVML_DEVICE_MIG_DISABLE
    NVMLError = NVMLError

    def __init__(
        self,
        gpus: Sequence[str],
        clock: Clock,
        seed: int = 0,
        *,
        driver_uptime_seconds: float = 0.0,
    ) -> None:
        if driver_uptime_seconds < 0:
            raise ValueError(f"driver_uptime_seconds must be >= 0, got {driver_uptime_seconds}")
        unknown = [g for g in gpus if g not in GPU_PROFILES]
        if unknown:
            raise ValueError(
                f"unknown GPU profile(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(GPU_PROFILES)}"
            )
        self._clock = clock
        self._lock = threading.RLock()
        rng = random.Random(seed)
        now = clock.monotonic()
        self._gpus: list[_Gpu] = []
        for name in gpus:
            profile = GPU_PROFILES[name]
            gpu = _Gpu(
                profile=profile,
                uuid=f"GPU-{uuid_module.UUID(int=rng.getrandbits(128), version=4)}",
                created_at=now,
                last_t=now,
            )
            # Energy the counter holds from before the simulation (driver loaded at idle).
            gpu.counter_base_joules = -profile.idle_watts * driver_uptime_seconds
            gpu.set_power(now, profile.idle_watts)
            self._gpus.append(gpu)
        self._initialised = False
        self._generation = 0
        self._driver_down_until: float | None = None
        self._init_failure: str | None = None
        self._hangs: list[_Hang] = []
        self._calls: dict[str, int] = {}
        self._blocked_calls = 0

    # -- control: load and ground truth ---------------------------------------------------

    def set_load(self, index: int, utilization: float) -> None:
        """Set a GPU's load; its power follows from now on.

        Args:
            index: Device index.
            utilization: 0..1.

        Raises:
            ValueError: When the index or the utilization is out of range.
        """
        if not 0.0 <= utilization <= 1.0:
            raise ValueError(f"utilization must be within 0..1, got {utilization}")
        with self._lock:
            gpu = self._gpu(index)
            now = self._clock.monotonic()
            gpu.advance(now)
            gpu.load = utilization
            p = gpu.profile
            gpu.set_power(now, p.idle_watts + (p.max_watts - p.idle_watts) * utilization)

    def set_processes(
        self, index: int, pids: Sequence[int], used_memory_bytes: int | None = None
    ) -> None:
        """Set the compute processes on a GPU (host PIDs).

        Args:
            index: Device index.
            pids: Host PIDs.
            used_memory_bytes: Memory of each process, bytes; default 90 % of the device
                split evenly (as vLLM's ``gpu_memory_utilization=0.9``).

        Raises:
            ValueError: When the index is out of range or the memory does not fit.
        """
        with self._lock:
            gpu = self._gpu(index)
            total = gpu.profile.memory_total_bytes - gpu.profile.reserved_memory_bytes
            per = used_memory_bytes
            if per is None:
                per = int(0.9 * gpu.profile.memory_total_bytes / len(pids)) if pids else 0
            if per < 0 or per * len(pids) > total:
                raise ValueError(f"{len(pids)} processes of {per} bytes do not fit GPU {index}")
            gpu.pids = tuple(int(p) for p in pids)
            gpu.process_memory_bytes = per

    def true_energy_joules(self, index: int) -> float:
        """Exact integral of the GPU's simulated power since the simulation started, J."""
        with self._lock:
            gpu = self._gpu(index)
            gpu.advance(self._clock.monotonic())
            return gpu.energy_joules

    def true_power_watts(self, index: int) -> float:
        """The GPU's instantaneous simulated power, W."""
        with self._lock:
            return self._gpu(index).power_watts

    def uuid(self, index: int) -> str:
        """The GPU's UUID, ``GPU-...``."""
        with self._lock:
            return self._gpu(index).uuid

    def device_count(self) -> int:
        """Number of simulated GPUs."""
        return len(self._gpus)

    def calls(self, function_name: str) -> int:
        """How many times an ``nvml*`` function was called (including failed calls)."""
        with self._lock:
            return self._calls.get(function_name, 0)

    def blocked_calls(self) -> int:
        """How many calls entered a hang so far."""
        with self._lock:
            return self._blocked_calls

    # -- control: faults ------------------------------------------------------------------

    def lose_gpu(self, index: int, at_seconds: float | None = None) -> None:
        """Make a GPU fall off the bus: every call on it raises ``NVMLError_GpuIsLost``.

        Args:
            index: Device index.
            at_seconds: Monotonic time from which it is lost; default now.
        """
        with self._lock:
            self._gpu(index).lost_at = self._clock.monotonic() if at_seconds is None else at_seconds

    def reload_driver(self, downtime_seconds: float = 0.0) -> None:
        """Reload the driver now: energy counters restart at 0, handles and the session die.

        Until ``nvmlInit`` is called again every call raises ``NVMLError_Uninitialized``;
        during ``downtime_seconds`` (clock time) ``nvmlInit`` raises ``DriverNotLoaded``.

        Args:
            downtime_seconds: How long the driver stays unloaded, s.
        """
        with self._lock:
            now = self._clock.monotonic()
            for gpu in self._gpus:
                gpu.advance(now)
                gpu.counter_base_joules = gpu.energy_joules
            self._generation += 1
            self._initialised = False
            self._driver_down_until = now + downtime_seconds if downtime_seconds > 0 else None

    def set_not_supported(self, index: int, field_name: str, unsupported: bool = True) -> None:
        """Make one field's NVML function raise ``NVMLError_NotSupported`` on one GPU.

        Args:
            index: Device index.
            field_name: One of ``agent.gpu.nvml.FIELD_FUNCTIONS`` (``power``, ``energy``...).
            unsupported: False to make it supported again.

        Raises:
            ValueError: When the field name is unknown.
        """
        if field_name not in FIELD_FUNCTIONS:
            raise ValueError(f"unknown field {field_name!r}; known: {', '.join(FIELD_FUNCTIONS)}")
        with self._lock:
            gpu = self._gpu(index)
            if unsupported:
                gpu.not_supported.add(field_name)
            else:
                gpu.not_supported.discard(field_name)

    def set_mig(self, index: int, enabled: bool) -> None:
        """Turn MIG mode on or off (effective at the next probe, as after a GPU reset).

        Raises:
            ValueError: When the profile has no MIG support.
        """
        with self._lock:
            gpu = self._gpu(index)
            if enabled and not gpu.profile.mig_capable:
                raise ValueError(f"GPU {index} ({gpu.profile.nvml_name}) does not support MIG")
            gpu.mig = enabled

    def hang(self, function_name: str, seconds: float, index: int | None = None) -> None:
        """Make calls hang: they block for up to ``seconds`` of real time, or until released.

        Calls that start while the hang is armed block on a ``threading.Event`` until
        :meth:`release_hangs` or until ``seconds`` of real time after this call; then the
        hang is over and later calls run normally.

        Args:
            function_name: An ``nvml*`` function name, or ``*`` for every function.
            seconds: Real-time length of the hang, s.
            index: Only calls on this device (handle-taking functions); None = every call.

        Raises:
            ValueError: When the function name is not one this simulation provides.
        """
        if function_name != "*" and not (
            function_name.startswith("nvml") and callable(getattr(self, function_name, None))
        ):
            raise ValueError(f"no NVML function {function_name!r} in the simulation")
        with self._lock:
            self._hangs.append(_Hang(function_name, index, time.monotonic() + seconds))

    def release_hangs(self) -> None:
        """End every hang now; blocked calls continue."""
        with self._lock:
            hangs, self._hangs = self._hangs, []
        for h in hangs:
            h.event.set()

    def fail_init(self, reason: str | None) -> None:
        """Make ``nvmlInit`` fail until called again with None.

        Args:
            reason: ``library_not_found`` (``NVMLError_LibraryNotFound``),
                ``driver_not_loaded`` (``NVMLError_DriverNotLoaded``), or None to stop.

        Raises:
            ValueError: When the reason is unknown.
        """
        if reason is not None and reason not in INIT_FAILURES:
            raise ValueError(f"unknown init failure {reason!r}; known: {', '.join(INIT_FAILURES)}")
        with self._lock:
            self._init_failure = reason

    # -- the NVML API (names and units as pynvml) -----------------------------------------

    def nvmlInit(self) -> None:  # noqa: N802
        """Initialise the (simulated) library."""
        self._enter("nvmlInit", None)
        with self._lock:
            if self._init_failure is not None:
                raise INIT_FAILURES[self._init_failure]()
            until = self._driver_down_until
            if until is not None:
                if self._clock.monotonic() < until:
                    raise NVMLError_DriverNotLoaded()
                self._driver_down_until = None
            self._initialised = True

    def nvmlShutdown(self) -> None:  # noqa: N802
        """Shut the library down."""
        self._enter("nvmlShutdown", None)
        with self._lock:
            if not self._initialised:
                raise NVMLError_Uninitialized()
            self._initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        """The driver version string."""
        self._enter("nvmlSystemGetDriverVersion", None)
        with self._lock:
            self._check_session()
            return SIMULATED_DRIVER_VERSION

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        """Number of devices."""
        self._enter("nvmlDeviceGetCount", None)
        with self._lock:
            self._check_session()
            return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimHandle:  # noqa: N802
        """A handle for a device index."""
        self._enter("nvmlDeviceGetHandleByIndex", index)
        with self._lock:
            self._check_session()
            if not 0 <= index < len(self._gpus):
                raise NVMLError_InvalidArgument()
            self._check_lost(self._gpus[index])
            return SimHandle(index, self._generation)

    def nvmlDeviceGetUUID(self, handle: SimHandle) -> str:  # noqa: N802
        """The device UUID."""
        with self._device(handle, "nvmlDeviceGetUUID") as gpu:
            return gpu.uuid

    def nvmlDeviceGetName(self, handle: SimHandle) -> str:  # noqa: N802
        """The device name."""
        with self._device(handle, "nvmlDeviceGetName") as gpu:
            return gpu.profile.nvml_name

    def nvmlDeviceGetPowerUsage(self, handle: SimHandle) -> int:  # noqa: N802
        """Power, mW (1 s average or instantaneous, by profile)."""
        with self._device(handle, "nvmlDeviceGetPowerUsage", "power") as gpu:
            return round(gpu.reported_power(gpu.last_t) * 1000.0)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: SimHandle) -> int:  # noqa: N802
        """Energy since the last driver load, whole mJ."""
        with self._device(handle, "nvmlDeviceGetTotalEnergyConsumption", "energy") as gpu:
            if not gpu.profile.energy_counter:
                raise NVMLError_NotSupported()
            return int((gpu.energy_joules - gpu.counter_base_joules) * 1000.0)

    def nvmlDeviceGetUtilizationRates(self, handle: SimHandle) -> SimUtilization:  # noqa: N802
        """Utilization, percent; not supported on MIG."""
        with self._device(handle, "nvmlDeviceGetUtilizationRates", "utilization") as gpu:
            if gpu.mig:
                raise NVMLError_NotSupported()
            return SimUtilization(gpu=round(gpu.load * 100), memory=round(gpu.load * 60))

    def nvmlDeviceGetMemoryInfo(  # noqa: N802
        self, handle: SimHandle, version: int | None = None
    ) -> SimMemory:
        """Memory, bytes; v2 ``used`` excludes reserved memory. MIG parent: no permission."""
        with self._device(handle, "nvmlDeviceGetMemoryInfo", "memory") as gpu:
            if gpu.mig:
                raise NVMLError_NoPermission()
            p = gpu.profile
            allocated = gpu.process_memory_bytes * len(gpu.pids)
            free = p.memory_total_bytes - p.reserved_memory_bytes - allocated
            if version:
                return SimMemory(
                    p.memory_total_bytes, free, allocated, p.reserved_memory_bytes, version
                )
            return SimMemory(p.memory_total_bytes, free, allocated + p.reserved_memory_bytes)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: SimHandle) -> int:  # noqa: N802
        """Enforced power limit, mW."""
        with self._device(handle, "nvmlDeviceGetEnforcedPowerLimit", "power_limit") as gpu:
            return round(gpu.profile.power_limit_watts * 1000.0)

    def nvmlDeviceGetComputeRunningProcesses(  # noqa: N802
        self, handle: SimHandle
    ) -> list[SimProcessInfo]:
        """Compute processes with host PIDs and memory, bytes."""
        with self._device(handle, "nvmlDeviceGetComputeRunningProcesses", "processes") as gpu:
            return [SimProcessInfo(pid, gpu.process_memory_bytes) for pid in gpu.pids]

    def nvmlDeviceGetProcessUtilization(  # noqa: N802
        self,
        handle: SimHandle,
        timeStamp: int,  # noqa: N803
    ) -> list[SimProcessUtilizationSample]:
        """Per-process SM utilization samples newer than ``timeStamp`` (µs); MIG: unsupported."""
        name = "nvmlDeviceGetProcessUtilization"
        with self._device(handle, name, "process_utilization") as gpu:
            if gpu.mig:
                raise NVMLError_NotSupported()
            now_us = int(self._clock.wall() * 1_000_000)
            if not gpu.pids or gpu.load <= 0 or now_us <= timeStamp:
                raise NVMLError_NotFound()
            share = round(gpu.load * 100 / len(gpu.pids))
            return [
                SimProcessUtilizationSample(
                    pid, now_us, share, round(gpu.load * 60 / len(gpu.pids))
                )
                for pid in gpu.pids
            ]

    def nvmlDeviceGetMigMode(self, handle: SimHandle) -> list[int]:  # noqa: N802
        """``[current, pending]`` MIG mode; not supported on parts without MIG."""
        with self._device(handle, "nvmlDeviceGetMigMode") as gpu:
            if not gpu.profile.mig_capable:
                raise NVMLError_NotSupported()
            mode = NVML_DEVICE_MIG_ENABLE if gpu.mig else NVML_DEVICE_MIG_DISABLE
            return [mode, mode]

    # -- internals ------------------------------------------------------------------------

    def _gpu(self, index: int) -> _Gpu:
        if not 0 <= index < len(self._gpus):
            raise ValueError(f"no simulated GPU {index}; there are {len(self._gpus)}")
        return self._gpus[index]

    def _enter(self, function_name: str, index: int | None) -> None:
        """Count the call, then block here (outside the lock) if a hang matches it."""
        with self._lock:
            self._calls[function_name] = self._calls.get(function_name, 0) + 1
            if not self._hangs:  # the usual case: no clock read, no list rebuilt per call
                return
            now_real = time.monotonic()
            self._hangs = [h for h in self._hangs if h.deadline_real > now_real]
            hang = next(
                (
                    h
                    for h in self._hangs
                    if h.function_name in ("*", function_name)
                    and (h.index is None or h.index == index)
                ),
                None,
            )
            if hang is not None:
                self._blocked_calls += 1
        if hang is not None:
            hang.event.wait(max(0.0, hang.deadline_real - time.monotonic()))

    def _check_session(self) -> None:
        if not self._initialised:
            raise NVMLError_Uninitialized()

    def _check_lost(self, gpu: _Gpu) -> None:
        if gpu.lost_at is not None and self._clock.monotonic() >= gpu.lost_at:
            raise NVMLError_GpuIsLost()

    def _device(self, handle: Any, function_name: str, field_name: str | None = None) -> _Call:
        index = handle.index if isinstance(handle, SimHandle) else None
        self._enter(function_name, index)
        return _Call(self, handle, field_name)

    def _locked_gpu(self, handle: Any, field_name: str | None) -> _Gpu:
        self._check_session()
        if not isinstance(handle, SimHandle) or not 0 <= handle.index < len(self._gpus):
            raise NVMLError_InvalidArgument()
        if handle.generation != self._generation:
            raise NVMLError_Uninitialized()  # a handle from before the driver reload
        gpu = self._gpus[handle.index]
        self._check_lost(gpu)
        if field_name is not None and field_name in gpu.not_supported:
            raise NVMLError_NotSupported()
        gpu.advance(self._clock.monotonic())
        return gpu


class _Call:
    """Holds the simulation lock for the body of one device call."""

    def __init__(self, sim: SimulatedNvml, handle: Any, field_name: str | None) -> None:
        self._sim = sim
        self._handle = handle
        self._field = field_name

    def __enter__(self) -> _Gpu:
        self._sim._lock.acquire()
        try:
            return self._sim._locked_gpu(self._handle, self._field)
        except BaseException:
            self._sim._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        self._sim._lock.release()
