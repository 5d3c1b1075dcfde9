"""Assemble a plan from a measurement and the options; the JSON form of it.

Pure module: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agent.plan.model import (
    CapacityError,
    CapacityMonth,
    CostScenario,
    Measured,
    Measurement,
    Ratios,
    ScenarioCost,
    WhatIf,
    capacity,
    cost_per_million,
    fleet,
    ratios,
    what_if_cache,
    what_if_idle,
)

__all__ = ["Options", "Report", "Row", "build_report", "report_json"]


@dataclass(frozen=True)
class Options:
    """What the user asked for (already parsed and validated).

    Attributes:
        scenarios: Price scenarios; the first is the one capacity and what-ifs use.
        margin: Target margin (share of price) for the breakeven price, or None.
        price: Selling price per million output tokens, or None.
        demand_tps: Output tokens per second demanded now, or None (no capacity plan).
        growth: Demand growth per month, fraction.
        months: Months to plan.
        utilization: Share of measured per-GPU throughput to plan at.
        capacity_model: Plan capacity for this model (its measured rates), or None = fleet.
        idle_target: What-if idle share, or None.
        cache_target: What-if cache hit ratio, or None.
    """

    scenarios: tuple[CostScenario, ...]
    margin: float | None = None
    price: float | None = None
    demand_tps: float | None = None
    growth: float = 0.0
    months: int = 12
    utilization: float = 0.8
    capacity_model: str | None = None
    idle_target: float | None = None
    cache_target: float | None = None


@dataclass(frozen=True)
class Row:
    """One (server, model) or the fleet, with everything computed for it."""

    measured: Measured
    ratios: Ratios
    costs: tuple[ScenarioCost, ...]
    what_ifs: tuple[WhatIf, ...]


@dataclass(frozen=True)
class Report:
    """The whole plan."""

    measurement: Measurement
    options: Options
    rows: tuple[Row, ...]
    fleet: Row
    capacity_for: str
    capacity: tuple[CapacityMonth, ...] = ()
    capacity_problem: str = ""
    problems: tuple[str, ...] = field(default_factory=tuple)


def _row(measured: Measured, options: Options) -> Row:
    first = options.scenarios[0]
    what_ifs = []
    if options.idle_target is not None:
        what_ifs.append(what_if_idle(measured, options.idle_target, first))
    if options.cache_target is not None:
        what_ifs.append(what_if_cache(measured, options.cache_target, first))
    return Row(
        measured=measured,
        ratios=ratios(measured, first.pue),
        costs=tuple(
            cost_per_million(measured, s, options.margin, options.price) for s in options.scenarios
        ),
        what_ifs=tuple(what_ifs),
    )


def build_report(measurement: Measurement, options: Options) -> Report:
    """Compute the plan.

    Args:
        measurement: Measured rates.
        options: What to compute.

    Returns:
        The report; a capacity plan that the measurement cannot support carries a reason.
    """
    rows = tuple(_row(m, options) for m in measurement.rows)
    whole = _row(fleet(measurement.rows), options)
    problems = tuple(
        f"{server}/{model or '-'}: {why}; left out" for server, model, why in measurement.skipped
    )
    target = whole
    capacity_for = "fleet"
    problem = ""
    if options.capacity_model is not None:
        chosen = [r.measured for r in rows if r.measured.model == options.capacity_model]
        capacity_for = options.capacity_model
        if chosen:
            # Every server of the model together: a ratio of sums, like the fleet.
            target = _row(fleet(chosen), options)
        else:
            measured = ", ".join(sorted({r.measured.model or '""' for r in rows}))
            problem = f"--capacity-model {options.capacity_model!r} not measured ({measured})"
    plan: tuple[CapacityMonth, ...] = ()
    if options.demand_tps is not None and not problem:
        try:
            plan = tuple(
                capacity(
                    target.measured,
                    options.demand_tps,
                    options.growth,
                    options.months,
                    options.utilization,
                    options.scenarios[0],
                )
            )
        except CapacityError as exc:
            problem = str(exc)
    return Report(measurement, options, rows, whole, capacity_for, plan, problem, problems)


def _row_json(row: Row) -> dict[str, Any]:
    return {
        "server": row.measured.server,
        "model": row.measured.model,
        "measured": asdict(row.measured),
        "ratios": asdict(row.ratios),
        "costs": [
            {
                "scenario": asdict(c.scenario),
                "energy_per_million": c.energy,
                "hardware_per_million": c.hardware,
                "total_per_million": c.total,
                "price_at_margin": c.price_at_margin,
                "margin_at_price": c.margin_at_price,
            }
            for c in row.costs
        ],
        "what_ifs": [
            {
                "name": w.name,
                "tokens_per_joule": w.tokens_per_joule,
                "total_per_million": None if w.cost is None else w.cost.total,
                "reason": w.reason or None,
            }
            for w in row.what_ifs
        ],
    }


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data; unknown numbers are ``None`` (``null``).

    Args:
        report: The plan.

    Returns:
        A dict of plain values.
    """
    options = report.options
    return {
        "source": report.measurement.source,
        "seconds": report.measurement.seconds,
        "currency": report.measurement.currency,
        "options": {
            "margin": options.margin,
            "price": options.price,
            "demand_tokens_per_s": options.demand_tps,
            "growth_per_month": options.growth,
            "months": options.months,
            "utilization": options.utilization,
        },
        "models": [_row_json(r) for r in report.rows],
        "fleet": _row_json(report.fleet),
        "capacity": {
            "for": report.capacity_for,
            "months": [asdict(m) for m in report.capacity],
            "problem": report.capacity_problem or None,
        },
        "problems": list(report.problems),
    }
