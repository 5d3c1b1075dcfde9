import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.plan.model import (
    CapacityError,
    CostScenario,
    Measured,
    capacity,
    cost_per_million,
    fleet,
    ratios,
    scenario_grid,
    what_if_cache,
    what_if_idle,
)

PRICES = CostScenario(electricity_per_kwh=0.10, pue=1.3, gpu_hourly=2.50)


def test_cost_matches_the_agents_worked_example() -> None:
    # README "Pricing" example: one H100 at 700 W making 1,000 output tokens/s -> 0.7197/Mtok.
    row = Measured("vllm", "m", output_tps=1000.0, watts=700.0, gpus=1.0)
    cost = cost_per_million(row, PRICES)
    assert cost.energy == pytest.approx(0.025278, rel=1e-4)
    assert cost.hardware == pytest.approx(0.69444, rel=1e-4)
    assert cost.total == pytest.approx(0.7197, rel=1e-4)


def test_measured_gpu_rate_uses_the_agents_hardware_cost() -> None:
    row = Measured("s", "m", 1000.0, 700.0, gpus=1.0, hardware_cost_per_s=3.6 / 3600)
    cost = cost_per_million(row, CostScenario(0.10, 1.3, None))
    assert cost.hardware == pytest.approx(1e6 * 0.001 / 1000)
    # Without the agents' hardware cost and without a rate, nothing is made up.
    bare = Measured("s", "m", output_tps=1000.0, watts=700.0, gpus=1.0)
    unknown = cost_per_million(bare, CostScenario(0.10, 1.3, None))
    assert unknown.energy is not None and unknown.hardware is None and unknown.total is None


def test_breakeven_price_and_margin() -> None:
    row = Measured("s", "m", output_tps=20_000.0, watts=8_000.0, gpus=16.0)
    cost = cost_per_million(row, PRICES, margin=0.3, price=1.0)
    assert cost.total == pytest.approx(0.57)
    assert cost.price_at_margin == pytest.approx(0.57 / 0.7)
    assert cost.margin_at_price == pytest.approx(0.43)
    # At the breakeven price the margin is the target.
    again = cost_per_million(row, PRICES, price=cost.price_at_margin)
    assert again.margin_at_price == pytest.approx(0.3)


def test_fleet_is_a_ratio_of_sums_and_unknowns_stay_unknown() -> None:
    a = Measured("a", "x", output_tps=1000.0, watts=100.0, gpus=1.0, idle_watts=10.0)
    b = Measured("b", "y", output_tps=10.0, watts=900.0, gpus=1.0)
    whole = fleet([a, b])
    r = ratios(whole, pue=1.25)
    assert r.tokens_per_joule == pytest.approx(1010 / 1000)
    # An average of the two ratios would be (10 + 0.011) / 2: not what is reported.
    assert r.tokens_per_joule != pytest.approx((10 + 10 / 900) / 2)
    assert r.tokens_per_s_per_kw == pytest.approx(1010 / 1000 * 1e3)
    assert r.tokens_per_s_per_mw_facility == pytest.approx(1010 / 1000 * 1e6 / 1.25)
    assert whole.gpus == 2.0
    # b has no idle measurement: the fleet's idle share is unknown, not 10 / 200.
    assert whole.idle_watts is None and r.idle_share is None
    assert r.joules_per_input_token is None and r.joules_per_output_token is None


def test_phase_split_ratios_when_exported() -> None:
    row = Measured(
        "s", "m", output_tps=100.0, watts=300.0, input_tps=400.0,
        input_phase_watts=100.0, output_phase_watts=200.0,
    )  # fmt: skip
    r = ratios(row, pue=1.0)
    assert r.joules_per_input_token == pytest.approx(0.25)
    assert r.joules_per_output_token == pytest.approx(2.0)


def test_no_tokens_means_no_cost() -> None:
    row = Measured("s", "m", output_tps=0.0, watts=300.0, gpus=1.0)
    cost = cost_per_million(row, PRICES)
    assert (cost.energy, cost.hardware, cost.total) == (None, None, None)
    assert ratios(row, 1.3).tokens_per_joule == 0.0


def test_scenario_grid_order() -> None:
    grid = scenario_grid([0.05, 0.1], [1.1], [None, 2.0])
    assert [(s.electricity_per_kwh, s.gpu_hourly) for s in grid] == [
        (0.05, None), (0.05, 2.0), (0.1, None), (0.1, 2.0),
    ]  # fmt: skip
    assert grid[0].label == "0.05/kWh PUE 1.1 measured/GPU-h"


def test_capacity_needs_gpus_and_a_rate() -> None:
    with pytest.raises(CapacityError, match="GPU count"):
        capacity(Measured("s", "m", 100.0, 100.0), 1000.0, 0.0, 1, 1.0, PRICES)
    no_rate = Measured("s", "m", 100.0, 100.0, gpus=1.0)
    with pytest.raises(CapacityError, match="--gpu-hourly"):
        capacity(no_rate, 1000.0, 0.0, 1, 1.0, CostScenario(0.1, 1.3, None))


