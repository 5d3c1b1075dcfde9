"""The pure energy meter: counter deltas, resets, glitches, trapezoid integration, gaps.

The meter keeps no total (the ledger accumulates); these tests sum the per-interval joules it
hands out, as the ledger does.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.gpu.energy import EnergyMeter, MeterStep

Reading = tuple[float, float | None, float | None]  # (t s, raw energy J or None, power W or None)


def _feed(meter: EnergyMeter, readings: list[Reading]) -> list[MeterStep]:
    return [meter.step(*reading) for reading in readings]


def _total(steps: list[MeterStep]) -> float:
    return math.fsum(s.added_joules for s in steps)


METER_CASES: list[tuple[str, list[Reading], float, int]] = [
    # (case, readings, expected total J, expected resets)
    ("first reading is the baseline", [(0, 5000.0, 100.0)], 0.0, 0),
    ("counter deltas add up", [(0, 1000.0, 1), (1, 1100.0, 1), (2, 1350.0, 1)], 350.0, 0),
    ("counter wins over power", [(0, 0.0, 900.0), (10, 50.0, 900.0)], 50.0, 0),
    ("equal counter adds nothing", [(0, 10.0, 5), (1, 10.0, 5)], 0.0, 0),
    (
        "reload: new value is energy since reload",
        [(0, 1_000_000.0, 300), (1, 1_000_300.0, 300), (2, 120.0, 300), (3, 420.0, 300)],
        300.0 + 120.0 + 300.0,
        1,
    ),
    (
        "two reloads",
        [(0, 5000.0, 0), (1, 6000.0, 0), (2, 10.0, 0), (3, 2000.0, 0), (4, 5.0, 0)],
        1000.0 + 10.0 + 1990.0 + 5.0,
        2,
    ),
    (
        "glitch below tolerance is ignored and not double counted",
        [(0, 100_000.0, 0), (1, 100_200.0, 0), (2, 100_199.99, 0), (3, 100_300.0, 0)],
        300.0,
        0,
    ),
    ("trapezoid, steady", [(0, None, 100.0), (10, None, 100.0)], 1000.0, 0),
    ("trapezoid, ramp", [(0, None, 100.0), (2, None, 300.0), (3, None, 300.0)], 700.0, 0),
    ("trapezoid, uneven steps", [(0, None, 0.0), (0.5, None, 10.0), (2.5, None, 10.0)], 22.5, 0),
    ("no power and no counter: unmeasured", [(0, None, None), (5, None, None)], 0.0, 0),
    (
        "counter gap is bridged by power, then a new baseline",
        [(0, 1000.0, 100.0), (1, None, 100.0), (2, 1e9, 100.0), (3, 1e9 + 150.0, 100.0)],
        100.0 + 100.0 + 150.0,
        0,
    ),
    (
        "switch from integrated to counter",
        [(0, None, 50.0), (2, 7.0, 50.0), (3, 17.0, 0)],
        110.0,
        0,
    ),
    (
        "power missing at one end: unmeasured",
        [(0, None, 50.0), (1, None, None), (2, None, 50.0)],
        0.0,
        0,
    ),
    ("readings at the same instant", [(0, None, 50.0), (0, None, 70.0), (1, None, 70.0)], 70.0, 0),
]


@pytest.mark.parametrize(
    ("readings", "expected", "resets"),
    [c[1:] for c in METER_CASES],
    ids=[c[0] for c in METER_CASES],
)
def test_meter_total(readings: list[Reading], expected: float, resets: int) -> None:
    steps = _feed(EnergyMeter(), readings)
    assert _total(steps) == pytest.approx(expected, rel=1e-12, abs=1e-9)
    assert sum(s.reset for s in steps) == resets


NOTE = "note_possible_reset"

HINT_CASES: list[tuple[str, list[Reading | str], float, int]] = [
    # 50 W steady; the counter read 100 J at t=0 (driver loaded 2 s before).
    (
        "re-init, counter reset hidden above the old value: whole value",
        [(0, 100.0, 50.0), NOTE, (10, 450.0, 50.0)],  # reloaded at t=1: 450 J since then
        450.0,
        1,
    ),
    ("re-init without a reload: delta", [(0, 100.0, 50.0), NOTE, (10, 600.0, 50.0)], 500.0, 0),
    ("no re-init: delta even if hidden", [(0, 100.0, 50.0), (10, 450.0, 50.0)], 350.0, 0),
    ("re-init, counter went down: reset", [(0, 9e6, 50.0), NOTE, (10, 450.0, 50.0)], 450.0, 1),
    ("re-init, no power: delta", [(0, 100.0, None), NOTE, (10, 450.0, None)], 350.0, 0),
    (
        "the note covers one interval only",
        [(0, 100.0, 50.0), NOTE, (10, 600.0, 50.0), (20, 1000.0, 50.0)],
        900.0,
        0,
    ),
    (
        "the note is dropped by a reading without counter",
        [(0, 100.0, 50.0), NOTE, (1, None, 50.0), (2, 5.0, 50.0), (12, 480.0, 50.0)],
        50.0 + 50.0 + 475.0,
        0,
    ),
]


@pytest.mark.parametrize(
    ("steps", "expected", "resets"),
    [c[1:] for c in HINT_CASES],
    ids=[c[0] for c in HINT_CASES],
)
def test_meter_after_nvml_reinit(steps: list[Reading | str], expected: float, resets: int) -> None:
    meter = EnergyMeter()
    out: list[MeterStep] = []
    for step in steps:
        if isinstance(step, str):
            meter.note_possible_reset()
        else:
            out.append(meter.step(*step))
    assert _total(out) == pytest.approx(expected)
    assert sum(s.reset for s in out) == resets


SOURCE_CASES: list[tuple[list[Reading], str | None]] = [
    ([(0, 1.0, 1.0)], None),
    ([(0, 1.0, 1.0), (1, 2.0, 1.0)], "counter"),
    ([(0, None, 1.0), (1, None, 1.0)], "integrated"),
    ([(0, 1.0, 1.0), (1, None, 1.0)], "integrated"),
]


@pytest.mark.parametrize(("readings", "source"), SOURCE_CASES)
def test_meter_reports_how_the_last_interval_was_counted(
    readings: list[Reading], source: str | None
) -> None:
    assert _feed(EnergyMeter(), readings)[-1].source == source


def test_meter_says_when_an_interval_is_unmeasured() -> None:
    steps = _feed(EnergyMeter(), [(0, None, None), (4, None, 10.0), (5, None, 10.0)])
    assert [s.source for s in steps] == [None, None, "integrated"]
    assert _total(steps) == 10.0


def test_step_flags_the_reset() -> None:
    meter = EnergyMeter()
    meter.step(0, 5000.0, 1.0)
    step = meter.step(1, 3.0, 1.0)
    assert step.reset
    assert step.added_joules == 3.0
    assert step.source == "counter"


BAD_INPUTS: list[tuple[Reading, str]] = [
    ((float("nan"), 1.0, 1.0), "t_seconds"),
    ((1.0, -1.0, 1.0), "energy_joules"),
    ((1.0, 1.0, -0.5), "power_watts"),
    ((1.0, float("inf"), 1.0), "energy_joules"),
    ((1.0, 1.0, float("nan")), "power_watts"),
]


@pytest.mark.parametrize(("reading", "named"), BAD_INPUTS)
def test_bad_reading_is_refused_with_its_name(reading: Reading, named: str) -> None:
    meter = EnergyMeter()
    with pytest.raises(ValueError, match=named):
        meter.step(*reading)
    assert meter.step(2.0, 10.0, 1.0).added_joules == 0.0, "the refused reading set no base"


def test_time_going_back_is_refused() -> None:
    meter = EnergyMeter()
    meter.step(10, 1.0, 1.0)
    with pytest.raises(ValueError, match="went back"):
        meter.step(9, 2.0, 1.0)


@pytest.mark.parametrize("ratio", [-0.1, float("nan"), float("inf")])
def test_bad_glitch_tolerance_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="glitch_tolerance_ratio"):
        EnergyMeter(glitch_tolerance_ratio=ratio)


@given(
    st.lists(
        st.tuples(
            st.floats(0, 100, allow_nan=False),
            st.one_of(st.none(), st.floats(0, 1e12, allow_nan=False)),
            st.one_of(st.none(), st.floats(0, 2000, allow_nan=False)),
        ),
        max_size=60,
    )
)
def test_meter_hands_out_finite_non_negative_joules(
    steps: list[tuple[float, float | None, float | None]],
) -> None:
    meter = EnergyMeter()
    t = 0.0
    for dt, energy, power in steps:
        t += dt
        added = meter.step(t, energy, power, 700.0).added_joules
        assert added >= 0 and math.isfinite(added)


# -- glitch guard ---------------------------------------------------------------------------


def test_an_absurd_counter_sample_is_not_counted_and_changes_nothing() -> None:
    # 700 W limit, 1 s apart: at most 1,400 J per interval.
    meter = EnergyMeter()
    readings = [1000.0, 1500.0, 9.2e18, 2000.0, 2600.0]
    steps = [meter.step(float(t), e, 500.0, 700.0) for t, e in enumerate(readings)]
    assert [s.added_joules for s in steps] == [0.0, 500.0, 0.0, 500.0, 600.0]
    assert [s.implausible for s in steps] == [False, False, True, False, False]


def test_a_reset_to_an_impossible_value_is_not_counted() -> None:
    meter = EnergyMeter()
    steps = [meter.step(float(t), e, 500.0, 700.0) for t, e in enumerate([5e6, 5e6 + 500, 1e9])]
    assert steps[-1].implausible and steps[-1].added_joules == 0.0


def test_a_counter_that_keeps_counting_from_a_new_level_is_rebased() -> None:
    meter = EnergyMeter()
    readings = [1000.0, 1e12, 1e12 + 400, 1e12 + 900]
    steps = [meter.step(float(t), e, 500.0, 700.0) for t, e in enumerate(readings)]
    assert [s.added_joules for s in steps] == [0.0, 0.0, 400.0, 500.0]


def test_unknown_power_limit_uses_a_ceiling_above_any_gpu() -> None:
    meter = EnergyMeter()
    meter.step(0.0, 0.0, None, None)
    assert meter.step(1.0, 3_000.0, None, None).added_joules == 3_000.0
    assert meter.step(2.0, 3_000.0 + 1e6, None, None).implausible


@pytest.mark.parametrize("ratio", [0.5, float("nan")])
def test_bad_power_ratio_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="max_power_ratio"):
        EnergyMeter(max_power_ratio=ratio)
