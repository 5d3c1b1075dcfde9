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

import ipaddress
import os
import re
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

VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
CUDA_DEVICES = "CUDA_VISIBLE_DEVICES"
# Environments read per server and call: the listeners first, then their trees. One readable
# environment decides, so this only bounds the work when most of them are denied.
MAX_ENVIRON_READS = 8

_NO_RESTRICTION = frozenset({"", "all", "void", "none"})
_INDEX = re.compile(r"\d+")
_MIG_BY_INDEX = re.compile(r"(\d+):\d+")


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

    def environ(self, pid: int) -> Mapping[str, str] | None:
        """The environment of a process, or None when it is gone or not readable."""
        ...

    def agent_environ(self) -> Mapping[str, str]:
        """The agent's own environment (to tell which GPUs the agent itself is given)."""
        ...


class PsutilProcessTable:
    """:class:`ProcessTable` backed by psutil (reads ``/proc`` on Linux)."""

    def __init__(self, agent_environ: Mapping[str, str] | None = None) -> None:
        """Create the table.

        Args:
            agent_environ: The agent's own environment; ``os.environ`` when None.
        """
        self._agent_environ = os.environ if agent_environ is None else agent_environ

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

    def environ(self, pid: int) -> Mapping[str, str] | None:
        """The environment a process was started with (``/proc/<pid>/environ`` on Linux).

        Args:
            pid: The process, in the agent's PID namespace.

        Returns:
            Its variables, or None when the process is gone, a zombie, or not readable (the
            kernel allows it to the same user only, unless the agent has ``CAP_SYS_PTRACE``).
        """
        try:
            return psutil.Process(pid).environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            return None

    def agent_environ(self) -> Mapping[str, str]:
        """The agent's own environment.

        Returns:
            The mapping given at construction, else ``os.environ``.
        """
        return self._agent_environ


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


@dataclass(frozen=True, slots=True)
class VisibleDevices:
    """A ``NVIDIA_VISIBLE_DEVICES`` or ``CUDA_VISIBLE_DEVICES`` value, parsed.

    Attributes:
        kind: ``list`` (GPUs are named), ``all``, ``void``, ``none``, ``unset`` (empty) or
            ``path`` (the device plugin's ``volume-mounts`` strategy).
        uuids: GPU UUIDs named, as written (a legacy ``MIG-GPU-<uuid>/..`` gives its parent).
        indices: GPU indices named (``<gpu>:<mig>`` gives the GPU index).
        mig_uuids: MIG device UUIDs (``MIG-<uuid>``), whose parent the value does not say.
        invalid: Entries that are none of the above.
    """

    kind: str
    uuids: tuple[str, ...] = ()
    indices: tuple[int, ...] = ()
    mig_uuids: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()


def parse_visible_devices(value: str) -> VisibleDevices:
    """Parse a visible-devices variable as the NVIDIA container toolkit and CUDA read it.

    Args:
        value: The variable's value, e.g. ``GPU-8f6c...,GPU-1a2b...``, ``0,1`` or ``all``.

    Returns:
        What it names.
    """
    text = value.strip()
    if text.lower() in _NO_RESTRICTION:
        return VisibleDevices(text.lower() or "unset")
    if text.startswith("/"):
        return VisibleDevices("path")
    uuids: list[str] = []
    indices: list[int] = []
    migs: list[str] = []
    invalid: list[str] = []
    for entry in (e.strip() for e in text.split(",")):
        lower = entry.lower()
        by_index = _MIG_BY_INDEX.fullmatch(entry)
        if not entry:
            continue
        if lower.startswith("gpu-") and len(entry) > 4:
            uuids.append(entry)
        elif lower.startswith("mig-gpu-"):
            # Drivers before R470 name a MIG device after its parent: MIG-GPU-<uuid>/<gi>/<ci>.
            uuids.append(entry[4:].split("/", 1)[0])
        elif lower.startswith("mig-") and len(entry) > 4:
            migs.append(entry)
        elif _INDEX.fullmatch(entry):
            indices.append(int(entry))
        elif by_index:
            indices.append(int(by_index.group(1)))
        else:
            invalid.append(entry)
    return VisibleDevices("list", tuple(uuids), tuple(indices), tuple(migs), tuple(invalid))


@dataclass(frozen=True, slots=True)
class _EnvironScope:
    """What a server's environment says about its GPUs.

    ``uuids`` None: no restriction learnt (``notes`` say why, when that is worth a warning).
    """

    uuids: tuple[str, ...] | None
    source: str = ""
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


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
    ordered = sorted(devices, key=lambda g: (g.device.index, g.device.uuid))
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
            _sees_every_gpu(processes.agent_environ()) if pending else False,
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


def _sees_every_gpu(agent_environ: Mapping[str, str]) -> bool:
    # Only `all` is known to give the container the node's GPUs under their host indices.
    return agent_environ.get(VISIBLE_DEVICES, "").strip().lower() == "all"


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
    roots = {s.name: _listening_pids(s.url, listeners) for s in servers}
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
        scope = _environ_scope(
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
        order = {g.device.uuid: i for i, g in enumerate(devices)}
        found = {u for pid in mine for u in view.gpu_pids[pid]}
        if found:
            self.assignment[name] = tuple(sorted(found, key=lambda u: order[u]))
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
                _not_found(server, view.roots[name], view.trees[name], view.gpu_pids, devices)
            )


