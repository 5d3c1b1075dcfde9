"""Token counters: baselines, restarts, outages, models coming and going, glitches, bounds."""

from __future__ import annotations

import math

import pytest

from agent.accounting.counters import OTHER_MODEL, CounterLimits, TokenCounters
from agent.readings import AccountingEvent, CounterSeries, ServerReading, ServerStatus, TokenReading

# One step: None = server down; else (start_time, {model: output_tokens_raw}).
Step = tuple[float | None, dict[str, float]] | None


def _status(step: Step) -> ServerStatus:
    if step is None:
        return ServerStatus("s", up=False, reading=None, error_reason="refused")
    start, models = step
    return ServerStatus(
        "s",
        up=True,
        reading=ServerReading(
            "vllm",
            tuple(TokenReading(m, input_tokens=v * 2, output_tokens=v) for m, v in models.items()),
            start_time_seconds=start,
        ),
    )


def _run(steps: list[Step]) -> tuple[dict[str, float], dict[str, float], list[bool]]:
    counters = TokenCounters()
    out: dict[str, float] = {}
    inp: dict[str, float] = {}
    restarts = []
    for i, step in enumerate(steps):
        obs = counters.observe("s", _status(step), 5.0 * i)
        restarts.append(obs.restarted)
        for model, d in obs.deltas.items():
            out[model] = out.get(model, 0.0) + d.output_tokens
            inp[model] = inp.get(model, 0.0) + d.input_tokens
    return out, inp, restarts


CASES = [
    (
        "first sight is a baseline",
        [(None, {"a": 100}), (None, {"a": 150}), (None, {"a": 170})],
        {"a": 70},
    ),
    (
        "restart seen as a decrease",
        [(None, {"a": 100}), (None, {"a": 150}), (None, {"a": 20}), (None, {"a": 50})],
        {"a": 100},
    ),
    (
        "a new start time alone recounts nothing",
        [(1e3, {"a": 100}), (1e3, {"a": 150}), (5e3, {"a": 400})],
        {"a": 300},
    ),
    ("down keeps the base", [(None, {"a": 100}), None, None, (None, {"a": 180})], {"a": 80}),
    ("start time moved while down", [(1e3, {"a": 100}), None, (5e3, {"a": 130})], {"a": 30}),
    ("restart while down, decrease", [(None, {"a": 100}), None, (None, {"a": 30})], {"a": 30}),
    (
        "model leaves and returns",
        [(None, {"a": 100, "b": 50}), (None, {"a": 120}), (None, {"a": 130, "b": 70})],
        {"a": 30, "b": 20},
    ),
    (
        "model returns lower (reloaded)",
        [(None, {"a": 100, "b": 50}), (None, {"a": 120}), (None, {"a": 130, "b": 10})],
        {"a": 30, "b": 10},
    ),
    (
        "new model on a known server counts from zero",
        [(None, {"a": 100}), (None, {"a": 110, "b": 5})],
        {"a": 10, "b": 5},
    ),
    (
        "restart while a model is absent",
        [(None, {"a": 100, "b": 50}), (None, {"a": 10}), (None, {"a": 20, "b": 7})],
        {"a": 20, "b": 7},
    ),
    (
        "one series reset leaves the others alone",
        [(None, {"a": 100, "b": 50}), (None, {"a": 150, "b": 10})],
        {"a": 50, "b": 10},
    ),
    (
        "start time appearing is no restart",
        [(None, {"a": 100}), (5.0, {"a": 120}), (5.0, {"a": 130})],
        {"a": 30},
    ),
    ("start time disappearing is no restart", [(5.0, {"a": 100}), (None, {"a": 120})], {"a": 20}),
    (
        "start time jitter of seconds is no restart",
        [(5.0, {"a": 100}), (8.0, {"a": 120}), (4.0, {"a": 125})],
        {"a": 25},
    ),
    (
        "first sight down, then up is the baseline",
        [None, (None, {"a": 100}), (None, {"a": 101})],
        {"a": 1},
    ),
]


