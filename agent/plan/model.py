"""The tokenomics arithmetic of ``tokenergy plan``: ratios, cost scenarios, capacity, breakeven.

Pure module: no I/O, no clock. Inputs are measured *rates* (per second, averaged over a range
or a window) per (server, model); every output that needs a measurement the source did not
provide is ``None`` (shown as ``-`` and as JSON ``null``), never a number computed from nothing.

Conventions (the same as the agent's, so the default scenario reproduces its gauges):

* Headline ratios are per **output** token; "power" is the GPU energy attributed to the
  server (idle included), in W = J/s, before PUE.
* Energy cost per s = W / 1000 x PUE x price per kWh / 3600; hardware cost per s =
  GPUs x rate per GPU-hour / 3600; cost per million tokens = 1e6 x cost per s / tokens per s.
* A month is 730 h (8760 h / 12).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

__all__ = [
    "HOURS_PER_MONTH",
    "CapacityMonth",
    "CostScenario",
    "Measured",
    "Measurement",
    "Ratios",
    "ScenarioCost",
    "WhatIf",
    "capacity",
    "cost_per_million",
    "fleet",
    "ratios",
    "scenario_grid",
    "what_if_cache",
    "what_if_idle",
]

HOURS_PER_MONTH = 8760.0 / 12.0


@dataclass(frozen=True)
class Measured:
    """Measured rates of one (server, model), or of the fleet (``server == model == "*"``).

    Attributes:
        server: Server name (``*`` for the fleet).
        model: Model name (``""`` when the server has no model label, ``*`` for the fleet).
        output_tps: Output tokens per second.
        watts: Energy attributed to the server, J/s (idle included, before PUE).
        input_tps: Input tokens per second, or None when unknown.
        cached_tps: Cached input tokens per second, or None when unknown.
        idle_watts: Part of ``watts`` spent with no tokens, J/s, or None.
        gpus: GPUs serving it (sum of attribution shares), or None.
        cost_per_s: All cost as the agents priced it, currency per s, or None.
        hardware_cost_per_s: Its hardware part, currency per s, or None.
        input_phase_watts: Energy of input (prefill) work, J/s (cost-anatomy series), or None.
        output_phase_watts: Energy of output (decode) work, J/s (cost-anatomy series), or None.
        cache_saved_watts: Energy the prompt cache saved, J/s (cost-anatomy series), or None.
    """

    server: str
    model: str
    output_tps: float
    watts: float
    input_tps: float | None = None
    cached_tps: float | None = None
    idle_watts: float | None = None
    gpus: float | None = None
    cost_per_s: float | None = None
    hardware_cost_per_s: float | None = None
    input_phase_watts: float | None = None
    output_phase_watts: float | None = None
    cache_saved_watts: float | None = None


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _sum(values: Sequence[float | None]) -> float | None:
    """Sum, or None when any part is unknown (a partial sum would understate the fleet)."""
    if not values or any(v is None for v in values):
        return None
    return math.fsum(v for v in values if v is not None)


def fleet(rows: Sequence[Measured]) -> Measured:
    """The fleet as one row: the sum of every rate (ratio of sums, never an average of ratios).

    Args:
        rows: Per (server, model) rates.

    Returns:
        A row named ``*``/``*``; optional fields are None unless every row has them.
    """
    return Measured(
        server="*",
        model="*",
        output_tps=math.fsum(r.output_tps for r in rows),
        watts=math.fsum(r.watts for r in rows),
        input_tps=_sum([r.input_tps for r in rows]),
        cached_tps=_sum([r.cached_tps for r in rows]),
        idle_watts=_sum([r.idle_watts for r in rows]),
        gpus=_sum([r.gpus for r in rows]),
        cost_per_s=_sum([r.cost_per_s for r in rows]),
        hardware_cost_per_s=_sum([r.hardware_cost_per_s for r in rows]),
        input_phase_watts=_sum([r.input_phase_watts for r in rows]),
        output_phase_watts=_sum([r.output_phase_watts for r in rows]),
        cache_saved_watts=_sum([r.cache_saved_watts for r in rows]),
    )


@dataclass(frozen=True)
class Ratios:
    """The measured efficiency of one row.

    Attributes:
        tokens_per_joule: Output tokens per GPU joule (= tokens/s per W).
        tokens_per_s_per_kw: Output tokens/s per kW of GPU power.
        tokens_per_s_per_mw_facility: Output tokens/s per MW at the meter (GPU power x PUE).
        joules_per_input_token: J per input token (cost-anatomy split), or None.
        joules_per_output_token: J per output token (cost-anatomy split), or None.
        idle_share: Idle energy / energy, 0..1, or None.
        cache_hit_ratio: Cached / input tokens, 0..1, or None.
        tokens_per_s_per_gpu: Output tokens/s per GPU, or None.
        watts_per_gpu: Attributed power per GPU, W, or None.
        measured_cost_per_million: Cost per million output tokens as the agents priced it.
    """

    tokens_per_joule: float | None
    tokens_per_s_per_kw: float | None
    tokens_per_s_per_mw_facility: float | None
    joules_per_input_token: float | None
    joules_per_output_token: float | None
    idle_share: float | None
    cache_hit_ratio: float | None
    tokens_per_s_per_gpu: float | None
    watts_per_gpu: float | None
    measured_cost_per_million: float | None


def ratios(row: Measured, pue: float) -> Ratios:
    """Efficiency ratios of one row.

    Args:
        row: Measured rates.
        pue: Power usage effectiveness used for the facility figure (>= 1 typically).

    Returns:
        The ratios; None where an input is unknown or a denominator is zero.
    """
    per_joule = _div(row.output_tps, row.watts)
    cost = _div(row.cost_per_s, row.output_tps)
    return Ratios(
        tokens_per_joule=per_joule,
        tokens_per_s_per_kw=None if per_joule is None else per_joule * 1e3,
        tokens_per_s_per_mw_facility=None if per_joule is None else per_joule * 1e6 / pue,
        joules_per_input_token=_div(row.input_phase_watts, row.input_tps),
        joules_per_output_token=_div(row.output_phase_watts, row.output_tps),
        idle_share=_div(row.idle_watts, row.watts),
        cache_hit_ratio=_div(row.cached_tps, row.input_tps),
        tokens_per_s_per_gpu=_div(row.output_tps, row.gpus),
        watts_per_gpu=_div(row.watts, row.gpus),
        measured_cost_per_million=None if cost is None else cost * 1e6,
    )


@dataclass(frozen=True)
class CostScenario:
    """One price scenario.

    Attributes:
        electricity_per_kwh: Price of a kWh at the meter, currency.
        pue: Power usage effectiveness.
        gpu_hourly: Rate per GPU-hour, currency; None = the rate the agents priced with.
    """

    electricity_per_kwh: float
    pue: float
    gpu_hourly: float | None

    @property
    def label(self) -> str:
        """A short label such as ``0.1/kWh PUE 1.3 2.5/GPU-h``."""
        rate = "measured" if self.gpu_hourly is None else f"{self.gpu_hourly:g}"
        return f"{self.electricity_per_kwh:g}/kWh PUE {self.pue:g} {rate}/GPU-h"


def scenario_grid(
    electricity: Sequence[float], pues: Sequence[float], hourly: Sequence[float | None]
) -> list[CostScenario]:
    """Every combination of the given prices, PUEs and GPU-hour rates, in the order given."""
    return [CostScenario(e, p, h) for e in electricity for p in pues for h in hourly]


@dataclass(frozen=True)
class ScenarioCost:
    """Cost of one row under one scenario, per million output tokens.

    Attributes:
        scenario: The prices.
        energy: Energy part, or None when unknown.
        hardware: Hardware part, or None when unknown.
        total: Energy + hardware, or None when either is unknown.
        price_at_margin: Price per million output tokens that leaves the target margin.
        margin_at_price: Margin (share of the price) left at the given price.
    """

    scenario: CostScenario
    energy: float | None
    hardware: float | None
    total: float | None
    price_at_margin: float | None = None
    margin_at_price: float | None = None


def hardware_cost_per_s(row: Measured, gpu_hourly: float | None) -> float | None:
    """Hardware cost of a row per second: GPUs x rate, or the agents' own when rate is None."""
    if gpu_hourly is None:
        return row.hardware_cost_per_s
    if row.gpus is None:
        return None
    return row.gpus * gpu_hourly / 3600.0


