"""Read a tokenergy agent's own /metrics into counters, and turn two readings into rates.

Pure module: no I/O, no clock. Shared by ``tokenergy plan --agent`` and ``tokenergy top``.

The body is read with the project's :class:`agent.servers.parser.Scanner` rather than
prometheus_client's parser: it reads only the ~20 families asked for, accepts the text format
and OpenMetrics, bounds the work and memory spent on a body (an agent's /metrics can be large
on a big node, and ``top`` reads it every second or two), and refuses an HTML error page or a
truncated body with a one-line reason, which is what these commands print.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.plan.model import Measured
from agent.servers.parser import DEFAULT_LIMITS, Exposition, ParseLimits, Scanner

__all__ = ["AgentReading", "ModelCounters", "rates", "read_agent"]

_NAMES = (
    "tokenergy_tokens_total",
    "tokenergy_cached_input_tokens_total",
    "tokenergy_energy_joules_total",
    "tokenergy_idle_energy_joules_total",
    "tokenergy_cost_total",
    "tokenergy_server_gpu_share",
    "tokenergy_server_up",
    "tokenergy_server_info",
    "tokenergy_server_requests",
    "tokenergy_server_kv_cache_usage_ratio",
    "tokenergy_pricing_info",
    # Reserved for the cost-anatomy work: read when present, None when absent.
    "tokenergy_phase_energy_joules_total",
    "tokenergy_cache_saved_energy_joules_total",
)
_SCANNER = Scanner(_NAMES)

Key = tuple[str, str]
"""(server, model)."""


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one (server, model) at one instant; None = not exported.

    Attributes:
        input_tokens: Input tokens.
        output_tokens: Output tokens.
        cached_tokens: Cached input tokens.
        energy_joules: Energy attributed, J.
        idle_joules: Idle part of it, J.
        cost: All cost, currency.
        hardware_cost: Hardware part of the cost, currency.
        input_phase_joules: Energy of input work, J (cost anatomy).
        output_phase_joules: Energy of output work, J (cost anatomy).
        cache_saved_joules: Energy saved by the prompt cache, J (cost anatomy).
    """

    input_tokens: float | None = None
    output_tokens: float | None = None
    cached_tokens: float | None = None
    energy_joules: float | None = None
    idle_joules: float | None = None
    cost: float | None = None
    hardware_cost: float | None = None
    input_phase_joules: float | None = None
    output_phase_joules: float | None = None
    cache_saved_joules: float | None = None


@dataclass(frozen=True)
class AgentReading:
    """What one /metrics body says.

    Attributes:
        models: Counters per (server, model).
        gpus: GPUs per server (sum of its attribution shares).
        server_up: Server -> whether its last scrape succeeded.
        waiting: Waiting requests per (server, model), where exported.
        running: Running requests per (server, model), where exported.
        kv_cache: KV-cache use 0..1 per (server, model), where exported.
        currency: From ``tokenergy_pricing_info``, or None.
    """

    models: Mapping[Key, ModelCounters]
    gpus: Mapping[str, float] = field(default_factory=dict)
    server_up: Mapping[str, bool] = field(default_factory=dict)
    waiting: Mapping[Key, float] = field(default_factory=dict)
    running: Mapping[Key, float] = field(default_factory=dict)
    kv_cache: Mapping[Key, float] = field(default_factory=dict)
    currency: str | None = None


def _by_key(exp: Exposition, name: str, **match: str) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for sample in exp.get(name):
        if any(sample.label(k) != v for k, v in match.items()):
            continue
        if not math.isfinite(sample.value):
            continue
        key = (sample.label("server", "") or "", sample.label("model", "") or "")
        out[key] = out.get(key, 0.0) + sample.value
    return out


