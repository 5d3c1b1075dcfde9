"""Splits, the cost formula and the ratio window, rule by rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting.cost import JOULES_PER_KWH, CostModel
from agent.accounting.counters import TokenDelta
from agent.accounting.shares import gpu_split, model_split
from agent.accounting.window import IntervalDelta, RatioWindow
from agent.config import PricingSettings
from agent.readings import GpuProcess, GpuReading


def _reading(*procs: tuple[int, float | None]) -> GpuReading:
    return GpuReading(
        index=0,
        uuid="GPU-0",
        power_watts=300.0,
        energy_joules=None,
        utilization_ratio=0.9,
        memory_used_bytes=None,
        memory_total_bytes=None,
        power_limit_watts=None,
        processes=tuple(GpuProcess(pid, utilization_ratio=u) for pid, u in procs),
    )


OWNERS = {10: "a", 11: "a", 20: "b", 30: "c"}

GPU_SPLIT_CASES = [
    ("no server", [], _reading(), True, OWNERS, {}),
    (
        "one server takes all, even with foreign utilization",
        ["a"],
        _reading((20, 0.9)),
        True,
        OWNERS,
        {"a": 1.0},
    ),
    (
        "shared, no owners -> even",
        ["a", "b"],
        _reading((10, 0.6), (20, 0.2)),
        True,
        None,
        {"a": 0.5, "b": 0.5},
    ),
    (
        "shared, by utilization summed per server",
        ["a", "b"],
        _reading((10, 0.3), (11, 0.3), (20, 0.2)),
        True,
        OWNERS,
        {"a": 0.75, "b": 0.25},
    ),
    (
        "foreign process ignored",
        ["a", "b"],
        _reading((10, 0.3), (20, 0.1), (30, 0.6)),
        True,
        OWNERS,
        {"a": 0.75, "b": 0.25},
    ),
    (
        "server without a sample gets zero",
        ["a", "b"],
        _reading((10, 0.4)),
        True,
        OWNERS,
        {"a": 1.0, "b": 0.0},
    ),
    (
        "no utilization samples -> even",
        ["a", "b"],
        _reading((10, None), (20, None)),
        True,
        OWNERS,
        {"a": 0.5, "b": 0.5},
    ),
    (
        "all zero -> even",
        ["a", "b"],
        _reading((10, 0.0), (20, 0.0)),
        True,
        OWNERS,
        {"a": 0.5, "b": 0.5},
    ),
    (
        "NaN sample ignored",
        ["a", "b"],
        _reading((10, math.nan), (20, 0.5)),
        True,
        OWNERS,
        {"a": 0.0, "b": 1.0},
    ),
    (
        "GPU down (stale) -> even",
        ["a", "b"],
        _reading((10, 0.9)),
        False,
        OWNERS,
        {"a": 0.5, "b": 0.5},
    ),
    (
        "no reading -> even, three ways",
        ["a", "b", "c"],
        None,
        False,
        OWNERS,
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3},
    ),
]


@pytest.mark.parametrize(
    ("servers", "reading", "up", "owners", "expected"),
    [c[1:] for c in GPU_SPLIT_CASES],
    ids=[c[0] for c in GPU_SPLIT_CASES],
)
def test_gpu_split(
    servers: list[str],
    reading: GpuReading | None,
    up: bool,
    owners: dict[int, str] | None,
    expected: dict[str, float],
) -> None:
    got = gpu_split(servers, reading, up, owners)
    assert got == pytest.approx(expected)
    if got:
        assert math.fsum(got.values()) == pytest.approx(1.0, rel=1e-12)


MODEL_SPLIT_CASES = [
    (
        "by input plus output",
        ["x", "y"],
        {"x": TokenDelta(10, 30), "y": TokenDelta(60, 0)},
        {"x": 0.4, "y": 0.6},
    ),
    ("no tokens -> even", ["x", "y"], {"x": TokenDelta(), "y": TokenDelta()}, {"x": 0.5, "y": 0.5}),
    ("missing delta counts as zero", ["x", "y"], {"x": TokenDelta(0, 5)}, {"x": 1.0, "y": 0.0}),
    (
        "cached tokens do not add weight",
        ["x", "y"],
        {"x": TokenDelta(10, 0, 10), "y": TokenDelta(10, 0, 0)},
        {"x": 0.5, "y": 0.5},
    ),
    ("no models", [], {}, {}),
]


@pytest.mark.parametrize(
    ("models", "deltas", "expected"),
    [c[1:] for c in MODEL_SPLIT_CASES],
    ids=[c[0] for c in MODEL_SPLIT_CASES],
)
def test_model_split(
    models: list[str], deltas: dict[str, TokenDelta], expected: dict[str, float]
) -> None:
    assert model_split(models, deltas) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("joules", "pue", "price", "carbon", "energy_cost", "grams"),
    [
        (3.6e6, 1.0, 0.10, 0.0, 0.10, None),
        (3.6e6, 1.5, 0.20, 400.0, 0.30, 600.0),
        (1.8e6, 1.3, 0.10, 366.0, 0.065, 237.9),
        (0.0, 1.3, 0.10, 366.0, 0.0, 0.0),
    ],
)
def test_energy_cost_and_carbon(
    joules: float,
    pue: float,
    price: float,
    carbon: float,
    energy_cost: float,
    grams: float | None,
) -> None:
    model = CostModel(PricingSettings(electricity_per_kwh=price, pue=pue, carbon_g_per_kwh=carbon))
    assert model.energy_cost(joules) == pytest.approx(energy_cost)
    if grams is None:
        assert model.carbon_grams(joules) is None and not model.carbon_enabled
    else:
        assert model.carbon_grams(joules) == pytest.approx(grams)
    assert JOULES_PER_KWH == 3_600_000


@pytest.mark.parametrize(
    ("name", "seconds", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", 3600.0, 2.50),
        ("NVIDIA H100 80GB HBM3", 1800.0, 1.25),
        ("NVIDIA A100-SXM4-40GB", 7200.0, 3.00),
        ("NVIDIA L4", 3600.0, 0.70),
        ("Tesla P100-PCIE-16GB", 3600.0, 2.00),
    ],
)
def test_hardware_cost_uses_the_rate_of_the_gpu_model(
    name: str, seconds: float, expected: float
) -> None:
    assert CostModel(PricingSettings()).hardware_cost(seconds, name) == pytest.approx(expected)


def test_window_ratios_and_expiry() -> None:
    window = RatioWindow(10.0)
    key = ("s", "m")
    window.add(5.0, 5.0, {key: IntervalDelta(100, 50, 100.0, 0.5, 5.0)})
    window.add(10.0, 5.0, {key: IntervalDelta(100, 150, 300.0, 1.5, 5.0)})
    r = window.ratios()[key]
    assert r.tokens_per_joule == pytest.approx(200 / 400)
    assert r.joules_per_token == pytest.approx(400 / 200)
    assert r.cost_per_million_tokens == pytest.approx(2.0 / 200 * 1e6)
    assert r.input_tokens_per_second == pytest.approx(200 / 10)
    assert r.output_tokens_per_second == pytest.approx(200 / 10)
    assert r.power_watts == pytest.approx(400 / 10)
    window.add(15.0, 5.0, {key: IntervalDelta()})
    r = window.ratios()[key]
    assert r.joules_per_token == pytest.approx(300 / 150)
    window.add(25.0, 10.0, {key: IntervalDelta(energy_joules=50.0, gpu_seconds=10.0)})
    r = window.ratios()[key]
    assert (r.tokens_per_joule, r.joules_per_token, r.cost_per_million_tokens) == (None,) * 3
    assert r.power_watts == pytest.approx(5.0) and r.output_tokens_per_second == 0.0
    assert len(window) == 1


def test_window_without_energy_or_gpu_gives_none_not_inf() -> None:
    window = RatioWindow(60.0)
    window.add(1.0, 1.0, {("s", "m"): IntervalDelta(10, 10, 0.0, 0.0, 0.0)})
    r = window.ratios()[("s", "m")]
    assert (r.tokens_per_joule, r.joules_per_token, r.cost_per_million_tokens, r.power_watts) == (
        None,
        None,
        None,
        None,
    )
    assert r.output_tokens_per_second == 10.0


def test_window_denormal_energy_never_gives_inf() -> None:
    window = RatioWindow(60.0)
    window.add(1.0, 1.0, {("s", "m"): IntervalDelta(0, 1e300, 5e-324, 0.0, 1.0)})
    r = window.ratios()[("s", "m")]
    assert r.tokens_per_joule is None
    assert r.joules_per_token is not None and math.isfinite(r.joules_per_token)


def test_window_is_bounded() -> None:
    window = RatioWindow(1e6, max_intervals=8)
    for i in range(100):
        window.add(float(i + 1), 1.0, {("s", "m"): IntervalDelta(output_tokens=1.0)})
    assert len(window) == 8
    assert window.ratios()[("s", "m")].output_tokens_per_second == 1.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_window_rejects_a_bad_length(bad: float) -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        RatioWindow(bad)


_AMOUNT = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
_DELTA = st.builds(
    IntervalDelta,
    input_tokens=_AMOUNT,
    output_tokens=_AMOUNT,
    energy_joules=_AMOUNT,
    cost=_AMOUNT,
    gpu_seconds=_AMOUNT,
    input_energy_joules=_AMOUNT,
    output_energy_joules=_AMOUNT,
    input_cost=_AMOUNT,
    output_cost=_AMOUNT,
    split=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=20.0),
            st.dictionaries(st.sampled_from([("s", "a"), ("s", "b"), ("t", "a")]), _DELTA),
        ),
        max_size=12,
    )
)
def test_window_ratios_are_the_oldest_first_sums_bit_for_bit(
    intervals: list[tuple[float, dict[tuple[str, str], IntervalDelta]]],
) -> None:
    # The window adds per-key rows made at add(); its ratios must be exactly those of the
    # plain loop over the kept intervals, oldest first (no reordered float sums).
    window = RatioWindow(30.0)
    kept: list[tuple[float, float, dict[tuple[str, str], IntervalDelta]]] = []
    t = 0.0
    for duration, deltas in intervals:
        t += duration
        window.add(t, duration, deltas)
        if duration > 0:
            kept.append((t, duration, deltas))
        kept = [k for k in kept if k[0] > t - 30.0]
    expected: dict[tuple[str, str], list[float]] = {}
    for _, duration, deltas in kept:
        for key, d in deltas.items():
            acc = expected.setdefault(key, [0.0] * 7)
            acc[0] += duration
            acc[1] += d.output_tokens
            acc[2] += d.energy_joules
            acc[3] += d.cost
            acc[4] += d.input_tokens
            if d.split:
                acc[5] += d.input_tokens
                acc[6] += d.input_energy_joules

    def finite(v: float | None) -> float | None:
        return v if v is not None and math.isfinite(v) else None

    got = window.ratios()
    assert set(got) == set(expected)
    for key, (seconds, output, joules, cost, inputs, split_in, in_joules) in expected.items():
        r = got[key]
        both = output > 0 and joules > 0
        assert r.joules_per_token == finite(joules / output if both else None)
        assert r.input_tokens_per_second == finite(inputs / seconds if seconds > 0 else None)
        if r.cost_per_million_tokens is not None:
            assert r.cost_per_million_tokens == cost / output * 1e6
        if r.input_joules_per_input_token is not None:
            assert r.input_joules_per_input_token == in_joules / split_in
