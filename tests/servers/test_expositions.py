"""The simulated expositions are valid, realistic and split counters across ranks exactly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from agent.simulation.expositions import (
    ENGINES,
    SimModelCounters,
    build_1_2_5_buckets,
    go_float,
    render_exposition,
)

MODELS = [
    SimModelCounters("meta-llama/Llama-3.1-8B-Instruct", 1001, 503, 200, 3, 1, 0.5, 17),
    SimModelCounters('odd "name"\\\n', 7, 3, 1, 0, 0, 0.0, 1),
]


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


@pytest.mark.parametrize(
    ("engine", "variant"),
    [(e, "") for e in ENGINES] + [("vllm", "v0"), ("vllm", "bridge"), ("sglang", "2025")],
)
def test_every_engine_renders_text_prometheus_client_accepts(engine: str, variant: str) -> None:
    text = render_exposition(
        engine, MODELS, ranks=3, start_time_seconds=1.7e9, variant=variant, tp_duplicates=2
    )
    assert text.endswith("\n")
    samples = _samples(text)
    assert samples
    assert "# HELP " in text and "# TYPE " in text


def test_vllm_v1_has_real_buckets_created_series_and_exact_rank_split() -> None:
    text = render_exposition("vllm", MODELS[:1], ranks=3, start_time_seconds=1.7e9)
    samples = _samples(text)
    ttft = [
        labels["le"]
        for labels, _ in samples["vllm:time_to_first_token_seconds_bucket"]
        if labels["engine"] == "0"
    ]
    assert ttft[:3] == ["0.001", "0.005", "0.01"] and ttft[-2:] == ["2560.0", "+Inf"]
    assert len(ttft) == 23
    prompt = samples["vllm:prompt_tokens_total"]
    assert sorted(labels["engine"] for labels, _ in prompt) == ["0", "1", "2"]
    assert sum(v for _, v in prompt) == 1001
    assert "vllm:prompt_tokens_created" in samples
    assert samples["process_start_time_seconds"] == [({}, 1.7e9)]


@pytest.mark.parametrize(("engine", "variant"), [("vllm", "v0"), ("sglang", ""), ("lmdeploy", "")])
def test_no_created_series_where_the_server_disables_them(engine: str, variant: str) -> None:
    text = render_exposition(engine, MODELS, start_time_seconds=1.7e9, variant=variant)
    assert "_created" not in text


def test_bridge_rewrites_colons() -> None:
    text = render_exposition("vllm", MODELS, variant="bridge", start_time_seconds=1.7e9)
    assert "vllm:" not in text and "vllm_prompt_tokens_total{" in text


def test_llamacpp_prints_six_significant_digits_without_labels() -> None:
    text = render_exposition(
        "llamacpp", [SimModelCounters("", prompt_tokens=1_843_394)], start_time_seconds=0
    )
    assert "llamacpp:prompt_tokens_total 1.84339e+06\n" in text
    assert "{" not in text


def test_build_1_2_5_buckets() -> None:
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert build_1_2_5_buckets(0) == []


@pytest.mark.parametrize(
    ("value", "text"),
    [(12, "12.0"), (1048576, "1.048576e+06"), (0.5, "0.5"), (float("nan"), "NaN"),
     (float("inf"), "+Inf"), (-3, "-3.0"), (1.7e9, "1.7e+09")],
)  # fmt: skip
def test_go_float_matches_prometheus_client(value: float, text: str) -> None:
    reference: Callable[[float], str] = floatToGoString
    assert go_float(value) == text == reference(value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"engine": "ollama"}, "unknown engine"),
        ({"engine": "vllm", "variant": "v2"}, "unknown vllm variant"),
        ({"engine": "sglang", "variant": "2024"}, "unknown sglang variant"),
        ({"engine": "vllm", "ranks": 0}, "at least 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        render_exposition(models=MODELS, start_time_seconds=0, **kwargs)  # type: ignore[arg-type]
