"""The metric catalogue follows the Prometheus naming rules and is what exporters/README shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporters.catalogue import BY_NAME, METRICS, MetricSpec, render_markdown_table

README = Path(__file__).resolve().parents[2] / "exporters" / "README.md"
BEGIN, END = "<!-- metrics:begin -->", "<!-- metrics:end -->"
BASE_UNITS = ("seconds", "joules", "watts", "bytes", "grams", "ratio")
# writing_exporters.md: labels that clash with target labels, and `le`/`quantile` are reserved.
FORBIDDEN_LABELS = {
    "region", "zone", "cluster", "availability_zone", "az", "datacenter", "dc", "owner",
    "customer", "stage", "service", "environment", "env", "instance", "job", "le", "quantile",
    "hostname", "host",
}  # fmt: skip


def test_every_name_is_listed_once() -> None:
    assert len(BY_NAME) == len(METRICS), "a name is listed twice"


@pytest.mark.parametrize("spec", METRICS, ids=lambda m: m.name)
def test_every_metric_follows_naming_rules(spec: MetricSpec) -> None:
    assert re.fullmatch(r"tokenergy_[a-z][a-z0-9_]*", spec.name), "prefix, snake_case, no colon"
    assert spec.name.endswith("_total") == (spec.type == "counter")
    stem = spec.name.removesuffix("_total")
    if spec.unit:
        assert spec.unit in BASE_UNITS
        assert stem.endswith("_" + spec.unit), "the OpenMetrics unit must suffix the name"
    else:
        assert not any(stem.endswith("_" + u) for u in BASE_UNITS), "a unit suffix needs unit="
    assert not set(spec.labels) & FORBIDDEN_LABELS
    assert len(set(spec.labels)) == len(spec.labels)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", label) for label in spec.labels)
    assert spec.help.endswith(".") and len(spec.help) > 20
    if spec.name.endswith("_info"):
        assert spec.type == "gauge" and "always 1" in spec.help


@pytest.mark.parametrize(
    ("unit", "words"),
    [
        ("joules", (" J ", " J,", " J.", "in J")),
        ("watts", (" W ", "in W")),
        ("bytes", ("bytes",)),
        ("seconds", (" s ", "in s")),
        ("grams", ("g CO2e",)),
        ("ratio", ("0..1",)),
    ],
)
def test_help_text_names_the_unit(unit: str, words: tuple[str, ...]) -> None:
    specs = [m for m in METRICS if m.unit == unit]
    assert specs
    for spec in specs:
        assert any(w in spec.help for w in words), f"{spec.name} help does not name {unit}"


def test_ratio_gauges_state_their_window() -> None:
    windowed = [m for m in METRICS if "{window}" in m.help]
    assert {m.name for m in windowed} == {
        "tokenergy_tokens_per_joule",
        "tokenergy_joules_per_token",
        "tokenergy_cost_per_million_tokens",
        "tokenergy_joules_per_input_token",
        "tokenergy_joules_per_output_token",
        "tokenergy_cost_per_million_input_tokens",
        "tokenergy_cost_per_million_output_tokens",
        "tokenergy_output_input_cost_factor",
    }
    for spec in windowed:
        assert "over the last 90 s" in spec.help_text(90.0)
        assert "{" not in spec.help_text(60.0)


def test_markdown_table_has_one_row_per_metric() -> None:
    table = render_markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| `tokenergy_")]
    assert [row.split("`")[1] for row in rows] == [m.name for m in METRICS]
    assert all(row.count(" | ") == 4 for row in rows), "a stray | would break a row"
    assert "default 60 s" in table


def test_readme_metric_table_is_generated_from_the_catalogue() -> None:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, (
        f"exporters/README.md must hold the metric table between {BEGIN} and {END} "
        "(paste the output of exporters.catalogue.render_markdown_table())"
    )
    between = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert between.strip() == render_markdown_table().strip(), (
        "exporters/README.md's metric table differs from the catalogue; regenerate it with "
        "`python -c 'from exporters.catalogue import render_markdown_table as r; print(r())'`"
    )
