"""The discovery result and the GPU order every discovery rule and message shares."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.readings import GpuStatus


def by_index(devices: Sequence[GpuStatus]) -> list[GpuStatus]:
    """The GPUs in NVML index order (UUID breaks ties), as every listing shows them."""
    return sorted(devices, key=lambda g: (g.device.index, g.device.uuid))


def in_gpu_order(uuids: Iterable[str], devices: Sequence[GpuStatus]) -> tuple[str, ...]:
    """UUIDs of ``devices`` sorted as the devices are listed; unknown UUIDs are dropped."""
    order = {g.device.uuid: i for i, g in enumerate(devices)}
    return tuple(sorted((u for u in set(uuids) if u in order), key=lambda u: order[u]))


@dataclass(frozen=True, slots=True)
class Discovery:
    """The GPU-to-server map in force.

    Attributes:
        assignment: Server name -> UUIDs of the GPUs it uses (in GPU index order).
        process_owners: Host PID of a GPU compute process -> server name.
        warnings: Problems found, each a full sentence naming the cause and the fix.
        sources: Server name -> how its GPUs were found: ``config``,
            ``environ NVIDIA_VISIBLE_DEVICES of PID N``, ``environ CUDA_VISIBLE_DEVICES of
            PID N``, ``discovered``, ``discovered via parent PID N``, ``sidecar`` or
            ``not found``.
    """

    assignment: Mapping[str, tuple[str, ...]]
    process_owners: Mapping[int, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