def _environ_scope(
    name: str,
    roots: set[int],
    tree: set[int],
    devices: Sequence[GpuStatus],
    processes: ProcessTable,
    agent_sees_all: bool,
) -> _EnvironScope:
    """The GPUs named in the environment of the first readable process of the server."""
    candidates = sorted(roots) + sorted(tree - roots)
    tried = candidates[:MAX_ENVIRON_READS]
    for pid in tried:
        environ = processes.environ(pid)
        if environ is None:
            continue
        primary = _scope_from(
            name,
            pid,
            VISIBLE_DEVICES,
            environ.get(VISIBLE_DEVICES, ""),
            devices,
            agent_sees_all,
        )
        if primary.uuids is not None:
            return primary
        cuda = parse_visible_devices(environ.get(CUDA_DEVICES, ""))
        # CUDA_VISIBLE_DEVICES indices count within the server's own view: only UUIDs tell.
        if cuda.kind == "list" and not cuda.indices and not cuda.invalid:
            secondary = _scope_from(
                name, pid, CUDA_DEVICES, environ[CUDA_DEVICES], devices, agent_sees_all
            )
            if secondary.uuids is not None:
                return secondary
            return _EnvironScope(None, notes=primary.notes + secondary.notes)
        return primary
    if not tried:
        return _EnvironScope(None)
    shown = ", ".join(str(p) for p in tried)
    return _EnvironScope(
        None,
        notes=(
            f"server {name!r}: the environment of PID {shown} (the process on its port and "
            f"its children) is not readable by the agent, so its {VISIBLE_DEVICES} cannot "
            "tell which GPUs it uses. Likely cause: the server runs as another user, or "
            "holds capabilities the agent lacks. Fix: run both containers as the same user "
            "(one pod-level runAsUser), or list the server's GPUs in servers[].gpus.",
        ),
    )


def _scope_from(
    name: str,
    pid: int,
    variable: str,
    value: str,
    devices: Sequence[GpuStatus],
    agent_sees_all: bool,
) -> _EnvironScope:
    parsed = parse_visible_devices(value)
    where = f"{variable}={value.strip()!r} of PID {pid} (server {name!r})"
    if parsed.kind == "path":
        return _EnvironScope(
            None,
            notes=(
                f"server {name!r}: {where} is a path: the device plugin passes the GPU list "
                "as mounted files (DEVICE_LIST_STRATEGY=volume-mounts), which the agent cannot "
                "read. Fix: list the server's GPUs in servers[].gpus, or give both containers "
                "the same GPUs through DRA (deploy/kubernetes/overlays/sidecar-dra).",
            ),
        )
    if parsed.kind != "list":
        return _EnvironScope(None)

    by_uuid = {g.device.uuid.lower(): g.device.uuid for g in devices}
    by_index = {g.device.index: g.device.uuid for g in devices}
    found: set[str] = set()
    unknown: list[str] = []
    problems: list[str] = []
    for uuid in parsed.uuids:
        match = by_uuid.get(uuid.lower())
        if match is None:
            unknown.append(uuid)
        else:
            found.add(match)
    if parsed.indices and agent_sees_all:
        for index in parsed.indices:
            match = by_index.get(index)
            if match is None:
                unknown.append(str(index))
            else:
                found.add(match)
    elif parsed.indices:
        listed = ",".join(str(i) for i in parsed.indices)
        problems.append(
            f"server {name!r}: {where} names GPUs by index ({listed}); indices match the "
            f"agent's only when the agent sees every GPU of the node, and the agent's own "
            f"{VISIBLE_DEVICES} is not 'all', so they are not used. Fix: have the device "
            "plugin pass UUIDs (deviceIDStrategy=uuid, its default), set "
            f"{VISIBLE_DEVICES}=all on the agent, or list the GPUs in servers[].gpus."
        )
    if parsed.mig_uuids:
        mig_gpus = [g.device.uuid for g in devices if g.device.mig_enabled]
        if agent_sees_all and len(mig_gpus) == 1:
            # The node has one MIG-enabled GPU and the agent sees them all: the parent.
            found.add(mig_gpus[0])
        else:
            problems.append(
                f"server {name!r}: {where} names MIG device {', '.join(parsed.mig_uuids)}, "
                "whose parent GPU cannot be told from its UUID; ignored. Fix: list the "
                "parent GPU in servers[].gpus."
            )
    if parsed.invalid:
        problems.append(
            f"server {name!r}: {where} holds {', '.join(map(repr, parsed.invalid))}, which "
            "is neither a GPU UUID nor an index; ignored."
        )
    seen = ", ".join(f"{g.device.index} ({g.device.uuid})" for g in devices)
    if unknown:
        problems.append(
            f"server {name!r}: {where} names GPU {', '.join(unknown)}, not among the GPUs "
            f"the agent sees ({seen or 'none'}); its energy is not attributed to the server. "
            "Fix: give the agent the server's GPUs (NVIDIA_VISIBLE_DEVICES=all on the agent, "
            "or the server's DRA claim), or list them in servers[].gpus."
        )
    if found:
        order = {g.device.uuid: i for i, g in enumerate(devices)}
        uuids = tuple(sorted(found, key=lambda u: order[u]))
        return _EnvironScope(uuids, f"environ {variable} of PID {pid}", tuple(problems))
    if unknown and devices and len(problems) == 1:
        # Only GPUs the agent is known not to see: the server uses none of the agent's GPUs.
        return _EnvironScope((), f"environ {variable} of PID {pid}", tuple(problems))
    return _EnvironScope(None, notes=tuple(problems))


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
