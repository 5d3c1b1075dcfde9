"""Text-writing engines (C++/Rust) against real captures: families, HELP, order, buckets."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.simulation.expositions import SimModelCounters, render_exposition

REAL = Path(__file__).parent / "real"


def _meta(text: str) -> list[tuple[str, str]]:
    """``(# HELP line, # TYPE line)`` per family, in order."""
    lines = [line for line in text.splitlines() if line.startswith("# ")]
    return list(zip(lines[0::2], lines[1::2], strict=True))


def _buckets(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_bucket"):
                bounds = out.setdefault(family.name, [])
                if s.labels["le"] not in bounds:
                    bounds.append(s.labels["le"])
    return out


def test_llamacpp_writes_the_real_families_in_the_real_order() -> None:
    real = (REAL / "llamacpp_server_cpu_tiny_model.prom").read_text()
    sim = render_exposition(
        "llamacpp",
        [SimModelCounters(model="", prompt_tokens=1_596, cached_prompt_tokens=503)],
        start_time_seconds=0.0,
    )
    assert _meta(sim) == _meta(real)
    assert "{" not in sim  # no labels at all
    assert "llamacpp:prompt_tokens_total 1093\n" in sim
    assert "llamacpp:prompt_tokens_cached_total 503\n" in sim


def test_llamacpp_prints_six_significant_digits() -> None:
    sim = render_exposition(
        "llamacpp",
        [SimModelCounters(model="", prompt_tokens=1_022_123, generation_tokens=12_345_678)],
        start_time_seconds=0.0,
    )
    assert "llamacpp:prompt_tokens_total 1.02212e+06\n" in sim
    assert "llamacpp:tokens_predicted_total 1.23457e+07\n" in sim


def test_dynamo_frontend_writes_what_the_rust_crate_writes() -> None:
    real = (REAL / "dynamo_frontend_qwen3-0.6b.prom").read_text()
    sim = render_exposition(
        "dynamo",
        [
            SimModelCounters(
                model="qwen/qwen3-0.6b",
                prompt_tokens=33,
                generation_tokens=300,
                requests_finished=1,
            )
        ],
        start_time_seconds=0.0,
    )
    assert _meta(sim) == _meta(real)
    assert _buckets(sim) == _buckets(real)
    for line in (
        "dynamo_frontend_disconnected_clients 0\n",
        'dynamo_frontend_input_sequence_tokens_sum{model="qwen/qwen3-0.6b"} 33\n',
        'dynamo_frontend_output_tokens_total{model="qwen/qwen3-0.6b"} 300\n',
    ):
        assert line in sim and line in real