@pytest.mark.parametrize(("steps", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_output_tokens_counted(steps: list[Step], expected: dict[str, float]) -> None:
    out, inp, _ = _run(steps)
    assert out == expected
    assert inp == {m: 2 * v for m, v in expected.items()}


def test_restart_flag_when_start_time_and_a_drop_agree() -> None:
    _, _, restarts = _run(
        [(100.0, {"a": 5}), (100.0, {"a": 6}), (900.0, {"a": 1}), (900.0, {"a": 2})]
    )
    assert restarts == [False, False, True, False]
    _, _, rising = _run([(100.0, {"a": 5}), (900.0, {"a": 6}), (1800.0, {"a": 7})])
    assert rising == [False, False, False], "a start time that moves while counters rise"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -5.0, None])
def test_unusable_raw_counts_nothing_and_keeps_the_base(bad: float | None) -> None:
    counters = TokenCounters()
    totals = 0.0
    for t, value in enumerate((100.0, bad, 150.0)):
        reading = ServerReading("vllm", (TokenReading("a", None, value, cached_input_tokens=None),))
        obs = counters.observe("s", ServerStatus("s", True, reading), float(t))
        totals += obs.deltas["a"].output_tokens
    assert totals == 50.0


def test_cached_tokens_follow_the_same_rules() -> None:
    counters = TokenCounters()
    cached = 0.0
    for t, value in enumerate((40.0, 60.0, 5.0, 9.0)):
        reading = ServerReading("vllm", (TokenReading("a", 0, 0, cached_input_tokens=value),))
        status = ServerStatus("s", True, reading)
        cached += counters.observe("s", status, float(t)).deltas["a"].cached_input_tokens
    assert cached == 20.0 + 5.0 + 4.0


def test_down_server_keeps_its_last_models_for_attribution() -> None:
    counters = TokenCounters()
    counters.observe("s", _status((None, {"a": 1, "b": 2})), 0.0)
    down = counters.observe("s", _status(None), 1.0)
    empty = counters.observe("s", _status((None, {})), 2.0)
    never = counters.observe("other", None, 2.0)
    assert (down.models, down.observed, down.deltas) == (("a", "b"), False, {})
    assert empty.models == ("a", "b")
    assert (never.models, never.observed) == ((), False)


def test_first_sight_is_not_tokens_known() -> None:
    counters = TokenCounters()
    first = counters.observe("s", _status((None, {"a": 1})), 0.0)
    second = counters.observe("s", _status((None, {"a": 1})), 1.0)
    assert first.first_sight and not first.tokens_known
    assert second.tokens_known and second.total_tokens() == 0


# -- per-series counters (data-parallel ranks) ---------------------------------------------


def _ranks(values: dict[str, float], *, decode: dict[str, float] | None = None) -> ServerStatus:
    """One model served by data-parallel ranks; ``values`` is rank -> prompt tokens."""
    series = [CounterSeries("input", f'p{{engine="{r}"}}', v) for r, v in values.items()]
    series += [
        CounterSeries("decode_seconds", f'd{{engine="{r}"}}', v) for r, v in (decode or {}).items()
    ]
    reading = TokenReading(
        "m",
        input_tokens=sum(values.values()),
        output_tokens=None,
        decode_seconds=sum((decode or {}).values()) if decode else None,
        series=tuple(series),
    )
    return ServerStatus("s", True, ServerReading("vllm", (reading,), start_time_seconds=1e9))


def _inputs(statuses: list[ServerStatus], gpus: int = 4) -> list[float]:
    counters = TokenCounters()
    return [
        counters.observe("s", st, 10.0 * i, gpus).deltas["m"].input_tokens
        for i, st in enumerate(statuses)
    ]


