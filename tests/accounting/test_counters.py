"""Token counters across baselines, restarts, outages and models coming and going."""

from __future__ import annotations

import math

import pytest

from agent.accounting.counters import TokenCounters
from agent.readings import ServerReading, ServerStatus, TokenReading

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
    for step in steps:
        obs = counters.observe("s", _status(step))
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
        "restart seen as a new start time",
        [(1.0, {"a": 100}), (1.0, {"a": 150}), (2.0, {"a": 400})],
        {"a": 450},
    ),
    ("down keeps the base", [(None, {"a": 100}), None, None, (None, {"a": 180})], {"a": 80}),
    ("restart while down, start time", [(1.0, {"a": 100}), None, (2.0, {"a": 130})], {"a": 130}),
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
        "restart resets every model, even one that grew",
        [(None, {"a": 100, "b": 50}), (None, {"a": 150, "b": 10})],
        {"a": 150, "b": 10},
    ),
    (
        "start time appearing is no restart",
        [(None, {"a": 100}), (5.0, {"a": 120}), (5.0, {"a": 130})],
        {"a": 30},
    ),
    ("start time disappearing is no restart", [(5.0, {"a": 100}), (None, {"a": 120})], {"a": 20}),
    (
        "sub-millisecond start time jitter is no restart",
        [(5.0, {"a": 100}), (5.0004, {"a": 120})],
        {"a": 20},
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


def test_restart_flag_only_on_the_restart_reading() -> None:
    _, _, restarts = _run([(1.0, {"a": 5}), (1.0, {"a": 6}), (2.0, {"a": 1}), (2.0, {"a": 2})])
    assert restarts == [False, False, True, False]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -5.0, None])
def test_unusable_raw_counts_nothing_and_keeps_the_base(bad: float | None) -> None:
    counters = TokenCounters()
    totals = 0.0
    for value in (100.0, bad, 150.0):
        reading = ServerReading("vllm", (TokenReading("a", None, value, cached_input_tokens=None),))
        obs = counters.observe("s", ServerStatus("s", True, reading))
        totals += obs.deltas["a"].output_tokens
    assert totals == 50.0


def test_cached_tokens_follow_the_same_rules() -> None:
    counters = TokenCounters()
    cached = 0.0
    for value in (40.0, 60.0, 5.0, 9.0):
        reading = ServerReading("vllm", (TokenReading("a", 0, 0, cached_input_tokens=value),))
        cached += (
            counters.observe("s", ServerStatus("s", True, reading)).deltas["a"].cached_input_tokens
        )
    assert cached == 20.0 + 5.0 + 4.0


def test_down_server_keeps_its_last_models_for_attribution() -> None:
    counters = TokenCounters()
    counters.observe("s", _status((None, {"a": 1, "b": 2})))
    down = counters.observe("s", _status(None))
    empty = counters.observe("s", _status((None, {})))
    never = counters.observe("other", None)
    assert (down.models, down.observed, down.deltas) == (("a", "b"), False, {})
    assert empty.models == ("a", "b")
    assert (never.models, never.observed) == ((), False)
    assert counters.known_models("s") == ("a", "b") and not counters.seen("other")


def test_first_sight_is_not_tokens_known() -> None:
    counters = TokenCounters()
    first = counters.observe("s", _status((None, {"a": 1})))
    second = counters.observe("s", _status((None, {"a": 1})))
    assert first.first_sight and not first.tokens_known
    assert second.tokens_known and second.total_tokens() == 0
