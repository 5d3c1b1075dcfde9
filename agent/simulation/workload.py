"""Seeded workload for the simulated world: what each inference server does in each tick.

Pure module: every value is a function of ``(seed, scenario, server, tick)``. No clock reads,
no I/O, no threads, no mutable module state. Time is cut into ticks of
:data:`TICK_SECONDS`; tick ``k`` covers ``[k * TICK_SECONDS, (k + 1) * TICK_SECONDS)`` seconds
after the world started. Token counts per tick are integers, so a caller that sums ticks keeps
exact totals (no float drift), and :meth:`Workload.cumulative` recomputes the same totals from
scratch.

The numbers are chosen to match published GPU-board figures (ML.ENERGY's measurements of vLLM, and
the sources cited below): an H100 serving an 8B model at ~70 % utilization draws ~500 W (with a
power model of about 70 W idle + 630 W x utilization) and produces ~3,000 output tokens/s, i.e.
~0.17 J per output token; llama.cpp is less efficient (~0.6 J/token); an idle-heavy server is far
worse.

Scenarios:
    steady: constant demand with per-tick noise.
    bursty: low base demand with bursts shorter than a second (power swings < 1 s).
    diurnal: a day compressed into :data:`DIURNAL_PERIOD_SECONDS`.
    gpu-lost: steady; at the fault time the llama.cpp GPU falls off the bus and that server
        produces nothing after it (its /metrics still answers with frozen counters).
    driver-reload: steady; at the fault time the NVML driver reloads (energy counters restart).
    server-restart: steady; at the fault time the vLLM server restarts (its counters reset).
    server-down: steady; SGLang is down (connection refused, no tokens, GPU idle) from the
        fault time to the recovery time, then comes back with its counters where they were.
    nvml-hang: steady; NVML calls on GPU 0 hang from the fault time to the recovery time
        (the simulated NVML's hangs last real seconds).
    dp-rank-restart: steady; at the fault time data-parallel rank 1 of the vLLM server
        restarts (its series start again from 0 while rank 0 goes on), and at the recovery
        time rank 0's series drop out of one scrape (they come back whole at the next).
    faults: steady; all of the above but dp-rank-restart in turn, one recovery time apart:
        driver reload at the fault time F, vLLM restart at F + R, SGLang down from F + 2R to
        F + 3R, NVML hang on GPU 0 from F + 4R to F + 5R, GPU 3 lost at F + 5R (R = recovery
        time). With the defaults (F = 20 s, R = 15 s) a two-minute demo shows every fault.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

TICK_SECONDS = 0.05
"""Length of one simulation tick, s (the demo driver steps every 50 ms)."""

DIURNAL_PERIOD_SECONDS = 120.0
"""Length of the compressed day of the ``diurnal`` scenario, s."""

FAULT_AT_SECONDS = 20.0
"""Default time of a scenario's fault, s after the world started."""

RECOVER_AFTER_SECONDS = 15.0
"""Default duration of a fault that recovers (server-down, nvml-hang), s."""

BASE_SCENARIOS: tuple[str, ...] = ("steady", "bursty", "diurnal")
FAULT_SCENARIOS: tuple[str, ...] = (
    "gpu-lost",
    "driver-reload",
    "server-restart",
    "server-down",
    "nvml-hang",
    "dp-rank-restart",
    "faults",
)
SCENARIOS: tuple[str, ...] = BASE_SCENARIOS + FAULT_SCENARIOS
"""Every scenario name :class:`Workload` accepts."""

PREFILL_SPREAD_TICKS = 20
"""Ticks over which a request's prompt is processed after it arrives (1 s, chunked prefill):
its prompt tokens are counted, and their energy spent, a twentieth per tick, so a burst of
long prompts never asks more of a GPU in one tick than it can do."""

MIN_PROMPT_MIX = 0.3
MAX_PROMPT_MIX = 1.8
"""Range of the bursty scenario's prompt-length multiplier, drawn per second: request mixes
change (chat, RAG, summarization), which is what lets the agent tell input energy from output
energy. Demand is offered work, so a prompt-heavy second generates fewer tokens."""

_MASK64 = (1 << 64) - 1


