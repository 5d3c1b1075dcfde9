"""The ledger's rules, one table row or one test per rule."""

from __future__ import annotations

import math

import pytest

from agent.accounting.counters import CounterLimits
from agent.accounting.ledger import Ledger
from agent.config import PricingSettings
from agent.readings import (
    GpuDevice,
    GpuProcess,
    GpuReading,
    GpuStatus,
    LedgerTotals,
    ModelTotals,
    ServerReading,
    ServerStatus,
    TokenReading,
)

H100 = "NVIDIA H100 80GB HBM3"
PRICING = PricingSettings(electricity_per_kwh=0.10, pue=1.3, carbon_g_per_kwh=400.0)


def gpu(
    index: int,
    added: float,
    *,
    up: bool = True,
    name: str = H100,
    procs: tuple[tuple[int, float | None], ...] = (),
) -> GpuStatus:
    reading = GpuReading(
        index=index,
        uuid=f"GPU-{index}",
        power_watts=100.0,
        energy_joules=None,
        utilization_ratio=0.5,
        memory_used_bytes=None,
        memory_total_bytes=None,
        power_limit_watts=None,
        processes=tuple(GpuProcess(pid, utilization_ratio=u) for pid, u in procs),
    )
    return GpuStatus(GpuDevice(index, f"GPU-{index}", name, "counter"), up, reading, added)


def srv(
    name: str, models: dict[str, tuple[float, float]] | None, start: float = 1.0
) -> ServerStatus:
    """``models``: model -> (input, output) raw counters; None = down."""
    if models is None:
        return ServerStatus(name, up=False, reading=None, error_reason="timeout")
    reading = ServerReading(
        "vllm",
        tuple(TokenReading(m, i, o, cached_input_tokens=i / 2) for m, (i, o) in models.items()),
        start_time_seconds=start,
    )
    return ServerStatus(name, up=True, reading=reading)


def by_key(totals: LedgerTotals) -> dict[tuple[str, str], ModelTotals]:
    return {(m.server, m.model): m for m in totals.models}


def total_energy(totals: LedgerTotals) -> float:
    return math.fsum(m.energy_joules_total for m in totals.models) + (
        totals.unattributed_energy_joules_total
    )


def test_first_advance_is_a_baseline() -> None:
    ledger = Ledger(PRICING, 60.0)
    t = ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"m": (100, 50)})], {"a": ["GPU-0"]})
    m = by_key(t)[("a", "m")]
    assert (m.energy_joules_total, m.output_tokens_total, m.hardware_cost_total) == (0, 0, 0)
    assert t.unattributed_energy_joules_total == 0.0
    assert m.tokens_per_joule is None


def test_one_gpu_one_server_cost_is_the_formula() -> None:
    ledger = Ledger(PRICING, 60.0)
    ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"m": (0, 0)})], {"a": ["GPU-0"]})
    t = ledger.advance(3600.0, [gpu(0, 3.6e6)], [srv("a", {"m": (2e6, 1e6)})], {"a": ["GPU-0"]})
    m = by_key(t)[("a", "m")]
    assert m.energy_joules_total == pytest.approx(3.6e6)
    assert m.energy_cost_total == pytest.approx(1.0 * 1.3 * 0.10)
    assert m.hardware_cost_total == pytest.approx(2.50)
    assert m.carbon_grams_total == pytest.approx(1.3 * 400.0)
    assert (m.input_tokens_total, m.output_tokens_total, m.cached_input_tokens_total) == (
        2e6,
        1e6,
        1e6,
    )
    assert m.joules_per_token == pytest.approx(3.6)
    assert m.tokens_per_joule == pytest.approx(1 / 3.6)
    assert m.cost_per_million_tokens == pytest.approx(0.13 + 2.50)
    assert m.power_watts == pytest.approx(1000.0)
    assert m.output_tokens_per_second == pytest.approx(1e6 / 3600)
    assert m.idle_energy_joules_total == 0.0
    assert [(s.server, s.uuid, s.share) for s in t.shares] == [("a", "GPU-0", 1.0)]


