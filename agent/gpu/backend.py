"""The ``GpuBackend`` protocol: the small, read-only contract between GPU readers and the agent.

Pure module: a typing Protocol only. ``agent.gpu.nvml.NvmlBackend`` implements it on top of
``pynvml`` or the simulated NVML; ``agent.gpu.monitor.GpuMonitor`` drives it with deadlines.
"""

from __future__ import annotations

from typing import Protocol

from agent.readings import GpuDevice, GpuReading


class GpuBackend(Protocol):
    """Reads GPUs. Every method may raise a subclass of ``agent.gpu.errors.GpuError``.

    Implementations must allow ``read`` for different indices from different threads at once.
    """

    def open(self) -> None:
        """Initialise the library and probe every device's identity and capabilities once.

        Raises:
            GpuUnavailable: No library or driver, or init failed.
            GpuDriverError: A driver-level error while probing.
        """
        ...

    def devices(self) -> tuple[GpuDevice, ...]:
        """Devices found by the last successful ``open`` (empty before it)."""
        ...

    def driver_version(self) -> str | None:
        """The NVIDIA driver version, e.g. ``550.54.15``, when known."""
        ...

    def read(self, index: int) -> GpuReading:
        """Read one device: power W, raw energy counter J (or None), utilization 0..1, bytes.

        Args:
            index: NVML device index, one of ``devices()``.

        Raises:
            GpuLost: The device is lost.
            GpuDriverError: NVML must be initialised again.
            GpuTimeout: NVML reported a timeout.
            GpuReadError: Any other failure, or an unknown index.
        """
        ...

    def close(self) -> None:
        """Shut the library down; never raises."""
        ...
