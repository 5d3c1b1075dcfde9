"""The Grafana dashboard.

Loadable by file and ConfigMap provisioning (no ``__inputs``, a datasource variable, a stable
uid), every query reads only metrics that exist, every panel has a unit, and the panels the
README promises are there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = ROOT / "dashboards" / "grafana" / "tokenergy.json"

CONFIGMAP_LIMIT_BYTES = 262_144
"""kubectl apply keeps the object in an annotation limited to 256 KiB."""


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_provisioning_ready_identity(dashboard: dict[str, Any]) -> None:
    assert "__inputs" not in dashboard
    assert "__requires" not in dashboard
    assert dashboard["uid"] == "tokenergy"
    assert dashboard["id"] is None
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)


def test_no_import_wizard_placeholders_anywhere() -> None:
    text = DASHBOARD_FILE.read_text()
    assert "${DS_" not in text
    assert "__inputs" not in text


def test_fits_in_a_configmap_applied_with_kubectl() -> None:
    assert len(DASHBOARD_FILE.read_bytes()) < CONFIGMAP_LIMIT_BYTES


def test_datasource_variable_selects_prometheus(dashboard: dict[str, Any]) -> None:
    var = _variables(dashboard)["datasource"]
    assert var["type"] == "datasource"
    assert var["query"] == "prometheus"


@pytest.mark.parametrize(
    ("name", "metric", "label"),
    [
        ("instance", "tokenergy_build_info", "instance"),
        ("server", "tokenergy_server_up", "server"),
        ("model", "tokenergy_tokens_total", "model"),
    ],
)
def test_filter_variables_are_label_values_queries(
    dashboard: dict[str, Any], name: str, metric: str, label: str
) -> None:
    var = _variables(dashboard)[name]
    assert var["type"] == "query"
    assert var["datasource"]["uid"] == "${datasource}"
    query = var["query"]["query"]
    assert re.fullmatch(rf"label_values\({metric}(\{{.*\}})?, {label}\)", query), query
    # "All" must become a regex matching every value, the empty one included (a server that
    # reports no model), not Grafana's default alternation of the known values.
    assert var["includeAll"] is True
    assert var["allValue"] == ".*"


def test_every_panel_and_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_panel_has_a_unit(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard):
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


def test_panel_ids_are_unique_and_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_queries_read_only_catalogue_metrics_and_recording_rules(
    panel_queries: list[tuple[str, str]],
    var_queries: dict[str, str],
    catalogue: set[str],
    recorded_names: set[str],
    names_in: Callable[[str], set[str]],
) -> None:
    known = catalogue | recorded_names
    queries = panel_queries + [
        (f"variable {name}", re.sub(r"^label_values\((.*), \w+\)$", r"\1", q))
        for name, q in var_queries.items()
    ]
    assert len(queries) > 20
    for where, expr in queries:
        names = names_in(expr)
        assert names, where
        assert names <= known, (where, names - known)


@pytest.mark.parametrize(
    ("what", "metric"),
    [
        (
            "fleet cost per million output tokens",
            "fleet:tokenergy_cost_per_million_output_tokens:ratio_rate5m",
        ),
        ("fleet output tokens per joule", "fleet:tokenergy_output_tokens_per_joule:ratio_rate5m"),
        (
            "tokens per joule per server",
            "server_model:tokenergy_output_tokens_per_joule:ratio_rate5m",
        ),
        (
            "joules per token per server",
            "server_model:tokenergy_joules_per_output_token:ratio_rate5m",
        ),
        (
            "cost per Mtok per server",
            "server_model:tokenergy_cost_per_million_output_tokens:ratio_rate5m",
        ),
        ("tokens/s in and out", "tokenergy_tokens_total"),
        ("power per GPU", "tokenergy_gpu_power_watts"),
        ("energy to servers", "tokenergy_energy_joules_total"),
        ("idle energy", "tokenergy_idle_energy_joules_total"),
        ("unattributed energy", "tokenergy_unattributed_energy_joules_total"),
        ("cost by component", "tokenergy_cost_total"),
        ("unattributed cost", "tokenergy_unattributed_cost_total"),
        (
            "cached input share",
            "server_model:tokenergy_cached_input_tokens_per_input_token:ratio_rate5m",
        ),
        ("KV-cache usage", "tokenergy_server_kv_cache_usage_ratio"),
        ("server up", "tokenergy_server_up"),
        ("GPU up", "tokenergy_gpu_up"),
        ("scrape errors", "tokenergy_scrape_errors_total"),
        ("sample age", "tokenergy_sample_age_seconds"),
    ],
)
def test_promised_panel_is_there(
    what: str,
    metric: str,
    panel_queries: list[tuple[str, str]],
    names_in: Callable[[str], set[str]],
) -> None:
    assert any(metric in names_in(expr) for _, expr in panel_queries), what


def test_cost_by_component_splits_energy_and_hardware(panel_queries: list[tuple[str, str]]) -> None:
    exprs = [e for _, e in panel_queries if "tokenergy_cost_total" in e]
    assert any("by (component)" in e for e in exprs)


def test_json_is_formatted_stably() -> None:
    # Reviewable diffs: two-space indentation and a final newline, as json.dump writes it.
    text = DASHBOARD_FILE.read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
