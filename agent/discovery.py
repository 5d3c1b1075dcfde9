"""Which GPUs serve which server: from the config, discovered from processes, or sidecar mode.

An impure edge: it reads the process table through an injected :class:`ProcessTable`
(:class:`PsutilProcessTable` in production). The matching itself is deterministic and uses one
snapshot of the table per call, so the sampler can repeat it cheaply.

Per server (``ServerSettings.gpus``):

- a list of GPU indices or UUIDs: those GPUs (an unknown one is a warning naming it);
- ``None`` with exactly one server: sidecar mode, every GPU the agent can see;
- ``"auto"``, or ``None`` with several servers: discovered.

Discovery: (1) the PIDs listening on the port of the server's URL and their process trees
(children, recursively); (2) NVML's compute processes on each GPU (host PIDs, from
``GpuStatus.reading.processes``); (3) a GPU serves the server when one of its compute
processes is in the tree. When the listener's own tree holds no GPU process, the tree of its
parent is tried (a launcher that starts the HTTP router and the GPU workers side by side, as
TGI does), skipping PID 1 and processes already matched to another server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import psutil

from agent.config import ServerSettings
from agent.readings import GpuStatus

WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "::0"})

FIX_HINT = (
    "Fix: run the agent as a sidecar with `shareProcessNamespace: true` in the pod, as a "
    "DaemonSet with `hostPID: true`, or list the server's GPUs in the config "
    "(servers[].gpus = [0, 1] or GPU UUIDs)."
)


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening TCP socket and the process that owns it.

    Attributes:
        pid: PID owning the socket, in the agent's PID namespace.
        ip: Local address, e.g. ``127.0.0.1``, ``0.0.0.0`` or ``::``.
        port: Local TCP port.
    """

    pid: int
    ip: str
    port: int


class ProcessTable(Protocol):
    """A read-only view of the processes the agent can see."""

    def listeners(self) -> Sequence[Listener]:
        """Every listening TCP socket whose owning PID is visible."""
        ...

    def parents(self) -> Mapping[int, int]:
        """PID -> parent PID of every visible process."""
        ...


class PsutilProcessTable:
    """:class:`ProcessTable` backed by psutil (reads ``/proc`` on Linux)."""

    def listeners(self) -> Sequence[Listener]:
        """Every listening TCP socket with a known owner.

        Returns:
            The listeners; sockets whose owner the agent may not see are left out.
        """
        try:
            connections = psutil.net_connections(kind="inet")
        except psutil.AccessDenied:
            return self._listeners_per_process()
        return [
            Listener(c.pid, c.laddr.ip, c.laddr.port)
            for c in connections
            if c.status == psutil.CONN_LISTEN and c.pid is not None and c.laddr
        ]

    @staticmethod
    def _listeners_per_process() -> list[Listener]:
        # Systems that refuse the system-wide table (macOS) still allow a process's own sockets.
        found: list[Listener] = []
        for proc in psutil.process_iter():
            try:
                connections = proc.net_connections(kind="inet")
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            found += [
                Listener(proc.pid, c.laddr.ip, c.laddr.port)
                for c in connections
                if c.status == psutil.CONN_LISTEN and c.laddr
            ]
        return found

    def parents(self) -> Mapping[int, int]:
        """PID -> parent PID of every visible process.

        Returns:
            The map; processes that vanish while it is read are left out.
        """
        table: dict[int, int] = {}
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info.get("ppid")
            if isinstance(ppid, int):
                table[proc.pid] = ppid
        return table


@dataclass(frozen=True, slots=True)
class Discovery:
    """The GPU-to-server map in force.

    Attributes:
        assignment: Server name -> UUIDs of the GPUs it uses (in GPU index order).
        process_owners: Host PID of a GPU compute process -> server name.
        warnings: Problems found, each a full sentence naming the cause and the fix.
        sources: Server name -> how its GPUs were found: ``config``, ``sidecar``,
            ``discovered``, ``discovered via parent PID N`` or ``not found``.
    """

    assignment: Mapping[str, tuple[str, ...]]
    process_owners: Mapping[int, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)


