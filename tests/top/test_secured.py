"""`top` and `plan --agent` read an agent served with TLS and basic auth.

The agent has an exporter-toolkit web config; the commands use the client half of the same
conventions (`basic_auth`, `tls_config`).
"""

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
import trustme

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("secured")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(work / "server.key")
    cert.cert_chain_pems[0].write_to_path(work / "server.pem")
    ca.cert_pem.write_to_path(work / "ca.pem")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (work / "web.yml").write_text(
        f"tls_server_config:\n  cert_file: {work / 'server.pem'}\n"
        f"  key_file: {work / 'server.key'}\nbasic_auth_users:\n  watcher: {hashed}\n"
    )
    (work / "agent.toml").write_text(f'[http]\nweb_config_file = "{work / "web.yml"}"\n')
    (work / "password").write_text("s3cret\n")
    (work / "client.yml").write_text(
        f"basic_auth:\n  username: watcher\n  password_file: {work / 'password'}\n"
        f"tls_config:\n  ca_file: {work / 'ca.pem'}\n"
    )
    (work / "no-auth.yml").write_text(f"tls_config:\n  ca_file: {work / 'ca.pem'}\n")
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    with (work / "demo.log").open("wb") as log:
        demo = subprocess.Popen(
            [sys.executable, "-m", "agent", "demo", "--duration", "0",
             "--listen", f"127.0.0.1:{port}", "--config", str(work / "agent.toml")],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    trust = ssl.create_default_context(cafile=str(work / "ca.pem"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"{url}/metrics", verify=trust, timeout=1)
                if response.status_code == 401:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (work / "demo.log").read_text()[-2000:]
            time.sleep(0.2)
        yield url, work
    finally:
        demo.terminate()
        demo.wait(timeout=10)


def _top(url: str, config: Path, count: int) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "top", url, "--interval", "1", "--count", str(count),
         "--http-config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_top_with_tls_and_basic_auth(secured: tuple[str, Path]) -> None:
    url, work = secured
    lines = _top(url, work / "client.yml", 2)
    vllm = [line for line in lines if "server=vllm" in line]
    assert len(vllm) == 2 and "status=up" in vllm[1] and "out_tps=-" not in vllm[1]


def test_top_without_credentials_shows_the_node_down_with_the_reason(
    secured: tuple[str, Path],
) -> None:
    url, work = secured
    [line] = _top(url, work / "no-auth.yml", 1)
    assert 'status="DOWN 0s"' in line and f'error="{url}/metrics answered HTTP 401"' in line
    # Without the CA the agent's certificate is not trusted.
    assert "CERTIFICATE_VERIFY_FAILED" in _top_no_ca(url)


def _top_no_ca(url: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "top", url, "--count", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    return line


def test_plan_agent_with_tls_and_basic_auth(secured: tuple[str, Path]) -> None:
    url, work = secured
    result = subprocess.run(
        [sys.executable, "-m", "agent", "plan", "--agent", url, "--window", "2s", "--json",
         "--http-config", str(work / "client.yml")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"] == "agent" and data["fleet"]["measured"]["output_tps"] > 0
