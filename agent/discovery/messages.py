"""The sentences discovery says to people: why a server's GPUs were not found, and the map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.config import ServerSettings
from agent.discovery.common import Discovery, by_index
from agent.discovery.network import url_host_port
from agent.readings import GpuStatus

FIX_HINT = (
    "Fix: run the agent as a sidecar with `shareProcessNamespace: true` in the pod, as a "
    "DaemonSet with `hostPID: true`, or list the server's GPUs in the config "
    "(servers[].gpus = [0, 1] or GPU UUIDs)."
)


def not_found(
    server: ServerSettings,
    roots: set[int],
    tree: set[int],
    gpu_pids: Mapping[int, list[str]],
    devices: Sequence[GpuStatus],
) -> str:
    """A warning naming why process discovery found no GPU for a server, and the fix."""
    try:
        _, port = url_host_port(server.url)
        where = f"port {port}"
    except ValueError:
        where = f"URL {server.url!r}"
    head = f"server {server.name!r}: no GPU found for it by process discovery"
    if not devices:
        return f"{head}: the agent sees no GPU (NVML not up yet?)."
    if not roots:
        return (
            f"{head}: no process listening on {where} is visible to the agent. Likely cause: "
            "the agent runs in a container without the server's PID namespace (or without "
            "its network namespace, or without the right to read its sockets). " + FIX_HINT
        )
    shown = ", ".join(str(p) for p in sorted(roots))
    if not gpu_pids:
        return (
            f"{head}: PID {shown} listens on {where}, but NVML reports no compute process on "
            "any GPU. Likely cause: the server has not loaded its model yet, or the driver "
            "hides processes of other PID namespaces from the agent's container. " + FIX_HINT
        )
    nvml = ", ".join(str(p) for p in sorted(gpu_pids)[:10])
    return (
        f"{head}: PID {shown} listens on {where}, but none of its {len(tree)} processes is "
        f"among the compute processes NVML reports (PIDs {nvml}). Likely cause: NVML reports "
        "host PIDs and the agent is not in the host's PID namespace. " + FIX_HINT
    )


def describe_mapping(discovery: Discovery, devices: Sequence[GpuStatus]) -> str:
    """One log line for the map, e.g. ``vllm [discovered]: GPU 0, GPU 1; unassigned: GPU 4``.

    Args:
        discovery: The map.
        devices: The GPUs, to show indices and the ones no server uses.

    Returns:
        Servers in order with their GPUs (index and UUID) and how they were found, then the
        GPUs no server uses.
    """
    index = {g.device.uuid: g.device.index for g in devices}

    def gpu(uuid: str) -> str:
        return f"GPU {index[uuid]} ({uuid})" if uuid in index else f"GPU {uuid} (not seen)"

    parts = []
    for server, uuids in discovery.assignment.items():
        source = discovery.sources.get(server, "?")
        listed = ", ".join(gpu(u) for u in uuids) if uuids else "no GPU"
        parts.append(f"{server} [{source}]: {listed}")
    used = {u for uuids in discovery.assignment.values() for u in uuids}
    ordered = by_index(devices)
    spare = [gpu(g.device.uuid) for g in ordered if g.device.uuid not in used]
    if spare:
        parts.append(f"unassigned: {', '.join(spare)}")
    return "; ".join(parts) or "no servers, no GPUs"
