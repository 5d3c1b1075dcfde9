"""The GPU exception tree: every NVML failure becomes one of these at the NVML boundary.

Pure module: no I/O. Each class carries a short ``kind`` used as the ``error`` label of
``tokenergy_nvml_errors_total`` and as ``GpuStatus.error``.

::

    GpuError
    ├── GpuUnavailable   no NVML library or driver; nvmlInit failed
    ├── GpuLost          GPU_IS_LOST / UNKNOWN on one device; the others go on
    ├── GpuTimeout       a read missed its deadline (or NVML returned TIMEOUT)
    ├── GpuDriverError   UNINITIALIZED, LIB_RM_VERSION_MISMATCH, DRIVER_NOT_LOADED: re-init needed
    └── GpuReadError     anything else
"""

from __future__ import annotations

from typing import ClassVar


class GpuError(Exception):
    """Base of every GPU telemetry error."""

    kind: ClassVar[str] = "error"


class GpuUnavailable(GpuError):  # noqa: N818 (names fixed by the interface)
    """NVML cannot be used at all: library missing, driver not loaded, or init failed."""

    kind: ClassVar[str] = "unavailable"


class GpuLost(GpuError):  # noqa: N818
    """One GPU stopped answering (NVML ``GPU_IS_LOST`` or ``UNKNOWN``); others are unaffected."""

    kind: ClassVar[str] = "gpu_lost"


class GpuTimeout(GpuError):  # noqa: N818
    """A read did not finish within its deadline, or NVML itself returned ``TIMEOUT``."""

    kind: ClassVar[str] = "timeout"


class GpuDriverError(GpuError):
    """Driver-level failure (``UNINITIALIZED``, ``LIB_RM_VERSION_MISMATCH``, ``DRIVER_NOT_LOADED``).

    The NVML session is no longer valid; NVML must be shut down and initialised again.
    """

    kind: ClassVar[str] = "driver"


class GpuReadError(GpuError):
    """Any other NVML failure of one read."""

    kind: ClassVar[str] = "read_error"
