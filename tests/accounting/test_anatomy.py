"""The input/output energy split: the regression finds known coefficients, or says it cannot."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.accounting.anatomy import (
    PhaseAnatomy,
    PhaseDelta,
    PhaseRegression,
    PhaseSettings,
    PhaseShare,
)

A_TRUE = 0.02  # J per computed prompt token
B_TRUE = 0.15  # J per output token
P0_TRUE = 140.0  # W


def _interval(rng: random.Random, mix_varies: bool) -> tuple[float, float, float, float]:
    dt = 5.0
    load = rng.uniform(0.2, 1.0)
    output = 15_000 * load * rng.uniform(0.9, 1.1)
    ratio = rng.uniform(1.0, 8.0) if mix_varies else 4.0
    computed = output * ratio * (rng.uniform(0.97, 1.03) if mix_varies else 1.0)
    energy = A_TRUE * computed + B_TRUE * output + P0_TRUE * dt
    return dt, energy * rng.gauss(1.0, 0.01), computed, output


def test_regression_recovers_known_coefficients_and_covers_them() -> None:
    rng = random.Random(7)
    fit = PhaseRegression()
    for _ in range(400):
        fit.update(*_interval(rng, mix_varies=True))
    c = fit.separated()
    assert c is not None
    assert c.joules_per_input_token == pytest.approx(A_TRUE, rel=0.05)
    assert c.joules_per_output_token == pytest.approx(B_TRUE, rel=0.05)
    assert c.idle_watts == pytest.approx(P0_TRUE, rel=0.15)
    # The stated uncertainty covers the truth (3 standard errors).
    assert abs(c.joules_per_input_token - A_TRUE) <= 3 * c.input_relative_error * A_TRUE
    assert abs(c.joules_per_output_token - B_TRUE) <= 3 * c.output_relative_error * B_TRUE


def test_a_mix_that_never_varies_is_not_separated() -> None:
    rng = random.Random(3)
    fit = PhaseRegression()
    for _ in range(400):
        fit.update(*_interval(rng, mix_varies=False))
    assert fit.coefficients() is not None
    assert fit.separated() is None


def test_too_few_intervals_are_not_trusted() -> None:
    rng = random.Random(1)
    fit = PhaseRegression(PhaseSettings(min_intervals=24))
    for _ in range(10):
        fit.update(*_interval(rng, mix_varies=True))
    assert fit.separated() is None


def test_coefficients_stay_non_negative_on_adversarial_data() -> None:
    fit = PhaseRegression()
    # More output always comes with less energy: unconstrained least squares gives b < 0.
    for i in range(200):
        output = 1000.0 + 50 * (i % 20)
        fit.update(5.0, 5000.0 - output, 3000.0 + 100 * (i % 7), output)
    c = fit.coefficients()
    assert c is not None
    assert c.joules_per_input_token >= 0
    assert c.joules_per_output_token >= 0
    assert c.idle_watts >= 0


def test_invalid_intervals_are_ignored() -> None:
    fit = PhaseRegression()
    fit.update(0.0, 10.0, 1.0, 1.0)
    fit.update(5.0, math.nan, 1.0, 1.0)
    fit.update(5.0, -1.0, 1.0, 1.0)
    assert fit.coefficients() is None


def _anatomy_fitted() -> PhaseAnatomy:
    rng = random.Random(11)
    anatomy = PhaseAnatomy()
    for _ in range(300):
        dt, energy, computed, output = _interval(rng, mix_varies=True)
        anatomy.observe(
            "vllm", dt, energy, {"m": PhaseDelta(input_tokens=computed, output_tokens=output)}
        )
    return anatomy


def test_regression_share_follows_the_coefficients() -> None:
    anatomy = _anatomy_fitted()
    share = anatomy.share("vllm", PhaseDelta(input_tokens=12_000, output_tokens=1_000))
    assert share.method == "regression"
    expected = A_TRUE * 12_000 / (A_TRUE * 12_000 + B_TRUE * 1_000)
    assert share.input_fraction == pytest.approx(expected, rel=0.05)


def test_cache_hits_are_not_computed_input() -> None:
    anatomy = _anatomy_fitted()
    all_computed = anatomy.share("vllm", PhaseDelta(input_tokens=12_000, output_tokens=1_000))
    half_cached = anatomy.share(
        "vllm", PhaseDelta(input_tokens=12_000, cached_input_tokens=6_000, output_tokens=1_000)
    )
    assert half_cached.input_fraction is not None and all_computed.input_fraction is not None
    assert half_cached.input_fraction < all_computed.input_fraction


def test_an_idle_interval_takes_the_recent_mix() -> None:
    anatomy = _anatomy_fitted()
    share = anatomy.share("vllm", PhaseDelta())
    assert share.method == "regression"
    assert share.input_fraction is not None and 0.0 < share.input_fraction < 1.0


def test_time_estimator_where_the_regression_cannot_separate() -> None:
    anatomy = PhaseAnatomy()
    delta = PhaseDelta(input_tokens=800, output_tokens=200, prefill_seconds=1.0, decode_seconds=3.0)
    anatomy.observe("llamacpp", 5.0, 900.0, {"": delta})
    share = anatomy.share("llamacpp", delta)
    assert share == PhaseShare("time", 0.25)


def test_no_estimator_leaves_the_energy_unsplit() -> None:
    anatomy = PhaseAnatomy()
    delta = PhaseDelta(input_tokens=800, output_tokens=200)
    anatomy.observe("tgi", 5.0, 900.0, {"": delta})
    assert anatomy.share("tgi", delta) == PhaseShare("none", None)
    assert anatomy.share("never-seen", delta) == PhaseShare("none", None)


def test_cache_savings_by_either_estimator() -> None:
    regression = PhaseShare("regression", 0.4, joules_per_input_token=0.02)
    delta = PhaseDelta(input_tokens=1_000, cached_input_tokens=400, output_tokens=100)
    assert regression.cache_savings_joules(50.0, delta) == pytest.approx(400 * 0.02)
    time = PhaseShare("time", 0.4)
    # 50 J x 0.4 on input over 600 computed prompt tokens, times 400 cached.
    assert time.cache_savings_joules(50.0, delta) == pytest.approx(400 * 50.0 * 0.4 / 600)
    assert PhaseShare("none", None).cache_savings_joules(50.0, delta) == 0.0


_counts = st.floats(min_value=0, max_value=1e7, allow_nan=False)


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=60),
            st.floats(min_value=0, max_value=1e6, allow_nan=False),
            _counts,
            _counts,
            _counts,
            st.one_of(st.none(), st.floats(min_value=0, max_value=1e4)),
        ),
        max_size=60,
    )
)
def test_fractions_are_always_between_0_and_1(
    intervals: list[tuple[float, float, float, float, float, float | None]],
) -> None:
    anatomy = PhaseAnatomy(PhaseSettings(min_intervals=3, max_relative_error=10.0))
    for dt, energy, inp, cached, out, prefill in intervals:
        delta = PhaseDelta(inp, min(cached, inp), out, prefill, None if prefill is None else 1.0)
        anatomy.observe("s", dt, energy, {"m": delta})
        share = anatomy.share("s", delta)
        if share.input_fraction is None:
            assert share.method == "none"
        else:
            assert 0.0 <= share.input_fraction <= 1.0
        saved = share.cache_savings_joules(energy, delta)
        assert math.isfinite(saved) and saved >= 0