def cost_per_million(
    row: Measured,
    scenario: CostScenario,
    margin: float | None = None,
    price: float | None = None,
) -> ScenarioCost:
    """Cost per million output tokens of a row under a scenario, with breakeven figures.

    Args:
        row: Measured rates.
        scenario: Prices.
        margin: Target margin as a share of the price, in [0, 1); None = not asked.
        price: Selling price per million output tokens; None = not asked.

    Returns:
        The cost split; None parts where an input is unknown or the row made no tokens.
    """
    if row.output_tps <= 0:
        return ScenarioCost(scenario, None, None, None)
    energy_per_s = row.watts / 1e3 * scenario.pue * scenario.electricity_per_kwh / 3600.0
    energy = energy_per_s * 1e6 / row.output_tps
    hw_per_s = hardware_cost_per_s(row, scenario.gpu_hourly)
    hardware = None if hw_per_s is None else hw_per_s * 1e6 / row.output_tps
    total = None if hardware is None else energy + hardware
    at_margin = None if total is None or margin is None else total / (1.0 - margin)
    at_price = None if total is None or price is None else (price - total) / price
    return ScenarioCost(scenario, energy, hardware, total, at_margin, at_price)


@dataclass(frozen=True)
class CapacityMonth:
    """What a month of the demand needs.

    Attributes:
        month: 0 = now.
        tokens_per_day: Output tokens per day demanded.
        gpus: GPUs needed (whole GPUs).
        facility_mw: Facility power of those GPUs, MW (measured W per GPU x PUE).
        energy_cost: Energy cost of the month, currency.
        hardware_cost: Hardware cost of the month, currency.
        total_cost: Their sum, currency.
    """

    month: int
    tokens_per_day: float
    gpus: int
    facility_mw: float
    energy_cost: float
    hardware_cost: float
    total_cost: float


