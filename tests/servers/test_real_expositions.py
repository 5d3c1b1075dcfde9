"""Every real exposition in fixtures/real/ gives exactly the answers its SOURCES.md states."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent.servers.inspect import inspect_command
from agent.servers.profiles import read_exposition, read_exposition_detailed

REAL = Path(__file__).parent / "fixtures" / "real"

# file -> (engine, {model: (input, output, cached)}); None = not exposed. From SOURCES.md.
ANSWERS: dict[str, tuple[str, dict[str, tuple[float | None, float | None, float | None]]]] = {
    "dynamo_frontend_qwen3-0.6b.prom": ("dynamo", {"qwen/qwen3-0.6b": (33, 300, None)}),
    # SGLang's realtime series expose cache hits (mode="prefill_cache"), none yet: 0.
    "dynamo_sglang_worker_qwen3-0.6b.prom": ("sglang", {"Qwen/Qwen3-0.6B": (33, 300, 0)}),
    "sglang_docs_llama31_8b_idle.prom": (
        "sglang",
        {"meta-llama/Llama-3.1-8B-Instruct": (7, 8, None)},
    ),
    "vllm_design_doc_fragment.prom": (
        "vllm",
        {"meta-llama/Llama-3.1-8B-Instruct": (None, 27_453, None)},
    ),
    "llamacpp_pr13196_comment_fragment.prom": ("llamacpp", {"": (143, 673, None)}),
    "llamacpp_server_cpu_tiny_model.prom": ("llamacpp", {"": (1_596, 882, 503)}),
}
NO_TOKENS = {
    "dynamo_trtllm_worker_qwen3-0.6b.prom": "dynamo",
    "tgis_ibm_vllm_pr18_fragment.prom": "tgi",
}


def test_every_real_file_has_an_answer_and_a_source_note() -> None:
    files = {p.name for p in REAL.glob("*.prom")}
    assert files == set(ANSWERS) | set(NO_TOKENS)
    sources = (REAL / "SOURCES.md").read_text(encoding="utf-8")
    for name in files:
        assert f"| {name} |" in sources
    # Public sources only: no machine path, no relative path out of the repository.
    assert not re.search(r"(^|[\s(`])(/\w[\w.-]*/|\.\./)", sources)


def _inspect_json(path: Path) -> dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    assert inspect_command(str(path), "auto", True, io.BytesIO(), out, err) == 0, err.getvalue()
    document: dict[str, Any] = json.loads(out.getvalue())
    return document


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_real_exposition_gives_exactly_the_stated_tokens(name: str) -> None:
    engine, expected = ANSWERS[name]
    body = (REAL / name).read_bytes()
    result = read_exposition_detailed(body)
    reading = result.reading
    assert reading.engine == engine
    got = {
        m.model: (m.input_tokens, m.output_tokens, m.cached_input_tokens) for m in reading.models
    }
    assert got == expected
    assert result.has_token_counters
    # The engine named explicitly reads the same, and inspect --json says the same.
    assert read_exposition(body, engine) == reading
    document = _inspect_json(REAL / name)
    assert document["engine"] == engine
    assert {
        model: (v["input_tokens"], v["output_tokens"], v["cached_input_tokens"])
        for model, v in document["models"].items()
    } == expected
    assert document["token_counters"] is True


@pytest.mark.parametrize("name", sorted(NO_TOKENS))
def test_real_exposition_without_token_counters_says_so_with_no_numbers(name: str) -> None:
    result = read_exposition_detailed((REAL / name).read_bytes())
    assert result.reading.engine == NO_TOKENS[name]
    assert not result.has_token_counters
    for m in result.reading.models:
        assert (m.input_tokens, m.output_tokens, m.cached_input_tokens) == (None, None, None)
        assert m.series == ()
    document = _inspect_json(REAL / name)
    assert document["token_counters"] is False
    assert any(w.startswith("no token counters") for w in document["warnings"])
    out, err = io.StringIO(), io.StringIO()
    assert inspect_command(str(REAL / name), "auto", False, io.BytesIO(), out, err) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == f"engine: {NO_TOKENS[name]}"
    assert lines[1].startswith("no token counters: ")
    assert not any(re.search(r"\d", line) for line in lines[2:])
    assert len(lines) == 2


def test_llamacpp_input_adds_the_cache_hits_its_prompt_counter_excludes() -> None:
    (m,) = read_exposition((REAL / "llamacpp_server_cpu_tiny_model.prom").read_bytes()).models
    inputs = {s.key: s.value for s in m.series if s.kind == "input"}
    assert inputs == {
        "llamacpp:prompt_tokens_total": 1_093,
        "llamacpp:prompt_tokens_cached_total": 503,
    }
    assert [(s.key, s.value) for s in m.series if s.kind == "cached"] == [
        ("llamacpp:prompt_tokens_cached_total", 503)
    ]
    assert (m.prefill_seconds, m.decode_seconds) == (0.021646, 0.135121)


def test_sglang_worker_realtime_series_and_plain_counters_agree() -> None:
    text = (REAL / "dynamo_sglang_worker_qwen3-0.6b.prom").read_text(encoding="utf-8")
    plain = "".join(
        line for line in text.splitlines(keepends=True) if "realtime_tokens" not in line
    )
    realtime = read_exposition(text).models[0]
    counters = read_exposition(plain).models[0]
    assert realtime.series != counters.series  # two different families were read
    assert (realtime.input_tokens, realtime.output_tokens) == (33, 300)
    assert (counters.input_tokens, counters.output_tokens) == (33, 300)
    assert counters.cached_input_tokens is None  # this release has no cached_tokens_total
