"""SnapshotCollector: families and values from hand-built Snapshots, and a clean exposition."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as _generate_om
from prometheus_client.openmetrics.parser import text_string_to_metric_families as _parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from agent.clock import ManualClock
from agent.readings import PricingInfo, Snapshot
from exporters.catalogue import BY_NAME, METRICS
from exporters.prometheus import SnapshotCollector, build_registry, snapshot_families

Render = Callable[..., Any]
PROMTOOL = shutil.which("promtool")


def generate_openmetrics(registry: Any) -> bytes:
    return _generate_om(registry)  # type: ignore[no-untyped-call,no-any-return]


def parse_om(text: str) -> list[Any]:
    return list(_parse_om(text))  # type: ignore[no-untyped-call]


def family_names(registry: Any) -> list[str]:
    return [f.name for f in registry.collect()]


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric in a text exposition, keyed by their sorted labels."""
    out = {}
    for family in parse_text(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def assert_all_finite(text: str) -> None:
    values = [s.value for f in parse_text(text) for s in f.samples]
    assert values and all(math.isfinite(v) for v in values)
    assert not [line for line in text.splitlines()
                if not line.startswith("#") and line.endswith(("NaN", "Inf"))]  # fmt: skip


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


# -- families and values ---------------------------------------------------------------------


def test_before_first_snapshot_only_build_info_is_served(render: Render) -> None:
    r = render(None, version="9.9.9")
    assert r.value("tokenergy_build_info", {"version": "9.9.9"}) == 1.0
    assert r.value("tokenergy_sample_age_seconds") is None
    assert family_names(r.registry) == ["tokenergy_build_info"]


def test_sample_age_is_fresh_on_every_collect(render: Render, build: Any) -> None:
    r = render(build.rich_snapshot(), age=2.5)
    assert r.value("tokenergy_sample_age_seconds") == pytest.approx(2.5)
    r.clock.advance(10.0)
    assert r.value("tokenergy_sample_age_seconds") == pytest.approx(12.5)


def test_rich_snapshot_emits_every_catalogue_metric_and_nothing_else(
    render: Render, build: Any
) -> None:
    r = render(build.rich_snapshot())
    families = {f.name: f for f in r.registry.collect()}
    # prometheus_client strips _total from counter family names.
    expected = {m.name.removesuffix("_total") if m.type == "counter" else m.name for m in METRICS}
    assert set(families) == expected
    for spec in METRICS:
        family = families[spec.name.removesuffix("_total") if spec.type == "counter" else spec.name]
        assert family.type == spec.type
        assert family.documentation == spec.help_text(60.0)
        assert family.unit == spec.unit
        for sample in family.samples:
            assert tuple(sample.labels) == spec.labels or set(sample.labels) == set(spec.labels)


def test_gpu_values_and_down_gpu(render: Render, build: Any) -> None:
    r = render(build.rich_snapshot())
    g0 = {"gpu": "0", "uuid": "GPU-0000"}
    g2 = {"gpu": "2", "uuid": "GPU-0002"}
    assert r.value("tokenergy_gpu_power_watts", g0) == 350.0
    assert r.value("tokenergy_gpu_utilization_ratio", g0) == 0.75
    assert r.value("tokenergy_gpu_memory_total_bytes", g0) == 80 * 2**30
    assert r.value("tokenergy_gpu_power_limit_watts", g0) == 700.0
    assert r.value("tokenergy_gpu_up", g0) == 1.0
    info = {**g0, "name": "NVIDIA H100 80GB HBM3", "energy_source": "counter"}
    assert r.value("tokenergy_gpu_info", info) == 1.0
    assert r.value("tokenergy_gpu_info", {**info, "gpu": "1", "uuid": "GPU-0001"}) is None
    assert (
        r.value("tokenergy_gpu_info", {**info, "gpu": "1", "uuid": "GPU-0001",
                                       "energy_source": "integrated"})
        == 1.0
    )  # fmt: skip
    # A down GPU keeps its identity and its monotonic energy counter, but no stale gauges.
    assert r.value("tokenergy_gpu_up", g2) == 0.0
    assert r.value("tokenergy_gpu_energy_joules_total", g2) == 12_345.0
    assert r.value("tokenergy_gpu_power_watts", g2) is None
    assert r.value("tokenergy_gpu_memory_used_bytes", g2) is None
    assert r.value("tokenergy_nvml_errors_total", {"gpu": "2", "error": "gpu_lost"}) == 1.0


def test_server_values_and_down_server(render: Render, build: Any) -> None:
    r = render(build.rich_snapshot())
    model = build.vllm_model
    assert r.value("tokenergy_server_up", {"server": "vllm"}) == 1.0
    assert r.value("tokenergy_server_up", {"server": "sglang"}) == 0.0
    assert (
        r.value("tokenergy_server_info", {"server": "vllm", "engine": "vllm", "model": model})
        == 1.0
    )
    assert (
        r.value("tokenergy_server_info", {"server": "llamacpp", "engine": "llamacpp", "model": ""})
        == 1.0
    )
    running = {"server": "vllm", "model": model, "state": "running"}
    assert r.value("tokenergy_server_requests", running) == 3.0
    assert r.value("tokenergy_server_requests", {**running, "state": "waiting"}) == 1.0
    assert (
        r.value("tokenergy_server_kv_cache_usage_ratio", {"server": "vllm", "model": model}) == 0.25
    )
    # A down server: no info, no load gauges; its ledger counters stay.
    down = {"server": "sglang", "model": "Qwen/Qwen2.5-7B-Instruct"}
    assert not [s for f in r.registry.collect() if f.name == "tokenergy_server_info"
                for s in f.samples if s.labels["server"] == "sglang"]  # fmt: skip
    assert r.value("tokenergy_tokens_total", {**down, "type": "output"}) == 500.0
    assert r.value("tokenergy_scrape_errors_total", {"server": "sglang", "reason": "timeout"}) == 4
    share = {"server": "sglang", "gpu": "1", "uuid": "GPU-0001"}
    assert r.value("tokenergy_server_gpu_share", share) == 0.5


def test_ledger_counters_ratios_and_cost(render: Render, build: Any) -> None:
    r = render(build.rich_snapshot())
    key = {"server": "vllm", "model": build.vllm_model}
    assert r.value("tokenergy_tokens_total", {**key, "type": "input"}) == 1000.0
    assert r.value("tokenergy_tokens_total", {**key, "type": "output"}) == 500.0
    assert r.value("tokenergy_cached_input_tokens_total", key) == 100.0
    assert r.value("tokenergy_energy_joules_total", key) == 2500.0
    assert r.value("tokenergy_idle_energy_joules_total", key) == 300.0
    assert r.value("tokenergy_cost_total", {**key, "component": "energy"}) == 0.00009
    assert r.value("tokenergy_cost_total", {**key, "component": "hardware"}) == 0.0021
    assert r.value("tokenergy_carbon_grams_total", key) == 0.26
    assert r.value("tokenergy_tokens_per_joule", key) == 0.2
    assert r.value("tokenergy_joules_per_token", key) == 5.0
    assert r.value("tokenergy_cost_per_million_tokens", key) == 4.38
    assert r.value("tokenergy_unattributed_energy_joules_total") == 777.0
    assert r.value("tokenergy_unattributed_cost_total", {"component": "hardware"}) == 0.0007
    assert r.value("tokenergy_unattributed_carbon_grams_total") == 0.08
    pricing = {"currency": "USD", "electricity_per_kwh": "0.1", "pue": "1.3",
               "carbon_g_per_kwh": "400"}  # fmt: skip
    assert r.value("tokenergy_pricing_info", pricing) == 1.0
    assert r.value("tokenergy_collector_success", {"collector": "server/sglang"}) == 0.0
    assert r.value("tokenergy_collector_duration_seconds", {"collector": "nvml"}) == 0.012


def test_ratios_are_absent_when_the_window_has_no_tokens(render: Render, build: Any) -> None:
    r = render(build.rich_snapshot())
    idle = {"server": "sglang", "model": "Qwen/Qwen2.5-7B-Instruct"}
    for name in ("tokenergy_tokens_per_joule", "tokenergy_joules_per_token",
                 "tokenergy_cost_per_million_tokens"):  # fmt: skip
        assert r.value(name, idle) is None
        assert r.value(name, {"server": "vllm", "model": build.vllm_model}) is not None


def test_carbon_off_emits_no_carbon_family_at_all(render: Render, build: Any) -> None:
    snap = build.rich_snapshot()
    models = tuple(replace(m, carbon_grams_total=None) for m in snap.ledger.models)
    snap = replace(
        snap,
        ledger=replace(snap.ledger, models=models, unattributed_carbon_grams_total=None),
        pricing=PricingInfo(currency="EUR", electricity_per_kwh=0.25, pue=1.0),
    )
    r = render(snap)
    names = family_names(r.registry)
    assert "tokenergy_carbon_grams" not in names
    assert "tokenergy_unattributed_carbon_grams" not in names
    text = generate_latest(r.registry).decode()
    assert "carbon_grams" not in text
    pricing = {"currency": "EUR", "electricity_per_kwh": "0.25", "pue": "1",
               "carbon_g_per_kwh": "0"}  # fmt: skip
    assert r.value("tokenergy_pricing_info", pricing) == 1.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_never_exported(render: Render, build: Any, bad: float) -> None:
    snap = build.rich_snapshot()
    first = replace(
        snap.ledger.models[0],
        tokens_per_joule=bad,
        joules_per_token=bad,
        cost_per_million_tokens=bad,
        energy_joules_total=bad,
    )
    gpu0 = snap.gpus[0]
    assert gpu0.reading is not None
    gpus = (replace(gpu0, reading=replace(gpu0.reading, power_watts=bad)), *snap.gpus[1:])
    snap = replace(
        snap, gpus=gpus, ledger=replace(snap.ledger, models=(first, *snap.ledger.models[1:]))
    )
    r = render(snap)
    key = {"server": "vllm", "model": build.vllm_model}
    assert r.value("tokenergy_tokens_per_joule", key) is None
    assert r.value("tokenergy_energy_joules_total", key) is None
    assert r.value("tokenergy_gpu_power_watts", {"gpu": "0", "uuid": "GPU-0000"}) is None
    text = generate_latest(r.registry).decode()
    assert_all_finite(text)
    # The rest of the exposition is unaffected.
    assert r.value("tokenergy_tokens_total", {**key, "type": "output"}) == 500.0


def test_none_readings_produce_no_sample(render: Render, build: Any) -> None:
    snap = build.rich_snapshot()
    gpu0 = snap.gpus[0]
    assert gpu0.reading is not None
    bare = replace(gpu0.reading, power_limit_watts=None, utilization_ratio=None)
    model = build.vllm_model
    vllm = build.server("vllm", "vllm", (build.tokens(model, requests_waiting=None,
                                                      kv_cache_usage_ratio=None),))  # fmt: skip
    snap = replace(snap, gpus=(replace(gpu0, reading=bare),), servers=(vllm,))
    r = render(snap)
    g0 = {"gpu": "0", "uuid": "GPU-0000"}
    assert r.value("tokenergy_gpu_power_limit_watts", g0) is None
    assert r.value("tokenergy_gpu_utilization_ratio", g0) is None
    assert r.value("tokenergy_gpu_power_watts", g0) == 350.0
    key = {"server": "vllm", "model": model}
    assert r.value("tokenergy_server_requests", {**key, "state": "waiting"}) is None
    assert r.value("tokenergy_server_requests", {**key, "state": "running"}) == 3.0
    assert r.value("tokenergy_server_kv_cache_usage_ratio", key) is None


def test_nvml_up_follows_the_nvml_collector(render: Render, build: Any) -> None:
    snap = build.rich_snapshot()
    assert render(snap).value("tokenergy_nvml_up") == 1.0
    down = tuple(replace(c, success=False) if c.name == "nvml" else c for c in snap.collectors)
    assert render(replace(snap, collectors=down)).value("tokenergy_nvml_up") == 0.0
    none = tuple(c for c in snap.collectors if c.name != "nvml")
    assert render(replace(snap, collectors=none)).value("tokenergy_nvml_up") is None


def test_repeated_label_set_keeps_one_series(render: Render, build: Any) -> None:
    snap = build.rich_snapshot()
    twice = build.totals("vllm", build.vllm_model, output_tokens_total=1.0)
    snap = replace(snap, ledger=replace(snap.ledger, models=(*snap.ledger.models, twice)))
    text = generate_latest(render(snap).registry).decode()
    found = series(text, "tokenergy_tokens_total")
    key = (("model", build.vllm_model), ("server", "vllm"), ("type", "output"))
    assert found[key] == 500.0
    assert text.count(f'model="{build.vllm_model}",server="vllm",type="output"') == 1


def test_negative_counter_is_dropped(render: Render, build: Any) -> None:
    snap = build.rich_snapshot(scrape_errors=(("vllm", "parse", -1),))
    assert (
        render(snap).value("tokenergy_scrape_errors_total", {"server": "vllm", "reason": "parse"})
        is None
    )


def test_collector_uses_its_own_registry_and_never_the_global_one(build: Any) -> None:
    from prometheus_client import REGISTRY

    before = set(REGISTRY._names_to_collectors)
    calls = []

    def snapshot() -> Snapshot:
        calls.append(1)
        snap: Snapshot = build.rich_snapshot()
        return snap

    registry = build_registry(SnapshotCollector(snapshot, ManualClock(start=1001.0), "x"))
    assert calls == [], "registering must not collect (no auto_describe)"
    assert set(REGISTRY._names_to_collectors) == before
    assert "python_info" not in generate_latest(registry).decode()
    assert len(calls) == 1


def test_empty_snapshot_still_renders(render: Render, build: Any) -> None:
    empty = build.empty_snapshot()
    r = render(empty)
    assert r.value("tokenergy_unattributed_energy_joules_total") == 0.0
    assert r.value("tokenergy_sample_age_seconds") == pytest.approx(2.5)
    assert r.value("tokenergy_nvml_up") is None


def test_window_setting_reaches_the_help_text(build: Any) -> None:
    snap = build.rich_snapshot(window_seconds=300.0)
    families = {f.name: f for f in snapshot_families(snap, 1001.0, "x")}
    assert "over the last 300 s" in families["tokenergy_tokens_per_joule"].documentation


# -- exposition format, injection and lint -----------------------------------------------------

HOSTILE = 'evil"} 1\nfake_metric 1\n# quote " backslash \\ end'


def hostile_snapshot(build: Any) -> Snapshot:
    snap: Snapshot = build.rich_snapshot()
    vllm = build.server("vllm", "vllm", (build.tokens(HOSTILE),))
    ledger = replace(snap.ledger, models=(build.totals("vllm", HOSTILE),))
    return replace(snap, servers=(vllm,), ledger=ledger)


def test_label_injection_reparses_to_exactly_the_intended_series(
    render: Render, build: Any
) -> None:
    registry = render(hostile_snapshot(build)).registry
    text = generate_latest(registry).decode()
    families = list(parse_text(text))
    assert not [f for f in families if f.name.startswith("fake")]
    assert all(f.name.startswith("tokenergy_") for f in families)
    tokens = series(text, "tokenergy_tokens_total")
    assert tokens == {
        (("model", HOSTILE), ("server", "vllm"), ("type", "input")): 1000.0,
        (("model", HOSTILE), ("server", "vllm"), ("type", "output")): 500.0,
    }
    om_text = generate_openmetrics(registry).decode()
    om_families = {f.name: f for f in parse_om(om_text)}
    assert "fake_metric" not in om_families
    om_models = {s.labels["model"] for s in om_families["tokenergy_tokens"].samples}
    assert om_models == {HOSTILE}


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (CI installs Debian's prometheus)"
)
def test_promtool_accepts_hostile_labels(render: Render, build: Any) -> None:
    text = generate_latest(render(hostile_snapshot(build)).registry).decode()
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (CI installs Debian's prometheus)"
)
def test_promtool_lint_is_clean_for_a_rich_snapshot(render: Render, build: Any) -> None:
    text = generate_latest(render(build.rich_snapshot()).registry).decode()
    assert text.count("\n") > 100
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""
    # The lint is live: it does complain about a counter without _total.
    bad = promtool_check("# HELP x_bytes x\n# TYPE x_bytes counter\nx_bytes 1\n")
    assert bad.returncode != 0 and "_total" in bad.stdout + bad.stderr


def test_openmetrics_exposition_parses_and_carries_units(render: Render, build: Any) -> None:
    om_text = generate_openmetrics(render(build.rich_snapshot()).registry).decode()
    assert om_text.endswith("# EOF\n")
    families = {f.name: f for f in parse_om(om_text)}
    assert families["tokenergy_gpu_energy_joules"].unit == "joules"
    assert families["tokenergy_gpu_energy_joules"].type == "counter"
    assert families["tokenergy_gpu_utilization_ratio"].unit == "ratio"
    # Every spec is present under its OpenMetrics family name.
    assert {m.name.removesuffix("_total") for m in METRICS} == set(families)


@settings(max_examples=60, deadline=None)
@given(
    model=st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    output=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()),
    ratio=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()),
)
def test_any_model_name_and_value_renders_a_valid_exposition(
    build: Any, model: str, output: float | None, ratio: float | None
) -> None:
    snap = build.rich_snapshot()
    totals = build.totals("vllm", model, output_tokens_total=output, tokens_per_joule=ratio)
    snap = replace(snap, ledger=replace(snap.ledger, models=(totals,)))
    registry = build_registry(SnapshotCollector(lambda: snap, ManualClock(start=1001.0), "x"))
    text = generate_latest(registry).decode()
    assert_all_finite(text)
    found = series(text, "tokenergy_tokens_total")
    out_key = (("model", model), ("server", "vllm"), ("type", "output"))
    if output is not None and math.isfinite(output) and output >= 0:
        assert found[out_key] == output
    else:
        assert out_key not in found
    tpj = series(text, "tokenergy_tokens_per_joule")
    if ratio is not None and math.isfinite(ratio):
        assert tpj == {(("model", model), ("server", "vllm")): ratio}
    else:
        assert tpj == {}
    assert all(spec.name in BY_NAME for spec in METRICS)