class CapacityError(ValueError):
    """The measurement lacks what capacity planning needs; the message says what."""


def capacity(
    row: Measured,
    demand_tps: float,
    growth_per_month: float,
    months: int,
    utilization: float,
    scenario: CostScenario,
) -> list[CapacityMonth]:
    """GPUs, facility MW and monthly cost for a growing demand at measured per-GPU throughput.

    Month m demands ``demand_tps x (1 + growth)^m`` output tokens/s. It needs
    ``ceil(demand / (measured tokens/s per GPU x utilization))`` GPUs; they draw the measured
    W per GPU (idle included) times PUE at the meter; a month is 730 h.

    Args:
        row: Measured rates (the fleet, or one model).
        demand_tps: Output tokens per second demanded now.
        growth_per_month: Fraction per month (0.15 = 15 %).
        months: How many months ahead (month 0 to ``months`` inclusive).
        utilization: Share of the measured per-GPU throughput to plan at, in (0, 1].
        scenario: Prices.

    Returns:
        One entry per month.

    Raises:
        CapacityError: No GPU count, no tokens, or no GPU-hour rate was measured.
    """
    per_gpu = _div(row.output_tps, row.gpus)
    watts_per_gpu = _div(row.watts, row.gpus)
    if per_gpu is None or watts_per_gpu is None or per_gpu <= 0:
        raise CapacityError(
            "capacity needs the GPU count (tokenergy_server_gpu_share) and output tokens; "
            "the source has no GPUs or no tokens for this row"
        )
    if scenario.gpu_hourly is None:
        hw = row.hardware_cost_per_s
        if hw is None or row.gpus is None:
            raise CapacityError("capacity needs a GPU-hour rate: pass --gpu-hourly")
        hourly = hw * 3600.0 / row.gpus
    else:
        hourly = scenario.gpu_hourly
    out = []
    for month in range(months + 1):
        demand = demand_tps * (1.0 + growth_per_month) ** month
        gpus = math.ceil(demand / (per_gpu * utilization) - 1e-9)
        mw = gpus * watts_per_gpu * scenario.pue / 1e6
        energy_cost = mw * 1e3 * HOURS_PER_MONTH * scenario.electricity_per_kwh
        hardware_cost = gpus * hourly * HOURS_PER_MONTH
        out.append(
            CapacityMonth(
                month=month,
                tokens_per_day=demand * 86400.0,
                gpus=gpus,
                facility_mw=mw,
                energy_cost=energy_cost,
                hardware_cost=hardware_cost,
                total_cost=energy_cost + hardware_cost,
            )
        )
    return out


