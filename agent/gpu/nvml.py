"""NVML backend: the ONLY module that imports ``pynvml`` (distribution ``nvidia-ml-py``). Does I/O.

``NvmlBackend(nvml)`` takes the NVML module as a parameter: the real ``pynvml`` (from
:func:`import_pynvml`) in production, ``agent.simulation.nvml.SimulatedNvml`` in tests and the
demo. Everything else in the agent sees SI units and the ``agent.gpu.errors`` tree only:

* units are converted here and nowhere else: mW -> W, mJ -> J, percent -> 0..1;
* every NVML call goes through one helper that maps ``NVMLError`` subclasses to
  ``GpuError`` subclasses, turns "not supported" into ``None`` (and stops asking), and logs
  each distinct problem once;
* capabilities (energy counter, MIG mode, memory info v2, per-process utilization) are probed
  once, in :meth:`NvmlBackend.open`.

The pynvml error classes are re-exported so the simulated NVML raises exactly these classes
without importing pynvml itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import pynvml
from pynvml import (
    NVML_DEVICE_MIG_DISABLE,
    NVML_DEVICE_MIG_ENABLE,
    NVMLError,
    NVMLError_ArgumentVersionMismatch,
    NVMLError_DriverNotLoaded,
    NVMLError_FunctionNotFound,
    NVMLError_GpuIsLost,
    NVMLError_GpuNotFound,
    NVMLError_InsufficientSize,
    NVMLError_InvalidArgument,
    NVMLError_LibraryNotFound,
    NVMLError_LibRmVersionMismatch,
    NVMLError_NoPermission,
    NVMLError_NotFound,
    NVMLError_NotSupported,
    NVMLError_ResetRequired,
    NVMLError_Timeout,
    NVMLError_Uninitialized,
    NVMLError_Unknown,
    nvmlMemory_v2,
)

from agent.gpu.errors import (
    GpuDriverError,
    GpuError,
    GpuLost,
    GpuReadError,
    GpuTimeout,
    GpuUnavailable,
)
from agent.readings import EnergySource, GpuDevice, GpuProcess, GpuReading

__all__ = [
    "FIELD_FUNCTIONS",
    "NVML_DEVICE_MIG_DISABLE",
    "NVML_DEVICE_MIG_ENABLE",
    "NVMLError",
    "NVMLError_ArgumentVersionMismatch",
    "NVMLError_DriverNotLoaded",
    "NVMLError_FunctionNotFound",
    "NVMLError_GpuIsLost",
    "NVMLError_GpuNotFound",
    "NVMLError_InsufficientSize",
    "NVMLError_InvalidArgument",
    "NVMLError_LibRmVersionMismatch",
    "NVMLError_LibraryNotFound",
    "NVMLError_NoPermission",
    "NVMLError_NotFound",
    "NVMLError_NotSupported",
    "NVMLError_ResetRequired",
    "NVMLError_Timeout",
    "NVMLError_Uninitialized",
    "NVMLError_Unknown",
    "NvmlBackend",
    "import_pynvml",
    "nvmlMemory_v2",
]

FIELD_FUNCTIONS: Mapping[str, str] = MappingProxyType(
    {
        "power": "nvmlDeviceGetPowerUsage",  # mW; nvidia-smi power.draw
        "energy": "nvmlDeviceGetTotalEnergyConsumption",  # mJ since driver load, Volta+
        "utilization": "nvmlDeviceGetUtilizationRates",  # percent; utilization.gpu
        "memory": "nvmlDeviceGetMemoryInfo",  # bytes; memory.used / memory.total
        "power_limit": "nvmlDeviceGetEnforcedPowerLimit",  # mW; enforced.power.limit
        "processes": "nvmlDeviceGetComputeRunningProcesses",  # host PIDs; --query-compute-apps
        "process_utilization": "nvmlDeviceGetProcessUtilization",  # per-PID SM percent; pmon
    }
)
"""Each field of a reading and the NVML function that reads it (``nvidia-smi`` equivalent)."""

UNSUPPORTED_RETRY_READS = 60
"""Reads between two tries of a field that became unsupported while reading (1 min at 1 s)."""

RETRIED_FIELDS = frozenset({"utilization", "memory", "power_limit"})
"""Fields asked again after NOT_SUPPORTED (MIG on/off); energy and power keep their source."""

# Which NVML errors mean what for a monitor (NVIDIA nvml.h, the NVML_ERROR_* codes).
_UNSUPPORTED = (NVMLError_NotSupported, NVMLError_FunctionNotFound, NVMLError_NoPermission)
_LOST = (NVMLError_GpuIsLost, NVMLError_Unknown, NVMLError_GpuNotFound, NVMLError_ResetRequired)
_DRIVER = (NVMLError_Uninitialized, NVMLError_LibRmVersionMismatch, NVMLError_DriverNotLoaded)
_MEMORY_V2_FALLBACK = (NVMLError_FunctionNotFound, NVMLError_ArgumentVersionMismatch)
_UNSUPPORTED_RESULT = object()
_T = TypeVar("_T")


def import_pynvml() -> Any:
    """The real NVML binding module (``pynvml`` from ``nvidia-ml-py``).

    Importing it never touches the driver; :meth:`NvmlBackend.open` does.
    """
    return pynvml


def _map_error(exc: BaseException, what: str) -> GpuError:
    """The ``GpuError`` for an NVML exception, with a message naming the call."""
    message = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, _LOST):
        return GpuLost(message)
    if isinstance(exc, _DRIVER):
        return GpuDriverError(message)
    if isinstance(exc, NVMLError_LibraryNotFound):
        return GpuUnavailable(message)
    if isinstance(exc, NVMLError_Timeout):
        return GpuTimeout(message)
    return GpuReadError(message)


def _text(value: Any) -> str:
    """NVML strings: ``bytes`` in old bindings, ``str`` since 11.525 (vllm-project/vllm#7649)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dataclass(slots=True)
class _Device:
    """Per-device state. Only the device's own reader thread mutates it after ``open``."""

    info: GpuDevice
    handle: Any
    unsupported: set[str] = field(default_factory=set)
    memory_v2: bool = True
    last_seen_us: int = 0
    # Fields found unsupported while reading -> reads left before asking again (MIG mode
    # changes, GPU resets): a figure that comes back is not lost until the agent restarts.
    retry_in: dict[str, int] = field(default_factory=dict)


class NvmlBackend:
    """``GpuBackend`` over an NVML module.

    Reads of different devices may run at once from different threads (NVML is thread-safe);
    ``open`` and ``close`` must not overlap each other.

    Args:
        nvml: The ``pynvml`` module, or a module-like object with the same function names
            that raises pynvml's ``NVMLError`` subclasses (the simulated NVML).
        log: Logger; each distinct problem is logged once, not per read.
    """

    def __init__(self, nvml: Any, log: logging.Logger | None = None) -> None:
        self._nvml = nvml
        self._log = log or logging.getLogger("tokenergy.agent.gpu.nvml")
        self._devices: dict[int, _Device] = {}
        self._driver_version: str | None = None
        self._initialised = False
        self._logged: set[tuple[str, ...]] = set()
        self._log_lock = threading.Lock()

    def open(self) -> None:
        """``nvmlInit`` and probe every device once (identity and capabilities).

        A device that is lost while probing is left out (and logged); the others are kept.

        Raises:
            GpuUnavailable: The library or driver is missing, or ``nvmlInit`` failed.
            GpuDriverError: A driver-level error while listing devices.
            GpuReadError: Any other failure while listing devices.
        """
        try:
            self._nvml.nvmlInit()
        except NVMLError as exc:
            raise GpuUnavailable(f"nvmlInit: {type(exc).__name__}: {exc}") from exc
        self._initialised = True
        try:
            devices = self._probe_all()
        except GpuError:
            self.close()
            raise
        self._devices = devices
        try:
            self._driver_version = _text(self._nvml.nvmlSystemGetDriverVersion())
        except NVMLError:
            self._driver_version = None

    def devices(self) -> tuple[GpuDevice, ...]:
        """Devices probed by the last successful ``open``, by index."""
        return tuple(d.info for _, d in sorted(self._devices.items()))

    def driver_version(self) -> str | None:
        """The NVIDIA driver version (``nvidia-smi --query-gpu=driver_version``), when known."""
        return self._driver_version

    def read(self, index: int) -> GpuReading:
        """Read one device, converting to SI units.

        Args:
            index: NVML device index.

        Returns:
            Power W, raw energy counter J since driver load (None when unsupported),
            utilization 0..1, memory bytes, enforced power limit W, compute processes.

        Raises:
            GpuLost: GPU_IS_LOST, UNKNOWN, GPU_NOT_FOUND or RESET_REQUIRED.
            GpuDriverError: UNINITIALIZED, LIB_RM_VERSION_MISMATCH or DRIVER_NOT_LOADED.
            GpuTimeout: NVML returned TIMEOUT.
            GpuReadError: Any other NVML error, or an index not probed by ``open``.
        """
        dev = self._devices.get(index)
        if dev is None:
            known = ", ".join(str(i) for i in sorted(self._devices)) or "none (call open first)"
            raise GpuReadError(f"no GPU with index {index}; known indices: {known}")
        handle = dev.handle
        memory_kwargs = {"version": nvmlMemory_v2} if dev.memory_v2 else {}
        # Each reader converts the untyped NVML result to SI units at once, so nothing
        # past this point is Any.
        power_w = self._field(dev, "power", lambda f: _milli(f(handle)))
        energy_j = self._field(dev, "energy", lambda f: _milli(f(handle)))
        utilization = self._field(dev, "utilization", lambda f: _ratio(f(handle).gpu))
        memory = self._field(dev, "memory", lambda f: _used_total(f(handle, **memory_kwargs)))
        limit_w = self._field(dev, "power_limit", lambda f: _milli(f(handle)))
        processes = self._field(dev, "processes", lambda f: _processes(f(handle)))
        shares = self._process_shares(dev) if processes else None
        return GpuReading(
            index=dev.info.index,
            uuid=dev.info.uuid,
            power_watts=power_w,
            energy_joules=energy_j,
            utilization_ratio=utilization,
            memory_used_bytes=None if memory is None else memory[0],
            memory_total_bytes=None if memory is None else memory[1],
            power_limit_watts=limit_w,
            processes=tuple(
                GpuProcess(
                    pid=pid,
                    used_memory_bytes=used,
                    utilization_ratio=None if shares is None else shares.get(pid, 0.0),
                )
                for pid, used in processes or ()
            ),
        )

    def close(self) -> None:
        """``nvmlShutdown`` if initialised; never raises."""
        if not self._initialised:
            return
        self._initialised = False
        self._devices = {}
        try:
            self._nvml.nvmlShutdown()
        except NVMLError as exc:
            self._log.debug("nvmlShutdown failed: %s", exc)

    # -- probing -------------------------------------------------------------------------

    def _probe_all(self) -> dict[int, _Device]:
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except NVMLError as exc:
            raise _map_error(exc, "nvmlDeviceGetCount") from exc
        devices: dict[int, _Device] = {}
        for index in range(count):
            try:
                devices[index] = self._probe(index)
            except GpuLost as exc:
                self._log_once(
                    ("probe_lost", str(index)),
                    logging.WARNING,
                    "GPU %d left out: lost while probing (%s)",
                    index,
                    exc,
                )
        return devices

    def _probe(self, index: int) -> _Device:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
        except NVMLError as exc:
            raise _map_error(exc, f"probing GPU {index}") from exc
        unsupported: set[str] = set()

        # Zeus's pattern: use the energy counter where it works (Volta+), else integrate power.
        energy = self._probe_call(index, "nvmlDeviceGetTotalEnergyConsumption", handle)
        energy_source: EnergySource = "integrated" if energy is _UNSUPPORTED_RESULT else "counter"
        if energy_source == "integrated":
            unsupported.add("energy")

        mig_mode = self._probe_call(index, "nvmlDeviceGetMigMode", handle)
        mig_enabled = isinstance(mig_mode, (list, tuple)) and (
            len(mig_mode) > 0 and mig_mode[0] == NVML_DEVICE_MIG_ENABLE
        )

        # Memory info v2 (used = allocated, reserved apart) needs driver >= 515 and
        # nvidia-ml-py >= 11.510.69 (nvml.h: nvmlDeviceGetMemoryInfo_v2); else fall back to v1.
        memory_v2 = True
        try:
            self._nvml.nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2)
        except (*_MEMORY_V2_FALLBACK, TypeError, AttributeError):
            memory_v2 = False
        except _UNSUPPORTED:
            pass  # a MIG parent without privileges: the read path records it
        except NVMLError as exc:
            raise _map_error(exc, f"nvmlDeviceGetMemoryInfo on GPU {index}") from exc

        # Per-process utilization (Maxwell+, not on MIG). NOT_FOUND = no samples yet.
        samples = self._probe_call(index, "nvmlDeviceGetProcessUtilization", handle, 0)
        if samples is _UNSUPPORTED_RESULT:
            unsupported.add("process_utilization")

        info = GpuDevice(
            index=index, uuid=uuid, name=name, energy_source=energy_source, mig_enabled=mig_enabled
        )
        return _Device(info=info, handle=handle, unsupported=unsupported, memory_v2=memory_v2)

    def _probe_call(self, index: int, function_name: str, *args: Any) -> Any:
        """Call once at open; ``_UNSUPPORTED_RESULT`` when the function or feature is absent."""
        function = getattr(self._nvml, function_name, None)
        if function is None:
            return _UNSUPPORTED_RESULT
        try:
            return function(*args)
        except _UNSUPPORTED:
            return _UNSUPPORTED_RESULT
        except NVMLError as exc:
            if _no_samples(exc):
                return None
            raise _map_error(exc, f"{function_name} on GPU {index}") from exc

    # -- reading -------------------------------------------------------------------------

    def _field(self, dev: _Device, field_name: str, read: Callable[[Any], _T]) -> _T | None:
        """Read one field with ``read(nvml_function)``; None when unsupported.

        A field unsupported from the probe is never asked again; one that became unsupported
        while reading is asked again every :data:`UNSUPPORTED_RETRY_READS` reads.
        """
        if field_name in dev.unsupported:
            left = dev.retry_in.get(field_name)
            if left is None or left > 1:
                if left is not None:
                    dev.retry_in[field_name] = left - 1
                return None
            dev.unsupported.discard(field_name)
            del dev.retry_in[field_name]
        function_name = FIELD_FUNCTIONS[field_name]
        function = getattr(self._nvml, function_name, None)
        if function is None:
            dev.unsupported.add(field_name)
            self._log_once(
                ("missing", function_name),
                logging.WARNING,
                "%s is not in this NVML binding; %s is not read",
                function_name,
                field_name,
            )
            return None
        try:
            return read(function)
        except _UNSUPPORTED as exc:
            dev.unsupported.add(field_name)
            if field_name in RETRIED_FIELDS:
                dev.retry_in[field_name] = UNSUPPORTED_RETRY_READS
            self._log_once(
                ("unsupported", str(dev.info.index), field_name),
                logging.INFO,
                "GPU %d: %s not read (%s: %s)",
                dev.info.index,
                field_name,
                type(exc).__name__,
                exc,
            )
            return None
        except NVMLError as exc:
            raise _map_error(exc, f"{function_name} on GPU {dev.info.index}") from exc

    def _process_shares(self, dev: _Device) -> dict[int, float] | None:
        """SM utilization per host PID, 0..1, from the samples since the last read."""
        if "process_utilization" in dev.unsupported:
            return None
        try:
            samples = self._field(
                dev, "process_utilization", lambda f: _sm_samples(f(dev.handle, dev.last_seen_us))
            )
        except GpuReadError as exc:
            if not _no_samples(exc.__cause__):
                raise
            return {}  # no process used the SMs since the last read
        if samples is None:
            return None
        totals: dict[int, list[float]] = {}
        for pid, ratio, stamp_us in samples:
            totals.setdefault(pid, []).append(ratio)
            dev.last_seen_us = max(dev.last_seen_us, stamp_us)
        return {pid: sum(values) / len(values) for pid, values in totals.items()}

    def _log_once(self, key: tuple[str, ...], level: int, message: str, *args: Any) -> None:
        with self._log_lock:
            if key in self._logged:
                return
            self._logged.add(key)
        self._log.log(level, message, *args)