def test_gpu_serving_no_server_is_unattributed_energy_and_cost() -> None:
    ledger = Ledger(PRICING, 60.0)
    assignment = {"a": ["GPU-0"]}
    ledger.advance(
        0.0, [gpu(0, 0.0), gpu(1, 0.0, name="NVIDIA L4")], [srv("a", {"m": (0, 0)})], assignment
    )
    t = ledger.advance(
        1800.0,
        [gpu(0, 100.0), gpu(1, 7.2e6, name="NVIDIA L4")],
        [srv("a", {"m": (0, 0)})],
        assignment,
    )
    assert t.unattributed_energy_joules_total == pytest.approx(7.2e6)
    assert t.unattributed_energy_cost_total == pytest.approx(2.0 * 1.3 * 0.10)
    assert t.unattributed_hardware_cost_total == pytest.approx(0.5 * 0.70)
    assert t.unattributed_carbon_grams_total == pytest.approx(2.0 * 1.3 * 400)
    assert by_key(t)[("a", "m")].energy_joules_total == pytest.approx(100.0)
    assert [s.uuid for s in t.shares] == ["GPU-0"]


SHARED_CASES = [
    ("even without owners", None, ((1, 0.6), (2, 0.2)), {"a": 500.0, "b": 500.0}),
    (
        "by per-process utilization",
        {1: "a", 2: "b"},
        ((1, 0.6), (2, 0.2)),
        {"a": 750.0, "b": 250.0},
    ),
    (
        "even without utilization samples",
        {1: "a", 2: "b"},
        ((1, None), (2, None)),
        {"a": 500.0, "b": 500.0},
    ),
]


@pytest.mark.parametrize(
    ("owners", "procs", "expected"), [c[1:] for c in SHARED_CASES], ids=[c[0] for c in SHARED_CASES]
)
def test_shared_gpu_split(
    owners: dict[int, str] | None,
    procs: tuple[tuple[int, float | None], ...],
    expected: dict[str, float],
) -> None:
    ledger = Ledger(PRICING, 60.0)
    assignment = {"a": ["GPU-0"], "b": ["GPU-0"]}
    servers = [srv("a", {"m": (0, 0)}), srv("b", {"m": (0, 0)})]
    ledger.advance(0.0, [gpu(0, 0.0, procs=procs)], servers, assignment, owners)
    t = ledger.advance(10.0, [gpu(0, 1000.0, procs=procs)], servers, assignment, owners)
    got = {k[0]: m.energy_joules_total for k, m in by_key(t).items()}
    assert got == pytest.approx(expected)
    assert {s.server: s.share for s in t.shares} == pytest.approx(
        {k: v / 1000.0 for k, v in expected.items()}
    )
    hardware = {k[0]: m.hardware_cost_total for k, m in by_key(t).items()}
    assert hardware == pytest.approx({k: v / 1000 * 10 / 3600 * 2.5 for k, v in expected.items()})


def test_several_models_split_by_tokens_then_evenly_and_idle() -> None:
    ledger = Ledger(PRICING, 60.0)
    a = {"a": ["GPU-0"]}
    ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"x": (0, 0), "y": (0, 0)})], a)
    t = ledger.advance(5.0, [gpu(0, 1000.0)], [srv("a", {"x": (10, 30), "y": (60, 0)})], a)
    k = by_key(t)
    assert k[("a", "x")].energy_joules_total == pytest.approx(400.0)
    assert k[("a", "y")].energy_joules_total == pytest.approx(600.0)
    assert k[("a", "x")].hardware_cost_total == pytest.approx(0.4 * 5 / 3600 * 2.5)
    # No tokens: even, and idle.
    t = ledger.advance(10.0, [gpu(0, 1000.0)], [srv("a", {"x": (10, 30), "y": (60, 0)})], a)
    k = by_key(t)
    assert k[("a", "x")].energy_joules_total == pytest.approx(900.0)
    assert k[("a", "y")].energy_joules_total == pytest.approx(1100.0)
    assert k[("a", "x")].idle_energy_joules_total == pytest.approx(500.0)
    assert k[("a", "y")].idle_energy_joules_total == pytest.approx(500.0)
    # y has no output tokens in the window: its ratios are absent; x's are present.
    assert k[("a", "y")].joules_per_token is None
    assert k[("a", "x")].joules_per_token == pytest.approx(900.0 / 30)


