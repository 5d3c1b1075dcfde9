"""Fixtures for the dashboard and rule tests.

The files, the real Prometheus binaries, and small PromQL text helpers (metric names in an
expression, Grafana variable substitution, the shortened test copy of the rules).

The helpers are plain functions handed out by fixtures, because test modules here are imported
with ``--import-mode=importlib`` and cannot import each other.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
RULES_FILE = DASHBOARDS / "prometheus" / "rules.yml"
RULE_TESTS_DIR = DASHBOARDS / "prometheus" / "tests"
DASHBOARD_FILE = DASHBOARDS / "grafana" / "tokenergy.json"
README_FILE = DASHBOARDS / "README.md"

USER_THRESHOLD_SERIES = "tokenergy_cost_per_million_output_tokens_threshold"
"""Series users may define (README) to set the CostPerTokenHigh threshold; not exported."""

SHORT_RANGES: Mapping[str, str] = {"5m": "20s", "10m": "25s", "1h": "30s"}
"""Rule ranges -> the ranges of the test copy run against a 1 s scrape interval."""

_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"and", "or", "unless", "inf", "nan", "atan2"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Not a parser: strings, label matchers, ranges, offsets, numbers, grouping clauses and
    function or aggregation calls are removed, and what is left of the identifiers are the
    selected metric names. Good enough for the expressions in this repository, which a real
    Prometheus also evaluates in the end-to-end test.

    Args:
        expr: A PromQL expression, Grafana variables allowed.

    Returns:
        The metric names, recording rules included.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\boffset\s+-?[\w$]+", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"(?<![\w:.])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        if word.lower() in _PROMQL_WORDS:
            continue
        if re.match(r"\s*\(", text[match.end() :]):
            continue  # a function or an aggregation
        names.add(word)
    return names


def substitute(expr: str, values: Mapping[str, str], rate_interval: str, range_: str) -> str:
    """Replace Grafana variables in a panel query as Grafana would before sending it.

    Args:
        expr: The panel query.
        values: Variable name -> text to put in its place (a regex such as ``.*``, or a
            concrete value already regex-escaped).
        rate_interval: What ``$__rate_interval`` becomes, e.g. ``10s``.
        range_: What ``$__range`` becomes, e.g. ``30s``.

    Returns:
        The expression Prometheus receives.
    """
    out = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    for name, value in values.items():
        out = out.replace("${" + name + "}", value)
        # A replacement string reads backslashes as escapes; the value's must stay literal.
        out = re.sub(r"\$" + name + r"\b", value.replace("\\", "\\\\"), out)
    if "$" in out:
        raise AssertionError(f"unsubstituted variable in {out!r}")
    return out


def grafana_regex_escape(value: str) -> str:
    """Escape one variable value as Grafana's Prometheus data source does for a regex matcher.

    Args:
        value: The label value.

    Returns:
        The value with regex metacharacters escaped, written for a PromQL double-quoted string.
    """
    return re.sub(r"([\\^$*+?.()|{}\[\]/])", r"\\\\\1", value)


def shorten_rules(text: str, ranges: Mapping[str, str] = SHORT_RANGES) -> str:
    """A test copy of the rules whose range selectors are short enough for a 1 s scrape interval.

    Only ``[range]`` selectors change: names (``rate5m``), offsets and ``for`` durations stay,
    so the production file keeps its real windows and the copy keeps its structure.

    Args:
        text: The rules file.
        ranges: Range in the file -> range in the copy.

    Returns:
        The rewritten rules file.

    Raises:
        ValueError: A range selector has no mapping (a new window needs a short twin here).
    """

    def replace(match: re.Match[str]) -> str:
        found = match.group(1)
        if found not in ranges:
            raise ValueError(f"no short twin for range [{found}]; add it to SHORT_RANGES")
        return f"[{ranges[found]}]"

    return re.sub(r"\[(\w+)\]", replace, text)


def rule_entries(rules: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every rule of a parsed rules file, with its group name under ``group``."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield {"group": group["name"], **rule}


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every panel query of a dashboard as (``panel title / refId``, expression)."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((f"{inner['title']} / {target['refId']}", target["expr"]))
    return found


def variable_queries(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Query variable name -> its ``label_values(...)`` query."""
    out = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out[var["name"]] = query["query"] if isinstance(query, dict) else query
    return out


def catalogue_names() -> set[str]:
    """Every metric name the agent exports (exporters.catalogue is the one table)."""
    from exporters.catalogue import METRICS

    return {m.name for m in METRICS}


@pytest.fixture(scope="session")
def rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text())
    return data


@pytest.fixture(scope="session")
def rule_list(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return list(rule_entries(rules))


@pytest.fixture(scope="session")
def recorded_names(rule_list: list[dict[str, Any]]) -> set[str]:
    return {r["record"] for r in rule_list if "record" in r}


@pytest.fixture(scope="session")
def catalogue() -> set[str]:
    return catalogue_names()


@pytest.fixture(scope="session")
def short_rules_text() -> str:
    return shorten_rules(RULES_FILE.read_text())


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return data


@pytest.fixture(scope="session")
def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return dashboard_queries(dashboard)


@pytest.fixture(scope="session")
def var_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    return variable_queries(dashboard)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return path


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus not installed (Debian package prometheus)")
    return path


@pytest.fixture(scope="session")
def names_in() -> Callable[[str], set[str]]:
    return metric_names


@pytest.fixture(scope="session")
def substitute_vars() -> Callable[[str, Mapping[str, str], str, str], str]:
    return substitute


@pytest.fixture(scope="session")
def regex_escape() -> Callable[[str], str]:
    return grafana_regex_escape


@pytest.fixture(scope="session")
def shorten() -> Callable[[str], str]:
    return shorten_rules
