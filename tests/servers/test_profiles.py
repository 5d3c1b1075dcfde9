"""Engine profiles: every engine's realistic exposition and every quirk from the reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.readings import TokenReading
from agent.servers.parser import ParseError, Scanner
from agent.servers.profiles import (
    ENGINE_NAMES,
    PROFILES,
    ExpositionError,
    ExpositionResult,
    ExpositionStream,
    ReadMemo,
    UnknownEngineError,
    interpret,
    read_exposition,
    read_exposition_detailed,
)
from agent.simulation.expositions import ENGINES, SimModelCounters, render_exposition

FIXTURES = Path(__file__).parent / "fixtures"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"
START = 1767225600.0


def _read(name: str, engine: str = "auto") -> tuple[str, dict[str, TokenReading], float | None]:
    reading = read_exposition((FIXTURES / name).read_bytes(), engine)
    return reading.engine, {m.model: m for m in reading.models}, reading.start_time_seconds


def _core(m: TokenReading) -> TokenReading:
    """The token and gauge fields only (phase times and raw series are tested on their own)."""
    return dataclasses.replace(m, prefill_seconds=None, decode_seconds=None, series=())


def _tr(
    model: str,
    inp: float | None,
    out: float | None,
    cached: float | None,
    running: float | None,
    waiting: float | None,
    kv: float | None,
) -> TokenReading:
    return TokenReading(model, inp, out, cached, running, waiting, kv)


@pytest.mark.parametrize(
    ("fixture", "engine", "expected", "start"),
    [
        ("vllm_v1.prom", "vllm", [_tr(LLAMA, 1_234_567, 456_789, 200_000, 7, 3, 0.42)], START),
        ("vllm_v0.prom", "vllm", [_tr(LLAMA, 1_234_567, 456_789, None, 7, 3, 0.42)], START),
        ("vllm_bridge.prom", "vllm", [_tr(LLAMA, 1_234_567, 456_789, 200_000, 7, 3, 0.42)], START),
        # Two DP ranks x two TP ranks that repeat the scheduler series: never doubled.
        ("sglang.prom", "sglang", [_tr(QWEN, 98_765, 43_210, 12_345, 4, 1, 0.3)], None),
        ("sglang_2025.prom", "sglang", [_tr(QWEN, 98_765, 43_210, 12_345, 4, 1, 0.3)], None),
        ("tgi.prom", "tgi", [_tr("", 52_340, 17_077, None, 2, 5, None)], None),
        # 1_843_394 is printed with six significant digits, as llama.cpp does.
        ("llamacpp.prom", "llamacpp", [_tr("", 1_843_390, 290_363, None, 1, 0, None)], None),
        ("triton.prom", "triton", [_tr("tensorrt_llm", 64_000, 32_100, None, 3, 2, 0.25)], None),
        ("lmdeploy.prom", "lmdeploy", [_tr(QWEN, 98_765, 43_210, 12_345, 4, 1, 0.3)], START),
        (
            "dynamo.prom",
            "dynamo",
            [
                _tr(QWEN, 98_765, 43_210, 12_345, 4, 1, None),
                _tr(LLAMA, 1_234_567, 456_789, 200_000, 7, 3, None),
            ],
            None,
        ),
        ("nim.prom", "nim", [_tr(LLAMA, 1_234_567, 456_789, None, 7, 3, 0.42)], START),
    ],
)
def test_realistic_exposition_of_every_engine(
    fixture: str, engine: str, expected: list[TokenReading], start: float | None
) -> None:
    found, models, start_time = _read(fixture)
    assert found == engine
    assert [_core(m) for m in sorted(models.values(), key=lambda m: m.model)] == expected
    assert start_time == start
    # An explicit engine reads the same thing.
    assert _read(fixture, engine)[1] == models


def test_every_configurable_engine_has_a_profile() -> None:
    assert set(ENGINE_NAMES) == set(ENGINES)
    assert all(p.note for profiles in PROFILES.values() for p in profiles)


def test_data_parallel_engines_are_summed_and_breakdowns_ignored() -> None:
    _, models, start = _read("vllm_dp4_engines.prom")
    m = models["llama-70b"]
    assert m.input_tokens == 1000 + 2000 + 3000 + 1_048_576  # not the by-source breakdown
    assert m.output_tokens == 100  # not the histogram _sum, _count or _bucket
    assert m.cached_input_tokens == 224
    assert (m.requests_running, m.requests_waiting) == (12, 3)
    assert m.kv_cache_usage_ratio == pytest.approx(0.25)  # mean over ranks
    # No process_start_time_seconds: the earliest _created stands in, never counted as tokens.
    assert start == pytest.approx(1767225631.2)


def test_renamed_metrics_prefer_the_current_names() -> None:
    _, models, _ = _read("vllm_v09_renamed.prom")
    assert models["m"].kv_cache_usage_ratio == 0.5
    assert models["m"].cached_input_tokens == 64


def test_old_prefix_cache_counters_in_blocks_are_not_tokens() -> None:
    _, models, _ = _read("vllm_v08_blocks.prom")
    assert models["m"].cached_input_tokens is None
    assert models["m"].kv_cache_usage_ratio == 0.25


def test_escaped_model_names_are_unescaped_and_label_order_does_not_matter() -> None:
    _, models, _ = _read("vllm_escaped_model.prom")
    model = 'org/we"ird\\model\nv2 {x=1}, y'
    assert list(models) == [model]
    assert (models[model].input_tokens, models[model].output_tokens) == (11, 22)


def test_two_models_on_one_endpoint() -> None:
    _, models, _ = _read("vllm_two_models.prom")
    assert (models["alpha"].input_tokens, models["alpha"].output_tokens) == (150, 15)
    assert (models["beta"].input_tokens, models["beta"].output_tokens) == (7, 3)
    assert (models["alpha"].requests_running, models["beta"].requests_running) == (2, 1)
    assert models["beta"].requests_waiting is None


def test_nan_inf_and_negative_counters_are_never_token_counts() -> None:
    result = read_exposition_detailed((FIXTURES / "vllm_nan_negative.prom").read_bytes())
    models = {m.model: m for m in result.reading.models}
    good, bad = models["good"], models["bad"]
    assert (good.input_tokens, good.output_tokens, good.cached_input_tokens) == (100, 10, None)
    assert (bad.input_tokens, bad.output_tokens, bad.cached_input_tokens) == (None, None, 1)
    assert good.requests_running == 2  # the NaN rank is ignored
    assert bad.requests_running is None  # -Inf is not a count
    assert good.kv_cache_usage_ratio is None
    assert len(result.warnings) == 3
    assert any("nan" in w and "'bad'" in w for w in result.warnings)


def test_duplicate_series_keep_the_first_and_warn() -> None:
    result = read_exposition_detailed((FIXTURES / "vllm_duplicates.prom").read_bytes())
    (m,) = result.reading.models
    assert (m.input_tokens, m.output_tokens) == (101, 10)
    assert result.warnings == ("2 duplicate series dropped (the first one is kept)",)


def test_openmetrics_with_eof_exemplars_and_timestamps() -> None:
    engine, models, start = _read("vllm_openmetrics.prom")
    assert engine == "vllm"
    assert (models["m"].input_tokens, models["m"].output_tokens) == (300, 30)
    assert start == pytest.approx(1767225631.5)


def test_sglang_priority_totals_and_tensor_parallel_ranks() -> None:
    _, models, _ = _read("sglang_priority.prom")
    assert models["q"].requests_running == 9
    assert models["q"].input_tokens == 500


def test_fresh_sglang_reads_unknown_tokens_not_zero() -> None:
    # Was 0 / 0 / 0 ("lazy" engines): a server that exposes no token series yet is unknown.
    result = read_exposition_detailed((FIXTURES / "sglang_fresh.prom").read_bytes())
    assert result.reading.engine == "sglang"
    (m,) = result.reading.models
    assert _core(m) == _tr("q", None, None, None, 0, None, 0)
    assert m.series == ()
    assert not result.has_token_counters
    assert result.warnings[-1].startswith("no token counters: none of sglang:realtime_tokens")


@pytest.mark.parametrize(
    ("fixture", "fragment"),
    [
        ("vllm_truncated.prom", r"does not end with a newline \(truncated\?\)"),
        ("html_error.html", "not a Prometheus exposition"),
    ],
)
def test_bad_bodies_are_parse_errors(fixture: str, fragment: str) -> None:
    with pytest.raises(ParseError, match=fragment):
        read_exposition((FIXTURES / fixture).read_bytes())


def test_unknown_exposition_lists_what_was_looked_for() -> None:
    with pytest.raises(UnknownEngineError) as info:
        read_exposition("node_cpu_seconds_total 1\n")
    message = str(info.value)
    for name in ("vllm:generation_tokens_total", "sglang:prompt_tokens_total", "tgi_queue_size"):
        assert name in message
    assert isinstance(info.value, ExpositionError)


def test_families_of_two_engines_are_ambiguous() -> None:
    body = "vllm:prompt_tokens_total 1\nsglang:prompt_tokens_total 2\n"
    with pytest.raises(UnknownEngineError, match=r"several engines found \(sglang, vllm\)"):
        read_exposition(body)
    assert read_exposition(body, "sglang").models[0].input_tokens == 2


def test_explicit_engine_overrides_detection() -> None:
    body = (
        'vllm:prompt_tokens_total{model_name="a"} 5\n'
        'vllm:generation_tokens_total{model_name="a"} 6\n'
        'prompt_tokens_total{model_name="b"} 7\ngeneration_tokens_total{model_name="b"} 8\n'
    )
    assert read_exposition(body).engine == "vllm"  # prefixed names win over NIM's generic ones
    nim = read_exposition(body, "nim")
    assert (nim.engine, nim.models[0].model, nim.models[0].input_tokens) == ("nim", "b", 7)


def test_explicit_engine_without_its_metrics_is_an_error() -> None:
    with pytest.raises(UnknownEngineError, match="no vllm metrics found; looked for vllm:"):
        read_exposition((FIXTURES / "dynamo.prom").read_bytes(), "vllm")


def test_unknown_engine_name() -> None:
    with pytest.raises(UnknownEngineError, match="unknown engine 'ollama'"):
        read_exposition("a 1\n", "ollama")


def test_tgi_tokens_come_only_from_histogram_sums() -> None:
    body = (
        'tgi_request_input_length_bucket{le="+Inf"} 3\ntgi_request_input_length_sum 30\n'
        "tgi_request_input_length_count 3\ntgi_request_generated_tokens_sum 12\n"
    )
    (m,) = read_exposition(body).models
    assert (m.model, m.input_tokens, m.output_tokens) == ("", 30, 12)


def test_declared_family_without_series_reads_zero() -> None:
    body = (
        "# TYPE vllm:prompt_tokens_total counter\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        'vllm:num_requests_running{model_name="m",engine="0"} 0.0\n'
    )
    (m,) = read_exposition(body).models
    assert (m.input_tokens, m.output_tokens, m.cached_input_tokens) == (0, 0, None)


_counts = st.integers(min_value=0, max_value=10**9)


@st.composite
def _models(draw: st.DrawFn) -> list[SimModelCounters]:
    names = draw(st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=3, unique=True))
    out = []
    for name in names:
        prompt = draw(_counts)
        out.append(
            SimModelCounters(
                model=name,
                prompt_tokens=prompt,
                generation_tokens=draw(_counts),
                cached_prompt_tokens=draw(st.integers(0, prompt)),
                requests_running=draw(st.integers(0, 500)),
                requests_waiting=draw(st.integers(0, 500)),
                kv_cache_usage=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
                requests_finished=draw(st.integers(0, 10**6)),
            )
        )
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["vllm", "vllm/v0", "vllm/bridge", "sglang", "sglang/2025", "lmdeploy", "nim"]),
    _models(),
    st.integers(1, 8),
)
def test_rendered_counters_read_back_exactly(
    flavour: str, models: list[SimModelCounters], ranks: int
) -> None:
    engine, _, variant = flavour.partition("/")
    text = render_exposition(
        engine, models, ranks=ranks, start_time_seconds=START, variant=variant, tp_duplicates=2
    )
    reading = read_exposition(text)
    assert reading.engine == engine
    got = {m.model: m for m in reading.models}
    assert set(got) == {m.model for m in models}
    for m in models:
        r = got[m.model]
        assert (r.input_tokens, r.output_tokens) == (m.prompt_tokens, m.generation_tokens)
        assert (r.requests_running, r.requests_waiting) == (m.requests_running, m.requests_waiting)
        assert r.kv_cache_usage_ratio == m.kv_cache_usage
        if variant == "v0" or engine == "nim":  # neither exposes a prefix-cache counter
            assert r.cached_input_tokens is None
        else:
            assert r.cached_input_tokens == m.cached_prompt_tokens
        # The raw series add up to their fields, one key per rank and family.
        for kind, value in (
            ("input", r.input_tokens),
            ("output", r.output_tokens),
            ("cached", r.cached_input_tokens),
        ):
            listed = [s for s in r.series if s.kind == kind]
            assert len({s.key for s in listed}) == len(listed)
            assert bool(listed) == (value is not None)
            assert sum(s.value for s in listed) == (value or 0)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["tgi", "llamacpp", "triton", "dynamo"]), _models())
def test_rendered_single_rank_engines_read_back(
    engine: str, models: list[SimModelCounters]
) -> None:
    if engine in ("tgi", "llamacpp"):
        models = [dataclasses.replace(models[0], model="")]
    reading = read_exposition(render_exposition(engine, models, start_time_seconds=START))
    got = {m.model: m for m in reading.models}
    for m in models:
        r = got[m.model]
        if engine == "llamacpp":  # six significant digits
            assert r.input_tokens == pytest.approx(m.prompt_tokens, rel=5e-6, abs=0)
            assert r.output_tokens == pytest.approx(m.generation_tokens, rel=5e-6, abs=0)
        else:
            assert (r.input_tokens, r.output_tokens) == (m.prompt_tokens, m.generation_tokens)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.sampled_from(
                [
                    "vllm:prompt_tokens_total",
                    "sglang:realtime_tokens_total",
                    "llamacpp:tokens_predicted_total",
                    "tgi_request_input_length_sum",
                    "prompt_tokens_total",
                    '{model_name="m",engine="0",mode="decode",tp_rank="1"}',
                    '{model="x"}',
                    " 1\n",
                    " NaN\n",
                    " -2\n",
                    " 1e400\n",
                    "\n",
                    "# TYPE ",
                ]
            ),
            max_size=12,
        ).map(lambda parts: "".join(parts).encode()),
    ),
    st.sampled_from(["auto", *ENGINE_NAMES]),
)
def test_arbitrary_bodies_read_or_raise_exposition_error(body: bytes, engine: str) -> None:
    try:
        reading = read_exposition(body, engine)
    except ExpositionError as exc:
        assert str(exc)
    else:
        assert reading.engine in ENGINE_NAMES
        for m in reading.models:
            for value in (m.input_tokens, m.output_tokens, m.cached_input_tokens):
                assert value is None or (value >= 0 and value != float("inf"))


# --- Issue 11: one meaning per field, null never 0, model labels, detection, per series ---


def test_llamacpp_input_includes_the_prompt_cache_hits() -> None:
    # Current llama-server: prompt_tokens_total excludes cache hits, counted apart.
    body = (
        "# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 60\n"
        "# TYPE llamacpp:prompt_tokens_cached_total counter\n"
        "llamacpp:prompt_tokens_cached_total 40\n"
        "# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total 9\n"
    )
    (m,) = read_exposition(body).models
    assert (m.input_tokens, m.cached_input_tokens, m.output_tokens) == (100, 40, 9)
    assert sorted((s.kind, s.key) for s in m.series) == [
        ("cached", "llamacpp:prompt_tokens_cached_total"),
        ("input", "llamacpp:prompt_tokens_cached_total"),
        ("input", "llamacpp:prompt_tokens_total"),
        ("output", "llamacpp:tokens_predicted_total"),
    ]


@pytest.mark.parametrize(
    ("body", "engine"),
    [
        # Dynamo frontend without a cached-token histogram.
        (
            'dynamo_frontend_input_sequence_tokens_sum{model="m"} 5\n'
            'dynamo_frontend_output_tokens_total{model="m"} 7\n',
            "dynamo",
        ),
        # SGLang release without cached_tokens_total.
        (
            'sglang:prompt_tokens_total{model_name="m"} 5\n'
            'sglang:generation_tokens_total{model_name="m"} 7\n',
            "sglang",
        ),
    ],
)
def test_a_cached_counter_the_server_lacks_is_unknown_not_zero(body: str, engine: str) -> None:
    (m,) = read_exposition(body).models
    assert (m.input_tokens, m.output_tokens, m.cached_input_tokens) == (5, 7, None)
    assert read_exposition(body, engine).models == (m,)


def test_triton_without_token_metrics_is_unknown_and_says_no_token_counters() -> None:
    body = (
        'nv_inference_request_success{model="resnet",version="1"} 40\n'
        'nv_inference_pending_request_count{model="resnet",version="1"} 2\n'
    )
    result = read_exposition_detailed(body)
    assert result.reading.engine == "triton"
    (m,) = result.reading.models
    assert (m.model, m.input_tokens, m.output_tokens, m.requests_waiting) == (
        "resnet",
        None,
        None,
        2,
    )
    assert result.warnings == (
        "no token counters: none of nv_llm_input_token_len_sum, nv_llm_output_token_len_sum "
        "is in this triton exposition; Triton counts tokens only in the nv_llm_input_token_len "
        "/ nv_llm_output_token_len histograms of the TensorRT-LLM and Python LLM backends",
    )


def test_triton_vllm_backend_models_come_from_the_model_label() -> None:
    # Triton's vLLM backend: vllm: names labelled model="..." and version="...".
    body = (
        "".join(
            f'vllm:{name}{{model="{model}",version="{v}"}} {value * v}\n'
            for model, value in (("llama", 10), ("qwen", 100))
            for v in (1, 2)
            for name in ("prompt_tokens_total", "generation_tokens_total")
        )
        + 'nv_inference_request_success{model="llama",version="1"} 3\n'
    )
    reading = read_exposition(body)
    assert reading.engine == "vllm"  # its token series are present, Triton's are not
    models = {m.model: m for m in reading.models}
    assert set(models) == {"llama", "qwen"}  # never merged into model ""
    assert (models["llama"].input_tokens, models["qwen"].output_tokens) == (30, 300)
    keys = [s.key for s in models["llama"].series if s.kind == "input"]
    assert keys == [
        'vllm:prompt_tokens_total{version="1"}',
        'vllm:prompt_tokens_total{version="2"}',
    ]


def test_early_sglang_model_comes_from_the_name_label_kept_whole() -> None:
    path = "/data/models/Meta-Llama-3-8B-Instruct"
    body = (
        f'sglang:prompt_tokens_total{{name="{path}"}} 12\n'
        f'sglang:generation_tokens_total{{name="{path}"}} 3\n'
        f'sglang:num_running_reqs{{name="{path}"}} 1\n'
    )
    (m,) = read_exposition(body).models
    assert (m.model, m.input_tokens, m.output_tokens, m.requests_running) == (path, 12, 3, 1)


def test_unprefixed_prompt_tokens_of_an_unsupported_server_are_not_nim() -> None:
    # ScaleLLM: prompt_tokens_total and generated_tokens_total, no generation_tokens_total.
    body = (
        "# TYPE prompt_tokens_total counter\nprompt_tokens_total 120\n"
        "# TYPE generated_tokens_total counter\ngenerated_tokens_total 30\n"
    )
    with pytest.raises(UnknownEngineError, match="no known inference-server metrics found"):
        read_exposition(body)
    with pytest.raises(UnknownEngineError, match="no nim metrics found"):
        read_exposition(body, "nim")


def test_detection_prefers_the_engine_whose_token_series_are_present() -> None:
    # vLLM with the TGIS adapter: TGI gauges beside vLLM's token counters.
    body = (
        "# TYPE tgi_queue_size gauge\ntgi_queue_size 0.0\n"
        "# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 1.0\n"
        'vllm:prompt_tokens_total{model_name="m"} 50\n'
        'vllm:generation_tokens_total{model_name="m"} 5\n'
    )
    reading = read_exposition(body)
    assert reading.engine == "vllm"
    assert (reading.models[0].input_tokens, reading.models[0].output_tokens) == (50, 5)


def test_declared_token_family_beats_markers_only() -> None:
    body = (
        "# TYPE tgi_queue_size gauge\ntgi_queue_size 0\n"
        "# TYPE vllm:prompt_tokens_total counter\n# TYPE vllm:generation_tokens_total counter\n"
    )
    assert read_exposition(body).engine == "vllm"


def test_per_series_counters_of_a_data_parallel_vllm() -> None:
    _, models, _ = _read("vllm_dp4_engines.prom")
    m = models["llama-70b"]
    by_kind: dict[str, dict[str, float]] = {}
    for s in m.series:
        by_kind.setdefault(s.kind, {})[s.key] = s.value
    assert by_kind["input"] == {
        'vllm:prompt_tokens_total{engine="0"}': 1000,
        'vllm:prompt_tokens_total{engine="1"}': 2000,
        'vllm:prompt_tokens_total{engine="2"}': 3000,
        'vllm:prompt_tokens_total{engine="3"}': 1_048_576,
    }
    assert by_kind["output"] == {
        f'vllm:generation_tokens_total{{engine="{i}"}}': 10 * (i + 1) for i in range(4)
    }
    assert set(by_kind["cached"]) == {
        f'vllm:prefix_cache_hits_total{{engine="{i}"}}' for i in range(4)
    }
    for kind, field_value in (
        ("input", m.input_tokens),
        ("output", m.output_tokens),
        ("cached", m.cached_input_tokens),
    ):
        assert sum(by_kind[kind].values()) == field_value  # the series add up to the field
    assert set(by_kind) == {"input", "output", "cached"}  # this fixture has no phase times


def test_phase_times_are_summed_over_ranks_with_their_series() -> None:
    _, models, _ = _read("vllm_v1.prom")
    m = models[LLAMA]
    assert m.prefill_seconds == pytest.approx(200.2 + 200.0)
    assert m.decode_seconds == pytest.approx(3903.9 + 3900.0)
    assert [s.key for s in m.series if s.kind == "prefill_seconds"] == [
        'vllm:request_prefill_time_seconds_sum{engine="0"}',
        'vllm:request_prefill_time_seconds_sum{engine="1"}',
    ]
    _, llama, _ = _read("llamacpp.prom")
    assert (llama[""].prefill_seconds, llama[""].decode_seconds) == (737.358, 6452.51)


def test_lmdeploy_phase_times_from_its_histogram_sums() -> None:
    body = (
        'lmdeploy:prompt_tokens_total{engine="0",model_name="q"} 10\n'
        'lmdeploy:generation_tokens_total{engine="0",model_name="q"} 4\n'
        'lmdeploy:request_prefill_time_seconds_sum{engine="0",model_name="q"} 1.5\n'
        'lmdeploy:request_decode_time_seconds_sum{engine="0",model_name="q"} 6.25\n'
    )
    (m,) = read_exposition(body).models
    assert (m.prefill_seconds, m.decode_seconds) == (1.5, 6.25)


def test_engines_without_phase_times_read_none() -> None:
    _, models, _ = _read("sglang.prom")
    m = models[QWEN]
    assert (m.prefill_seconds, m.decode_seconds) == (None, None)
    assert {s.kind for s in m.series} == {"input", "cached", "output"}


def test_series_keys_escape_label_values_and_leave_out_the_model() -> None:
    body = 'vllm:prompt_tokens_total{model_name="m",engine="0",x="a\\"b\\\\c\\nd"} 1\n'
    (m,) = read_exposition(body).models
    assert m.series[0].key == 'vllm:prompt_tokens_total{engine="0",x="a\\"b\\\\c\\nd"}'


def test_an_invalid_series_drops_the_field_and_its_series() -> None:
    result = read_exposition_detailed((FIXTURES / "vllm_nan_negative.prom").read_bytes())
    bad = next(m for m in result.reading.models if m.model == "bad")
    assert {s.kind for s in bad.series} == {"cached"}  # input and output are unknown


def test_empty_body_is_one_clear_error() -> None:
    for body in (b"", b"\n  \n", ""):
        with pytest.raises(ParseError, match=r"^empty body"):
            read_exposition(body)


def test_a_servers_series_memo_never_takes_one_label_set_for_another() -> None:
    # Bodies parsed afresh build new label sets, whose memory Python reuses as soon as the
    # old ones are freed: a memo keyed by identity that did not keep its label sets alive
    # would hand one model's entry to the next model's series.
    memo = ReadMemo()
    for i in range(40):
        body = (
            f'vllm:prompt_tokens_total{{model_name="m{i}",engine="0"}} {i}\n'
            f'vllm:generation_tokens_total{{model_name="m{i}",engine="0"}} {2 * i}\n'
        )
        exp = Scanner(PROFILES["vllm"][0].names).parse(body)  # no parse memo: new objects
        (m,) = interpret(exp, PROFILES["vllm"][0], memo).reading.models
        assert (m.model, m.input_tokens, m.output_tokens) == (f"m{i}", i, 2 * i)
        assert {s.key for s in m.series} == {
            'vllm:prompt_tokens_total{engine="0"}',
            'vllm:generation_tokens_total{engine="0"}',
        }


_MEMO_BODIES = {
    str(p.relative_to(FIXTURES)): p.read_bytes()
    for p in sorted(FIXTURES.glob("*.prom")) + sorted((FIXTURES / "real").glob("*.prom"))
}


def _variant(body: bytes, kind: int) -> bytes:
    """The body as a server may serve it next.

    The same body, its rank 0 relabelled, its first sample NaN, without its first sample,
    or with prefix-cache hits counted in tokens rather than blocks (HELP text).
    """
    if kind == 4:
        return body.replace(b"number of cached blocks", b"number of cached tokens")
    if kind == 1:
        return body.replace(b'engine="0"', b'engine="7"').replace(b'tp_rank="0"', b'tp_rank="5"')
    lines = body.split(b"\n")
    first = next((i for i, line in enumerate(lines) if line and not line.startswith(b"#")), None)
    if first is None or kind == 0:
        return body
    if kind == 2:
        head, _, _ = lines[first].rpartition(b" ")
        lines[first] = head + b" NaN"
    else:
        del lines[first]
    return b"\n".join(lines)


def _outcome(read: Callable[[], ExpositionResult]) -> object:
    try:
        return read()
    except ExpositionError as exc:
        return (type(exc), str(exc))


@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(_MEMO_BODIES)), st.integers(0, 4)),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(["auto", "vllm", "sglang"]),
)
# Two sources of one candidate with the same label sets (llama.cpp's input is evaluated +
# cached tokens, neither labelled): which source a series came from is part of the choice.
@example([("llamacpp.prom", 0), ("real/llamacpp_server_cpu_tiny_model.prom", 3)], "auto")
# The HELP text decides whether vLLM 0.8's prefix-cache hits are tokens.
@example([("vllm_v08_blocks.prom", 0), ("vllm_v08_blocks.prom", 4)], "vllm")
@settings(max_examples=80, deadline=None)
def test_a_servers_memo_reads_every_body_as_a_fresh_read_does(
    bodies: list[tuple[str, int]], engine: str
) -> None:
    # One server's memo across bodies that change shape: label sets, invalid values and
    # missing series must be read as a fresh read of the same body reads them.
    memo = ReadMemo()

    def with_memo(body: bytes) -> ExpositionResult:
        stream = ExpositionStream(engine, memo=memo, whole=True)
        stream.feed_whole(body)
        return stream.result()

    for index, kind in bodies:
        body = _variant(_MEMO_BODIES[index], kind)
        fresh = _outcome(partial(read_exposition_detailed, body, engine))
        for _ in range(2):  # the second read finds the first's choices in the memo
            assert _outcome(partial(with_memo, body)) == fresh


def test_a_servers_series_keys_stay_bounded_in_bytes_when_label_sets_churn() -> None:
    memo = ReadMemo(max_bytes=100_000)
    for scrape in range(30):
        pad = f"{scrape}" + "x" * 10_000
        body = (
            f'vllm:prompt_tokens_total{{model_name="m",engine="{pad}"}} 1\n'
            f'vllm:generation_tokens_total{{model_name="m",engine="{pad}"}} 2\n'
        ).encode()
        stream = ExpositionStream("vllm", memo=memo)
        stream.feed(body)
        (m,) = stream.result().reading.models
        assert (m.input_tokens, m.output_tokens) == (1, 2)
        assert sum(len(key) for _, key in memo.series_keys.values()) <= 100_000 + 2 * len(body)
