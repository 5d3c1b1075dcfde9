"""The command line: clear one-line errors, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tokenergy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("command", [["run", "--simulate-gpus", "1"], ["demo", "--duration", "1"]])
def test_port_in_use_is_one_clear_line(busy_port: int, command: list[str]) -> None:
    result = tokenergy(*command, "--listen", f"127.0.0.1:{busy_port}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{busy_port}: Address already in use" in result.stderr


def test_bad_web_config_names_the_key(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  bob: notahash\n")
    result = tokenergy("run", "--simulate-gpus", "1", "--listen", "127.0.0.1:0",
                       "--web-config-file", str(web))  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "basic_auth_users.bob: not a bcrypt hash" in result.stderr


def test_bad_config_file_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[sampling]\ninterval_secnds = 5\n[pricing]\npue = 0.2\n")
    result = tokenergy("run", "--config", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "sampling.interval_secnds: unknown field" in result.stderr
    assert "pricing.pue = 0.2" in result.stderr


def test_unknown_scenario_is_refused_with_the_choices() -> None:
    result = tokenergy("demo", "--scenario", "sunny")
    assert result.returncode == 2
    assert "invalid choice: 'sunny'" in result.stderr and "bursty" in result.stderr