def test_one_rank_restarting_recounts_no_other_rank() -> None:
    """Issue figures: 4 ranks at 1e9 prompt tokens; rank 3 restarts. Before: +3,000,026,400."""
    before = {r: 1e9 for r in "0123"}
    grown = {"0": 1e9 + 100, "1": 1e9 + 100, "2": 1e9 + 100, "3": 1e9 + 100}
    restarted = {"0": 1e9 + 200, "1": 1e9 + 200, "2": 1e9 + 200, "3": 50.0}
    assert _inputs([_ranks(before), _ranks(grown), _ranks(restarted)]) == [0.0, 400.0, 350.0]


def test_one_rank_missing_from_a_scrape_counts_nothing_twice() -> None:
    """Issue figures: rank 3 absent once gave +3.0e9, then +1.0e9 when it came back."""
    four = {r: 1e9 for r in "0123"}
    three = {"0": 1e9 + 10, "1": 1e9 + 10, "2": 1e9 + 10}
    back = {"0": 1e9 + 20, "1": 1e9 + 20, "2": 1e9 + 20, "3": 1e9 + 20}
    assert _inputs([_ranks(four), _ranks(three), _ranks(back)]) == [0.0, 30.0, 50.0]


def test_a_missing_rank_that_comes_back_lower_restarted() -> None:
    four = {r: 1e9 for r in "0123"}
    three = {"0": 1e9 + 10, "1": 1e9 + 10, "2": 1e9 + 10}
    back = {"0": 1e9 + 20, "1": 1e9 + 20, "2": 1e9 + 20, "3": 70.0}
    assert _inputs([_ranks(four), _ranks(three), _ranks(back)]) == [0.0, 30.0, 100.0]


def test_a_rank_first_seen_after_the_baseline_is_a_baseline_too() -> None:
    """It may have been missing from the first scrape: its value may be history."""
    steps = [
        _ranks({"0": 500.0}),
        _ranks({"0": 600.0, "1": 4e6}),
        _ranks({"0": 600.0, "1": 4e6 + 9}),
    ]
    assert _inputs(steps) == [0.0, 100.0, 9.0]


def test_phase_seconds_follow_the_per_series_rules() -> None:
    counters = TokenCounters()
    steps = [{"0": 100.0, "1": 100.0}, {"0": 110.0, "1": 103.0}, {"0": 115.0, "1": 2.0}]
    decode = [
        counters.observe("s", _ranks({"0": 1.0}, decode=d), 10.0 * i).deltas["m"].decode_seconds
        for i, d in enumerate(steps)
    ]
    assert decode == [0.0, 13.0, 7.0]


def test_series_reset_and_restart_are_reported() -> None:
    counters = TokenCounters()
    counters.observe("s", _ranks({"0": 10.0, "1": 10.0}), 0.0)
    obs = counters.observe("s", _ranks({"0": 12.0, "1": 1.0}), 5.0)
    assert [(e.reason, e.source, e.model, e.series) for e in obs.events] == [
        ("series_reset", "s", "m", 'input:p{engine="1"}')
    ]
    assert not obs.restarted


# -- glitch guard ---------------------------------------------------------------------------


def _outputs(
    values: list[float], *, dt: float = 10.0, gpus: int = 1
) -> tuple[list[float], list[AccountingEvent]]:
    counters = TokenCounters(CounterLimits(max_tokens_per_second_per_gpu=1e4))
    counted: list[float] = []
    events: list[AccountingEvent] = []
    for i, v in enumerate(values):
        reading = ServerReading("vllm", (TokenReading("m", None, v),))
        obs = counters.observe("s", ServerStatus("s", True, reading), dt * i, gpus)
        counted.append(obs.deltas["m"].output_tokens)
        events += [e for e in obs.events if e.reason == "implausible"]
    return counted, events


