"""GPU-to-server discovery: config, sidecar mode, and real processes matched to NVML PIDs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pytest

from agent.config import ServerSettings
from agent.discovery import (
    Discovery,
    Listener,
    PsutilProcessTable,
    describe_mapping,
    discover,
    url_host_port,
)
from agent.readings import GpuDevice, GpuProcess, GpuReading, GpuStatus


def gpu(index: int, *pids: int | tuple[int, float]) -> GpuStatus:
    procs = tuple(
        GpuProcess(p[0], utilization_ratio=p[1]) if isinstance(p, tuple) else GpuProcess(p)
        for p in pids
    )
    reading = GpuReading(index, f"GPU-{index}", 100.0, 1.0, 0.5, None, None, None, procs)
    return GpuStatus(GpuDevice(index, f"GPU-{index}", "NVIDIA L4", "counter"), True, reading, 1.0)


def server(
    name: str, port: int, gpus: list[int | str] | str | None = "auto", host: str = "127.0.0.1"
) -> ServerSettings:
    return ServerSettings(name=name, url=f"http://{host}:{port}/metrics", gpus=gpus)


@dataclass
class FakeTable:
    """An injected process table: listeners and a parent map, empty environments."""

    sockets: Sequence[Listener] = ()
    tree: Mapping[int, int] | None = None
    calls: int = 0

    def listeners(self) -> Sequence[Listener]:
        self.calls += 1
        return self.sockets

    def parents(self) -> Mapping[int, int]:
        return self.tree or {}

    def environ(self, pid: int) -> Mapping[str, str] | None:
        return {}  # readable, names no GPU: the process rules decide

    def agent_environ(self) -> Mapping[str, str]:
        return {}


CONFIG_CASES = [
    ("indices", [0, 2], ("GPU-0", "GPU-2"), []),
    ("uuids, any case, in index order", ["gpu-2", "GPU-0"], ("GPU-0", "GPU-2"), []),
    ("digit strings from env", ["1"], ("GPU-1",), []),
    ("repeats once", [1, "GPU-1"], ("GPU-1",), []),
    ("unknown index and uuid warn, known kept", [7, "GPU-zz", 0], ("GPU-0",), ["7", "'GPU-zz'"]),
]


@pytest.mark.parametrize(
    ("gpus", "expected", "named"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_config_lists(gpus: list[int | str], expected: tuple[str, ...], named: list[str]) -> None:
    table = FakeTable()
    found = discover([server("a", 1, gpus)], [gpu(0), gpu(1), gpu(2)], table)
    assert found.assignment == {"a": expected}
    assert found.sources == {"a": "config"}
    assert table.calls == 0  # nothing to discover, no GPU shared: the process table is not read
    if named:
        (warning,) = found.warnings
        assert all(n in warning for n in named) and "not among the GPUs" in warning
    else:
        assert found.warnings == ()


def test_config_gpus_before_nvml_is_up_warn_differently() -> None:
    found = discover([server("a", 1, [0])], [], FakeTable())
    assert found.assignment == {"a": ()}
    assert "sees no GPU yet" in found.warnings[0]


def test_sidecar_mode_takes_every_gpu() -> None:
    found = discover([server("a", 1, None)], [gpu(1), gpu(0)], FakeTable())
    assert found.assignment == {"a": ("GPU-0", "GPU-1")}
    assert found.sources == {"a": "sidecar"}


def test_several_servers_without_gpus_are_discovered() -> None:
    table = FakeTable(
        sockets=[Listener(10, "0.0.0.0", 8000), Listener(20, "127.0.0.1", 8001)],
        tree={10: 1, 11: 10, 12: 11, 20: 1, 21: 20},
    )
    found = discover(
        [server("a", 8000, None), server("b", 8001, None)],
        [gpu(0, 12), gpu(1, 21), gpu(2, 12, 21), gpu(3, 999)],
        table,
    )
    assert found.assignment == {"a": ("GPU-0", "GPU-2"), "b": ("GPU-1", "GPU-2")}
    assert found.process_owners == {12: "a", 21: "b"}
    assert found.warnings == ()
    line = describe_mapping(found, [gpu(0), gpu(1), gpu(2), gpu(3)])
    assert line == (
        "a [discovered]: GPU 0 (GPU-0), GPU 2 (GPU-2); "
        "b [discovered]: GPU 1 (GPU-1), GPU 2 (GPU-2); unassigned: GPU 3 (GPU-3)"
    )


def test_shared_configured_gpu_still_finds_process_owners() -> None:
    table = FakeTable(
        sockets=[Listener(10, "::", 8000), Listener(20, "::", 8001)], tree={10: 1, 20: 1}
    )
    found = discover(
        [server("a", 8000, [0]), server("b", 8001, [0])], [gpu(0, (10, 0.5), (20, 0.1))], table
    )
    assert found.process_owners == {10: "a", 20: "b"}
    assert found.warnings == ()


HOST_CASES = [
    ("127.0.0.1", "127.0.0.1", True),
    ("localhost", "127.0.0.1", True),
    ("localhost", "::1", True),
    ("127.0.0.1", "::ffff:127.0.0.1", True),
    ("127.0.0.1", "::", True),
    ("10.0.0.5", "127.0.0.1", False),
    ("10.0.0.5", "10.0.0.5", True),
    ("localhost", "10.0.0.5", False),
    ("vllm.default.svc", "10.0.0.5", True),  # a name is not resolved: the port decides
]


@pytest.mark.parametrize(("host", "bound", "matches"), HOST_CASES)
def test_listener_host_matching(host: str, bound: str, matches: bool) -> None:
    table = FakeTable(sockets=[Listener(10, bound, 8000)], tree={10: 1})
    found = discover([server("a", 8000, "auto", host=host)], [gpu(0, 10)], table)
    assert found.assignment == {"a": ("GPU-0",) if matches else ()}


def test_launcher_parent_fallback_for_sibling_workers() -> None:
    # TGI: launcher 50 starts router 51 (listens) and shard 52 (on the GPU) side by side.
    table = FakeTable(sockets=[Listener(51, "0.0.0.0", 8080)], tree={50: 7, 51: 50, 52: 50})
    found = discover([server("tgi", 8080)], [gpu(0, 52)], table)
    assert found.assignment == {"tgi": ("GPU-0",)}
    assert found.sources == {"tgi": "discovered via parent PID 50"}


def test_parent_fallback_skips_pid_1_and_other_servers_processes() -> None:
    table = FakeTable(
        sockets=[Listener(10, "0.0.0.0", 8000), Listener(20, "0.0.0.0", 8001)],
        tree={10: 1, 11: 10, 20: 1},
    )
    found = discover([server("a", 8000), server("b", 8001)], [gpu(0, 11), gpu(1, 30)], table)
    assert found.assignment == {"a": ("GPU-0",), "b": ()}
    assert "none of its 1 processes" in found.warnings[0]


WARNING_CASES = [
    (
        "no listener",
        [],
        [gpu(0, 5)],
        ["no process listening on port 8000", "shareProcessNamespace", "hostPID", "servers[].gpus"],
    ),
    (
        "no NVML processes",
        [Listener(10, "0.0.0.0", 8000)],
        [gpu(0)],
        ["NVML reports no compute process", "hostPID"],
    ),
    (
        "PIDs do not match",
        [Listener(10, "0.0.0.0", 8000)],
        [gpu(0, 4242)],
        ["(PIDs 4242)", "host's PID namespace", "shareProcessNamespace"],
    ),
    ("no GPUs", [Listener(10, "0.0.0.0", 8000)], [], ["sees no GPU"]),
]


@pytest.mark.parametrize(
    ("sockets", "devices", "phrases"),
    [c[1:] for c in WARNING_CASES],
    ids=[c[0] for c in WARNING_CASES],
)
def test_nothing_found_warns_with_cause_and_fix(
    sockets: list[Listener], devices: list[GpuStatus], phrases: list[str]
) -> None:
    found = discover([server("a", 8000), server("b", 9, [])], devices, FakeTable(sockets, {10: 1}))
    assert found.assignment["a"] == ()
    assert found.sources["a"] == "not found"
    (warning,) = found.warnings
    assert warning.startswith("server 'a'")
    for phrase in phrases:
        assert phrase in warning


def test_discovery_is_deterministic() -> None:
    table = FakeTable(sockets=[Listener(10, "0.0.0.0", 8000)], tree={10: 1, 12: 10, 11: 10})
    devices = [gpu(1, 11), gpu(0, 12)]
    first = discover([server("a", 8000)], devices, table)
    assert first == discover([server("a", 8000)], list(reversed(devices)), table)
    assert list(first.process_owners) == [11, 12]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000/metrics", ("127.0.0.1", 8000)),
        ("https://Host.Example/metrics", ("host.example", 443)),
        ("http://[::1]:9/m", ("::1", 9)),
        ("http://h/metrics", ("h", 80)),
    ],
)
def test_url_host_port(url: str, expected: tuple[str, int]) -> None:
    assert url_host_port(url) == expected


# -- real processes ---------------------------------------------------------------------

# The test processes must not inherit the runner's GPU variables: those would scope the servers.
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
}

SERVER_SCRIPT = r"""
import socket, subprocess, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
print(s.getsockname()[1], child.pid, flush=True)
sys.stdin.read()
child.stdin.close()
child.wait()
"""

LAUNCHER_SCRIPT = r"""
import subprocess, sys
router = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
port, _ = router.stdout.readline().split()
shard = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
print(port, router.pid, shard.pid, flush=True)
sys.stdin.read()
for p in (router, shard):
    p.stdin.close()
    p.wait()
