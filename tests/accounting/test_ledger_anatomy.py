"""The ledger's cost anatomy: input vs output split, cache savings, KV-cache saturation."""

from __future__ import annotations

import math
import random

import pytest

from agent.accounting.anatomy import PhaseSettings
from agent.accounting.ledger import Ledger
from agent.config import PricingSettings
from agent.readings import (
    GpuDevice,
    GpuReading,
    GpuStatus,
    LedgerTotals,
    ModelTotals,
    ServerReading,
    ServerStatus,
    TokenReading,
)

PRICING = PricingSettings(electricity_per_kwh=0.10, pue=1.3)


def _gpu(added: float) -> GpuStatus:
    reading = GpuReading(0, "GPU-0", 300.0, None, 0.5, None, None, 700.0)
    return GpuStatus(
        GpuDevice(0, "GPU-0", "NVIDIA H100 80GB HBM3", "counter"), True, reading, added
    )


def _server(
    inp: float,
    out: float,
    cached: float = 0.0,
    *,
    prefill: float | None = None,
    decode: float | None = None,
    kv: float | None = None,
    waiting: float | None = None,
) -> ServerStatus:
    reading = TokenReading(
        "m",
        inp,
        out,
        cached_input_tokens=cached,
        prefill_seconds=prefill,
        decode_seconds=decode,
        kv_cache_usage_ratio=kv,
        requests_waiting=waiting,
    )
    return ServerStatus("s", True, ServerReading("vllm", (reading,)))


def _model(totals: LedgerTotals) -> ModelTotals:
    (model,) = [m for m in totals.models if m.model == "m"]
    return model


def test_time_estimator_splits_energy_and_cost_by_phase_time() -> None:
    ledger = Ledger(PRICING, 60.0)
    ledger.advance(0.0, [_gpu(0.0)], [_server(0, 0, prefill=0.0, decode=0.0)], {"s": ["GPU-0"]})
    # 1 s of prefill against 3 s of decode: a quarter of the energy is input's.
    totals = ledger.advance(
        5.0,
        [_gpu(1000.0)],
        [_server(4000, 1000, 1000, prefill=1.0, decode=3.0)],
        {"s": ["GPU-0"]},
    )
    m = _model(totals)
    assert m.phase_method == "time"
    assert m.input_energy_joules_total == pytest.approx(250.0)
    assert m.output_energy_joules_total == pytest.approx(750.0)
    assert m.unsplit_energy_joules_total == 0.0
    cost = m.energy_cost_total + m.hardware_cost_total
    assert m.input_cost_total + m.output_cost_total == pytest.approx(cost)
    assert m.input_cost_total == pytest.approx(cost / 4)
    # Per token over the window: 250 J over 4000 input tokens, 750 J over 1000 output.
    assert m.input_joules_per_input_token == pytest.approx(250 / 4000)
    assert m.output_joules_per_output_token == pytest.approx(0.75)
    assert m.output_cost_per_million_output_tokens == pytest.approx(cost * 0.75 / 1000 * 1e6)
    # Cache hits valued at this interval's energy per computed prompt token: 250 J / 3000.
    assert m.cache_saved_energy_joules_total == pytest.approx(1000 * 250 / 3000)
    assert m.cache_saved_cost_total == pytest.approx(
        m.cache_saved_energy_joules_total * cost / 1000.0
    )


def test_without_an_estimator_the_energy_stays_unsplit() -> None:
    ledger = Ledger(PRICING, 60.0)
    ledger.advance(0.0, [_gpu(0.0)], [_server(0, 0)], {"s": ["GPU-0"]})
    m = _model(ledger.advance(5.0, [_gpu(900.0)], [_server(800, 200)], {"s": ["GPU-0"]}))
    assert m.phase_method == "none"
    assert (m.input_energy_joules_total, m.output_energy_joules_total) == (0.0, 0.0)
    assert m.unsplit_energy_joules_total == pytest.approx(900.0)
    assert m.input_joules_per_input_token is None
    assert m.cache_saved_energy_joules_total == 0.0


def test_regression_takes_over_once_the_mix_has_varied() -> None:
    a, b, idle = 0.01, 0.1, 150.0
    rng = random.Random(5)
    ledger = Ledger(PRICING, 60.0, phase=PhaseSettings(min_intervals=20))
    inp = out = 0.0
    ledger.advance(0.0, [_gpu(0.0)], [_server(0, 0)], {"s": ["GPU-0"]})
    totals: LedgerTotals | None = None
    for k in range(1, 200):
        d_out = rng.uniform(2_000, 10_000)
        d_in = d_out * rng.uniform(1, 10)
        inp, out = inp + d_in, out + d_out
        energy = a * d_in + b * d_out + idle * 5.0
        totals = ledger.advance(5.0 * k, [_gpu(energy)], [_server(inp, out)], {"s": ["GPU-0"]})
    assert totals is not None
    m = _model(totals)
    assert m.phase_method == "regression"
    (fit,) = totals.phase_fits
    assert fit.joules_per_input_token == pytest.approx(a, rel=0.01)
    assert fit.joules_per_output_token == pytest.approx(b, rel=0.01)
    assert fit.idle_watts == pytest.approx(idle, rel=0.05)
    assert fit.joules_per_input_token_stderr < 0.1 * a
    # Everything booked is conserved: input + output + unsplit (the first intervals) = energy.
    assert math.isclose(
        m.input_energy_joules_total + m.output_energy_joules_total + m.unsplit_energy_joules_total,
        m.energy_joules_total,
        rel_tol=1e-12,
    )


def test_kv_saturation_counts_only_full_cache_with_a_queue() -> None:
    ledger = Ledger(PRICING, 60.0, kv_saturated_ratio=0.9)
    assign = {"s": ["GPU-0"]}
    ledger.advance(0.0, [_gpu(0.0)], [_server(0, 0, kv=0.95, waiting=3)], assign)
    ledger.advance(5.0, [_gpu(1.0)], [_server(1, 1, kv=0.95, waiting=3)], assign)  # +5 s
    ledger.advance(10.0, [_gpu(1.0)], [_server(2, 2, kv=0.95, waiting=0)], assign)  # no queue
    ledger.advance(15.0, [_gpu(1.0)], [_server(3, 3, kv=0.5, waiting=9)], assign)  # room left
    m = _model(ledger.advance(17.0, [_gpu(1.0)], [_server(4, 4, kv=0.9, waiting=1)], assign))
    assert m.kv_cache_saturated_seconds_total == pytest.approx(5.0 + 2.0)