def test_a_lone_absurd_sample_is_not_counted_and_changes_nothing() -> None:
    """Issue figure: one 1e20 sample froze the exported total at 1e20."""
    counted, events = _outputs([1000.0, 1010.0, 1e20, 1020.0, 1030.0])
    assert counted == [0.0, 10.0, 0.0, 10.0, 10.0]
    assert len(events) == 1 and events[0].series == "output:output"
    assert "not counted" in events[0].detail


def test_a_counter_that_stays_at_its_new_level_counts_from_it() -> None:
    counted, events = _outputs([1000.0, 1e12, 1e12 + 50, 1e12 + 80, 1e12 + 80])
    assert counted == [0.0, 0.0, 50.0, 30.0, 0.0]
    assert len(events) == 1


def test_restarts_coming_back_at_the_float_limit_stay_finite() -> None:
    """Issue figure: two restarts at 1.7e308 took the total to +Inf."""
    counted, events = _outputs([1e9, 1.7e308, 5.0, 1.7e308, 9.0, 1.79e308, 1.79e308, 12.0])
    assert counted == [0.0, 0.0, 5.0, 0.0, 4.0, 0.0, 0.0, 3.0]
    assert len(events) == 4, "a counter stuck at an absurd value is never taken as its level"


def test_the_ceiling_scales_with_the_interval_and_the_gpus() -> None:
    # 1e4 tokens/s per GPU: 3e5 in 10 s is too much for 1 GPU, fine for 4.
    assert _outputs([0.0, 3e5], gpus=1)[0] == [0.0, 0.0]
    assert _outputs([0.0, 3e5], gpus=4)[0] == [0.0, 3e5]
    assert _outputs([0.0, 3e5], dt=40.0, gpus=1)[0] == [0.0, 3e5]


# -- cardinality ----------------------------------------------------------------------------


def _models(names: list[str], value: float = 10.0) -> ServerStatus:
    models = tuple(TokenReading(n, 0.0, value) for n in names)
    return ServerStatus("s", True, ServerReading("vllm", models))


def test_models_over_the_cap_are_not_tracked_and_are_reported() -> None:
    counters = TokenCounters(CounterLimits(max_models_per_server=2))
    counters.observe("s", _models(["a", "b"]), 0.0)
    obs = counters.observe("s", _models(["a", "b", "c", "d", "x" * 300]), 1.0)
    assert sorted(obs.deltas) == ["a", "b"] and obs.models == ("a", "b")
    drops = {e.reason: e.count for e in obs.events}
    assert drops == {"too_many_models": 2, "label_too_long": 1}
    long = TokenCounters(CounterLimits(max_label_length=8))
    reported = long.observe("s", _models(["short", "x" * 9]), 0.0).events
    assert [(e.reason, e.count) for e in reported] == [("label_too_long", 1)]


def test_an_absent_model_expires_and_comes_back_as_a_baseline() -> None:
    counters = TokenCounters(CounterLimits(model_expiry_seconds=100.0))
    counters.observe("s", _models(["a", "b"], 10.0), 0.0)
    assert counters.observe("s", _models(["a"], 20.0), 50.0).retired == ()
    gone = counters.observe("s", _models(["a"], 30.0), 150.0)
    assert gone.retired == ("b",) and gone.models == ("a",)
    back = counters.observe("s", _models(["a", "b"], 500.0), 160.0)
    # b's 500 may hold history from before it was forgotten: a baseline, not counted.
    assert back.deltas["b"].output_tokens == 0.0
    assert back.deltas["a"].output_tokens == 470.0
    assert OTHER_MODEL not in back.deltas


def test_series_over_the_cap_are_not_tracked() -> None:
    counters = TokenCounters(CounterLimits(max_series_per_model=2))
    counters.observe("s", _ranks({"0": 1.0, "1": 1.0}), 0.0)
    obs = counters.observe("s", _ranks({"0": 2.0, "1": 2.0, "2": 50.0}), 10.0)
    assert obs.deltas["m"].input_tokens == 2.0
    assert [(e.reason, e.count) for e in obs.events] == [("too_many_series", 1)]
