"""The rules and the dashboard against a real Prometheus scraping two real demo agents.

One run serves every test in this module (about a minute): two ``tokenergy demo`` processes
(steady scenario, different seeds, the same configuration) play two nodes on two ports; a real
Prometheus scrapes both every second and evaluates a copy of dashboards/prometheus/rules.yml
whose ranges are shortened (``[5m]`` -> ``[20s]``, ``[1h]`` -> ``[30s]``; conftest.SHORT_RANGES)
every second. A second, global Prometheus federates the leaf's rate rules exactly as
dashboards/README.md documents and runs the recording rules on them. When the demos exit, each
has written its ground truth, and every check queries Prometheus at one instant ``t`` taken
just before the agents stopped, so every 20 s window lies inside the run.

How the fleet tokens per joule is tied to the ground truth, link by link (each within 2 %):
  1. truth -> agent: each agent's counters at exit (the truth file's ``exposition``) equal the
     simulator's true tokens and energy;
  2. agent -> Prometheus: the counters Prometheus stored last give the same cumulative tokens
     per joule as the truth;
  3. Prometheus -> rule: the recording rule at ``t`` equals the ratio of the stored counters'
     increases over the rule's window, summed over every server of both agents (a ratio of
     sums; an average of the per-server ratios would be far off, and the test says so).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

DEMO_SECONDS = 40
SEEDS = (1, 2)
WINDOW_SECONDS = 20.0
"""The test copy's stand-in for [5m]."""
RATE_INTERVAL = "10s"
RANGE = "30s"
TOLERANCE = 0.02
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Agent:
    instance: str
    truth: dict[str, Any]


@dataclass(frozen=True)
class Stack:
    client: httpx.Client
    """The leaf Prometheus, which scrapes the agents and runs every rule."""
    global_client: httpx.Client
    """The global Prometheus, which federates the leaf's rate rules and runs the recording rules."""
    agents: tuple[Agent, ...]
    t: float
    """Evaluation instant, Unix s: a rule evaluation just before the agents stopped."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _query(client: httpx.Client, expr: str, t: float) -> list[dict[str, Any]]:
    response = client.get("/api/v1/query", params={"query": expr, "time": f"{t:.3f}"})
    body = response.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _scalar(client: httpx.Client, expr: str, t: float) -> float:
    result = _query(client, expr, t)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def _increase_from_samples(client: httpx.Client, selector: str, t: float) -> float:
    """Sum over series of (last - first) of the raw samples in (t - window, t]; no extrapolation."""
    total = 0.0
    for series in _query(client, f"{selector}[{int(WINDOW_SECONDS)}s]", t):
        values = [float(v) for _, v in series["values"]]
        assert len(values) >= WINDOW_SECONDS / 2, (selector, series["metric"], len(values))
        assert values == sorted(values), "a counter went backwards"
        total += values[-1] - values[0]
    return total


def _wait_ready(client: httpx.Client, timeout: float) -> None:
    """Poll /-/ready rather than sleeping blindly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/-/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"Prometheus at {client.base_url} not ready after {timeout} s")


