"""Which GPUs serve which server: from the config, the server's environment, its processes.

An impure edge: it reads the process table through an injected :class:`ProcessTable`
(:class:`PsutilProcessTable` in production). The matching itself is deterministic and uses one
snapshot of the table per call, so the sampler can repeat it cheaply.

Per server (``ServerSettings.gpus``), the first rule that gives an answer wins:

1. a list of GPU indices or UUIDs in the config: those GPUs (an unknown one is a warning
   naming it);
2. otherwise (``"auto"``, or ``None``), the environment of the process listening on the
   server's port (or of its process tree): ``NVIDIA_VISIBLE_DEVICES`` when it lists GPUs,
   else ``CUDA_VISIBLE_DEVICES`` when it lists UUIDs. In a pod with
   ``shareProcessNamespace: true`` this is how a sidecar that sees every GPU of the node
   learns which of them the device plugin gave to vLLM;
3. process discovery: (a) the PIDs listening on the port of the server's URL and their
   process trees (children, recursively); (b) NVML's compute processes on each GPU (host
   PIDs, from ``GpuStatus.reading.processes``); (c) a GPU serves the server when one of its
   compute processes is in the tree. When the listener's own tree holds no GPU process, the
   tree of its parent is tried (a launcher that starts the HTTP router and the GPU workers
   side by side, as TGI does), skipping PID 1 and processes already matched to another server;
4. ``None`` with exactly one server: sidecar mode, every GPU the agent can see.

Reading ``NVIDIA_VISIBLE_DEVICES``: GPU UUIDs are matched against the GPUs the agent sees.
Indices are host indices (the device plugin's ``deviceIDStrategy=index``) and only match the
agent's own indices when the agent sees every GPU of the node (its own variable is ``all``);
otherwise they are not used and a warning says so. A MIG device maps to its parent GPU when
the parent can be told (``MIG-GPU-<uuid>/<gi>/<ci>``, ``<gpu index>:<mig index>``, or the one
MIG-enabled GPU of a node the agent sees whole); otherwise it is ignored with a warning.
``all``, ``void``, ``none``, an empty value and a path (the device plugin's ``volume-mounts``
strategy, whose list the agent cannot read) restrict nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.config import ServerSettings
from agent.discovery.common import Discovery, by_index, in_gpu_order
from agent.discovery.environ import (
    CUDA_DEVICES,
    MAX_ENVIRON_READS,
    VISIBLE_DEVICES,
    VisibleDevices,
    environ_scope,
    parse_visible_devices,
    sees_every_gpu,
)
from agent.discovery.messages import FIX_HINT, describe_mapping, not_found
from agent.discovery.network import listening_pids, url_host_port
from agent.discovery.processes import Listener, ProcessTable, PsutilProcessTable
from agent.readings import GpuStatus

__all__ = [
    "CUDA_DEVICES",
    "FIX_HINT",
    "MAX_ENVIRON_READS",
    "VISIBLE_DEVICES",
    "Discovery",
    "Listener",
    "ProcessTable",
    "PsutilProcessTable",
    "VisibleDevices",
    "describe_mapping",
    "discover",
    "parse_visible_devices",
    "url_host_port",
]


@dataclass(frozen=True, slots=True)
class _ProcessView:
    """One snapshot of the process table, as discovery needs it."""

    parents: Mapping[int, int]
    children: Mapping[int, list[int]]
    gpu_pids: Mapping[int, list[str]]
    roots: Mapping[str, set[int]]
    trees: Mapping[str, set[int]]


def discover(
    servers: Sequence[ServerSettings],
    devices: Sequence[GpuStatus],
    processes: ProcessTable,
) -> Discovery:
    """Find which GPUs serve which server.

    Args:
        servers: The configured servers.
        devices: Every GPU the agent sees, with its latest reading (compute PIDs).
        processes: The process table to read listeners, parents and environments from.

    Returns:
        The map, per-process owners for shared-GPU splits, how each server's GPUs were
        found, and warnings.
    """
    ordered = by_index(devices)
    assignment: dict[str, tuple[str, ...]] = {}
    sources: dict[str, str] = {}
    warnings: list[str] = []
    pending: list[ServerSettings] = []

    for server in servers:
        if isinstance(server.gpus, list):
            assignment[server.name] = _configured(server.name, server.gpus, ordered, warnings)
            sources[server.name] = "config"
        else:
            pending.append(server)

    owners: dict[int, str] = {}
    if pending or _shared_gpus(assignment):
        view = _read_view(servers, ordered, processes)
        # Direct trees first, in config order, so a launcher fallback never takes another's PIDs.
        for server in servers:
            for pid in sorted(view.trees[server.name] & view.gpu_pids.keys()):
                owners.setdefault(pid, server.name)
        run = _Resolver(
            view,
            ordered,
            processes,
            sees_every_gpu(processes.agent_environ()) if pending else False,
            owners,
            assignment,
            sources,
            warnings,
        )
        for server in pending:
            run.resolve(server, sidecar=server.gpus is None and len(servers) == 1)
    return Discovery(
        assignment={s.name: assignment.get(s.name, ()) for s in servers},
        process_owners=dict(sorted(owners.items())),
        warnings=tuple(warnings),
        sources={s.name: sources.get(s.name, "not found") for s in servers},
    )


def _read_view(
    servers: Sequence[ServerSettings], devices: Sequence[GpuStatus], processes: ProcessTable
) -> _ProcessView:
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
    roots = {s.name: listening_pids(s.url, listeners) for s in servers}
    trees = {name: _tree(pids, children) for name, pids in roots.items()}
    return _ProcessView(parents, children, gpu_pids, roots, trees)


@dataclass(frozen=True, slots=True)
class _Resolver:
    """One discover() call's inputs and the maps it fills, for the servers left to find."""

    view: _ProcessView
    devices: Sequence[GpuStatus]
    processes: ProcessTable
    agent_sees_all: bool
    owners: dict[int, str]
    assignment: dict[str, tuple[str, ...]]
    sources: dict[str, str]
    warnings: list[str]

    def resolve(self, server: ServerSettings, *, sidecar: bool) -> None:
        """Environment, then NVML process match, then (sidecar mode) every GPU."""
        name, view, devices = server.name, self.view, self.devices
        scope = environ_scope(
            name, view.roots[name], view.trees[name], devices, self.processes, self.agent_sees_all
        )
        self.warnings.extend(scope.warnings)
        if scope.uuids is not None:
            self.assignment[name] = scope.uuids
            self.sources[name] = scope.source
            return

        mine = {pid for pid, owner in self.owners.items() if owner == name}
        source = "discovered"
        if not mine and view.roots[name]:
            mine, parent = _via_parent(
                view.roots[name], view.parents, view.children, view.gpu_pids, self.owners
            )
            if mine:
                source = f"discovered via parent PID {parent}"
                for pid in mine:
                    self.owners[pid] = name
        found = {u for pid in mine for u in view.gpu_pids[pid]}
        if found:
            self.assignment[name] = in_gpu_order(found, devices)
            self.sources[name] = source
        elif sidecar:
            self.assignment[name] = tuple(g.device.uuid for g in devices)
            self.sources[name] = "sidecar"
            consequence = (
                f" Sidecar mode therefore attributes every GPU the agent sees ({len(devices)}) "
                f"to {name!r}."
            )
            self.warnings.extend(note + consequence for note in scope.notes)
        else:
            self.assignment[name] = ()
            self.sources[name] = "not found"
            self.warnings.extend(scope.notes)
            self.warnings.append(
                not_found(server, view.roots[name], view.trees[name], view.gpu_pids, devices)
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
    return in_gpu_order(found, devices)


def _shared_gpus(assignment: Mapping[str, Sequence[str]]) -> set[str]:
    seen: set[str] = set()
    shared: set[str] = set()
    for uuids in assignment.values():
        for uuid in uuids:
            (shared if uuid in seen else seen).add(uuid)
    return shared


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
