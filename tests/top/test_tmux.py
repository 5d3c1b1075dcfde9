"""`tokenergy top` in a real terminal (tmux) against a running demo agent, and through a pipe."""

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(
    what: str, check: Callable[[], bool], timeout: float, show: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{show()}")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "demo.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", "demo", "--duration", "90",
             "--listen", f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip

    def ready() -> bool:
        try:
            return "tokenergy_tokens_total" in httpx.get(f"{url}/metrics", timeout=1).text
        except httpx.HTTPError:
            return False

    try:
        _wait("the demo agent", ready, 30)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def test_top_in_tmux(demo: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux not installed (Debian package tmux)")
    url, process = demo
    dead = f"http://127.0.0.1:{_free_port()}"
    socket_name = f"tokenergy-top-{_free_port()}"
    command = shlex.join(
        [sys.executable, "-m", "agent", "top", url, dead, "--interval", "1", "--timeout", "1"]
    )

    # pytest's environment may pin COLUMNS/LINES; the pane's own size must rule.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}

    def tm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tmux, "-L", socket_name, *args], capture_output=True, text=True, timeout=10, env=env
        )

    def screen() -> str:
        return tm("capture-pane", "-p", "-t", "top").stdout

    started = tm(
        "new-session", "-d", "-s", "top", "-x", "250", "-y", "40", "-c", str(ROOT), command
    )
    assert started.returncode == 0, started.stderr
    try:

        def cells(server: str) -> list[list[str]]:
            return [
                [c.strip() for c in line.split("│")[1:-1]]
                for line in screen().splitlines()
                if f"│ {server} " in line
            ]

        def rates_shown() -> bool:
            rows = cells("vllm") + cells("sglang") + cells("llamacpp")
            # node, server, model, status, in tok/s, out tok/s, W, tok/J, ...
            return len(rows) == 3 and all(r[3] == "up" and r[5] not in ("-", "") for r in rows)

        _wait("rates for the demo's servers", rates_shown, 30, screen)
        text = screen()
        assert "sort: out" in text and "[s] next sort" in text
        for server in ("vllm", "sglang", "llamacpp"):
            assert server in text
        # The node that never answered is listed as down.
        assert dead in text and "DOWN" in text
        # A sort key changes the order: `s` goes from out to in.
        tm("send-keys", "-t", "top", "s")
        _wait("sort by input tokens", lambda: "sort: in" in screen(), 10, screen)
        # The demo stops: its node is shown as down, its rows kept.
        process.terminate()
        process.wait(timeout=10)

        def demo_down() -> bool:
            rows = cells("vllm") + cells("sglang") + cells("llamacpp")
            return len(rows) == 3 and all(r[3].startswith("DOWN") and r[5] == "-" for r in rows)

        _wait("the stopped demo shown as down", demo_down, 15, screen)
        tm("send-keys", "-t", "top", "q")
        _wait("top to quit on q", lambda: tm("has-session", "-t", "top").returncode != 0, 10)
    finally:
        tm("kill-server")


def test_plain_lines_through_a_pipe(demo: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = demo
    result = subprocess.run(
        [sys.executable, "-m", "agent", "top", url, "--interval", "1", "--count", "2"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Two refreshes of three rows; no terminal control sequences.
    assert len(lines) == 6 and "\x1b" not in result.stdout
    assert all(f"node={url} " in line for line in lines)
    second = [line for line in lines[3:] if "server=vllm" in line]
    assert second and "out_tps=-" not in second[0] and "status=up" in second[0]
