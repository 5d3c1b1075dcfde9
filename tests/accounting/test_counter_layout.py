"""Counting depends on the series a reading lists and their values, never on how it lists them.

The counters keep, per model, a plan worked out from the reading's series layout (which series,
in which order) and reuse it while the layout stays the same. Hypothesis histories of one model
whose series come and go, repeat a key, carry values that are not numbers and fall back to the
reading's fields, counted three ways, must give the same observations to the last bit:

- as listed, in one fixed order (the plan is reused from cycle to cycle);
- the same series shuffled at every cycle (a new plan every cycle), a repeated key's values
  kept in their order (the last one listed counts);
- written plainly: each key once with its last usable value (else its last value), sorted.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting.counters import CounterLimits, TokenCounters
from agent.readings import CounterKind, CounterSeries, ServerReading, ServerStatus, TokenReading

IDENTS: list[tuple[CounterKind, str]] = [
    ("input", 'p{engine="0"}'),
    ("input", 'p{engine="1"}'),
    ("output", 'g{engine="0"}'),
    ("output", 'g{engine="1"}'),
    ("cached", 'c{engine="0"}'),
    ("decode_seconds", 'd{engine="0"}'),
]
BAD = st.sampled_from([None, math.nan, -1.0, math.inf, -math.inf])


@dataclass
class Cycle:
    dt: float
    listed: list[tuple[int, float | None]]  # (index in IDENTS, value), in listing order
    fields: tuple[float | None, ...]
    seed: int


@st.composite
def histories(draw: st.DrawFn) -> list[Cycle]:
    level = [draw(st.sampled_from([0.0, 1e3, 1e6])) for _ in IDENTS]
    order = draw(st.permutations(range(len(IDENTS))))
    cycles = []
    for _ in range(draw(st.integers(1, 12))):
        listed: list[tuple[int, float | None]] = []
        for i in order:
            if draw(st.integers(0, 9)) == 0:
                continue  # missing from this scrape
            step = draw(st.sampled_from([0.0, 1.0, 250.0, 1e4, -50.0, -1e9]))
            level[i] = max(0.0, level[i] + step)
            value: float | None = draw(BAD) if draw(st.integers(0, 7)) == 0 else level[i]
            listed.append((i, value))
            while draw(st.integers(0, 5)) == 0:  # the key listed again, before or after
                again = (i, draw(BAD | st.just(level[i] + 1.0)))
                listed.insert(draw(st.integers(0, len(listed))), again)
        fields = tuple(draw(st.none() | st.floats(0, 1e7) | BAD) for _ in range(5))
        cycles.append(
            Cycle(draw(st.sampled_from([0.5, 5.0, 60.0])), listed, fields, draw(st.integers()))
        )
    return cycles


def _status(cycle: Cycle, listed: list[tuple[int, float | None]]) -> ServerStatus:
    series = tuple(CounterSeries(*IDENTS[i], value) for i, value in listed)  # type: ignore[arg-type]
    inp, out, cached, prefill, decode = cycle.fields
    reading = TokenReading(
        "m",
        input_tokens=inp,
        output_tokens=out,
        cached_input_tokens=cached,
        prefill_seconds=prefill,
        decode_seconds=decode,
        series=series,
    )
    return ServerStatus("s", up=True, reading=ServerReading("vllm", (reading,)))


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0


def _shuffled(listed: list[tuple[int, float | None]], seed: int) -> list[tuple[int, float | None]]:
    order = [i for i, _ in listed]
    random.Random(seed).shuffle(order)
    values: dict[int, list[float | None]] = {}
    for i, value in listed:
        values.setdefault(i, []).append(value)
    return [(i, values[i].pop(0)) for i in order]


def _plain(listed: list[tuple[int, float | None]]) -> list[tuple[int, float | None]]:
    last: dict[int, float | None] = {}
    for i, value in listed:
        if _usable(value) or not _usable(last.get(i)):
            last[i] = value
    return sorted(last.items(), key=lambda item: IDENTS[item[0]])


@settings(max_examples=300, deadline=None)
@given(histories(), st.booleans())
def test_counting_does_not_depend_on_the_listing(history: list[Cycle], small: bool) -> None:
    # A small series cap also exercises series refused for good (reported every cycle).
    limits = CounterLimits(max_series_per_model=3 if small else 512)
    fixed, shuffled, plain = (TokenCounters(limits) for _ in range(3))
    t = 0.0
    for cycle in history:
        t += cycle.dt
        seen = [
            fixed.observe("s", _status(cycle, cycle.listed), t),
            shuffled.observe("s", _status(cycle, _shuffled(cycle.listed, cycle.seed)), t),
            plain.observe("s", _status(cycle, _plain(cycle.listed)), t),
        ]
        assert repr(seen[0]) == repr(seen[1]) == repr(seen[2])


def test_a_key_listed_twice_counts_its_last_usable_value() -> None:
    counters = TokenCounters()
    key = 'p{engine="0"}'

    def status(*values: float | None) -> ServerStatus:
        series = tuple(CounterSeries("input", key, v) for v in values)  # type: ignore[arg-type]
        reading = TokenReading("m", input_tokens=None, output_tokens=None, series=series)
        return ServerStatus("s", up=True, reading=ServerReading("vllm", (reading,)))

    counters.observe("s", status(100.0), 0.0)  # baseline
    assert counters.observe("s", status(150.0, math.nan), 5.0).deltas["m"].input_tokens == 50.0
    assert counters.observe("s", status(170.0, 180.0), 10.0).deltas["m"].input_tokens == 30.0
    assert counters.observe("s", status(None, -1.0), 15.0).deltas["m"].input_tokens == 0.0
    assert counters.observe("s", status(200.0), 20.0).deltas["m"].input_tokens == 20.0
    assert counters.observe("s", status(210.0, 220.0, None), 25.0).deltas["m"].input_tokens == 20.0