def test_down_server_keeps_its_gpu_energy_on_its_last_models_not_idle() -> None:
    ledger = Ledger(PRICING, 60.0)
    a = {"a": ["GPU-0"]}
    ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"x": (0, 0), "y": (0, 0)})], a)
    t = ledger.advance(5.0, [gpu(0, 800.0)], [srv("a", None)], a)
    k = by_key(t)
    assert k[("a", "x")].energy_joules_total == pytest.approx(400.0)
    assert k[("a", "y")].energy_joules_total == pytest.approx(400.0)
    assert k[("a", "x")].idle_energy_joules_total == 0.0
    assert t.unattributed_energy_joules_total == 0.0
    assert [s.server for s in t.shares] == ["a"]


def test_never_seen_server_books_to_unattributed_without_a_share() -> None:
    ledger = Ledger(PRICING, 60.0)
    a = {"a": ["GPU-0"], "b": ["GPU-0"]}
    ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"x": (0, 0)}), srv("b", None)], a)
    t = ledger.advance(3600.0, [gpu(0, 1000.0)], [srv("a", {"x": (0, 0)}), srv("b", None)], a)
    assert by_key(t)[("a", "x")].energy_joules_total == pytest.approx(500.0)
    assert t.unattributed_energy_joules_total == pytest.approx(500.0)
    assert t.unattributed_hardware_cost_total == pytest.approx(1.25)
    assert [(s.server, s.share) for s in t.shares] == [("a", 0.5)]
    assert not [m for m in t.models if m.server == "b"]


def test_server_in_assignment_without_a_status_is_treated_as_down() -> None:
    ledger = Ledger(PRICING, 60.0)
    a = {"a": ["GPU-0"]}
    ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"x": (0, 0)})], a)
    t = ledger.advance(5.0, [gpu(0, 300.0)], [], a)
    assert by_key(t)[("a", "x")].energy_joules_total == pytest.approx(300.0)


def test_down_gpu_still_costs_hardware_and_first_sight_costs_nothing() -> None:
    ledger = Ledger(PRICING, 60.0)
    a = {"a": ["GPU-0", "GPU-1"]}
    s = [srv("a", {"x": (0, 0)})]
    ledger.advance(0.0, [gpu(0, 0.0)], s, a)
    t = ledger.advance(3600.0, [gpu(0, 0.0, up=False), gpu(1, 0.0)], s, a)
    m = by_key(t)[("a", "x")]
    assert m.hardware_cost_total == pytest.approx(2.50)  # GPU 0 only: GPU 1 was first seen
    assert m.energy_joules_total == 0.0
    t = ledger.advance(7200.0, [gpu(0, 0.0, up=False), gpu(1, 50.0)], s, a)
    m = by_key(t)[("a", "x")]
    assert m.hardware_cost_total == pytest.approx(7.50)
    assert m.energy_joules_total == pytest.approx(50.0)


def test_gpu_missing_from_the_list_books_its_energy_on_return_without_gpu_hours() -> None:
    ledger = Ledger(PRICING, 60.0)
    a = {"a": ["GPU-0"]}
    s = [srv("a", {"x": (0, 0)})]
    ledger.advance(0.0, [gpu(0, 0.0)], s, a)
    ledger.advance(3600.0, [], s, a)
    t = ledger.advance(7200.0, [gpu(0, 500.0)], s, a)
    m = by_key(t)[("a", "x")]
    assert m.energy_joules_total == pytest.approx(500.0)
    assert m.hardware_cost_total == 0.0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 100.0, 50.0, 80.0], 230.0),  # per-interval joules add up
        ([0.0, 100.0, math.nan, 80.0], 180.0),  # NaN counts nothing
        ([0.0, 100.0, math.inf, 50.0], 150.0),
        ([10.0, -1.0, 20.0], 30.0),
    ],
)
def test_gpu_energy_bad_values_count_nothing(values: list[float], expected: float) -> None:
    ledger = Ledger(PRICING, 60.0)
    for i, value in enumerate(values):
        t = ledger.advance(float(i), [gpu(0, value)], [], {})
    assert t.unattributed_energy_joules_total == pytest.approx(expected)
    assert dict(t.gpu_energy_joules_total) == {"GPU-0": pytest.approx(expected)}