def discover(
    servers: Sequence[ServerSettings],
    devices: Sequence[GpuStatus],
    processes: ProcessTable,
) -> Discovery:
    """Find which GPUs serve which server.

    Args:
        servers: The configured servers.
        devices: Every GPU the agent sees, with its latest reading (compute PIDs).
        processes: The process table to read listeners and parents from.

    Returns:
        The map, per-process owners for shared-GPU splits, and warnings.
    """
    ordered = sorted(devices, key=lambda g: (g.device.index, g.device.uuid))
    assignment: dict[str, tuple[str, ...]] = {}
    sources: dict[str, str] = {}
    warnings: list[str] = []
    to_discover: list[ServerSettings] = []

    for server in servers:
        if isinstance(server.gpus, list):
            assignment[server.name] = _configured(server.name, server.gpus, ordered, warnings)
            sources[server.name] = "config"
        elif server.gpus is None and len(servers) == 1:
            assignment[server.name] = tuple(g.device.uuid for g in ordered)
            sources[server.name] = "sidecar"
        else:
            to_discover.append(server)

    shared = _shared_gpus(assignment)
    owners: dict[int, str] = {}
    if to_discover or shared:
        owners = _discover_processes(
            servers, to_discover, ordered, processes, assignment, sources, warnings
        )
    return Discovery(
        assignment={s.name: assignment.get(s.name, ()) for s in servers},
        process_owners=dict(sorted(owners.items())),
        warnings=tuple(warnings),
        sources={s.name: sources.get(s.name, "not found") for s in servers},
    )


def _configured(
    name: str, gpus: Sequence[int | str], devices: Sequence[GpuStatus], warnings: list[str]
) -> tuple[str, ...]:
    by_index = {g.device.index: g.device.uuid for g in devices}
    by_uuid = {g.device.uuid.lower(): g.device.uuid for g in devices}
    found: list[str] = []
    unknown: list[str] = []
    for item in gpus:
        uuid: str | None
        if isinstance(item, int):
            uuid = by_index.get(item)
        elif item.strip().isdigit():
            uuid = by_index.get(int(item.strip()))
        else:
            uuid = by_uuid.get(item.strip().lower())
        if uuid is None:
            unknown.append(repr(item))
        elif uuid not in found:
            found.append(uuid)
    if unknown and devices:
        seen = ", ".join(f"{g.device.index} ({g.device.uuid})" for g in devices)
        warnings.append(
            f"server {name!r}: GPU {', '.join(unknown)} in servers[].gpus is not among "
            f"the GPUs the agent sees ({seen}); ignored. Fix the index or UUID in the config, "
            "or check which GPUs the agent's container is given (NVIDIA_VISIBLE_DEVICES, "
            "nvidia.com/gpu)."
        )
    elif unknown:
        warnings.append(
            f"server {name!r}: the agent sees no GPU yet, so GPU {', '.join(unknown)} "
            "in servers[].gpus cannot be matched; its energy is not attributed until NVML "
            "lists the GPUs."
        )
    order = {g.device.uuid: i for i, g in enumerate(devices)}
    return tuple(sorted(found, key=lambda u: order[u]))


def _shared_gpus(assignment: Mapping[str, Sequence[str]]) -> set[str]:
    seen: set[str] = set()
    shared: set[str] = set()
    for uuids in assignment.values():
        for uuid in uuids:
            (shared if uuid in seen else seen).add(uuid)
    return shared


