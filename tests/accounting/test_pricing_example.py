"""agent/README.md's worked example (Pricing), run through the ledger.

An H100 measured at 700 W while generating 1,000 output tokens/s, default pricing
($0.10/kWh, PUE 1.3, H100 $2.50/GPU-hour) and a carbon intensity of 366 g CO2e/kWh (US).
The expected figures below are that worked example's hand arithmetic, not the code's output.
"""

from __future__ import annotations

import pytest

from agent.accounting.ledger import Ledger
from agent.config import PricingSettings
from agent.readings import (
    GpuDevice,
    GpuReading,
    GpuStatus,
    ServerReading,
    ServerStatus,
    TokenReading,
)

POWER_W = 700.0
OUTPUT_TOKENS_PER_S = 1000.0
INPUT_TOKENS_PER_S = 3000.0

README = {
    "joules_per_token": 0.7,
    "tokens_per_joule": 1.4286,
    "energy_per_million": 0.02528,  # 0.7 MJ = 0.19444 kWh; x 1.3 = 0.25278 kWh; x $0.10
    "hardware_per_million": 0.69444,  # 1e6 / 1000 = 1000 s = 0.27778 h x $2.50
    "cost_per_million": 0.71972,
    "carbon_g_per_million": 92.52,  # 0.25278 kWh x 366 g/kWh
}


def test_worked_example_from_the_readme() -> None:
    pricing = PricingSettings(carbon_g_per_kwh=366.0)
    assert pricing.hourly_rate("NVIDIA H100 80GB HBM3") == 2.50
    ledger = Ledger(pricing, window_seconds=60.0)
    device = GpuDevice(0, "GPU-0", "NVIDIA H100 80GB HBM3", "counter")
    interval = 5.0
    steps = 200  # 1,000 s: exactly 1e6 output tokens after the baseline
    for i in range(steps + 1):
        t = i * interval
        energy = 12_345.0 + POWER_W * t
        added = POWER_W * interval if i else 0.0  # what the meter hands over per interval
        gpu = GpuStatus(
            device, True, GpuReading(0, "GPU-0", POWER_W, energy, 0.9, None, None, None), added
        )
        reading = ServerReading(
            "vllm",
            (TokenReading("llama", 777 + INPUT_TOKENS_PER_S * t, 999 + OUTPUT_TOKENS_PER_S * t),),
        )
        totals = ledger.advance(
            t, [gpu], [ServerStatus("vllm", True, reading)], {"vllm": ["GPU-0"]}
        )
    (m,) = totals.models
    assert m.output_tokens_total == 1e6
    million = m.output_tokens_total / 1e6
    assert m.energy_cost_total / million == pytest.approx(README["energy_per_million"], rel=1e-3)
    assert m.hardware_cost_total / million == pytest.approx(
        README["hardware_per_million"], rel=1e-4
    )
    assert m.carbon_grams_total is not None
    assert m.carbon_grams_total / million == pytest.approx(README["carbon_g_per_million"], rel=1e-3)
    # The windowed gauges say the same over the last 60 s.
    assert m.joules_per_token == pytest.approx(README["joules_per_token"])
    assert m.tokens_per_joule == pytest.approx(README["tokens_per_joule"], rel=1e-4)
    assert m.cost_per_million_tokens == pytest.approx(README["cost_per_million"], rel=1e-4)
    assert m.power_watts == pytest.approx(POWER_W)
    assert m.output_tokens_per_second == pytest.approx(OUTPUT_TOKENS_PER_S)
    assert m.input_tokens_per_second == pytest.approx(INPUT_TOKENS_PER_S)
