"""The Prometheus rules.

promtool accepts them and their unit tests pass; their names, the shape of every ratio, and
every alert's metadata follow the conventions; the test-copy generator and the PromQL name
extractor used by the other tests do what they claim.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "dashboards" / "prometheus" / "rules.yml"
RULE_TESTS = sorted((ROOT / "dashboards" / "prometheus" / "tests").glob("*.yml"))
README = ROOT / "dashboards" / "README.md"

ALERTS = (
    "CostPerTokenHigh",
    "CostPerTokenRegressed",
    "TokensPerJouleDropped",
    "IdleGpuBurning",
    "KvCacheSaturated",
    "InferenceServerDown",
    "GpuDown",
    "AgentStale",
    "AgentAbsent",
)
RECORD_NAME = re.compile(r"^(server_model|server|instance|fleet):tokenergy_[a-z_]+:[a-z0-9_]+$")
EXTRA_INPUTS = {"up", "tokenergy_cost_per_million_output_tokens_threshold"}


def _github_anchor(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _readme_anchors() -> set[str]:
    headings = re.findall(r"^#+\s+(.+)$", README.read_text(), re.M)
    return {_github_anchor(h) for h in headings}


# ------------------------------------------------------------------------------- promtool


@pytest.mark.prometheus
@pytest.mark.parametrize("path", [RULES_FILE, RULES_FILE.with_name("thresholds.example.yml")])
def test_promtool_check_rules_is_clean(promtool: str, path: Path) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.prometheus
def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS, "no promtool unit tests found"
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


@pytest.mark.prometheus
def test_the_short_test_copy_is_valid_too(
    promtool: str, short_rules_text: str, tmp_path: Path
) -> None:
    copy = tmp_path / "rules.yml"
    copy.write_text(short_rules_text)
    result = subprocess.run(
        [promtool, "check", "rules", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests_catch_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    # The fleet ratio as an average of ratios: the recording-rule tests must reject it.
    broken = RULES_FILE.read_text().replace(
        "fleet:tokenergy_output_tokens:rate5m\n"
        "            / (fleet:tokenergy_energy_joules:rate5m > 0)",
        "avg(server_model:tokenergy_output_tokens_per_joule:ratio_rate5m)",
    )
    assert broken != RULES_FILE.read_text()
    (tmp_path / "rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    test_file = tmp_path / "tests" / "recording.yml"
    test_file.write_text((RULES_FILE.parent / "tests" / "recording.yml").read_text())
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    # The average of 10 and 0.01 tok/J, where the true fleet figure is 11/101.
    assert "5.005E+00" in result.stdout + result.stderr


# ---------------------------------------------------------------------------- conventions


def test_recording_rule_names_follow_level_metric_operations(
    rule_list: list[dict[str, Any]],
) -> None:
    records = [r["record"] for r in rule_list if "record" in r]
    assert records
    bad = [name for name in records if not RECORD_NAME.match(name)]
    assert bad == []
    assert len(records) == len(set(records)), "a recording rule is defined twice"


def test_every_ratio_divides_two_rates_of_the_same_window(
    rule_list: list[dict[str, Any]], recorded_names: set[str]
) -> None:
    ratios = [r for r in rule_list if ":ratio_" in r.get("record", "")]
    assert len(ratios) >= 10
    for rule in ratios:
        window = rule["record"].rsplit(":ratio_", 1)[1]  # e.g. rate5m
        numerator, denominator = rule["expr"].split("/")
        for side in (numerator, denominator):
            operands = re.findall(r"[a-z_]+:tokenergy_[a-z_]+:[a-z0-9_]+", side)
            assert operands, rule["record"]
            for name in operands:
                assert name in recorded_names, (rule["record"], name)
                assert name.endswith(":" + window), (rule["record"], name)
        # The denominator is filtered so that no series is ever Inf or NaN.
        assert "> 0)" in denominator, rule["record"]


def test_no_rule_averages_anything(rule_list: list[dict[str, Any]]) -> None:
    assert not [r for r in rule_list if re.search(r"\bavg", r.get("expr", ""))]


def test_fleet_rules_are_sums_of_per_target_rates(rule_list: list[dict[str, Any]]) -> None:
    for rule in rule_list:
        name = rule.get("record", "")
        if name.startswith("fleet:") and name.endswith(":rate5m"):
            assert re.fullmatch(
                r"sum\((server_model|instance):tokenergy_\w+:rate5m\)", rule["expr"]
            )


def test_rules_read_only_catalogue_metrics_and_their_own_records(
    rule_list: list[dict[str, Any]],
    recorded_names: set[str],
    catalogue: set[str],
    names_in: Callable[[str], set[str]],
) -> None:
    allowed = catalogue | recorded_names | EXTRA_INPUTS
    for rule in rule_list:
        unknown = names_in(rule["expr"]) - allowed
        assert unknown == set(), (rule.get("record") or rule.get("alert"), unknown)


def test_the_expected_alerts_exist(rule_list: list[dict[str, Any]]) -> None:
    assert sorted(r["alert"] for r in rule_list if "alert" in r) == sorted(ALERTS)


@pytest.mark.parametrize("alert", ALERTS)
def test_alert_has_for_severity_summary_description_and_runbook(
    alert: str, rule_list: list[dict[str, Any]]
) -> None:
    rule = next(r for r in rule_list if r.get("alert") == alert)
    assert re.fullmatch(r"\d+[mh]", rule["for"])
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    runbook = annotations["runbook_url"]
    assert runbook.endswith("dashboards/README.md#" + alert.lower())
    assert alert.lower() in _readme_anchors(), f"README.md has no section {alert}"


@pytest.mark.parametrize("alert", ALERTS)
def test_alert_has_unit_tests_firing_and_not_firing(alert: str) -> None:
    firing = silent = 0
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                if case["alertname"] == alert:
                    if case["exp_alerts"]:
                        firing += 1
                    else:
                        silent += 1
    assert firing >= 1 and silent >= 1, (alert, firing, silent)


def test_readme_tells_how_to_set_the_cost_threshold() -> None:
    text = README.read_text()
    assert "tokenergy_cost_per_million_output_tokens_threshold" in text
    assert "setting-the-costpertokenhigh-threshold" in _readme_anchors()


# ---------------------------------------------------------------------------- the helpers


def test_short_copy_changes_only_ranges(short_rules_text: str) -> None:
    original = RULES_FILE.read_text()
    assert "[5m]" in original and "[1h]" in original
    assert "[5m]" not in short_rules_text and "[1h]" not in short_rules_text
    assert "[20s]" in short_rules_text and "[30s]" in short_rules_text
    # Names, offsets and for durations are untouched.
    assert short_rules_text.count("rate5m") == original.count("rate5m")
    assert short_rules_text.count("offset 7d") == original.count("offset 7d")
    assert re.findall(r"for: \w+", short_rules_text) == re.findall(r"for: \w+", original)


def test_short_copy_refuses_a_range_without_a_twin(shorten: Callable[[str], str]) -> None:
    with pytest.raises(ValueError, match=r"\[6h\]"):
        shorten("expr: rate(x[6h])")


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("tokenergy_gpu_power_watts", {"tokenergy_gpu_power_watts"}),
        (
            "sum by (server, type) "
            '(rate(tokenergy_tokens_total{server=~"$server"}[$__rate_interval]))',
            {"tokenergy_tokens_total"},
        ),
        (
            "1e6 * a:b:rate5m / (c:d:rate5m > 0) offset 1d",
            {"a:b:rate5m", "c:d:rate5m"},
        ),
        (
            "x > on (server) group_left () y or on () vector(10)",
            {"x", "y"},
        ),
        ('up{job=~"(.+/)?tokenergy"} == 0 or absent(up{job="a"})', {"up"}),
        ("count by (version) (tokenergy_build_info) and bool 2", {"tokenergy_build_info"}),
    ],
)
def test_metric_name_extraction(
    expr: str, names: set[str], names_in: Callable[[str], set[str]]
) -> None:
    assert names_in(expr) == names