"""


@pytest.fixture
def listening_server() -> Iterator[tuple[int, int, int]]:
    """A real process listening on 127.0.0.1 with a python child: (port, pid, child pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
    )
    try:
        assert proc.stdout is not None
        port, child = proc.stdout.readline().split()
        yield int(port), proc.pid, int(child)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def test_real_listener_and_child_matched_to_nvml_pids(
    listening_server: tuple[int, int, int],
) -> None:
    port, pid, child = listening_server
    devices = [gpu(0, 4_000_000), gpu(1, (child, 0.7)), gpu(2, pid)]
    found = discover(
        [server("vllm", port, host="localhost"), server("other", 1, [0])],
        devices,
        PsutilProcessTable(),
    )
    assert found.assignment == {"vllm": ("GPU-1", "GPU-2"), "other": ("GPU-0",)}
    assert found.process_owners == {pid: "vllm", child: "vllm"}
    assert found.sources["vllm"] == "discovered"
    assert found.warnings == ()


def test_real_process_on_another_port_is_not_matched(
    listening_server: tuple[int, int, int],
) -> None:
    port, _, child = listening_server
    free = port + 1 if port < 65535 else port - 1
    found = discover(
        [server("vllm", free), server("b", 2, [])], [gpu(0, child)], PsutilProcessTable()
    )
    assert found.assignment["vllm"] == ()
    assert "hostPID" in found.warnings[0]


def test_real_launcher_with_sibling_router_and_shard() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER_SCRIPT, SERVER_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
    )
    try:
        assert proc.stdout is not None
        port, router, shard = (int(x) for x in proc.stdout.readline().split())
        found = discover([server("tgi", port)], [gpu(0, shard)], PsutilProcessTable())
        assert found.assignment == {"tgi": ("GPU-0",)}
        assert found.sources == {"tgi": f"discovered via parent PID {proc.pid}"}
        assert found.process_owners == {shard: "tgi"}
        assert router != shard
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def test_psutil_table_sees_the_parent_map(listening_server: tuple[int, int, int]) -> None:
    _, pid, child = listening_server
    parents = PsutilProcessTable().parents()
    assert parents[child] == pid
    assert any(lst.pid == pid for lst in PsutilProcessTable().listeners())


def test_describe_mapping_names_unseen_gpus_and_empty_servers() -> None:
    found = Discovery(assignment={"a": ("GPU-9",), "b": ()}, sources={"a": "config"})
    assert describe_mapping(found, [gpu(0)]) == (
        "a [config]: GPU GPU-9 (not seen); b [?]: no GPU; unassigned: GPU 0 (GPU-0)"
    )