class UnknownScenarioError(ValueError):
    """A scenario name that is not one of :data:`SCENARIOS`."""


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """How one simulated inference server behaves.

    Attributes:
        name: Server name (the agent's ``server`` label).
        engine: Engine of its exposition: ``vllm``, ``sglang``, ``llamacpp``, ...
        model: Served model name; "" for engines without a model label (llama.cpp).
        gpus: GPU indices it runs on (one data-parallel rank per GPU).
        peak_output_tokens_per_second_per_gpu: Generated tokens/s per GPU at full demand.
        busy_utilization: GPU utilization at full demand, 0..1.
        idle_utilization: GPU utilization with the model loaded and no request, 0..1.
        mean_prompt_tokens: Mean prompt length per request, tokens.
        mean_output_tokens: Mean generated length per request, tokens.
        cache_hit_share: Mean share of prompt tokens served from the prefix cache, 0..1.
        max_running: Batch capacity: requests running at full demand.
        demand_scale: Multiplies the scenario's demand for this server, 0..1.
        prefill_cost_ratio: GPU work of one computed (not cached) prompt token relative to one
            generated token. Prefill is compute-bound and batches a whole prompt in one pass;
            decode is memory-bound, one token per pass: a prompt token costs a fraction of a
            generated one.
    """

    name: str
    engine: str
    model: str
    gpus: tuple[int, ...]
    peak_output_tokens_per_second_per_gpu: float
    busy_utilization: float
    idle_utilization: float
    mean_prompt_tokens: int
    mean_output_tokens: int
    cache_hit_share: float
    max_running: int
    demand_scale: float = 1.0
    prefill_cost_ratio: float = 0.12

    @property
    def ranks(self) -> int:
        """Number of data-parallel ranks (one per GPU)."""
        return len(self.gpus)

    @property
    def computed_prompt_per_output(self) -> float:
        """Computed (not cached) prompt tokens per generated token at the mean mix."""
        computed = self.mean_prompt_tokens * (1.0 - self.cache_hit_share)
        return computed / self.mean_output_tokens

    @property
    def peak_work_per_second_per_gpu(self) -> float:
        """Work units a GPU does per second at full utilization with the mean mix.

        One work unit is one generated token; a computed prompt token is
        ``prefill_cost_ratio`` units.
        """
        return self.peak_output_tokens_per_second_per_gpu * (
            1.0 + self.prefill_cost_ratio * self.computed_prompt_per_output
        )

    def output_share_of_work(self, prompt_mix: float) -> float:
        """Generated tokens per work unit when prompts are ``prompt_mix`` times the mean."""
        return 1.0 / (1.0 + self.prefill_cost_ratio * self.computed_prompt_per_output * prompt_mix)