def test_restart_does_not_double_count_and_ratios_stay_finite() -> None:
    ledger = Ledger(PRICING, 30.0)
    a = {"a": ["GPU-0"]}
    ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"x": (1000, 500)}, start=1.0)], a)
    ledger.advance(5.0, [gpu(0, 500.0)], [srv("a", {"x": (1100, 600)}, start=1.0)], a)
    t = ledger.advance(10.0, [gpu(0, 500.0)], [srv("a", {"x": (20, 40)}, start=2.0)], a)
    m = by_key(t)[("a", "x")]
    assert (m.input_tokens_total, m.output_tokens_total) == (120.0, 140.0)
    assert m.joules_per_token == pytest.approx(1000.0 / 140.0)


def test_ratios_absent_for_a_server_with_no_gpu_and_after_the_window() -> None:
    ledger = Ledger(PRICING, 10.0)
    ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"x": (0, 0)})], {})
    t = ledger.advance(5.0, [gpu(0, 100.0)], [srv("a", {"x": (10, 10)})], {})
    m = by_key(t)[("a", "x")]
    assert m.output_tokens_per_second == pytest.approx(2.0)
    assert (m.tokens_per_joule, m.joules_per_token, m.cost_per_million_tokens) == (None,) * 3
    assert m.power_watts is None
    for i in range(2, 5):
        t = ledger.advance(5.0 * i, [gpu(0, 100.0)], [srv("a", {"x": (10, 10)})], {})
    assert by_key(t)[("a", "x")].output_tokens_per_second == 0.0


def test_carbon_is_none_when_off() -> None:
    ledger = Ledger(PricingSettings(), 60.0)
    ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"x": (0, 0)})], {"a": ["GPU-0"]})
    t = ledger.advance(1.0, [gpu(0, 1.0)], [srv("a", {"x": (0, 0)})], {"a": ["GPU-0"]})
    assert by_key(t)[("a", "x")].carbon_grams_total is None
    assert t.unattributed_carbon_grams_total is None


def test_assignment_listing_a_gpu_twice_or_an_unknown_uuid() -> None:
    ledger = Ledger(PRICING, 60.0)
    a = {"a": ["GPU-0", "GPU-0", "GPU-404"]}
    ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"x": (0, 0)})], a)
    t = ledger.advance(1.0, [gpu(0, 10.0)], [srv("a", {"x": (0, 0)})], a)
    assert by_key(t)[("a", "x")].energy_joules_total == pytest.approx(10.0)
    assert len(t.shares) == 1


@pytest.mark.parametrize(
    ("t2", "gpus", "servers", "match"),
    [
        (-1.0, [], [], "went back"),
        (math.nan, [], [], "finite"),
        (1.0, [gpu(0, 0.0), gpu(0, 0.0)], [], "GPU uuid 'GPU-0' is listed twice"),
        (1.0, [], [srv("a", None), srv("a", None)], "server name 'a' is listed twice"),
    ],
)
def test_bad_input_is_a_clear_error(
    t2: float, gpus: list[GpuStatus], servers: list[ServerStatus], match: str
) -> None:
    ledger = Ledger(PRICING, 60.0)
    ledger.advance(0.0, [], [], {})
    with pytest.raises(ValueError, match=match):
        ledger.advance(t2, gpus, servers, {})


def test_totals_stay_finite_by_construction() -> None:
    """Deltas that would overflow a total are refused and reported, never booked as +Inf.

    The glitch ceiling keeps real deltas far from this; here it is off (infinite) to reach
    the last guard.
    """
    limits = CounterLimits(max_tokens_per_second_per_gpu=math.inf)
    ledger = Ledger(PRICING, 60.0, limits=limits)
    a = {"a": ["GPU-0"]}
    ledger.advance(0.0, [gpu(0, 0.0)], [srv("a", {"x": (0, 0)})], a)
    events = []
    for i, raw in enumerate((1.5e308, 0.0, 1.7e308), start=1):
        t = ledger.advance(float(i), [gpu(0, 1.7e308)], [srv("a", {"x": (raw, 0)})], a)
        events += [e.reason for e in t.events]
    m = by_key(t)[("a", "x")]
    assert m.input_tokens_total == 1.5e308
    assert dict(t.gpu_energy_joules_total)["GPU-0"] == 1.7e308
    assert events.count("implausible") == 3, "1.7e308 tokens, then two GPU deltas refused"
    for value in (m.energy_joules_total, m.energy_cost_total, m.hardware_cost_total):
        assert math.isfinite(value)