def read_agent(body: bytes | str, limits: ParseLimits = DEFAULT_LIMITS) -> AgentReading:
    """Read the counters and gauges ``plan`` and ``top`` need from an agent's /metrics.

    Args:
        body: The exposition (text format or OpenMetrics).
        limits: Parser limits.

    Returns:
        The reading.

    Raises:
        agent.servers.parser.ParseError: Not a valid exposition.
        ValueError: A valid exposition without ``tokenergy_tokens_total`` (not a tokenergy agent).
    """
    exp = _SCANNER.parse(body, limits)
    if not exp.declared("tokenergy_tokens_total"):
        raise ValueError("no tokenergy_tokens_total: this is not a tokenergy agent's /metrics")
    columns = {
        "input_tokens": _by_key(exp, "tokenergy_tokens_total", type="input"),
        "output_tokens": _by_key(exp, "tokenergy_tokens_total", type="output"),
        "cached_tokens": _by_key(exp, "tokenergy_cached_input_tokens_total"),
        "energy_joules": _by_key(exp, "tokenergy_energy_joules_total"),
        "idle_joules": _by_key(exp, "tokenergy_idle_energy_joules_total"),
        "cost": _by_key(exp, "tokenergy_cost_total"),
        "hardware_cost": _by_key(exp, "tokenergy_cost_total", component="hardware"),
        "input_phase_joules": _by_key(exp, "tokenergy_phase_energy_joules_total", phase="input"),
        "output_phase_joules": _by_key(exp, "tokenergy_phase_energy_joules_total", phase="output"),
        "cache_saved_joules": _by_key(exp, "tokenergy_cache_saved_energy_joules_total"),
    }
    keys = set(columns["output_tokens"]) | set(columns["energy_joules"])
    models = {
        key: ModelCounters(**{name: col.get(key) for name, col in columns.items()})
        for key in sorted(keys)
    }
    gpus: dict[str, float] = {}
    for sample in exp.get("tokenergy_server_gpu_share"):
        server = sample.label("server", "") or ""
        gpus[server] = gpus.get(server, 0.0) + sample.value
    up = {
        sample.label("server", "") or "": sample.value == 1.0
        for sample in exp.get("tokenergy_server_up")
    }
    currencies = {s.label("currency") for s in exp.get("tokenergy_pricing_info")} - {None}
    return AgentReading(
        models=models,
        gpus=gpus,
        server_up=up,
        waiting=_by_key(exp, "tokenergy_server_requests", state="waiting"),
        running=_by_key(exp, "tokenergy_server_requests", state="running"),
        kv_cache=_by_key(exp, "tokenergy_server_kv_cache_usage_ratio"),
        currency=currencies.pop() if len(currencies) == 1 else None,
    )


def _delta(new: float | None, old: float | None) -> float | None:
    """Counter increase; a decrease is a restart, counted from zero as Prometheus does."""
    if new is None or old is None:
        return None
    return new - old if new >= old else new


def _rate(new: float | None, old: float | None, seconds: float) -> float | None:
    d = _delta(new, old)
    return None if d is None else d / seconds


def rates(old: AgentReading, new: AgentReading, seconds: float) -> list[Measured]:
    """Rates per (server, model) between two readings of the same agent.

    Args:
        old: The earlier reading.
        new: The later reading.
        seconds: Time between them, s (> 0).

    Returns:
        One row per (server, model) present in both with output tokens and energy counters.

    Raises:
        ValueError: ``seconds`` is not positive.
    """
    if seconds <= 0:
        raise ValueError(f"readings {seconds} s apart: need a positive interval")
    out = []
    for key, n in new.models.items():
        o = old.models.get(key)
        if o is None:
            continue
        output = _rate(n.output_tokens, o.output_tokens, seconds)
        watts = _rate(n.energy_joules, o.energy_joules, seconds)
        if output is None or watts is None:
            continue
        server, model = key
        gpus = new.gpus.get(server)
        # A server's GPUs are split among its models as its energy is (by token share).
        server_watts = sum(
            _rate(c.energy_joules, old.models[k].energy_joules, seconds) or 0.0
            for k, c in new.models.items()
            if k[0] == server and k in old.models
        )
        share = watts / server_watts if server_watts > 0 else None
        out.append(
            Measured(
                server=server,
                model=model,
                output_tps=output,
                watts=watts,
                input_tps=_rate(n.input_tokens, o.input_tokens, seconds),
                cached_tps=_rate(n.cached_tokens, o.cached_tokens, seconds),
                idle_watts=_rate(n.idle_joules, o.idle_joules, seconds),
                gpus=None if gpus is None or share is None else gpus * share,
                cost_per_s=_rate(n.cost, o.cost, seconds),
                hardware_cost_per_s=_rate(n.hardware_cost, o.hardware_cost, seconds),
                input_phase_watts=_rate(n.input_phase_joules, o.input_phase_joules, seconds),
                output_phase_watts=_rate(n.output_phase_joules, o.output_phase_joules, seconds),
                cache_saved_watts=_rate(n.cache_saved_joules, o.cache_saved_joules, seconds),
            )
        )
    return out
