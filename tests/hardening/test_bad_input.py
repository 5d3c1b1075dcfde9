"""§7 C: bad upstream input, through the whole agent (scraper -> parser -> ledger -> /metrics).

Parser- and scraper-level versions (fuzzing, limits, exact line numbers) are in
tests/servers; collector-level ones (escaping, NaN, duplicates) in tests/exporters. Here each
hostile body is served by a fake upstream on 127.0.0.1 and the agent's own output is checked:
the target fails with a reason, nothing half-read is exported, everything else goes on.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LIMITS = {"max_body_bytes": 256 * 1024, "max_line_bytes": 64 * 1024, "max_series_per_family": 1000}
Harness = Any


def _malformed(kit: Any) -> tuple[bytes, dict[str, str]]:
    # A valid prompt line raised before the broken one: nothing of it may be counted.
    good = kit.vllm_body(2_000, prompt=9_000).decode()
    broken = good.replace(
        f'vllm:generation_tokens_total{{engine="0",model_name="{MODEL}"}} 2000',
        f'vllm:generation_tokens_total{{engine="0",model_name="{MODEL}}} 2000',
    )
    assert broken != good
    return broken.encode(), {}


def _giant_line(kit: Any) -> tuple[bytes, dict[str, str]]:
    label = "x" * (200 * 1024)  # one line over max_line_bytes, no newline at the end
    return kit.vllm_body(2_000, prompt=9_000) + f'vllm:x{{a="{label}"}} 1'.encode(), {}


def _oversized(kit: Any) -> tuple[bytes, dict[str, str]]:
    return kit.vllm_body(2_000, prompt=9_000) + b"# " + b"y" * (2 * 1024 * 1024) + b"\n", {}


def _gzip_bomb(kit: Any) -> tuple[bytes, dict[str, str]]:
    # ~32 KiB on the wire, 32 MiB once inflated: the limit counts after decompression.
    bomb = gzip.compress(kit.vllm_body(2_000, prompt=9_000) + b"\n" * (32 * 1024 * 1024), 9)
    assert len(bomb) < LIMITS["max_body_bytes"]
    return bomb, {"Content-Encoding": "gzip"}


def _cardinality_bomb(kit: Any) -> tuple[bytes, dict[str, str]]:
    series = "".join(
        f'vllm:generation_tokens_total{{engine="0",model_name="lora-{i}"}} 1\n'
        for i in range(2_000)  # over max_series_per_family, under max_body_bytes
    )
    return kit.vllm_body(2_000, prompt=9_000) + series.encode(), {}


BAD: dict[str, tuple[Callable[[Any], tuple[bytes, dict[str, str]]], str]] = {
    "malformed-line": (_malformed, "parse"),  # case 18
    "giant-line": (_giant_line, "parse"),  # case 21
    "oversized-body": (_oversized, "too_large"),  # case 20
    "gzip-bomb": (_gzip_bomb, "too_large"),  # case 20
    "cardinality-bomb": (_cardinality_bomb, "parse"),  # case 25
}


@pytest.mark.parametrize("case", list(BAD))
def test_hostile_body_fails_that_target_only_and_exposes_nothing_of_it(
    make_agent: Any, make_upstream: Any, make_vllm: Any, kit: Any, case: str
) -> None:
    """Cases 18, 20, 21, 25: the target fails with its reason; its counters do not move."""
    make_body, reason = BAD[case]
    reply = {"body": kit.vllm_body(1_000, prompt=5_000), "headers": {}}
    upstream = make_upstream(lambda path, headers: kit.Reply(200, reply["body"], reply["headers"]))
    other = make_vllm(generation=100)
    harness = make_agent(
        servers=[
            {"name": "target", "url": upstream.url, "gpus": [0]},
            {"name": "other", "url": other.url, "gpus": [1]},
        ],
        scrape=LIMITS,
    )
    harness.cycle(0)
    reply["body"], reply["headers"] = make_body(kit)
    other.state.generation += 10
    harness.cycle()
    response = harness.get()
    assert response.status_code == 200
    assert len(response.content) < 64 * 1024, "our response stays small whatever came in"
    samples = kit.Samples.parse(response.text)
    assert samples.value("tokenergy_server_up", server="target") == 0
    assert samples.value("tokenergy_scrape_errors_total", server="target", reason=reason) == 1
    for kind in ("input", "output"):
        assert samples.value("tokenergy_tokens_total", server="target", type=kind) == 0
    assert not any("lora-" in v for k in samples for _, v in k[1]), "no bomb label exported"
    assert samples.value("tokenergy_server_up", server="other") == 1
    assert samples.value("tokenergy_tokens_total", server="other", type="output") == 10
    assert len(samples.pick("tokenergy_gpu_up")) == 2
    samples.assert_finite()


@pytest.mark.parametrize("bad", ["NaN", "+Inf", "-Inf", "-5"])
def test_nan_inf_and_negative_upstream_counters_are_never_tokens(
    make_agent: Any, make_upstream: Any, kit: Any, bad: str
) -> None:
    """Case 22: a non-finite or negative upstream counter moves no token counter, no NaN out."""
    body = {"now": kit.vllm_body(1_000, prompt=5_000)}
    upstream = make_upstream(lambda path, headers: kit.Reply(200, body["now"]))
    harness = make_agent(servers=[{"name": "vllm", "url": upstream.url}])
    harness.cycle(0)
    body["now"] = kit.vllm_body(bad, prompt=5_000)
    harness.cycle()
    body["now"] = kit.vllm_body(1_010, prompt=5_000)
    harness.cycle()
    samples = harness.metrics()
    samples.assert_finite()
    output = samples.value("tokenergy_tokens_total", server="vllm", type="output")
    assert output == 10, f"{bad} was never read as a token count: {output}"


def test_duplicate_upstream_series_give_unique_output(
    make_agent: Any, make_upstream: Any, kit: Any
) -> None:
    """Case 23: the same series twice upstream: one kept, our output has no duplicates."""
    dup = f'vllm:generation_tokens_total{{engine="0",model_name="{MODEL}"}} 999999\n'
    counts = {"g": 1_000}
    upstream = make_upstream(
        lambda path, headers: kit.Reply(200, kit.vllm_body(counts["g"], extra=dup))
    )
    harness = make_agent(servers=[{"name": "vllm", "url": upstream.url}])
    harness.cycle(0)
    counts["g"] += 40
    harness.cycle()
    text = harness.get().text
    samples = kit.Samples.parse(text)  # fails on any duplicate series
    assert samples.value("tokenergy_tokens_total", server="vllm", type="output") == 40
    if kit.PROMTOOL:
        result = kit.promtool_check(text)
        assert "not unique" not in result.stdout + result.stderr


HOSTILE_MODEL = 'evil"} 1\nfake_metric 1\n# \\ "quoted" \\n'


def test_label_injection_is_escaped_and_reparses_to_the_intended_series(
    make_agent: Any, make_upstream: Any, kit: Any
) -> None:
    """Case 24: a hostile model name comes out escaped; both parsers see no fake_metric."""
    counts = {"g": 100}
    upstream = make_upstream(
        lambda path, headers: kit.Reply(200, kit.vllm_body(counts["g"], model=HOSTILE_MODEL))
    )
    harness = make_agent(servers=[{"name": "vllm", "url": upstream.url}])
    harness.cycle(0)
    counts["g"] += 5
    harness.cycle()
    text = harness.get().text
    samples = kit.Samples.parse(text)
    assert not any(name.startswith("fake_metric") for name, _ in samples)
    assert samples.value("tokenergy_tokens_total", model=HOSTILE_MODEL, type="output") == 5
    assert samples.value("tokenergy_server_info", model=HOSTILE_MODEL) == 1
    if kit.PROMTOOL is None:
        pytest.skip("promtool not installed: client_python's parser checked only")
    result = kit.promtool_check(text)
    # Exit 0, or lint findings only (exit 3); never a parse error (exit 1).
    assert result.returncode in (0, 3), result.stderr
    assert "fake_metric" not in result.stdout + result.stderr


def test_whole_agent_output_passes_promtool_lint(make_agent: Any, make_vllm: Any, kit: Any) -> None:
    """Case 26 on the whole agent's output (the collector-level lint is in tests/exporters)."""
    if kit.PROMTOOL is None:
        pytest.skip("promtool not installed")
    vllm = make_vllm(generation=10, prompt=10)
    harness = make_agent(servers=[{"name": "vllm", "url": vllm.url}])
    harness.cycle(0)
    vllm.state.generation += 10
    harness.cycle()
    result = kit.promtool_check(harness.get().text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


OPENMETRICS_UPSTREAM = f"""# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{{engine="0",model_name="{MODEL}"}} 5000 1700000000.000
vllm:prompt_tokens_created{{engine="0",model_name="{MODEL}"}} 1690000000.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{{engine="0",model_name="{MODEL}"}} GEN 1700000000.000
# EOF
"""


@pytest.mark.parametrize(
    "content_type",
    ["application/openmetrics-text; version=1.0.0; charset=utf-8", None],
    ids=["openmetrics", "no-content-type"],
)
def test_openmetrics_upstream_with_timestamps_and_eof(
    make_agent: Any, make_upstream: Any, kit: Any, content_type: str | None
) -> None:
    """Case 27: OpenMetrics with timestamps and # EOF, with or without a Content-Type."""
    counts = {"g": 1_000}

    def reply(path: str, headers: dict[str, str]) -> Any:
        body = OPENMETRICS_UPSTREAM.replace("GEN", str(counts["g"])).encode()
        return kit.Reply(200, body, {"Content-Type": content_type} if content_type else {})

    upstream = make_upstream(reply)
    harness = make_agent(servers=[{"name": "vllm", "url": upstream.url}])
    harness.cycle(0)
    counts["g"] += 25
    harness.cycle()
    samples = harness.metrics()
    assert samples.value("tokenergy_server_up", server="vllm") == 1
    assert samples.value("tokenergy_tokens_total", server="vllm", type="output") == 25


def test_agent_openmetrics_output_ends_with_eof_and_parses(make_agent: Any, make_vllm: Any) -> None:
    """Case 27, our side: OpenMetrics on request, # EOF last, valid for the strict parser."""
    vllm = make_vllm(generation=10)
    harness = make_agent(servers=[{"name": "vllm", "url": vllm.url}])
    harness.cycle(0)
    vllm.state.generation += 3
    harness.cycle()
    response = harness.get(headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(response.text)}  # type: ignore[no-untyped-call]
    tokens = families["tokenergy_tokens"]
    out = [s for s in tokens.samples if s.name == "tokenergy_tokens_total"]
    assert {s.labels["type"]: s.value for s in out} == {"input": 0, "output": 3}