def _ratio(percent: Any) -> float:
    """NVML percent (0..100) -> ratio clamped to 0..1."""
    return min(1.0, max(0.0, float(percent) / 100.0))


def _milli(value: Any) -> float:
    """NVML milli-units (mW, mJ) -> base units (W, J)."""
    return float(value) / 1000.0


def _used_total(memory: Any) -> tuple[int, int]:
    """``nvmlMemory_t`` (v1 or v2) -> (used, total) bytes."""
    return int(memory.used), int(memory.total)


def _processes(processes: Any) -> tuple[tuple[int, int | None], ...]:
    """``nvmlProcessInfo_t`` list -> (host PID, used bytes or None when NVML hides it)."""
    return tuple(
        (int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
        for p in processes or ()
    )


def _sm_samples(samples: Any) -> tuple[tuple[int, float, int], ...]:
    """``nvmlProcessUtilizationSample_t`` list -> (PID, SM ratio 0..1, timestamp us)."""
    return tuple((int(x.pid), _ratio(x.smUtil), int(x.timeStamp)) for x in samples)


def _no_samples(exc: BaseException | None) -> bool:
    """NOT_FOUND (no samples since the timestamp) or pynvml's NVMLError(SUCCESS) on 0 samples."""
    if isinstance(exc, NVMLError_NotFound):
        return True
    return isinstance(exc, NVMLError) and getattr(exc, "value", None) == pynvml.NVML_SUCCESS
