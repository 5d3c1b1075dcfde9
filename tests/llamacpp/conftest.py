"""A real llama.cpp ``llama-server`` on 127.0.0.1, serving a tiny random-weight model.

The binary comes from ``tests/llamacpp/build_llama_server.sh`` (cached under
``.cache/llama-server/<llama-cpp-python version>/``) or from ``$TOKENERGY_LLAMA_SERVER``. Where
it has not been built the tests skip and say how to build it; with
``TOKENERGY_REQUIRE_LLAMA_SERVER=1`` (CI) a missing binary is an error instead.

Tests run with ``--import-mode=importlib`` and cannot import a conftest, so the server handle
travels as a fixture (``start_llama``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VERSION = (HERE / "llama-cpp-python.version").read_text().strip()
BUILD_SCRIPT = "tests/llamacpp/build_llama_server.sh"
START_TIMEOUT_S = 60.0


def find_binary() -> Path | None:
    """The llama-server to test: ``$TOKENERGY_LLAMA_SERVER``, else the build script's cache."""
    explicit = os.environ.get("TOKENERGY_LLAMA_SERVER")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("TOKENERGY_LLAMA_CACHE") or ROOT / ".cache" / "llama-server")
    candidate = cache / VERSION / "llama-server"
    return candidate if candidate.is_file() else None


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """Path of a runnable llama-server; skips (or fails in CI) when there is none."""
    binary = find_binary()
    problem = None
    if binary is None:
        problem = (
            f"llama-server for llama-cpp-python {VERSION} is not built: run {BUILD_SCRIPT} "
            "(about 6 minutes on 2 cores) or set TOKENERGY_LLAMA_SERVER"
        )
    elif not os.access(binary, os.X_OK):
        problem = f"TOKENERGY_LLAMA_SERVER={binary} is not an executable file"
    if problem is not None:
        if os.environ.get("TOKENERGY_REQUIRE_LLAMA_SERVER") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight model, written by make_tiny_gguf.py as a user would run it."""
    out = tmp_path_factory.mktemp("model") / "tiny.gguf"
    subprocess.run(
        [sys.executable, str(HERE / "make_tiny_gguf.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LlamaServer:
    """One llama-server process; ``restart()`` brings a new one up on the same port.

    Attributes:
        binary: The llama-server executable.
        model: The .gguf file it serves.
        port: TCP port on 127.0.0.1, kept across restarts.
        log_dir: Where each process's output goes (``llama-server-<port>-<n>.log``).
        metrics: Whether to pass ``--metrics`` (without it /metrics answers 501).
    """

    binary: Path
    model: Path
    port: int
    log_dir: Path
    metrics: bool = True
    starts: int = 0
    proc: subprocess.Popen[bytes] | None = None
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60.0))

    @property
    def base(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """The current process's log file."""
        return self.log_dir / f"llama-server-{self.port}-{self.starts}.log"

    def start(self) -> LlamaServer:
        """Start the process and wait until /health answers 200 (the model is loaded)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        cmd = [
            str(self.binary),
            "--model", str(self.model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--ctx-size", "2048",
            # One slot: consecutive requests share its KV cache, so prompt-cache hits are
            # deterministic. One thread: the CI machine has 2 shared cores.
            "--parallel", "1",
            "--threads", "1",
            "--threads-http", "2",
            "--seed", "42",
            "--no-webui",
        ] + (["--metrics"] if self.metrics else [])  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {self.proc.returncode}: {self.tail()}")
            try:
                if self.client.get(f"{self.base}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama-server not healthy after {START_TIMEOUT_S:g} s: {self.tail()}")

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops it; SIGKILL if it lingers past 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> LlamaServer:
        """Stop this process and start a new one on the same port."""
        self.stop()
        return self.start()

    def complete(self, prompt: str, n_predict: int = 4, *, openai: bool = False) -> Any:
        """One greedy completion with the prompt cache on; returns the decoded JSON body.

        Args:
            prompt: The prompt text.
            n_predict: Tokens to generate; ``ignore_eos`` makes it exact.
            openai: Use the OpenAI-compatible ``/v1/completions`` instead of ``/completion``.
        """
        body: dict[str, object] = {
            "prompt": prompt,
            "temperature": 0.0,
            "seed": 42,
            "cache_prompt": True,
            "ignore_eos": True,
        }
        if openai:
            body |= {"max_tokens": n_predict, "model": "tiny"}
        else:
            body["n_predict"] = n_predict
        response = self.client.post(
            f"{self.base}/v1/completions" if openai else f"{self.base}/completion", json=body
        )
        response.raise_for_status()
        return response.json()

    def tail(self, lines: int = 15) -> str:
        """The last lines of the current process's log, for error messages."""
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# A long shared prefix: with one slot and ``cache_prompt``, each request after the first reuses
# the prefix's KV cache, so llama-server reports cache hits (``timings.cache_n``).
PREFIX = (
    "Once upon a time there was a small server in a large city. It was fast and light, and "
    "the people of the world would ask it a question, and it would tell them a story about "
    "energy, tokens and the power of a green river. "
)
TOPICS = ("the mountain", "the garden", "the river", "a blue house", "the system", "a joule")


