"""The demo world: simulated GPUs, simulated inference servers, a workload, and ground truth.

:class:`DemoWorld` wires a :class:`~agent.simulation.nvml.SimulatedNvml` (4 x H100 for the
servers, 1 x L4 spare), three :class:`~agent.simulation.servers.SimulatedServer` listeners
(vLLM V1 with two data-parallel ranks on GPUs 0-1, SGLang on GPU 2, llama.cpp on GPU 3) and a
seeded :class:`~agent.simulation.workload.Workload`. A driver calls :meth:`DemoWorld.step` with
monotonic time (every 50 ms in the demo; in virtual time in tests) and the world moves counters,
GPU loads and processes forward and fires the scenario's faults at their times. The workload
(tick 0, and the fault times) starts at :meth:`DemoWorld.begin`; before it the servers serve
zero counters and the GPUs idle, so an agent can take its baseline first.

Ground truth (:meth:`DemoWorld.truth`) counts from the world's creation: true GPU energy (the
exact integral of simulated power, idle power before ``begin`` included) and true tokens per
server and model, which a server restart never resets. The agent baselines a server when it
first sees it, so compare the agent with the *difference* of two truths::

    first = world.truth()          # at the agent's first successful sample
    ...
    last = world.truth()           # at the end
    expected = truth_delta(last, first)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.clock import Clock
from agent.simulation.nvml import GPU_PROFILES, GpuProfile, SimulatedNvml
from agent.simulation.servers import SimulatedServer
from agent.simulation.workload import (
    DEMO_SERVERS,
    FaultEvent,
    ServerProfile,
    TickLoad,
    Workload,
    make_scenario,
    ticks_until,
)

TRUTH_TOKEN_KEYS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "lost_input_tokens",
    "lost_output_tokens",
)
"""Token counts per model in a truth (see :meth:`DemoWorld.truth`)."""

DEMO_GPUS: tuple[str, ...] = ("H100-SXM-80GB",) * 4 + ("L4",)
"""GPU profiles of the demo: four H100 for the servers, an idle L4 spare (index 4)."""

PID_BASE = 4_194_304
"""First fake PID. Linux PIDs stay below 2**22 (PID_MAX_LIMIT), so these never collide."""

HANG_FUNCTIONS: tuple[str, ...] = ("*",)
"""NVML calls that hang in the ``nvml-hang`` scenario (``*``: every call on the GPU)."""


@dataclass(frozen=True, slots=True)
class SimServerInfo:
    """What the agent needs to know to scrape one simulated server.

    Attributes:
        name: Server name (the ``server`` label).
        engine: Engine profile name: ``vllm``, ``sglang``, ``llamacpp``.
        url: Full URL of its ``/metrics``.
        gpu_indices: NVML indices of the GPUs it uses.
        models: Served model names ("" for llama.cpp, which has no model label).
        pids: Fake host PIDs of its GPU processes (one per GPU, as NVML lists them).
    """

    name: str
    engine: str
    url: str
    gpu_indices: tuple[int, ...]
    models: tuple[str, ...]
    pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FiredEvent:
    """A fault the world injected.

    Attributes:
        event: The scenario's event.
        tick: The first tick simulated after it (it takes effect at ``tick * TICK_SECONDS``).
        elapsed_seconds: World time of the step that fired it, s since :meth:`DemoWorld.begin`.
    """

    event: FaultEvent
    tick: int
    elapsed_seconds: float


class DemoWorld:
    """Simulated GPUs + servers + workload, advanced by :meth:`step`.

    Thread-safe: :meth:`step`, :meth:`truth` and the servers' ``/metrics`` may run on
    different threads. A truth taken at any instant matches what the servers would serve at
    that instant.

    Args:
        scenario: Scenario name (see :data:`agent.simulation.workload.SCENARIOS`).
        seed: Workload and NVML seed.
        clock: Monotonic and wall time; the same clock the simulated NVML integrates on.
        fault_at_seconds: Time of the scenario's fault, s after :meth:`begin`.
        recover_after_seconds: Duration of a recovering fault, s.
        host: Address the servers listen on.
        servers: Server profiles (default: the demo's three).
        gpus: GPU profile names (default :data:`DEMO_GPUS`).

    Raises:
        UnknownScenarioError: When the scenario name is unknown.
        ValueError: When a server uses a GPU index the world does not have.
    """

    def __init__(
        self,
        scenario: str,
        seed: int,
        clock: Clock,
        *,
        fault_at_seconds: float = 20.0,
        recover_after_seconds: float = 15.0,
        host: str = "127.0.0.1",
        servers: Sequence[ServerProfile] = DEMO_SERVERS,
        gpus: Sequence[str] = DEMO_GPUS,
    ) -> None:
        self.scenario = make_scenario(
            scenario,
            fault_at_seconds=fault_at_seconds,
            recover_after_seconds=recover_after_seconds,
        )
        self.workload = Workload(self.scenario, seed, servers)
        self._clock = clock
        self._gpu_count = len(gpus)
        for profile in self.workload.servers:
            bad = [i for i in profile.gpus if not 0 <= i < len(gpus)]
            if bad:
                raise ValueError(
                    f"server {profile.name!r} uses GPU indices {bad}, "
                    f"but the world has GPUs 0..{len(gpus) - 1}"
                )
        self._lock = threading.RLock()
        self.nvml = SimulatedNvml(list(gpus), clock, seed)
        self._gpu_names = tuple(gpus)
        self._servers: dict[str, SimulatedServer] = {}
        self._pids: dict[str, tuple[int, ...]] = {}
        next_pid = PID_BASE
        for profile in self.workload.servers:
            self._servers[profile.name] = SimulatedServer(
                profile.name,
                profile.engine,
                [profile.model],
                wall=clock.wall,
                ranks=profile.ranks,
                host=host,
                monotonic=clock.monotonic,
            )
            pids = tuple(range(next_pid, next_pid + len(profile.gpus)))
            next_pid += len(profile.gpus)
            self._pids[profile.name] = pids
            for gpu, pid in zip(profile.gpus, pids, strict=True):
                self.nvml.set_processes(gpu, [pid])
        self._t0: float | None = None
        self._elapsed = 0.0
        self._next_tick = 0
        self._pending = list(self.scenario.events)
        self._fired: list[FiredEvent] = []
        self._lost: set[int] = set()
        self._loads: dict[int, float] = {}
        self._set_loads({i: 0.0 for i in range(len(gpus))})

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open every server's listener (a server that is down stays closed until it is up).

        Raises:
            OSError: When a listener cannot bind.
        """
        for server in self._servers.values():
            server.start()

    def stop(self) -> None:
        """Close every listener (idempotent)."""
        for server in self._servers.values():
            server.stop()

    def servers(self) -> list[SimServerInfo]:
        """The servers, with their URLs (ports are known after :meth:`start`)."""
        out = []
        for profile in self.workload.servers:
            server = self._servers[profile.name]
            out.append(
                SimServerInfo(
                    name=profile.name,
                    engine=profile.engine,
                    url=server.url,
                    gpu_indices=profile.gpus,
                    models=server.models,
                    pids=self._pids[profile.name],
                )
            )
        return out

    def server(self, name: str) -> SimulatedServer:
        """One simulated server by name.

        Raises:
            KeyError: When there is no such server.
        """
        try:
            return self._servers[name]
        except KeyError:
            raise KeyError(f"no simulated server named {name!r}") from None

    @property
    def elapsed_seconds(self) -> float:
        """World time reached by the last :meth:`step`, s since :meth:`begin`."""
        with self._lock:
            return self._elapsed

    def fired(self) -> list[FiredEvent]:
        """The faults injected so far, in order."""
        with self._lock:
            return list(self._fired)

    def gpu_loads(self) -> dict[int, float]:
        """The utilization last given to each GPU that is not lost, 0..1."""
        with self._lock:
            return dict(self._loads)

    # -- simulation --------------------------------------------------------------------------

    def begin(self, now: float) -> None:
        """Start the workload: world time 0 (tick 0, fault times) is monotonic ``now``.

        Before it the servers serve zero counters and the GPUs idle, so an agent can take its
        baseline sample first.

        Args:
            now: Monotonic time, s, on the world's clock.

        Raises:
            RuntimeError: When the workload has already begun.
        """
        with self._lock:
            if self._t0 is not None:
                raise RuntimeError("the workload has already begun")
            self._t0 = now

    @property
    def begun(self) -> bool:
        """True once :meth:`begin` was called."""
        with self._lock:
            return self._t0 is not None

    def step(self, now: float) -> None:
        """Advance the world to monotonic time ``now``.

        Completed ticks are added to the servers' counters, faults whose time has come fire
        in order (tokens before a restart go to the old counters), and each GPU's load is set
        from the last tick. Before :meth:`begin`, and for a ``now`` earlier than a previous
        one, nothing changes.

        Args:
            now: Monotonic time, s, on the world's clock.
        """
        with self._lock:
            if self._t0 is None:
                return
            elapsed = now - self._t0
            if elapsed <= self._elapsed:
                return
            end_tick = ticks_until(elapsed)
            batch: dict[str, list[TickLoad]] = {name: [] for name in self._servers}
            last: dict[str, TickLoad] = {}
            for k in range(self._next_tick, end_tick):
                if self._pending and self._pending[0].tick <= k:
                    self._flush(batch)
                    self._fire_due(k, elapsed)
                for name in self._servers:
                    load = self.workload.tick(name, k)
                    batch[name].append(load)
                    last[name] = load
            self._next_tick = max(self._next_tick, end_tick)
            self._flush(batch)
            self._fire_due(end_tick, elapsed)
            self._elapsed = elapsed
            loads: dict[int, float] = {i: 0.0 for i in range(self._gpu_count)}
            for profile in self.workload.servers:
                final = last.get(profile.name)
                if final is None:
                    continue
                for gpu, util in zip(profile.gpus, final.utilization, strict=True):
                    loads[gpu] = util
            if last:
                self._set_loads(loads)

    def _fire_due(self, tick: int, elapsed: float) -> None:
        while self._pending and self._pending[0].tick <= tick:
            event = self._pending.pop(0)
            self._fire(event)
            self._fired.append(FiredEvent(event, tick, elapsed))

    def _fire(self, event: FaultEvent) -> None:
        if event.kind == "lose_gpu" and event.gpu is not None:
            # A GPU off the bus does no work: its true power drops to idle from here on.
            self.nvml.set_load(event.gpu, 0.0)
            self.nvml.lose_gpu(event.gpu)
            self._lost.add(event.gpu)
            self._loads.pop(event.gpu, None)
        elif event.kind == "reload_driver":
            self.nvml.reload_driver()
        elif event.kind == "restart_server" and event.server is not None:
            self._servers[event.server].restart()
        elif event.kind == "server_down" and event.server is not None:
            self._servers[event.server].set_down(True)
        elif event.kind == "server_up" and event.server is not None:
            self._servers[event.server].set_down(False)
        elif event.kind == "restart_rank" and event.server is not None and event.rank is not None:
            self._servers[event.server].restart_rank(event.rank)
        elif (
            event.kind == "drop_rank_series" and event.server is not None and event.rank is not None
        ):
            self._servers[event.server].drop_rank_series(event.rank)
        elif event.kind == "nvml_hang":
            for function in HANG_FUNCTIONS:
                self.nvml.hang(function, event.duration_seconds, index=event.gpu)
        else:
            raise ValueError(f"cannot fire fault event {event!r}")

    def _flush(self, batch: dict[str, list[TickLoad]]) -> None:
        """Add the batched ticks to the servers' counters, then empty the batch."""
        for name, loads in batch.items():
            if not loads:
                continue
            server = self._servers[name]
            final = loads[-1]
            server.advance(
                server.models[0],
                prompt_tokens=sum(x.prompt_tokens for x in loads),
                generation_tokens=sum(x.generation_tokens for x in loads),
                cached_prompt_tokens=sum(x.cached_prompt_tokens for x in loads),
                requests_finished=sum(x.finished for x in loads),
                requests_running=final.requests_running,
                requests_waiting=final.requests_waiting,
                kv_cache_usage=final.kv_cache_usage,
            )
            loads.clear()

    def _set_loads(self, loads: Mapping[int, float]) -> None:
        for gpu, util in loads.items():
            if gpu in self._lost:
                continue
            self.nvml.set_load(gpu, util)
            self._loads[gpu] = util

    # -- ground truth ------------------------------------------------------------------------

    def phase_truth(self, server: str) -> dict[str, float]:
        """The true energy model of a server: what each token costs its GPUs.

        Args:
            server: Server name.

        Returns:
            ``joules_per_input_token`` (one computed, not cached, prompt token, J),
            ``joules_per_output_token`` (J) and ``idle_watts`` (its GPUs with no request, W):
            exact by construction of the workload's power model, up to the +-3 % per-tick
            utilization noise, which averages out.
        """
        profile = self.workload.profile(server)
        return phase_truth_of(profile, GPU_PROFILES[self._gpu_names[profile.gpus[0]]])

    def truth(self) -> dict[str, Any]:
        """Ground truth since the world's creation, in the truth-file format (no exposition).

        Energy is the exact integral of simulated power up to the clock's current time; tokens
        are the servers' lifetime totals (never reset by a restart). Taken under the world's
        lock, so it matches the counters the servers serve at this instant.

        Returns:
            ``{"gpus": {uuid: {"index", "energy_joules"}}, "servers": {name: {"engine",
            "energy_joules", "phase": {...}, "models": {model: {"input_tokens",
            "output_tokens", "cached_input_tokens", "lost_input_tokens",
            "lost_output_tokens"}}}}, "unattributed_energy_joules"}``.
            ``input_tokens - lost_input_tokens`` is what an agent that saw every scrape may
            count (likewise for output). ``phase`` holds the server's true energy model
            (:meth:`phase_truth`). Subtract two truths with :func:`truth_delta`.
        """
        with self._lock:
            energy = {i: float(self.nvml.true_energy_joules(i)) for i in range(self._gpu_count)}
            gpus = {
                self.nvml.uuid(i): {"index": i, "energy_joules": energy[i]}
                for i in range(self._gpu_count)
            }
            servers: dict[str, Any] = {}
            used: set[int] = set()
            for profile in self.workload.servers:
                state = self._servers[profile.name].state()
                used.update(profile.gpus)
                servers[profile.name] = {
                    "engine": profile.engine,
                    "energy_joules": sum(energy[i] for i in profile.gpus),
                    "phase": self.phase_truth(profile.name),
                    "models": {
                        model: {
                            "input_tokens": counts.prompt_tokens,
                            "output_tokens": counts.generation_tokens,
                            "cached_input_tokens": counts.cached_prompt_tokens,
                            # Made between the last scrape and a restart: no scraper saw them.
                            "lost_input_tokens": state.lost[model].prompt_tokens,
                            "lost_output_tokens": state.lost[model].generation_tokens,
                        }
                        for model, counts in state.lifetime.items()
                    },
                }
            unattributed = sum(e for i, e in energy.items() if i not in used)
            return {
                "gpus": gpus,
                "servers": servers,
                "unattributed_energy_joules": unattributed,
            }


def phase_truth_of(profile: ServerProfile, gpu: GpuProfile) -> dict[str, float]:
    """The true energy model of a simulated server on a GPU model (see :meth:`phase_truth`).

    Args:
        profile: The server's workload profile.
        gpu: The profile of the GPUs it runs on.

    Returns:
        ``joules_per_input_token``, ``joules_per_output_token`` (J) and ``idle_watts`` (W).
    """
    # Dynamic power above the server's idle utilization is (max - idle) W x span x achieved,
    # and achieved = work / peak work: so each work unit costs the same energy on every rank.
    span = profile.busy_utilization - profile.idle_utilization
    per_work_unit = (gpu.max_watts - gpu.idle_watts) * span / profile.peak_work_per_second_per_gpu
    idle_per_gpu = gpu.idle_watts + (gpu.max_watts - gpu.idle_watts) * profile.idle_utilization
    return {
        "joules_per_input_token": per_work_unit * profile.prefill_cost_ratio,
        "joules_per_output_token": per_work_unit,
        "idle_watts": idle_per_gpu * profile.ranks,
    }


def truth_delta(later: Mapping[str, Any], earlier: Mapping[str, Any]) -> dict[str, Any]:
    """What happened between two truths: ``later - earlier`` for every number.

    Use it to compare with the agent, which counts from its first sample of each server:
    take ``earlier`` at the agent's first successful sample and ``later`` at the end.
    Keys present only in ``later`` count from zero; an ``exposition`` key is carried over
    from ``later`` unchanged.

    Args:
        later: A truth dict (:meth:`DemoWorld.truth`).
        earlier: A truth dict taken before it.

    Returns:
        A dict in the same format.
    """
    old_gpus = earlier.get("gpus", {})
    old_servers = earlier.get("servers", {})
    gpus = {
        uuid: {
            "index": g["index"],
            "energy_joules": g["energy_joules"] - old_gpus.get(uuid, {}).get("energy_joules", 0.0),
        }
        for uuid, g in later["gpus"].items()
    }
    servers: dict[str, Any] = {}
    for name, s in later["servers"].items():
        old = old_servers.get(name, {})
        old_models = old.get("models", {})
        servers[name] = {
            "engine": s["engine"],
            "energy_joules": s["energy_joules"] - old.get("energy_joules", 0.0),
            "models": {
                model: {
                    key: m.get(key, 0) - old_models.get(model, {}).get(key, 0)
                    for key in TRUTH_TOKEN_KEYS
                }
                for model, m in s["models"].items()
            },
        }
        if "phase" in s:
            servers[name]["phase"] = s["phase"]  # a model of the server, not a count
    out: dict[str, Any] = {
        "gpus": gpus,
        "servers": servers,
        "unattributed_energy_joules": later["unattributed_energy_joules"]
        - earlier.get("unattributed_energy_joules", 0.0),
    }
    if "exposition" in later:
        out["exposition"] = later["exposition"]
    return out


def demo_servers_config(world: DemoWorld) -> list[dict[str, Any]]:
    """The agent's ``servers`` settings for the world's servers (call after ``start``).

    Args:
        world: A started world.

    Returns:
        One dict per server: ``name``, ``url``, ``engine``, ``gpus`` (NVML indices), ready for
        ``Settings(servers=...)``.
    """
    return [
        {"name": s.name, "url": s.url, "engine": s.engine, "gpus": list(s.gpu_indices)}
        for s in world.servers()
    ]