@dataclass(frozen=True)
class WhatIf:
    """A changed row and what it costs under the first scenario.

    Attributes:
        name: What was changed, e.g. ``idle share 5%``.
        row: The changed rates, or None when the measurement cannot support the what-if.
        tokens_per_joule: Output tokens per joule after the change.
        cost: Cost per million output tokens after the change.
        reason: Why the what-if could not be computed, when ``row`` is None.
    """

    name: str
    row: Measured | None
    tokens_per_joule: float | None
    cost: ScenarioCost | None
    reason: str = ""


def what_if_idle(row: Measured, idle_share: float, scenario: CostScenario) -> WhatIf:
    """The same work with the idle share of energy cut (or raised) to ``idle_share``.

    Active energy stays; idle energy becomes ``idle_share`` of the total, so the new power is
    ``active / (1 - idle_share)``. Hardware cost is unchanged (the same GPUs are kept).

    Args:
        row: Measured rates.
        idle_share: Target idle share, in [0, 1).
        scenario: Prices to cost it with.

    Returns:
        The what-if, or one with a reason when idle energy was not measured.
    """
    name = f"idle share {idle_share:.0%}"
    if row.idle_watts is None or row.output_tps <= 0:
        return WhatIf(name, None, None, None, "idle energy not measured")
    active = row.watts - row.idle_watts
    new_watts = active / (1.0 - idle_share)
    changed = replace(row, watts=new_watts, idle_watts=new_watts - active)
    return WhatIf(
        name, changed, _div(changed.output_tps, new_watts), cost_per_million(changed, scenario)
    )


def what_if_cache(row: Measured, hit_ratio: float, scenario: CostScenario) -> WhatIf:
    """The same work with the prompt-cache hit ratio raised to ``hit_ratio``.

    Uses the measured energy the cache saved per cached token
    (``tokenergy_cache_saved_energy_joules_total`` / cached tokens): each extra cached token
    saves as much. Without that series the what-if is not computed.

    Args:
        row: Measured rates.
        hit_ratio: Target cached / input tokens, in [0, 1].
        scenario: Prices to cost it with.

    Returns:
        The what-if, or one with a reason.
    """
    name = f"cache hit ratio {hit_ratio:.0%}"
    saved_per_token = _div(row.cache_saved_watts, row.cached_tps)
    if saved_per_token is None or row.input_tps is None or row.cached_tps is None:
        return WhatIf(
            name, None, None, None, "cache savings not measured (tokenergy_cache_saved_*)"
        )
    extra_cached = hit_ratio * row.input_tps - row.cached_tps
    new_watts = max(row.watts - extra_cached * saved_per_token, 0.0)
    changed = replace(
        row,
        watts=new_watts,
        cached_tps=hit_ratio * row.input_tps,
        cache_saved_watts=row.cache_saved_watts + extra_cached * saved_per_token
        if row.cache_saved_watts is not None
        else None,
    )
    return WhatIf(
        name, changed, _div(changed.output_tps, new_watts), cost_per_million(changed, scenario)
    )


@dataclass(frozen=True)
class Measurement:
    """Measured rates and where they come from.

    Attributes:
        rows: Per (server, model).
        seconds: Length of the range or window the rates average over, s.
        source: ``prometheus (raw counters)``, ``prometheus (recording rules)`` or ``agent``.
        currency: Currency of the agents' prices, or None when not exported.
        skipped: (server, model, reason) of series left out, e.g. no tokens in the range.
    """

    rows: tuple[Measured, ...]
    seconds: float
    source: str
    currency: str | None
    skipped: tuple[tuple[str, str, str], ...] = ()