def _discover_processes(
    servers: Sequence[ServerSettings],
    to_discover: Sequence[ServerSettings],
    devices: Sequence[GpuStatus],
    processes: ProcessTable,
    assignment: dict[str, tuple[str, ...]],
    sources: dict[str, str],
    warnings: list[str],
) -> dict[int, str]:
    listeners = processes.listeners()
    parents = processes.parents()
    children = _children_map(parents)
    gpu_pids: dict[int, list[str]] = {}
    for gpu in devices:
        if gpu.reading is None:
            continue
        for proc in gpu.reading.processes:
            uuids = gpu_pids.setdefault(proc.pid, [])
            if gpu.device.uuid not in uuids:
                uuids.append(gpu.device.uuid)

    roots = {s.name: _listening_pids(s.url, listeners) for s in servers}
    trees = {name: _tree(pids, children) for name, pids in roots.items()}
    owners: dict[int, str] = {}
    # Direct trees first, in config order, so a launcher fallback never takes another's PIDs.
    for server in servers:
        for pid in sorted(trees[server.name] & gpu_pids.keys()):
            owners.setdefault(pid, server.name)

    order = {g.device.uuid: i for i, g in enumerate(devices)}
    for server in to_discover:
        name = server.name
        mine = {pid for pid, owner in owners.items() if owner == name}
        source = "discovered"
        if not mine and roots[name]:
            mine, parent = _via_parent(roots[name], parents, children, gpu_pids, owners)
            if mine:
                source = f"discovered via parent PID {parent}"
                for pid in mine:
                    owners[pid] = name
        found = {u for pid in mine for u in gpu_pids[pid]}
        assignment[name] = tuple(sorted(found, key=lambda u: order[u]))
        if found:
            sources[name] = source
        else:
            sources[name] = "not found"
            warnings.append(_not_found(server, roots[name], trees[name], gpu_pids, devices))
    return owners


def _children_map(parents: Mapping[int, int]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        if pid != ppid:
            children.setdefault(ppid, []).append(pid)
    return children


def _tree(roots: set[int], children: Mapping[int, list[int]]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, ()))
    return seen


def _via_parent(
    roots: set[int],
    parents: Mapping[int, int],
    children: Mapping[int, list[int]],
    gpu_pids: Mapping[int, list[str]],
    owners: Mapping[int, str],
) -> tuple[set[int], int | None]:
    for root in sorted(roots):
        parent = parents.get(root)
        if parent is None or parent <= 1:
            continue
        found = {p for p in _tree({parent}, children) if p in gpu_pids and p not in owners}
        if found:
            return found, parent
    return set(), None


def url_host_port(url: str) -> tuple[str, int]:
    """Host and TCP port of a server URL.

    Args:
        url: ``http://host:port/path`` (the port defaults to 80, or 443 for https).

    Returns:
        The lower-cased host (no brackets) and the port.

    Raises:
        ValueError: When the URL has no host or an invalid port.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"server URL {url!r} has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname.lower(), port


def _listening_pids(url: str, listeners: Sequence[Listener]) -> set[int]:
    try:
        host, port = url_host_port(url)
    except ValueError:
        return set()
    return {lst.pid for lst in listeners if lst.port == port and _same_host(host, lst.ip)}


def _same_host(host: str, listener_ip: str) -> bool:
    """Could a connection to ``host`` reach a socket bound to ``listener_ip`` on this host?"""
    if listener_ip in WILDCARD_ADDRESSES or listener_ip == host:
        return True
    try:
        bound = _unmap(ipaddress.ip_address(listener_ip))
    except ValueError:
        return False
    if host == "localhost":
        return bound.is_loopback
    try:
        target = _unmap(ipaddress.ip_address(host))
    except ValueError:
        # A name other than localhost: resolving it would be I/O; the port decides.
        return True
    return target == bound or (target.is_loopback and bound.is_loopback)


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _unmap(address: _Address) -> _Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _not_found(
    server: ServerSettings,
    roots: set[int],
    tree: set[int],
    gpu_pids: Mapping[int, list[str]],
    devices: Sequence[GpuStatus],
) -> str:
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
    ordered = sorted(devices, key=lambda g: (g.device.index, g.device.uuid))
    spare = [gpu(g.device.uuid) for g in ordered if g.device.uuid not in used]
    if spare:
        parts.append(f"unassigned: {', '.join(spare)}")
    return "; ".join(parts) or "no servers, no GPUs"