@dataclass
class Usage:
    """Token counts of one completion, as the response reports them.

    Attributes:
        computed: Prompt tokens evaluated (``timings.prompt_n``), cache hits excluded.
        cached: Prompt tokens reused from the cache (``timings.cache_n``).
        output: Generated tokens (``tokens_predicted``, or ``usage.completion_tokens``).
        prompt: All prompt tokens as the response states them (``tokens_evaluated``, or
            ``usage.prompt_tokens``); equals computed + cached.
    """

    computed: int
    cached: int
    output: int
    prompt: int

    @classmethod
    def of(cls, body: Any) -> Usage:
        """Read one response body of /completion or /v1/completions."""
        timings = body["timings"]
        if "usage" in body:
            output, prompt = body["usage"]["completion_tokens"], body["usage"]["prompt_tokens"]
        else:
            output, prompt = body["tokens_predicted"], body["tokens_evaluated"]
        return cls(int(timings["prompt_n"]), int(timings["cache_n"]), int(output), int(prompt))


@dataclass
class Totals:
    """Sums over responses: what the server's counters and the agent must show."""

    responses: list[Usage] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"Totals({len(self.responses)} responses: input={self.input} "
            f"computed={self.computed} cached={self.cached} output={self.output})"
        )

    @property
    def input(self) -> int:
        """All prompt tokens: computed + cached."""
        return sum(u.computed + u.cached for u in self.responses)

    @property
    def computed(self) -> int:
        """Prompt tokens evaluated, cache hits excluded."""
        return sum(u.computed for u in self.responses)

    @property
    def cached(self) -> int:
        """Prompt-cache hits."""
        return sum(u.cached for u in self.responses)

    @property
    def output(self) -> int:
        """Generated tokens."""
        return sum(u.output for u in self.responses)


def workload(
    server: LlamaServer, requests: int, totals: Totals, offset: int = 0, pause: float = 0.0
) -> Totals:
    """Send ``requests`` completions that share a prefix and repeat prompts; add to ``totals``.

    Every third request goes through /v1/completions; every fourth repeats the previous
    prompt exactly (a near-full cache hit); output lengths vary from 2 to 6 tokens.

    Args:
        server: The llama-server to send to.
        requests: How many completions.
        totals: Where each response's counts are appended.
        offset: Index of the first request (varies prompts and lengths between batches).
        pause: Seconds between requests.
    """
    prompt = PREFIX
    for i in range(offset, offset + requests):
        if i % 4 != 3:
            prompt = f"{PREFIX}Tell me about {TOPICS[i % len(TOPICS)]} number {i}."
        body = server.complete(prompt, n_predict=2 + i % 5, openai=i % 3 == 2)
        totals.responses.append(Usage.of(body))
        if pause:
            time.sleep(pause)
    return totals


@dataclass
class Kit:
    """What the test modules need from here (they cannot import a conftest)."""

    new_totals: Callable[[], Totals] = Totals
    workload: Callable[..., Totals] = workload
    root: Path = ROOT


@pytest.fixture(scope="session")
def kit() -> Kit:
    """Workload helpers: ``kit.workload(server, n, kit.new_totals())``."""
    return Kit()


StartLlama = Callable[..., LlamaServer]


@pytest.fixture(scope="module")
def start_llama(
    llama_server_bin: Path, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartLlama]:
    """Start llama-servers: ``start_llama(metrics=True)``; all are stopped at teardown."""
    servers: list[LlamaServer] = []
    logs = tmp_path_factory.mktemp("llama-logs")

    def start(metrics: bool = True) -> LlamaServer:
        server = LlamaServer(llama_server_bin, tiny_gguf, free_port(), logs, metrics)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
        server.client.close()
