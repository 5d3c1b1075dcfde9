"""agent/plan/README.md's worked example, checked against the code."""

import re
from pathlib import Path

import pytest

from agent.plan.model import CostScenario, Measured, capacity, cost_per_million, ratios
from agent.plan.scenario import parse_demand, parse_fraction, parse_growth

README = Path(__file__).resolve().parents[2] / "agent" / "plan" / "README.md"


def _section() -> str:
    text = README.read_text()
    return text.split("### Worked example", 1)[1].split("\n## ", 1)[0]


def _capacity_table() -> list[list[str]]:
    rows = []
    for line in _section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and re.fullmatch(r"\d+", cells[0]):
            rows.append(cells)
    return rows


def _n(text: str) -> float:
    return float(text.replace(",", "").replace("*", ""))


ROW = Measured("*", "*", output_tps=20_000.0, watts=8_000.0, gpus=16.0)
PRICES = CostScenario(0.10, 1.3, 2.50)


def test_the_inputs_are_the_ones_the_text_states() -> None:
    section = _section()
    for fact in ("20,000 output tokens/s", "16 GPUs", "8,000 W", "0.10 per kWh", "PUE 1.3",
                 "2.50 per\nGPU-hour", "2e9 output tokens per day", "15 % a month",
                 "12\nmonths", "80 %", "30 %"):  # fmt: skip
        assert fact in section, fact


def test_headline_steps() -> None:
    section = _section()
    r = ratios(ROW, 1.3)
    assert r.tokens_per_joule == pytest.approx(2.5)
    assert "**2.5 tokens/J**" in section
    cost = cost_per_million(ROW, PRICES, margin=parse_fraction("30%", "--margin"))
    assert cost.total is not None and cost.price_at_margin is not None
    assert f"**{cost.total:.3f}**" in section
    assert f"**{cost.price_at_margin:.3f}** per million" in section


def test_capacity_table_is_what_the_code_computes() -> None:
    table = _capacity_table()
    plan = capacity(ROW, parse_demand("2e9/day"), parse_growth("15%/month"), 12,
                    parse_fraction("80%", "--utilization"), PRICES)  # fmt: skip
    assert len(table) == len(plan) == 13
    for cells, month in zip(table, plan, strict=True):
        # Exactly as `tokenergy plan` prints them (agent/plan/render.py formats).
        assert cells == [
            str(month.month),
            f"{month.tokens_per_day:.4g}",
            f"{month.gpus:,}",
            f"{month.facility_mw:.4f}",
            f"{month.energy_cost:,.2f}",
            f"{month.hardware_cost:,.2f}",
            f"{month.total_cost:,.2f}",
        ]
        # And each total is its parts.
        assert _n(cells[6]) == pytest.approx(_n(cells[4]) + _n(cells[5]), abs=0.011)


def test_hand_steps_of_months_0_and_12() -> None:
    section = _section()
    plan = capacity(ROW, 2e9 / 86400, 0.15, 12, 0.8, PRICES)
    assert plan[0].gpus == 24 and "**24**" in section
    assert plan[12].gpus == 124 and "**124**" in section
    assert plan[0].energy_cost == pytest.approx(15.6 * 730 * 0.10)
    assert plan[0].hardware_cost == pytest.approx(24 * 2.50 * 730)
