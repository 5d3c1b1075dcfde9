"""Discovery from the server's environment: NVIDIA_VISIBLE_DEVICES read through /proc/<pid>.

The Kubernetes sidecar sees every GPU of the node; the vLLM container's NVIDIA_VISIBLE_DEVICES
(readable with ``shareProcessNamespace: true`` and one UID) says which of them are vLLM's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ServerSettings
from agent.discovery import (
    MAX_ENVIRON_READS,
    Listener,
    PsutilProcessTable,
    VisibleDevices,
    describe_mapping,
    discover,
    parse_visible_devices,
)
from agent.readings import GpuDevice, GpuProcess, GpuReading, GpuStatus

NVD = "NVIDIA_VISIBLE_DEVICES"
CVD = "CUDA_VISIBLE_DEVICES"
ALL = {NVD: "all"}  # the agent's own environment under components/gpu-env


def gpu(index: int, *pids: int, uuid: str | None = None, mig: bool = False) -> GpuStatus:
    name = uuid or f"GPU-{index}"
    procs = tuple(GpuProcess(p) for p in pids)
    reading = GpuReading(index, name, 100.0, 1.0, 0.5, None, None, None, procs)
    return GpuStatus(GpuDevice(index, name, "NVIDIA H100", "counter", mig), True, reading, 1.0)


NODE = [gpu(0), gpu(1), gpu(2), gpu(3)]
EVERY = ("GPU-0", "GPU-1", "GPU-2", "GPU-3")


def server(
    name: str = "vllm", port: int = 8000, gpus: list[int | str] | str | None = None
) -> ServerSettings:
    return ServerSettings(name=name, url=f"http://127.0.0.1:{port}/metrics", gpus=gpus)


@dataclass
class FakeTable:
    """Listener 10 on port 8000 with child 11, unless told otherwise; environments per PID."""

    environs: Mapping[int, Mapping[str, str] | None] = field(default_factory=dict)
    agent: Mapping[str, str] = field(default_factory=dict)
    sockets: Sequence[Listener] = (Listener(10, "0.0.0.0", 8000),)
    tree: Mapping[int, int] = field(default_factory=lambda: {10: 1, 11: 10})
    reads: list[int] = field(default_factory=list)

    def listeners(self) -> Sequence[Listener]:
        return self.sockets

    def parents(self) -> Mapping[int, int]:
        return self.tree

    def environ(self, pid: int) -> Mapping[str, str] | None:
        self.reads.append(pid)
        return self.environs.get(pid, {})

    def agent_environ(self) -> Mapping[str, str]:
        return self.agent


# -- parsing ----------------------------------------------------------------------------

PARSE_CASES = [
    ("GPU-a, gpu-B", VisibleDevices("list", uuids=("GPU-a", "gpu-B"))),
    (" All ", VisibleDevices("all")),
    ("void", VisibleDevices("void")),
    ("none", VisibleDevices("none")),
    ("", VisibleDevices("unset")),
    ("/var/run/nvidia-container-devices", VisibleDevices("path")),
    ("0,2", VisibleDevices("list", indices=(0, 2))),
    ("MIG-GPU-abc/1/0", VisibleDevices("list", uuids=("GPU-abc",))),
    ("MIG-4f1c", VisibleDevices("list", mig_uuids=("MIG-4f1c",))),
    ("0:1,1:0", VisibleDevices("list", indices=(0, 1))),
    ("GPU-a,,foo,GPU-", VisibleDevices("list", uuids=("GPU-a",), invalid=("foo", "GPU-"))),
]


@pytest.mark.parametrize(("value", "expected"), PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parse_visible_devices(value: str, expected: VisibleDevices) -> None:
    assert parse_visible_devices(value) == expected


# -- the sidecar's server, scoped by its environment ------------------------------------

ENV_SOURCE = "environ NVIDIA_VISIBLE_DEVICES of PID 10"


@dataclass(frozen=True)
class Case:
    """One sidecar server (listener 10, child 11): what its environment scopes it to."""

    id: str
    environs: Mapping[int, Mapping[str, str] | None]
    expected: tuple[str, ...]
    source: str = ENV_SOURCE
    phrases: tuple[str, ...] = ()  # in the one warning; none when empty
    agent: Mapping[str, str] = field(default_factory=lambda: ALL)
    devices: Sequence[GpuStatus] = tuple(NODE)


CUDA_SOURCE = "environ CUDA_VISIBLE_DEVICES of PID 10"
SIDECAR_CASES = [
    Case("uuid list, any case", {10: {NVD: "GPU-2,gpu-1"}}, ("GPU-1", "GPU-2"), agent={}),
    Case("indices, agent sees all", {10: {NVD: "3,1"}}, ("GPU-1", "GPU-3")),
    Case(
        "indices, agent view unknown",
        {10: {NVD: "1"}},
        EVERY,
        "sidecar",
        ("by index (1)", "deviceIDStrategy=uuid", "Sidecar mode therefore"),
        agent={NVD: "GPU-0,GPU-1,GPU-2,GPU-3"},
    ),
    Case("index out of range", {10: {NVD: "7"}}, (), phrases=("GPU 7, not among the GPUs",)),
    Case("all", {10: {NVD: "all"}}, EVERY, "sidecar"),
    Case("void", {10: {NVD: "void"}}, EVERY, "sidecar"),
    Case("none", {10: {NVD: "none"}}, EVERY, "sidecar"),
    Case("unset", {10: {"PATH": "/usr/bin"}}, EVERY, "sidecar"),
    Case(
        "volume-mounts path",
        {10: {NVD: "/var/run/nvidia-container-devices"}},
        EVERY,
        "sidecar",
        ("volume-mounts", "servers[].gpus", "sidecar-dra", "(4) to 'vllm'"),
    ),
    Case("legacy MIG UUID names its parent", {10: {NVD: "MIG-GPU-2/1/0"}}, ("GPU-2",), agent={}),
    Case(
        "MIG UUID, parent unknown",
        {10: {NVD: "MIG-4f1c"}},
        EVERY,
        "sidecar",
        ("MIG device MIG-4f1c", "parent GPU cannot be told", "Sidecar mode"),
    ),
    Case(
        "MIG UUID beside a GPU UUID",
        {10: {NVD: "GPU-1,MIG-4f1c"}},
        ("GPU-1",),
        phrases=("MIG device MIG-4f1c",),
        agent={},
    ),
    Case(
        "MIG UUID, the node's one MIG GPU",
        {10: {NVD: "MIG-4f1c"}},
        ("GPU-1",),
        devices=(gpu(0), gpu(1, mig=True), gpu(2)),
    ),
    Case(
        "MIG UUID, two MIG GPUs",
        {10: {NVD: "MIG-4f1c"}},
        ("GPU-0", "GPU-1"),
        "sidecar",
        ("MIG device MIG-4f1c",),
        devices=(gpu(0, mig=True), gpu(1, mig=True)),
    ),
    Case("MIG by index", {10: {NVD: "2:0"}}, ("GPU-2",)),
    Case(
        "access denied",
        {10: None, 11: None},
        EVERY,
        "sidecar",
        ("PID 10, 11", "not readable", "runAsUser", "Sidecar mode"),
    ),
    Case(
        "listener denied, child readable",
        {10: None, 11: {NVD: "GPU-0"}},
        ("GPU-0",),
        "environ NVIDIA_VISIBLE_DEVICES of PID 11",
    ),
    Case(
        "unknown UUID only",
        {10: {NVD: "GPU-9"}},
        (),
        phrases=("GPU GPU-9, not among the GPUs the agent sees (0 (GPU-0), 1 (GPU-1)",),
    ),
    Case(
        "unknown UUID beside a known one",
        {10: {NVD: "GPU-9,GPU-0"}},
        ("GPU-0",),
        phrases=("GPU GPU-9, not among",),
    ),
    Case(
        "not a GPU entry",
        {10: {NVD: "GPU-1,bogus"}},
        ("GPU-1",),
        phrases=("'bogus'", "neither a GPU UUID nor an index"),
    ),
    Case(
        "CUDA UUIDs when NVIDIA says all", {10: {NVD: "all", CVD: "GPU-3"}}, ("GPU-3",), CUDA_SOURCE
    ),
    Case("CUDA indices are ignored", {10: {CVD: "0"}}, EVERY, "sidecar"),
    Case("NVIDIA wins over CUDA", {10: {NVD: "GPU-0", CVD: "GPU-1"}}, ("GPU-0",)),
    Case(
        "volume-mounts with CUDA UUIDs",
        {10: {NVD: "/var/run/x", CVD: "GPU-2"}},
        ("GPU-2",),
        CUDA_SOURCE,
    ),
]


@pytest.mark.parametrize("case", SIDECAR_CASES, ids=[c.id for c in SIDECAR_CASES])
def test_sidecar_scoped_by_server_environment(case: Case) -> None:
    found = discover([server()], case.devices, FakeTable(case.environs, case.agent))
    assert found.assignment == {"vllm": case.expected}
    assert found.sources == {"vllm": case.source}
    if not case.phrases:
        assert found.warnings == ()
        return
    (warning,) = found.warnings
    assert warning.startswith("server 'vllm'")
    for phrase in case.phrases:
        assert phrase in warning


def test_first_readable_environment_decides_and_reads_are_bounded() -> None:
    tree = {10: 1, **{pid: 10 for pid in range(11, 40)}}
    table = FakeTable({pid: None for pid in range(10, 40)}, ALL, tree=tree)
    found = discover([server()], NODE, table)
    assert table.reads == list(range(10, 10 + MAX_ENVIRON_READS))  # listener first, in order
    assert found.sources == {"vllm": "sidecar"}

    readable = FakeTable({10: {NVD: "GPU-1"}, 11: {NVD: "GPU-2"}}, ALL)
    assert discover([server()], NODE, readable).assignment == {"vllm": ("GPU-1",)}
    assert readable.reads == [10]


# -- precedence: config > environment > NVML process match > sidecar all ----------------


def test_config_list_wins_and_reads_no_environment() -> None:
    table = FakeTable({10: {NVD: "GPU-0"}}, ALL)
    found = discover([server(gpus=[3])], NODE, table)
    assert found.assignment == {"vllm": ("GPU-3",)}
    assert found.sources == {"vllm": "config"}
    assert table.reads == []


def test_environment_wins_over_nvml_process_match() -> None:
    # NVML puts child 11 on GPU 1, but the container was given GPU 0 (e.g. a host-PID clash).
    table = FakeTable({10: {NVD: "GPU-0"}}, ALL)
    devices = [gpu(0), gpu(1, 11), gpu(2)]
    found = discover([server(gpus="auto"), server("other", 9000, [])], devices, table)
    assert found.assignment == {"vllm": ("GPU-0",), "other": ()}
    assert found.sources["vllm"] == ENV_SOURCE
    assert found.process_owners == {11: "vllm"}


def test_nvml_process_match_wins_over_sidecar_all() -> None:
    table = FakeTable({10: {NVD: "all"}}, ALL)
    found = discover([server()], [gpu(0), gpu(1, 11), gpu(2)], table)
    assert found.assignment == {"vllm": ("GPU-1",)}
    assert found.sources == {"vllm": "discovered"}
    assert found.warnings == ()


def test_sidecar_without_a_visible_listener_takes_every_gpu_quietly() -> None:
    table = FakeTable({10: {NVD: "GPU-0"}}, ALL, sockets=())
    found = discover([server()], NODE, table)
    assert found.assignment == {"vllm": EVERY}
    assert found.sources == {"vllm": "sidecar"}
    assert found.warnings == () and table.reads == []


def test_unreadable_environment_is_quiet_when_process_match_succeeds() -> None:
    table = FakeTable({10: None, 11: None}, ALL)
    found = discover([server(gpus="auto")], [gpu(0, 11), gpu(1)], table)
    assert found.assignment == {"vllm": ("GPU-0",)}
    assert found.warnings == ()


def test_auto_server_not_found_explains_environment_and_processes() -> None:
    table = FakeTable({10: {NVD: "/var/run/nvidia-container-devices"}}, ALL)
    found = discover([server(gpus="auto"), server("b", 9000, [])], [gpu(0, 4242)], table)
    assert found.assignment["vllm"] == ()
    assert found.sources["vllm"] == "not found"
    path, processes = found.warnings
    assert "volume-mounts" in path and "Sidecar mode" not in path
    assert "(PIDs 4242)" in processes


def test_several_servers_each_scoped_by_their_own_container() -> None:
    table = FakeTable(
        {10: {NVD: "GPU-0,GPU-1"}, 20: {NVD: "GPU-3"}},
        ALL,
        sockets=(Listener(10, "0.0.0.0", 8000), Listener(20, "0.0.0.0", 8001)),
        tree={10: 1, 20: 1},
    )
    found = discover([server("a", 8000), server("b", 8001, "auto")], NODE, table)
    assert found.assignment == {"a": ("GPU-0", "GPU-1"), "b": ("GPU-3",)}
    assert describe_mapping(found, NODE) == (
        "a [environ NVIDIA_VISIBLE_DEVICES of PID 10]: GPU 0 (GPU-0), GPU 1 (GPU-1); "
        "b [environ NVIDIA_VISIBLE_DEVICES of PID 20]: GPU 3 (GPU-3); "
        "unassigned: GPU 2 (GPU-2)"
    )


@given(
    chosen=st.lists(st.sampled_from(EVERY), min_size=1, unique=True),
    upper=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_any_uuid_subset_is_taken_exactly_in_index_order(
    chosen: list[str], upper: list[bool]
) -> None:
    written = [u.upper() if up else u.lower() for u, up in zip(chosen, upper, strict=False)]
    table = FakeTable({10: {NVD: " , ".join(written)}}, {})
    found = discover([server()], list(reversed(NODE)), table)
    assert found.assignment == {"vllm": tuple(u for u in EVERY if u in chosen)}
    assert found.warnings == ()
    assert found == discover([server()], NODE, table)  # deterministic


# -- a real process and psutil ----------------------------------------------------------

SERVER_SCRIPT = r"""
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""