def _readme_federation_job() -> dict[str, Any]:
    """The federation scrape job exactly as dashboards/README.md documents it."""
    readme = (ROOT / "dashboards" / "README.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "/federate" in b]
    assert len(blocks) == 1, "README.md should document one federation job"
    job: dict[str, Any] = yaml.safe_load(textwrap.dedent(blocks[0]))["scrape_configs"][0]
    return job


def _recording_groups_only(rules_text: str) -> str:
    """What the README tells a global Prometheus to load: every group but the alerts."""
    rules = yaml.safe_load(rules_text)
    rules["groups"] = [g for g in rules["groups"] if g["name"] != "tokenergy-alerts"]
    return str(yaml.safe_dump(rules, sort_keys=False))


def _start_prometheus(
    binary: str,
    directory: Path,
    rules_text: str,
    scrape_configs: list[dict[str, Any]],
    external_labels: dict[str, str],
) -> tuple[subprocess.Popen[bytes], int]:
    directory.mkdir()
    (directory / "rules.yml").write_text(rules_text)
    config = {
        "global": {
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "evaluation_interval": "1s",
            "external_labels": external_labels,
        },
        "rule_files": [str(directory / "rules.yml")],
        "scrape_configs": scrape_configs,
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, port


@pytest.fixture(scope="module")
def stack(
    prometheus_binary: str, short_rules_text: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    assert f"[{int(WINDOW_SECONDS)}s]" in short_rules_text, "WINDOW_SECONDS is not the copy's [5m]"
    work = tmp_path_factory.mktemp("prometheus_e2e")
    agent_ports = [_free_port() for _ in SEEDS]
    instances = [f"127.0.0.1:{p}" for p in agent_ports]
    processes: list[subprocess.Popen[bytes]] = []
    clients: list[httpx.Client] = []
    try:
        # The leaf scrapes the agents; the global federates the leaf as the README says.
        leaf, leaf_port = _start_prometheus(
            prometheus_binary,
            work / "leaf",
            short_rules_text,
            [{"job_name": "tokenergy", "static_configs": [{"targets": instances}]}],
            {"cluster": "leaf"},
        )
        processes.append(leaf)
        federation = _readme_federation_job()
        federation["static_configs"] = [{"targets": [f"127.0.0.1:{leaf_port}"]}]
        glob, global_port = _start_prometheus(
            prometheus_binary,
            work / "global",
            _recording_groups_only(short_rules_text),
            [federation],
            {"tier": "global"},
        )
        processes.append(glob)

        demos = []
        for seed, port in zip(SEEDS, agent_ports, strict=True):
            command = [
                sys.executable, "-m", "agent", "demo",
                "--duration", str(DEMO_SECONDS),
                "--scenario", "steady",
                "--seed", str(seed),
                "--listen", f"127.0.0.1:{port}",
                "--truth-file", str(work / f"truth-{seed}.json"),
            ]  # fmt: skip
            with (work / f"demo-{seed}.log").open("wb") as log:
                demo = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            processes.append(demo)
            demos.append(demo)

        client = httpx.Client(base_url=f"http://127.0.0.1:{leaf_port}", timeout=10.0)
        global_client = httpx.Client(base_url=f"http://127.0.0.1:{global_port}", timeout=10.0)
        clients += [client, global_client]
        for c in clients:
            _wait_ready(c, timeout=30)
        for demo, seed in zip(demos, SEEDS, strict=True):
            code = demo.wait(timeout=DEMO_SECONDS + 60)
            assert code == 0, (work / f"demo-{seed}.log").read_text()[-3000:]

        # The last successful scrape of each agent; t is the last rule evaluation before the
        # earlier of the two, so no window reaches past either agent's end.
        now = time.time()
        last_scrapes = []
        for instance in instances:
            series = _query(client, f'tokenergy_build_info{{instance="{instance}"}}[2m]', now)
            assert series, f"Prometheus never scraped {instance}"
            last_scrapes.append(float(series[0]["values"][-1][0]))
        end = min(last_scrapes)
        evaluations = _query(
            client, "fleet:tokenergy_output_tokens_per_joule:ratio_rate5m[2m]", now
        )
        assert evaluations, "the fleet rule never produced a sample"
        times = [float(ts) for ts, _ in evaluations[0]["values"] if float(ts) <= end - 0.5]
        assert times, "no rule evaluation before the agents stopped"
        t = times[-1]
        assert t - WINDOW_SECONDS > end - DEMO_SECONDS, "window not inside the run"

        agents = tuple(
            Agent(instance, json.loads((work / f"truth-{seed}.json").read_text()))
            for instance, seed in zip(instances, SEEDS, strict=True)
        )
        yield Stack(client, global_client, agents, t)
    finally:
        for c in clients:
            c.close()
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


# --------------------------------------------------------------------- rules and dashboard


def test_every_rule_evaluates_without_error(stack: Stack) -> None:
    groups = stack.client.get("/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) > 40
    errors = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert errors == []


def test_no_alert_is_pending_or_firing_while_everything_is_healthy(stack: Stack) -> None:
    # The steady demo is healthy and cheap (well under the default threshold of 10 per Mtok).
    assert _query(stack.client, "ALERTS", stack.t) == []
    cost = _query(
        stack.client, "server_model:tokenergy_cost_per_million_output_tokens:ratio_rate5m", stack.t
    )
    assert cost and all(0 < float(c["value"][1]) < 10 for c in cost)


def test_every_recording_rule_has_data(stack: Stack, recorded_names: set[str]) -> None:
    empty = [name for name in sorted(recorded_names) if not _query(stack.client, name, stack.t)]
    assert empty == []


def test_every_panel_query_returns_data_for_all(
    stack: Stack,
    panel_queries: list[tuple[str, str]],
    substitute_vars: Callable[[str, Mapping[str, str], str, str], str],
) -> None:
    values = {"instance": ".*", "server": ".*", "model": ".*", "currency": "USD"}
    empty = []
    for where, expr in panel_queries:
        query = substitute_vars(expr, values, RATE_INTERVAL, RANGE)
        if not _query(stack.client, query, stack.t):
            empty.append((where, query))
    assert empty == []


def _label_values(client: httpx.Client, variable_query: str, t: float) -> list[str]:
    selector, label = variable_query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
    response = client.get(
        f"/api/v1/label/{label}/values",
        params={"match[]": selector, "start": f"{t - 60:.3f}", "end": f"{t:.3f}"},
    )
    values: list[str] = response.json()["data"]
    return values


def test_variables_and_every_panel_for_one_agent_server_and_model(
    stack: Stack,
    var_queries: dict[str, str],
    panel_queries: list[tuple[str, str]],
    substitute_vars: Callable[[str, Mapping[str, str], str, str], str],
    regex_escape: Callable[[str], str],
) -> None:
    # Resolve the variables as Grafana would, each from the choices of the ones before it.
    chosen: dict[str, str] = {}
    instances = _label_values(stack.client, var_queries["instance"], stack.t)
    assert sorted(instances) == sorted(a.instance for a in stack.agents)
    chosen["instance"] = regex_escape(instances[0])
    servers = _label_values(
        stack.client, substitute_vars(var_queries["server"], chosen, "", ""), stack.t
    )
    assert {"vllm", "sglang", "llamacpp"} <= set(servers)
    chosen["server"] = regex_escape("vllm")
    models = _label_values(
        stack.client, substitute_vars(var_queries["model"], chosen, "", ""), stack.t
    )
    assert models == ["meta-llama/Llama-3.1-8B-Instruct"]
    chosen["model"] = regex_escape(models[0])
    currency = _label_values(
        stack.client, substitute_vars(var_queries["currency"], chosen, "", ""), stack.t
    )
    assert currency == ["USD"]
    chosen["currency"] = currency[0]

    empty = []
    for where, expr in panel_queries:
        query = substitute_vars(expr, chosen, RATE_INTERVAL, RANGE)
        result = _query(stack.client, query, stack.t)
        if not result:
            empty.append((where, query))
        for series in result:
            # Nothing from the other agent, server or model leaks through the filters.
            labels = series["metric"]
            assert labels.get("instance", instances[0]) == instances[0], (where, labels)
            assert labels.get("server", "vllm") == "vllm", (where, labels)
    assert empty == []


# ---------------------------------------------------------------------- the numbers are true


def _exposition_totals(text: str) -> dict[str, float]:
    totals = {"output": 0.0, "input": 0.0, "energy": 0.0, "unattributed": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tokenergy_tokens_total":
                totals[sample.labels["type"]] += sample.value
            elif sample.name == "tokenergy_energy_joules_total":
                totals["energy"] += sample.value
            elif sample.name == "tokenergy_unattributed_energy_joules_total":
                totals["unattributed"] += sample.value
    return totals


def _truth_totals(truth: Mapping[str, Any]) -> dict[str, float]:
    servers = truth["servers"].values()
    return {
        "output": sum(m["output_tokens"] for s in servers for m in s["models"].values()),
        "input": sum(m["input_tokens"] for s in servers for m in s["models"].values()),
        "energy": sum(s["energy_joules"] for s in servers),
        "unattributed": truth["unattributed_energy_joules"],
    }


def test_link_1_agent_counters_match_the_truth(stack: Stack) -> None:
    for agent in stack.agents:
        counted = _exposition_totals(agent.truth["exposition"])
        true = _truth_totals(agent.truth)
        assert true["output"] > 10_000 and true["energy"] > 10_000, true
        for key in counted:
            assert counted[key] == pytest.approx(true[key], rel=TOLERANCE), (agent.instance, key)


def test_link_2_stored_counters_give_the_true_cumulative_ratio(stack: Stack) -> None:
    for agent in stack.agents:
        sel = f'instance="{agent.instance}"'
        out = _scalar(stack.client, f'sum(tokenergy_tokens_total{{{sel},type="output"}})', stack.t)
        energy = _scalar(stack.client, f"sum(tokenergy_energy_joules_total{{{sel}}})", stack.t)
        true = _truth_totals(agent.truth)
        assert out / energy == pytest.approx(true["output"] / true["energy"], rel=TOLERANCE)


def _window_ratio(stack: Stack, selector: str) -> float:
    out = _increase_from_samples(
        stack.client, f'tokenergy_tokens_total{{{selector}type="output"}}', stack.t
    )
    energy = _increase_from_samples(
        stack.client, f"tokenergy_energy_joules_total{{{selector}}}", stack.t
    )
    return out / energy


def test_link_3_per_server_rule_is_the_ratio_of_counter_increases(stack: Stack) -> None:
    for agent in stack.agents:
        for server in agent.truth["servers"]:
            sel = f'instance="{agent.instance}",server="{server}",'
            rule = _scalar(
                stack.client,
                f"server_model:tokenergy_output_tokens_per_joule:ratio_rate5m{{{sel}}}",
                stack.t,
            )
            assert rule == pytest.approx(_window_ratio(stack, sel), rel=TOLERANCE), server


def test_link_3_instance_rule_is_the_ratio_of_counter_increases(stack: Stack) -> None:
    for agent in stack.agents:
        sel = f'instance="{agent.instance}",'
        rule = _scalar(
            stack.client,
            f"instance:tokenergy_output_tokens_per_joule:ratio_rate5m{{{sel}}}",
            stack.t,
        )
        assert rule == pytest.approx(_window_ratio(stack, sel), rel=TOLERANCE)


def test_link_3_fleet_rule_is_the_ratio_of_sums_over_both_agents(stack: Stack) -> None:
    fleet = _scalar(stack.client, "fleet:tokenergy_output_tokens_per_joule:ratio_rate5m", stack.t)
    assert fleet == pytest.approx(_window_ratio(stack, ""), rel=TOLERANCE)
    # Not the average of the per-server ratios: the servers differ enough to tell them apart.
    per_server = [
        float(s["value"][1])
        for s in _query(
            stack.client, "server_model:tokenergy_output_tokens_per_joule:ratio_rate5m", stack.t
        )
    ]
    assert len(per_server) == 3 * len(stack.agents)
    assert abs(sum(per_server) / len(per_server) - fleet) > 2 * TOLERANCE * fleet


def test_fleet_rule_agrees_with_the_truth_of_both_agents(stack: Stack) -> None:
    # Steady scenario: the true ratio over the whole run and over the rule's last window agree.
    totals = [_truth_totals(a.truth) for a in stack.agents]
    true = sum(t["output"] for t in totals) / sum(t["energy"] for t in totals)
    fleet = _scalar(stack.client, "fleet:tokenergy_output_tokens_per_joule:ratio_rate5m", stack.t)
    assert fleet == pytest.approx(true, rel=TOLERANCE)


def test_fleet_energy_is_conserved_through_the_rules(stack: Stack) -> None:
    # Attributed + unattributed = all GPU energy, as rates summed over both agents.
    attributed = _scalar(stack.client, "fleet:tokenergy_energy_joules:rate5m", stack.t)
    spare = _scalar(stack.client, "fleet:tokenergy_unattributed_energy_joules:rate5m", stack.t)
    gpus = _scalar(stack.client, "fleet:tokenergy_gpu_energy_joules:rate5m", stack.t)
    assert attributed + spare == pytest.approx(gpus, rel=TOLERANCE)
    assert spare > 0, "the demo's spare GPU should show as unattributed"


# --------------------------------------------------------------------------------- federation


def test_global_prometheus_rules_evaluate_without_error(stack: Stack) -> None:
    groups = stack.global_client.get("/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all(r["type"] == "recording" for r in rules)
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


@pytest.mark.parametrize(
    "rule",
    [
        "fleet:tokenergy_output_tokens_per_joule:ratio_rate5m",
        "fleet:tokenergy_output_tokens_per_gpu_joule:ratio_rate5m",
        "fleet:tokenergy_cost_per_million_output_tokens:ratio_rate5m",
        "fleet:tokenergy_all_in_cost_per_million_output_tokens:ratio_rate5m",
    ],
)
def test_federated_fleet_rule_equals_the_leaf(stack: Stack, rule: str) -> None:
    # The global computes the fleet from federated per-target rates only. Ratios, not rates:
    # the global sees the leaf's rates up to a second late, and a rate over a 20 s window may
    # move a few % in a second when a loaded machine delays a scrape; a ratio of two rates from
    # the same rule evaluation does not.
    leaf = _scalar(stack.client, rule, stack.t)
    federated = _scalar(stack.global_client, rule, stack.t)
    assert federated == pytest.approx(leaf, rel=TOLERANCE)


def test_federated_instance_rules_equal_the_leaf(stack: Stack) -> None:
    rule = "instance:tokenergy_output_tokens_per_gpu_joule:ratio_rate5m"
    leaf = {
        r["metric"]["instance"]: float(r["value"][1]) for r in _query(stack.client, rule, stack.t)
    }
    federated = {
        r["metric"]["instance"]: float(r["value"][1])
        for r in _query(stack.global_client, rule, stack.t)
    }
    assert set(federated) == set(leaf) == {a.instance for a in stack.agents}
    for instance, value in leaf.items():
        assert federated[instance] == pytest.approx(value, rel=TOLERANCE)
