"""The command line: clear one-line errors, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
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


def test_a_subcommand_is_one_more_command_entry() -> None:
    import argparse
    import logging

    from agent.cli import COMMANDS, Command, build_parser

    seen: list[argparse.Namespace] = []

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--horizon", type=float, default=1.0)

    def run(args: argparse.Namespace, log: logging.Logger) -> int:
        seen.append(args)
        return 7

    parser = build_parser((*COMMANDS, Command("forecast", "forecast capacity", configure, run)))
    args = parser.parse_args(["forecast", "--horizon", "3", "--log-level", "debug"])
    assert args.handler(args, logging.getLogger("t")) == 7
    assert seen[0].horizon == 3.0 and seen[0].log_level == "debug"
    assert parser.parse_args(["--log-level", "error", "forecast"]).log_level == "error"
    assert parser.parse_args(["forecast"]).log_level == "info"
    assert [c.name for c in COMMANDS] == ["run", "demo", "inspect", "check-config", "plan", "top"]


def test_failures_of_run_are_one_logfmt_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[sampling]\ninterval_seconds = 0\n[pricing]\npue = 9\n")
    result = tokenergy("run", "--config", str(config))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("ts=") and "level=error" in lines[0]
    assert f"source={config}" in lines[0] and "sampling.interval_seconds = 0" in lines[0]


class CountingEvent(threading.Event):
    """An Event that counts the waits started on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_main_thread_sleeps_until_a_signal_and_reloads_once_per_sighup() -> None:
    from agent.cli import wait_for_signals

    stop, hup, wake = threading.Event(), threading.Event(), CountingEvent()
    reloads: list[float] = []
    waiter = threading.Thread(
        target=wait_for_signals, args=(stop, hup, wake, lambda: reloads.append(1.0))
    )
    waiter.start()
    time.sleep(0.6)
    assert wake.waits == 1  # asleep, not polling (the old loop woke every 0.2 s)
    for sent in (1, 2):
        hup.set()  # what the SIGHUP handler does
        wake.set()
        deadline = time.monotonic() + 5.0
        # Reloaded, then asleep again (one more wait) before the next signal.
        while (len(reloads), wake.waits) != (sent, sent + 1) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert reloads == [1.0, 1.0]
    assert wake.waits == 3
    stop.set()  # SIGTERM
    wake.set()
    waiter.join(5.0)
    assert not waiter.is_alive()
