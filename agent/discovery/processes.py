"""The process table discovery reads: listening sockets, parents, environments.

An impure edge behind the :class:`ProcessTable` protocol; :class:`PsutilProcessTable` reads
``/proc`` through psutil in production, tests pass a fake.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil


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