def test_capacity_rounds_up_and_grows() -> None:
    row = Measured("s", "m", output_tps=1000.0, watts=500.0, gpus=1.0)
    plan = capacity(row, demand_tps=1000.0, growth_per_month=1.0, months=3, utilization=1.0,
                    scenario=PRICES)  # fmt: skip
    assert [m.gpus for m in plan] == [1, 2, 4, 8]
    plan = capacity(row, 1001.0, 0.0, 0, 1.0, PRICES)
    assert plan[0].gpus == 2
    plan = capacity(row, 1000.0, 0.0, 0, 0.5, PRICES)
    assert plan[0].gpus == 2
    assert plan[0].facility_mw == pytest.approx(2 * 500 * 1.3 / 1e6)
    assert plan[0].hardware_cost == pytest.approx(2 * 2.5 * 730)


def test_what_if_idle() -> None:
    row = Measured("s", "m", output_tps=1000.0, watts=1000.0, idle_watts=400.0, gpus=2.0)
    w = what_if_idle(row, 0.05, PRICES)
    assert w.row is not None
    # 600 W active stays; idle is 5 % of the new total.
    assert w.row.watts == pytest.approx(600 / 0.95)
    assert w.row.idle_watts / w.row.watts == pytest.approx(0.05)  # type: ignore[operator]
    assert w.tokens_per_joule == pytest.approx(1000 / (600 / 0.95))
    assert w.cost is not None and w.cost.total is not None
    base = cost_per_million(row, PRICES).total
    assert base is not None and w.cost.total < base
    missing = what_if_idle(Measured("s", "m", 1000.0, 1000.0), 0.05, PRICES)
    assert missing.row is None and missing.tokens_per_joule is None
    assert "idle energy not measured" in missing.reason


def test_what_if_cache_uses_measured_savings_only() -> None:
    row = Measured(
        "s", "m", output_tps=1000.0, watts=1000.0, input_tps=4000.0, cached_tps=1000.0,
        cache_saved_watts=100.0,
    )  # fmt: skip
    w = what_if_cache(row, 0.5, PRICES)
    # 0.1 J saved per cached token; 1,000 more cached tokens/s save 100 W more.
    assert w.row is not None and w.row.watts == pytest.approx(900.0)
    assert w.tokens_per_joule == pytest.approx(1000 / 900)
    absent = what_if_cache(replace_saved(row), 0.5, PRICES)
    assert absent.row is None and absent.cost is None
    assert "cache savings not measured" in absent.reason


def replace_saved(row: Measured) -> Measured:
    from dataclasses import replace

    return replace(row, cache_saved_watts=None)


def test_no_nan_anywhere() -> None:
    row = Measured("s", "m", output_tps=1e-9, watts=1e-9, gpus=1e-9, idle_watts=0.0)
    values = [v for v in vars(ratios(row, 1.0)).values() if v is not None]
    assert all(math.isfinite(v) for v in values)


@given(
    rows=st.lists(
        st.tuples(
            st.floats(1.0, 1e5), st.floats(1.0, 1e4), st.floats(0.1, 16), st.floats(0.0, 1.0)
        ),
        min_size=1,
        max_size=6,
    ),
    electricity=st.floats(0.01, 1.0),
    pue=st.floats(1.0, 2.0),
    hourly=st.floats(0.1, 10.0),
)
def test_fleet_cost_is_a_token_weighted_mean_of_the_rows(
    rows: list[tuple[float, float, float, float]], electricity: float, pue: float, hourly: float
) -> None:
    measured = [
        Measured(f"s{i}", "m", output_tps=t, watts=w, gpus=g, idle_watts=w * idle)
        for i, (t, w, g, idle) in enumerate(rows)
    ]
    scenario = CostScenario(electricity, pue, hourly)
    costs = [cost_per_million(m, scenario).total for m in measured]
    whole = cost_per_million(fleet(measured), scenario).total
    assert whole is not None and all(c is not None for c in costs)
    # Ratio of sums: the mean of the rows' costs weighted by their output tokens.
    weighted = sum(c * m.output_tps for c, m in zip(costs, measured, strict=True) if c) / sum(
        m.output_tps for m in measured
    )
    assert whole == pytest.approx(weighted, rel=1e-9)
    assert (
        min(c for c in costs if c) * (1 - 1e-9) <= whole <= max(c for c in costs if c) * (1 + 1e-9)
    )
    idle = ratios(fleet(measured), pue).idle_share
    assert idle is not None and 0.0 <= idle <= 1.0


@given(growth=st.floats(0.0, 1.0), months=st.integers(0, 24), utilization=st.floats(0.05, 1.0))
def test_capacity_never_shrinks_with_growth(growth: float, months: int, utilization: float) -> None:
    row = Measured("s", "m", output_tps=1234.0, watts=700.0, gpus=3.0)
    plan = capacity(row, 5000.0, growth, months, utilization, PRICES)
    assert len(plan) == months + 1
    gpus = [m.gpus for m in plan]
    assert gpus == sorted(gpus)
    for m in plan:
        # Enough GPUs for the month's demand, and not one more than needed.
        per_day = 1234.0 / 3.0 * utilization * 86400.0
        assert m.gpus * per_day >= m.tokens_per_day * (1 - 1e-9)
        assert (m.gpus - 1) * per_day < m.tokens_per_day