DEMO_SERVERS: tuple[ServerProfile, ...] = (
    # Llama 3.1 8B on H100 with vLLM: ~3,000 output tok/s per GPU at 70 % demand (ML.ENERGY
    # measured 0.12-0.20 J/token at batch 64, ML.ENERGY).
    ServerProfile(
        name="vllm",
        engine="vllm",
        model="meta-llama/Llama-3.1-8B-Instruct",
        gpus=(0, 1),
        peak_output_tokens_per_second_per_gpu=4300.0,
        busy_utilization=0.97,
        idle_utilization=0.0,
        mean_prompt_tokens=800,
        mean_output_tokens=200,
        cache_hit_share=0.35,
        max_running=128,
        demand_scale=1.0,
    ),
    # SGLang's radix cache shares long prefixes: more cache hits.
    ServerProfile(
        name="sglang",
        engine="sglang",
        model="Qwen/Qwen2.5-7B-Instruct",
        gpus=(2,),
        peak_output_tokens_per_second_per_gpu=4500.0,
        busy_utilization=0.97,
        idle_utilization=0.0,
        mean_prompt_tokens=1200,
        mean_output_tokens=300,
        cache_hit_share=0.55,
        max_running=128,
        demand_scale=0.85,
    ),
    # llama.cpp with a few parallel slots: far fewer tokens for the power it draws.
    ServerProfile(
        name="llamacpp",
        engine="llamacpp",
        model="",
        gpus=(3,),
        peak_output_tokens_per_second_per_gpu=900.0,
        busy_utilization=0.65,
        idle_utilization=0.02,
        mean_prompt_tokens=600,
        mean_output_tokens=250,
        cache_hit_share=0.2,
        max_running=8,
        demand_scale=0.8,
        prefill_cost_ratio=0.25,
    ),
)
"""The three servers of the demo contract (GPU 4 is left idle)."""


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """A fault the world injects at a set time.

    Attributes:
        at_seconds: When, s after the world started.
        kind: ``lose_gpu``, ``reload_driver``, ``restart_server``, ``server_down``,
            ``server_up``, ``nvml_hang``, ``restart_rank``, ``drop_rank_series``.
        gpu: GPU index the fault concerns (``lose_gpu``, ``nvml_hang``), else None.
        server: Server name the fault concerns (``restart_server``, ``server_down/up``,
            ``restart_rank``, ``drop_rank_series``).
        duration_seconds: How long the fault lasts (``nvml_hang``), s.
        rank: Data-parallel rank the fault concerns (``restart_rank``, ``drop_rank_series``).
    """

    at_seconds: float
    kind: str
    gpu: int | None = None
    server: str | None = None
    duration_seconds: float = 0.0
    rank: int | None = None

    @property
    def tick(self) -> int:
        """First tick that starts at or after the event (the event fires before it)."""
        return math.ceil(self.at_seconds / TICK_SECONDS - 1e-9)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A base demand shape plus fault events.

    Attributes:
        name: One of :data:`SCENARIOS`.
        base: ``steady``, ``bursty`` or ``diurnal``.
        events: Fault events in time order (sorted on construction).
    """

    name: str
    base: str
    events: tuple[FaultEvent, ...] = field(default=())

    def __post_init__(self) -> None:
        # Stable sort: events at the same time keep their given order.
        ordered = tuple(sorted(self.events, key=lambda e: e.at_seconds))
        object.__setattr__(self, "events", ordered)


def make_scenario(
    name: str,
    *,
    fault_at_seconds: float = FAULT_AT_SECONDS,
    recover_after_seconds: float = RECOVER_AFTER_SECONDS,
) -> Scenario:
    """Build a named scenario.

    Args:
        name: One of :data:`SCENARIOS`.
        fault_at_seconds: Time of the fault, s after the world started.
        recover_after_seconds: Duration of a recovering fault, s.

    Returns:
        The scenario with its events in time order.

    Raises:
        UnknownScenarioError: When ``name`` is not a known scenario.
        ValueError: When a time is negative or not finite.
    """
    if name not in SCENARIOS:
        raise UnknownScenarioError(
            f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}"
        )
    for label, value in (
        ("fault_at_seconds", fault_at_seconds),
        ("recover_after_seconds", recover_after_seconds),
    ):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{label} must be a finite number >= 0 s, got {value!r}")
    at = fault_at_seconds
    back = fault_at_seconds + recover_after_seconds
    events: tuple[FaultEvent, ...]
    if name in BASE_SCENARIOS:
        return Scenario(name=name, base=name)
    if name == "gpu-lost":
        events = (FaultEvent(at, "lose_gpu", gpu=3),)
    elif name == "driver-reload":
        events = (FaultEvent(at, "reload_driver"),)
    elif name == "server-restart":
        events = (FaultEvent(at, "restart_server", server="vllm"),)
    elif name == "server-down":
        events = (
            FaultEvent(at, "server_down", server="sglang"),
            FaultEvent(back, "server_up", server="sglang"),
        )
    elif name == "nvml-hang":
        events = (FaultEvent(at, "nvml_hang", gpu=0, duration_seconds=recover_after_seconds),)
    elif name == "dp-rank-restart":
        events = (
            FaultEvent(at, "restart_rank", server="vllm", rank=1),
            FaultEvent(back, "drop_rank_series", server="vllm", rank=0),
        )
    else:  # faults: every fault in turn, one recovery time apart
        gap = recover_after_seconds
        events = (
            FaultEvent(at, "reload_driver"),
            FaultEvent(at + gap, "restart_server", server="vllm"),
            FaultEvent(at + 2 * gap, "server_down", server="sglang"),
            FaultEvent(at + 3 * gap, "server_up", server="sglang"),
            FaultEvent(at + 4 * gap, "nvml_hang", gpu=0, duration_seconds=gap),
            FaultEvent(at + 5 * gap, "lose_gpu", gpu=3),
        )
    return Scenario(name=name, base="steady", events=events)


@dataclass(frozen=True, slots=True)
class TickLoad:
    """What one server did in one tick.

    Attributes:
        server: Server name.
        tick: Tick index.
        arrivals: Requests that arrived, count.
        finished: Requests that finished, count.
        prompt_tokens: Prompt tokens processed (prefix-cache hits included), tokens.
        cached_prompt_tokens: Prompt tokens served from the prefix cache, tokens.
        generation_tokens: Generated (output) tokens, tokens.
        requests_running: Requests in the batch at the end of the tick.
        requests_waiting: Requests queued at the end of the tick.
        kv_cache_usage: KV-cache usage, 0..1.
        utilization: Utilization of each of the server's GPUs, 0..1, in ``profile.gpus`` order.
        active: False while the server is down or its GPU is lost (no tokens, idle GPU).
        work: GPU work done, in generated-token units (see
            :attr:`ServerProfile.peak_work_per_second_per_gpu`).
        prefill_work: The part of ``work`` that computed prompt tokens took.
    """

    server: str
    tick: int
    arrivals: int
    finished: int
    prompt_tokens: int
    cached_prompt_tokens: int
    generation_tokens: int
    requests_running: int
    requests_waiting: int
    kv_cache_usage: float
    utilization: tuple[float, ...]
    active: bool
    work: float = 0.0
    prefill_work: float = 0.0


def _part(tokens: int, offset: int) -> int:
    """The share of ``tokens`` processed ``offset`` ticks after arrival (integers, exact sum)."""
    base, extra = divmod(tokens, PREFILL_SPREAD_TICKS)
    return base + (1 if offset < extra else 0)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _uniform(*keys: int) -> float:
    """A deterministic uniform number in [0, 1) from integer keys (counter-based RNG)."""
    h = 0
    for key in keys:
        h = _splitmix64(h ^ (key & _MASK64))
    return (h >> 11) * (1.0 / (1 << 53))


def _name_key(name: str) -> int:
    h = 1469598103934665603
    for byte in name.encode():
        h = ((h ^ byte) * 1099511628211) & _MASK64
    return h


def _round_stochastic(value: float, u: float) -> int:
    """Round ``value`` >= 0 up with probability equal to its fraction (keeps the mean exact)."""
    floor = math.floor(value)
    return int(floor) + (1 if u < value - floor else 0)


def _poisson(lam: float, key: tuple[int, ...]) -> int:
    """A Poisson(lam) sample from the counter-based RNG (Knuth below 30, normal above)."""
    if lam <= 0:
        return 0
    if lam >= 30:
        # Box-Muller normal approximation.
        u1 = max(_uniform(*key, 0), 1e-12)
        u2 = _uniform(*key, 1)
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        return max(0, round(lam + z * math.sqrt(lam)))
    limit = math.exp(-lam)
    product = 1.0
    count = 0
    while True:
        product *= _uniform(*key, count)
        if product <= limit:
            return count
        count += 1


# Streams of the counter-based RNG, so each quantity draws independent numbers.
(
    _S_DEMAND,
    _S_ARRIVALS,
    _S_PROMPT,
    _S_CACHE,
    _S_GEN,
    _S_FINISH,
    _S_GAUGE,
    _S_UTIL,
    _S_BURST,
    _S_MIX,
) = range(10)


class Workload:
    """The seeded workload of one scenario over a set of servers.

    Pure: methods are functions of the constructor arguments and their parameters.

    Args:
        scenario: A scenario name from :data:`SCENARIOS`, or a built :class:`Scenario`.
        seed: Seed; the same seed gives the same workload.
        servers: Server profiles (default: the demo's three servers).

    Raises:
        UnknownScenarioError: When the scenario name is unknown.
        ValueError: When server names repeat or a profile is out of range.
    """

    def __init__(
        self,
        scenario: str | Scenario,
        seed: int,
        servers: Sequence[ServerProfile] = DEMO_SERVERS,
    ) -> None:
        self.scenario = make_scenario(scenario) if isinstance(scenario, str) else scenario
        self.seed = seed
        self.servers: tuple[ServerProfile, ...] = tuple(servers)
        names = [s.name for s in self.servers]
        if len(set(names)) != len(names):
            raise ValueError(f"server names must be unique, got {names}")
        for s in self.servers:
            if not s.gpus:
                raise ValueError(f"server {s.name!r} needs at least one GPU")
            for label, value in (
                ("busy_utilization", s.busy_utilization),
                ("idle_utilization", s.idle_utilization),
                ("cache_hit_share", s.cache_hit_share),
                ("demand_scale", s.demand_scale),
            ):
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"server {s.name!r}: {label} must be in 0..1, got {value}")
        self._by_name = {s.name: s for s in self.servers}
        self._keys = {s.name: _name_key(s.name) for s in self.servers}
        self._down = self._down_intervals()

    def profile(self, server: str) -> ServerProfile:
        """The profile of a server by name.

        Raises:
            KeyError: When no server has that name.
        """
        try:
            return self._by_name[server]
        except KeyError:
            raise KeyError(f"no server named {server!r} in this workload") from None

    def _down_intervals(self) -> dict[str, list[tuple[int, int | None]]]:
        """Tick intervals ``[start, end)`` in which a server produces nothing."""
        out: dict[str, list[tuple[int, int | None]]] = {s.name: [] for s in self.servers}
        opened: dict[str, int] = {}
        for event in self.scenario.events:
            if event.kind == "server_down" and event.server in out:
                opened[event.server] = event.tick
            elif event.kind == "server_up" and event.server in opened:
                out[event.server].append((opened.pop(event.server), event.tick))
            elif event.kind == "lose_gpu":
                for s in self.servers:
                    if event.gpu in s.gpus:
                        out[s.name].append((event.tick, None))
        for name, start in opened.items():
            out[name].append((start, None))
        return out

    def active(self, server: str, tick: int) -> bool:
        """False while ``server`` is down or has lost a GPU at ``tick``."""
        return not any(
            start <= tick and (end is None or tick < end) for start, end in self._down[server]
        )

    def demand(self, server: str, tick: int) -> float:
        """Offered load of ``server`` in ``tick`` relative to its capacity, 0..1."""
        profile = self.profile(server)
        t = tick * TICK_SECONDS
        key = self._keys[server]
        noise = _uniform(self.seed, key, _S_DEMAND, tick) - 0.5
        base = self.scenario.base
        if base == "steady":
            level = 0.72 + 0.08 * noise
        elif base == "diurnal":
            phase = 2.0 * math.pi * t / DIURNAL_PERIOD_SECONDS
            level = 0.08 + 0.84 * (0.5 - 0.5 * math.cos(phase)) + 0.06 * noise
        else:  # bursty
            level = (0.88 if self._in_burst(key, t) else 0.12) + 0.06 * noise
        return min(1.0, max(0.0, level * profile.demand_scale))

    def prompt_mix(self, server: str, tick: int) -> float:
        """Multiplier of the mean prompt length in ``tick``: 1, or drawn per second when bursty."""
        if self.scenario.base != "bursty":
            return 1.0
        slot = math.floor(tick * TICK_SECONDS)
        u = _uniform(self.seed, self._keys[server], _S_MIX, slot)
        return MIN_PROMPT_MIX + (MAX_PROMPT_MIX - MIN_PROMPT_MIX) * u

    def _in_burst(self, key: int, t: float) -> bool:
        """Bursts: in each 1-s slot, maybe one burst of 0.1-0.55 s that ends inside the slot."""
        slot = math.floor(t)
        if _uniform(self.seed, key, _S_BURST, slot, 0) >= 0.7:
            return False
        start = slot + 0.4 * _uniform(self.seed, key, _S_BURST, slot, 1)
        end = start + 0.1 + 0.45 * _uniform(self.seed, key, _S_BURST, slot, 2)
        return start <= t < end

    def tick(self, server: str, tick: int) -> TickLoad:
        """What ``server`` does in tick ``tick`` (pure: same arguments, same result).

        Args:
            server: Server name.
            tick: Tick index, >= 0.

        Returns:
            Integer token counts and gauges for that tick.

        Raises:
            ValueError: When ``tick`` is negative.
            KeyError: When no server has that name.
        """
        if tick < 0:
            raise ValueError(f"tick must be >= 0, got {tick}")
        p = self.profile(server)
        if not self.active(server, tick):
            return TickLoad(
                server=server,
                tick=tick,
                arrivals=0,
                finished=0,
                prompt_tokens=0,
                cached_prompt_tokens=0,
                generation_tokens=0,
                requests_running=0,
                requests_waiting=0,
                kv_cache_usage=0.0,
                utilization=tuple(0.0 for _ in p.gpus),
                active=False,
            )
        key = self._keys[server]
        seed = self.seed
        d = self.demand(server, tick)
        ranks = p.ranks
        mix = self.prompt_mix(server, tick)
        output_rate = d * ranks * p.peak_work_per_second_per_gpu * p.output_share_of_work(mix)
        rps = output_rate / p.mean_output_tokens
        arrivals = self._prompts(server, tick)[0]
        # A request's prompt is processed (counted, and its energy spent) over the ticks after
        # it arrives (chunked prefill), not all in its arrival tick: that keeps one burst of
        # long prompts from asking more of the GPU in a tick than it can do.
        prompt = cached = 0
        for j in range(max(0, tick - PREFILL_SPREAD_TICKS + 1), tick + 1):
            if self.active(server, j):
                _, arrived, hits = self._prompts(server, j)
                prompt += _part(arrived, tick - j)
                cached += _part(hits, tick - j)
        finished = _poisson(rps * TICK_SECONDS, (seed, key, _S_FINISH, tick))
        gen_mean = output_rate * TICK_SECONDS
        gen_noise = 0.9 + 0.2 * _uniform(seed, key, _S_GEN, tick)
        generation = _round_stochastic(gen_mean * gen_noise, _uniform(seed, key, _S_GEN, tick, 1))
        # Achieved work drives the GPUs, so token noise shows up in power too: every computed
        # prompt token and every generated token has its own energy.
        prefill_work = p.prefill_cost_ratio * (prompt - cached)
        work = prefill_work + generation
        peak_tick = ranks * p.peak_work_per_second_per_gpu * TICK_SECONDS
        achieved = min(1.0, work / peak_tick)
        u_gauge = _uniform(seed, key, _S_GAUGE, tick)
        wanted = d * p.max_running * (0.9 + 0.25 * u_gauge)
        running = min(p.max_running * ranks, round(wanted * ranks))
        waiting = max(0, round(wanted * ranks) - p.max_running * ranks)
        kv = min(1.0, 0.05 + 0.85 * running / (p.max_running * ranks))
        span = p.busy_utilization - p.idle_utilization
        utilization = tuple(
            min(
                1.0,
                max(
                    0.0,
                    p.idle_utilization
                    + span * achieved * (0.97 + 0.06 * _uniform(seed, key, _S_UTIL, tick, gpu)),
                ),
            )
            for gpu in p.gpus
        )
        return TickLoad(
            server=server,
            tick=tick,
            arrivals=arrivals,
            finished=finished,
            prompt_tokens=prompt,
            cached_prompt_tokens=cached,
            generation_tokens=generation,
            requests_running=running,
            requests_waiting=waiting,
            kv_cache_usage=kv,
            utilization=utilization,
            active=True,
            work=work,
            prefill_work=prefill_work,
        )

    def _prompts(self, server: str, tick: int) -> tuple[int, int, int]:
        """Requests that arrived in ``tick``, their prompt tokens and the cached part of them."""
        p = self.profile(server)
        key = self._keys[server]
        seed = self.seed
        mix = self.prompt_mix(server, tick)
        output_rate = (
            self.demand(server, tick)
            * p.ranks
            * p.peak_work_per_second_per_gpu
            * p.output_share_of_work(mix)
        )
        rps = output_rate / p.mean_output_tokens
        arrivals = _poisson(rps * TICK_SECONDS, (seed, key, _S_ARRIVALS, tick))
        prompt = 0
        mean_prompt = p.mean_prompt_tokens * mix
        for i in range(arrivals):
            # Prompt lengths spread over 0.25x .. 1.75x the mean.
            u = _uniform(seed, key, _S_PROMPT, tick, i)
            prompt += max(1, round(mean_prompt * (0.25 + 1.5 * u)))
        share = p.cache_hit_share * (0.8 + 0.4 * _uniform(seed, key, _S_CACHE, tick))
        cached = min(
            prompt, _round_stochastic(prompt * share, _uniform(seed, key, _S_CACHE, tick, 1))
        )
        return arrivals, prompt, cached

    def cumulative(self, server: str, end_tick: int) -> tuple[int, int, int]:
        """Exact totals of ticks ``0 .. end_tick - 1`` recomputed from scratch.

        Args:
            server: Server name.
            end_tick: One past the last tick counted.

        Returns:
            ``(prompt_tokens, generation_tokens, cached_prompt_tokens)``.
        """
        prompt = generation = cached = 0
        for k in range(max(0, end_tick)):
            load = self.tick(server, k)
            prompt += load.prompt_tokens
            generation += load.generation_tokens
            cached += load.cached_prompt_tokens
        return prompt, generation, cached


def ticks_until(elapsed_seconds: float) -> int:
    """Number of ticks completed ``elapsed_seconds`` after the start.

    A tick is completed once its end time has been reached; the small epsilon keeps
    ``20.0 / 0.05`` from rounding down to 399.

    Args:
        elapsed_seconds: Time since the world started, s.

    Returns:
        Completed ticks, >= 0.
    """
    if elapsed_seconds <= 0:
        return 0
    return max(0, math.floor(elapsed_seconds / TICK_SECONDS + 1e-9))
