"""What a server's environment says about its GPUs: the visible-devices variables.

``NVIDIA_VISIBLE_DEVICES`` (the NVIDIA container toolkit) and ``CUDA_VISIBLE_DEVICES`` (CUDA)
name GPUs by UUID, by host index, or as MIG devices. Pure parsing and matching, plus one
bounded read of process environments through the injected process table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.discovery.common import in_gpu_order
from agent.discovery.processes import ProcessTable
from agent.readings import GpuStatus

VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
CUDA_DEVICES = "CUDA_VISIBLE_DEVICES"
# Environments read per server and call: the listeners first, then their trees. One readable
# environment decides, so this only bounds the work when most of them are denied.
MAX_ENVIRON_READS = 8

_NO_RESTRICTION = frozenset({"", "all", "void", "none"})
_INDEX = re.compile(r"\d+")
_MIG_BY_INDEX = re.compile(r"(\d+):\d+")


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
class EnvironScope:
    """What a server's environment says about its GPUs.

    ``uuids`` None: no restriction learnt (``notes`` say why, when that is worth a warning).
    """

    uuids: tuple[str, ...] | None
    source: str = ""
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def sees_every_gpu(agent_environ: Mapping[str, str]) -> bool:
    """True when the agent's own environment gives it every GPU under its host index."""
    # Only `all` is known to give the container the node's GPUs under their host indices.
    return agent_environ.get(VISIBLE_DEVICES, "").strip().lower() == "all"


def environ_scope(
    name: str,
    roots: set[int],
    tree: set[int],
    devices: Sequence[GpuStatus],
    processes: ProcessTable,
    agent_sees_all: bool,
) -> EnvironScope:
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
            return EnvironScope(None, notes=primary.notes + secondary.notes)
        return primary
    if not tried:
        return EnvironScope(None)
    shown = ", ".join(str(p) for p in tried)
    return EnvironScope(
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
) -> EnvironScope:
    parsed = parse_visible_devices(value)
    where = f"{variable}={value.strip()!r} of PID {pid} (server {name!r})"
    if parsed.kind == "path":
        return EnvironScope(
            None,
            notes=(
                f"server {name!r}: {where} is a path: the device plugin passes the GPU list "
                "as mounted files (DEVICE_LIST_STRATEGY=volume-mounts), which the agent cannot "
                "read. Fix: list the server's GPUs in servers[].gpus, or give both containers "
                "the same GPUs through DRA (deploy/kubernetes/overlays/sidecar-dra).",
            ),
        )
    if parsed.kind != "list":
        return EnvironScope(None)

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
        uuids = in_gpu_order(found, devices)
        return EnvironScope(uuids, f"environ {variable} of PID {pid}", tuple(problems))
    if unknown and devices and len(problems) == 1:
        # Only GPUs the agent is known not to see: the server uses none of the agent's GPUs.
        return EnvironScope((), f"environ {variable} of PID {pid}", tuple(problems))
    return EnvironScope(None, notes=tuple(problems))