REAL = [gpu(0, uuid="GPU-aaa"), gpu(1, uuid="GPU-bbb"), gpu(2, uuid="GPU-ccc")]


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def _listening_child(spawned: list[subprocess.Popen[str]], visible: str) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k not in (NVD, CVD)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**env, NVD: visible},
    )
    spawned.append(proc)
    assert proc.stdout is not None
    return int(proc.stdout.readline()), proc.pid


@pytest.mark.parametrize(
    ("visible", "agent", "expected"),
    [
        ("GPU-ccc,GPU-aaa", {}, ("GPU-aaa", "GPU-ccc")),
        ("1", ALL, ("GPU-bbb",)),
    ],
)
def test_real_process_environment_scopes_the_sidecar(
    spawn: list[subprocess.Popen[str]],
    visible: str,
    agent: Mapping[str, str],
    expected: tuple[str, ...],
) -> None:
    port, pid = _listening_child(spawn, visible)
    table = PsutilProcessTable(agent_environ=agent)
    found = discover([server(port=port)], REAL, table)
    assert found.assignment == {"vllm": expected}
    assert found.sources == {"vllm": f"environ NVIDIA_VISIBLE_DEVICES of PID {pid}"}
    assert found.warnings == ()


def test_psutil_environ_reads_a_process_and_answers_none_when_gone(
    spawn: list[subprocess.Popen[str]],
) -> None:
    _, pid = _listening_child(spawn, "GPU-bbb")
    table = PsutilProcessTable(agent_environ={NVD: "all"})
    environ = table.environ(pid)
    assert environ is not None and environ[NVD] == "GPU-bbb"
    assert table.agent_environ() == {NVD: "all"}
    assert PsutilProcessTable().agent_environ() is os.environ

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait(timeout=10)
    assert table.environ(done.pid) is None