def test_a_lone_surrogate_in_a_label_cannot_break_the_exposition(
    render: Render, build: Any
) -> None:
    snap = build.rich_snapshot()
    snap = replace(snap, ledger=replace(snap.ledger, models=(build.totals("vllm", "bad\udcff"),)))
    text = generate_latest(render(snap).registry).decode()
    assert (
        series(text, "tokenergy_tokens_total")[
            (("model", "bad?"), ("server", "vllm"), ("type", "output"))
        ]
        == 500.0
    )


def test_per_model_gauges_only_for_models_the_ledger_tracks(render: Render, build: Any) -> None:
    """A model the ledger does not track (over the cap, name too long) has no series at all."""
    snap = build.rich_snapshot()
    listed = (build.tokens(build.vllm_model), build.tokens("untracked-adapter"))
    snap = replace(snap, servers=(build.server("vllm", "vllm", listed),))
    r = render(snap)
    tracked = {"server": "vllm", "model": build.vllm_model}
    untracked = {"server": "vllm", "model": "untracked-adapter"}
    assert r.value("tokenergy_server_kv_cache_usage_ratio", tracked) == 0.25
    assert r.value("tokenergy_server_kv_cache_usage_ratio", untracked) is None
    assert r.value("tokenergy_server_info", {**untracked, "engine": "vllm"}) is None
