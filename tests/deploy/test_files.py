"""Every deployment file parses, and every example agent config validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
TOML_FILES = sorted(DEPLOY.rglob("*.toml"))


def test_the_deploy_tree_has_every_mode() -> None:
    for path in (
        "docker/Dockerfile",
        "compose/docker-compose.yml",
        "systemd/tokenergy.service",
        "kubernetes/overlays/sidecar/kustomization.yaml",
        "kubernetes/overlays/daemonset/kustomization.yaml",
        "README.md",
    ):
        assert (DEPLOY / path).is_file(), path


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents, f"{path} is empty"
    assert all(isinstance(d, dict) for d in documents)


@pytest.mark.parametrize("path", TOML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_example_config_validates(path: Path) -> None:
    settings = load_settings(path, use_env=False)
    assert settings.http.listen.endswith(":10110")


def test_a_broken_example_would_be_caught(tmp_path: Path) -> None:
    """load_settings refuses a typo, so the passes above are meaningful."""
    broken = tmp_path / "config.toml"
    broken.write_text(TOML_FILES[0].read_text().replace("[sampling]", "[samplng]"))
    with pytest.raises(ConfigError, match="samplng"):
        load_settings(broken, use_env=False)
