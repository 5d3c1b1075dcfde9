"""The docker-compose demo stack: every path it mounts exists, and the three services agree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import build_parser
from agent.config import split_listen

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy/compose"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    return data


def mounts(service: str) -> dict[str, Path]:
    """Container path -> host path (bind mounts only), host paths resolved from the compose dir."""
    found: dict[str, Path] = {}
    for volume in compose()["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            found[target] = (COMPOSE_DIR / source).resolve()
    return found


def host_path(service: str, container_path: str) -> Path:
    """Where a path inside a container comes from on the host, through the bind mounts."""
    for target, source in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / Path(container_path).relative_to(target)
    raise AssertionError(f"{service}: {container_path} is not under any bind mount")


def test_three_services() -> None:
    assert set(compose()["services"]) == {"tokenergy", "prometheus", "grafana"}


@pytest.mark.parametrize("service", ["tokenergy", "prometheus", "grafana"])
def test_every_bind_mount_and_build_path_exists(service: str) -> None:
    spec = compose()["services"][service]
    for target, source in mounts(service).items():
        assert source.exists(), f"{service}: {source} (mounted at {target}) does not exist"
        assert ROOT in source.parents, f"{service}: {source} is outside the repository"
    if "build" in spec:
        context = (COMPOSE_DIR / spec["build"]["context"]).resolve()
        assert context == ROOT
        assert (context / spec["build"]["dockerfile"]).is_file()


def test_agent_runs_the_demo_until_stopped_on_the_published_port() -> None:
    spec = compose()["services"]["tokenergy"]
    args = build_parser().parse_args([*spec["entrypoint"][1:], *spec["command"]])
    assert spec["entrypoint"][0] == "tokenergy"
    assert args.command == "demo"
    assert args.duration == 0
    host, port = split_listen(args.listen)
    assert host == "0.0.0.0", "must listen beyond the container's loopback"
    assert f"127.0.0.1:{port}:{port}" in spec["ports"]
    assert spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"]


def test_prometheus_loads_the_rules_and_scrapes_the_agent() -> None:
    config_path = host_path("prometheus", "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_path.read_text())
    (pattern,) = config["rule_files"]
    rule_targets = [t for t in mounts("prometheus") if Path(t).match(pattern)]
    assert [host_path("prometheus", t) for t in rule_targets] == [
        ROOT / "dashboards/prometheus/rules.yml"
    ]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "tokenergy"  # the job AgentAbsent watches
    (target,) = job["static_configs"][0]["targets"]
    service, _, port = target.partition(":")
    assert service == "tokenergy"
    command = compose()["services"]["tokenergy"]["command"]
    assert command[command.index("--listen") + 1].endswith(f":{port}")


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    config = yaml.safe_load(host_path("prometheus", "/etc/prometheus/prometheus.yml").read_text())
    config["rule_files"] = [str(ROOT / "dashboards/prometheus/rules.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _dashboards() -> list[Path]:
    return sorted((ROOT / "dashboards/grafana").glob("*.json"))


def _provisioning(kind: str) -> dict[str, Any]:
    (path,) = sorted(host_path("grafana", f"/etc/grafana/provisioning/{kind}").glob("*.yml"))
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def test_grafana_provisions_the_dashboards_and_home() -> None:
    (provider,) = _provisioning("dashboards")["providers"]
    assert provider["type"] == "file"
    folder = host_path("grafana", provider["options"]["path"])
    assert folder == ROOT / "dashboards/grafana"
    assert _dashboards(), "no dashboard in dashboards/grafana"
    home = compose()["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert host_path("grafana", home).is_file()


def _datasource_variable_default(dashboard: dict[str, Any]) -> str | None:
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "datasource":
            current = variable.get("current", {})
            value = current.get("value") if isinstance(current, dict) else None
            return str(value) if value else None
    return None


def test_datasource_uid_matches_the_dashboards() -> None:
    """File provisioning does not resolve ${DS_...} inputs: panels must find this uid directly."""
    (datasource,) = _provisioning("datasources")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True
    for path in _dashboards():
        text = path.read_text()
        dashboard = json.loads(text)
        assert "__inputs" not in dashboard, f"{path.name}: import-wizard inputs break provisioning"
        assert not re.search(r"\$\{DS_[A-Z_]+\}", text), f"{path.name}: ${{DS_...}} reference"
        default = _datasource_variable_default(dashboard)
        if default is not None and not default.startswith("$"):
            assert default == datasource["uid"], f"{path.name}: datasource default {default}"
        fixed = {
            str(ds["uid"])
            for ds in re.findall(r'"datasource":\s*(\{[^{}]*\})', text)
            for ds in [json.loads(ds)]
            if ds.get("type") == "prometheus" and not str(ds.get("uid", "$")).startswith("$")
        }
        assert fixed <= {datasource["uid"]}, f"{path.name}: hard-coded datasource uids {fixed}"


def test_ports_are_published_on_loopback_only() -> None:
    for name, spec in compose()["services"].items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def _compose_command() -> tuple[list[str], bool] | None:
    """A Compose CLI and whether it knows Compose v2's top-level `name` (v1 does not)."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"], True
    legacy = shutil.which("docker-compose")
    return ([legacy], False) if legacy else None


def test_compose_file_passes_the_compose_schema(tmp_path: Path) -> None:
    """`compose config` validates against the Compose schema without a Docker engine."""
    found = _compose_command()
    if found is None:
        pytest.skip("no `docker compose` or `docker-compose` (Debian package docker-compose)")
    command, knows_name = found
    path = COMPOSE_DIR / "docker-compose.yml"
    if not knows_name:
        spec = compose()
        assert spec.pop("name") == "tokenergy-demo"
        path = tmp_path / "docker-compose.yml"
        path.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [*command, "-f", str(path), "--project-directory", str(COMPOSE_DIR), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
