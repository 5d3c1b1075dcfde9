"""`tokenergy inspect` against a live llama-server: its counts equal the sums of the responses.

A workload with a shared prompt prefix exercises llama-server's prompt cache. The responses
report computed prompt tokens (``timings.prompt_n``), cache hits (``timings.cache_n``) and
generated tokens; inspect must show input = computed + cached, cached = the hits and output =
the generated tokens, to the token.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

REQUESTS = 16


@pytest.fixture(scope="module")
def inspected(start_llama: Callable[..., Any], kit: Any) -> tuple[Any, dict[str, Any], str]:
    """(response totals, inspect's JSON, the server's raw exposition) after the workload."""
    server = start_llama()
    totals = kit.workload(server, REQUESTS, kit.new_totals())
    raw = httpx.get(f"{server.base}/metrics", timeout=10).text
    result = subprocess.run(
        [sys.executable, "-m", "agent", "inspect", "--json", f"{server.base}/metrics"],
        cwd=kit.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return totals, json.loads(result.stdout), raw


def only_model(data: dict[str, Any]) -> dict[str, Any]:
    models = data["models"]
    assert len(models) == 1, models
    return dict(next(iter(models.values())))


def test_responses_report_consistent_counts(inspected: tuple[Any, dict[str, Any], str]) -> None:
    totals, _, _ = inspected
    assert len(totals.responses) == REQUESTS
    for usage in totals.responses:
        assert usage.prompt == usage.computed + usage.cached
        assert 2 <= usage.output <= 6
    # The workload really hit the prompt cache, and not only on repeated prompts.
    assert sum(1 for u in totals.responses if u.cached > 0) >= REQUESTS // 2
    assert 0 < totals.cached < totals.input


def test_server_counters_exclude_cache_hits(inspected: tuple[Any, dict[str, Any], str]) -> None:
    """The fact the llama.cpp profile relies on, checked on the live server."""
    totals, _, raw = inspected
    values = {
        s.name: s.value for family in text_string_to_metric_families(raw) for s in family.samples
    }
    assert values["llamacpp:prompt_tokens_total"] == totals.computed
    assert values["llamacpp:prompt_tokens_cached_total"] == totals.cached
    assert values["llamacpp:tokens_predicted_total"] == totals.output


def test_engine_and_output(inspected: tuple[Any, dict[str, Any], str]) -> None:
    totals, data, _ = inspected
    assert data["engine"] == "llamacpp"
    assert only_model(data)["output_tokens"] == totals.output


def test_input_is_computed_plus_cached(inspected: tuple[Any, dict[str, Any], str]) -> None:
    totals, data, _ = inspected
    model = only_model(data)
    assert (model["input_tokens"], model["cached_input_tokens"]) == (
        totals.input,
        totals.cached,
    )


def test_metrics_off_is_one_clear_line(start_llama: Callable[..., Any], kit: Any) -> None:
    """Without --metrics llama-server answers /metrics with 501; inspect says so in one line."""
    server = start_llama(metrics=False)
    assert httpx.get(f"{server.base}/metrics", timeout=10).status_code == 501
    result = subprocess.run(
        [sys.executable, "-m", "agent", "inspect", f"{server.base}/metrics"],
        cwd=kit.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "501" in result.stderr
    assert "Traceback" not in result.stderr
