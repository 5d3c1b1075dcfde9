"""Simulated engines built as the real ones: prometheus_client registries and the engines' apps.

vLLM is served by prometheus-fastapi-instrumentator's ``expose`` (classic text whatever the
Accept header), SGLang and LMDeploy by prometheus_client's ASGI app (OpenMetrics, with escaped
names from prometheus_client 0.23 on, when the Accept header lists it). Multiprocess mode and
an older prometheus_client run in a child process (:class:`EngineSubprocess`), so the test
process never sets ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.clock import ManualClock
from agent.config import ScrapeSettings, ServerSettings
from agent.servers.profiles import read_exposition
from agent.servers.scraper import ServerScraper
from agent.simulation.engines import APP_ENGINES, EngineSubprocess
from agent.simulation.expositions import SimModelCounters
from agent.simulation.servers import SimulatedServer

ROOT = Path(__file__).resolve().parents[2]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
OLD_PROMETHEUS_CLIENT = "0.22.1"  # the last release before OpenMetrics name escaping (0.23)
NEWEST = tuple(int(p) for p in version("prometheus_client").split(".")[:2])

# (family name as the parser reports it, type, label names) the real engines declare.
REAL_FAMILIES: dict[str, list[tuple[str, str, set[str]]]] = {
    "vllm": [
        ("vllm:prompt_tokens", "counter", {"model_name", "engine"}),
        ("vllm:generation_tokens", "counter", {"model_name", "engine"}),
        ("vllm:prompt_tokens_cached", "counter", {"model_name", "engine"}),
        ("vllm:prefix_cache_hits", "counter", {"model_name", "engine"}),
        ("vllm:request_success", "counter", {"model_name", "engine", "finished_reason"}),
        ("vllm:num_requests_running", "gauge", {"model_name", "engine"}),
        ("vllm:kv_cache_usage_perc", "gauge", {"model_name", "engine"}),
        ("vllm:time_to_first_token_seconds", "histogram", {"model_name", "engine", "le"}),
        # prometheus-fastapi-instrumentator's families: no series before an API request.
        ("http_requests", "counter", set()),
    ],
    "sglang": [
        ("sglang:prompt_tokens", "counter", {"model_name"}),
        ("sglang:generation_tokens", "counter", {"model_name"}),
        ("sglang:cached_tokens", "counter", {"model_name", "cache_source"}),
        (
            "sglang:realtime_tokens",
            "counter",
            {"model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank", "dp_rank", "mode"},
        ),
        (
            "sglang:num_running_reqs",
            "gauge",
            {"model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank", "dp_rank"},
        ),
    ],
    "lmdeploy": [
        ("lmdeploy:prompt_tokens", "counter", {"model_name", "engine"}),
        ("lmdeploy:generation_tokens", "counter", {"model_name", "engine"}),
        ("lmdeploy:cached_tokens", "counter", {"model_name", "engine"}),
        ("lmdeploy:request_success", "counter", {"model_name", "engine", "finished_reason"}),
        ("lmdeploy:num_requests_running", "gauge", {"model_name", "engine"}),
        ("lmdeploy:backend_config_info", "gauge", {"backend", "max_batch_size", "session_len"}),
    ],
}
PROMPT = {e: f"{e}:prompt_tokens_total" for e in APP_ENGINES}
GENERATION = {e: f"{e}:generation_tokens_total" for e in APP_ENGINES}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _started(clock: ManualClock, engine: str, ranks: int = 2) -> SimulatedServer:
    server = SimulatedServer(f"sim-{engine}", engine, [MODEL], wall=clock.wall, ranks=ranks)
    server.start()
    return server


@pytest.fixture(params=APP_ENGINES)
def engine_server(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[SimulatedServer]:
    server = _started(clock, request.param)
    yield server
    server.stop()


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


def _advance(server: SimulatedServer, scale: int = 1) -> None:
    server.advance(
        MODEL,
        prompt_tokens=1_234_567 * scale,
        generation_tokens=345_679 * scale,
        cached_prompt_tokens=400_001 * scale,
        requests_finished=1_001 * scale,
        requests_running=7,
    )


def test_real_names_types_labels_and_registry_shape(engine_server: SimulatedServer) -> None:
    _advance(engine_server)
    text = httpx.get(engine_server.url, timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind, labels in REAL_FAMILIES[engine_server.engine]:
        assert name in families, name
        assert families[name].type == kind, name
        assert {k for s in families[name].samples for k in s.labels} == labels, name
    created = [n for n in families if n.endswith("_created")]
    engine = engine_server.engine
    # vLLM serves the default registry: _created series and the process collector.
    # SGLang serves a multiprocess registry (neither); LMDeploy disables _created.
    assert bool(created) == (engine == "vllm")
    assert ("process_start_time_seconds" in families) == (engine != "sglang")
    assert sum(_samples(text, PROMPT[engine]).values()) == 1_234_567
    assert sum(_samples(text, GENERATION[engine]).values()) == 345_679


def test_vllm_answers_classic_text_even_when_openmetrics_is_asked(clock: ManualClock) -> None:
    server = _started(clock, "vllm")
    try:
        _advance(server)
        accept = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        response = httpx.get(server.url, headers={"Accept": accept}, timeout=5)
        assert response.headers["content-type"].startswith("text/plain")
        assert "vllm:generation_tokens_total{" in response.text
        assert "# EOF" not in response.text
    finally:
        server.stop()


@pytest.mark.skipif(NEWEST < (0, 23), reason="name escaping arrived in prometheus_client 0.23")
@pytest.mark.parametrize("engine", ["sglang", "lmdeploy"])
def test_asgi_app_answers_openmetrics_with_escaped_names(clock: ManualClock, engine: str) -> None:
    server = _started(clock, engine)
    try:
        _advance(server)
        # Even with a low weight: prometheus_client ignores the q-values.
        accept = "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.1"
        response = httpx.get(server.url, headers={"Accept": accept}, timeout=5)
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert f"# TYPE {engine}:prompt_tokens counter" in response.text
        assert f"{engine}_prompt_tokens_total{{" in response.text
        assert f"{engine}:prompt_tokens_total{{" not in response.text
        plain = httpx.get(server.url, headers={"Accept": "text/plain"}, timeout=5).text
        assert f"{engine}:prompt_tokens_total{{" in plain
    finally:
        server.stop()


def test_rank_restart_starts_its_series_again_and_counts_what_no_scrape_saw(
    clock: ManualClock,
) -> None:
    server = _started(clock, "vllm")
    try:
        server.advance(MODEL, prompt_tokens=100, generation_tokens=40)
        first = httpx.get(server.url, timeout=5).text
        server.advance(MODEL, prompt_tokens=10, generation_tokens=6)  # 5 + 3 on each rank
        server.restart_rank(1)
        server.advance(MODEL, prompt_tokens=2, generation_tokens=2)
        second = httpx.get(server.url, timeout=5).text
    finally:
        server.stop()
    rank = {
        "0": (("engine", "0"), ("model_name", MODEL)),
        "1": (("engine", "1"), ("model_name", MODEL)),
    }
    assert _samples(second, GENERATION["vllm"]) == {rank["0"]: 20 + 3 + 1, rank["1"]: 1}
    created = "vllm:generation_tokens_created"
    assert _samples(second, created)[rank["1"]] > _samples(first, created)[rank["1"]]
    assert _samples(second, created)[rank["0"]] == _samples(first, created)[rank["0"]]
    state = server.state()
    assert (state.lost[MODEL].prompt_tokens, state.lost[MODEL].generation_tokens) == (5, 3)
    assert state.lifetime[MODEL].generation_tokens == 48


def test_a_dropped_rank_misses_one_scrape_then_comes_back_whole(clock: ManualClock) -> None:
    server = _started(clock, "vllm")
    try:
        server.advance(MODEL, generation_tokens=40)
        server.drop_rank_series(0)
        missing = httpx.get(server.url, timeout=5).text
        back = httpx.get(server.url, timeout=5).text
    finally:
        server.stop()
    assert [dict(k)["engine"] for k in _samples(missing, GENERATION["vllm"])] == ["1"]
    assert sum(_samples(back, GENERATION["vllm"]).values()) == 40
    assert server.state().lost[MODEL].generation_tokens == 0


def test_a_restart_builds_a_new_registry(clock: ManualClock) -> None:
    server = _started(clock, "vllm")
    try:
        server.advance(MODEL, generation_tokens=40)
        before = httpx.get(server.url, timeout=5).text
        clock.advance(60)
        server.restart()
        after = httpx.get(server.url, timeout=5).text
    finally:
        server.stop()
    assert sum(_samples(after, GENERATION["vllm"]).values()) == 0
    start = _samples(after, "process_start_time_seconds")[()]
    assert start == pytest.approx(_samples(before, "process_start_time_seconds")[()] + 60)


# -- child processes: multiprocess mode, another prometheus_client -------------------------------


def _counts(ranks: int, scale: int = 1) -> list[tuple[int, SimModelCounters]]:
    return [
        (
            r,
            SimModelCounters(
                model=MODEL,
                prompt_tokens=(1_000_003 + r) * scale,
                generation_tokens=(200_001 + r) * scale,
                cached_prompt_tokens=(300_007 + r) * scale,
                requests_finished=50 * scale,
                requests_running=3,
            ),
        )
        for r in range(ranks)
    ]


def _expected(counts: list[tuple[int, SimModelCounters]]) -> tuple[int, int, int]:
    return (
        sum(c.prompt_tokens for _, c in counts),
        sum(c.generation_tokens for _, c in counts),
        sum(c.cached_prompt_tokens for _, c in counts),
    )


def _scrape(url: str, engine: str) -> tuple[float | None, float | None, float | None]:
    scraper = ServerScraper(ServerSettings(name="sim", url=url, engine=engine), ScrapeSettings())
    try:
        reading = scraper.scrape()
    finally:
        scraper.close()
    (m,) = reading.models
    return m.input_tokens, m.output_tokens, m.cached_input_tokens


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_multiprocess_mode_in_a_child_process(tmp_path: Path, engine: str) -> None:
    # vLLM with --api-server-count > 1, and SGLang always, serve a MultiProcessCollector.
    counts = _counts(2)
    with EngineSubprocess(engine, ranks=2, multiprocess_dir=str(tmp_path), cwd=str(ROOT)) as child:
        child.apply(_counts(2, scale=0))
        child.apply(counts)
        text = httpx.get(child.url, headers={"Accept": "text/plain"}, timeout=10).text
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # never set in this process
    assert any(p.suffix == ".db" for p in tmp_path.iterdir())
    families = {f.name for f in text_string_to_metric_families(text)}
    assert not [n for n in families if n.endswith("_created")]
    assert "process_start_time_seconds" not in families
    assert "python_gc_objects_collected" not in families
    reading = read_exposition(text, engine)
    (m,) = reading.models
    assert (m.input_tokens, m.output_tokens) == _expected(counts)[:2]


@pytest.fixture(scope="session")
def old_prometheus_client(tmp_path_factory: pytest.TempPathFactory) -> str:
    """prometheus_client 0.22.1 in a directory of its own, for child processes only."""
    target = tmp_path_factory.mktemp("prometheus_client_old")
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--target", str(target), f"prometheus_client=={OLD_PROMETHEUS_CLIENT}",
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(
            f"cannot install prometheus_client {OLD_PROMETHEUS_CLIENT} from the package "
            f"registry: {result.stderr.strip().splitlines()[-1:]}"
        )
    return str(target)


@pytest.mark.parametrize(
    ("engine", "multiprocess"),
    [("vllm", False), ("sglang", True), ("lmdeploy", False)],
)
def test_scraper_reads_engines_on_an_older_prometheus_client(
    old_prometheus_client: str, tmp_path: Path, engine: str, multiprocess: bool
) -> None:
    counts = _counts(2)
    with EngineSubprocess(
        engine,
        ranks=2,
        multiprocess_dir=str(tmp_path) if multiprocess else None,
        python_path=[old_prometheus_client],
        cwd=str(ROOT),
    ) as child:
        assert child.prometheus_client_version == OLD_PROMETHEUS_CLIENT
        child.apply(counts)
        got = _scrape(child.url, engine)
    assert got == _expected(counts)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_scraper_reads_multiprocess_mode_on_the_newest_prometheus_client(
    tmp_path: Path, engine: str
) -> None:
    counts = _counts(2)
    with EngineSubprocess(engine, ranks=2, multiprocess_dir=str(tmp_path), cwd=str(ROOT)) as child:
        assert child.prometheus_client_version == version("prometheus_client")
        child.apply(counts)
        got = _scrape(child.url, engine)
    assert got == _expected(counts)


# -- `tokenergy inspect` and `tokenergy run` over HTTP, newest prometheus_client ----------------


@pytest.mark.parametrize("engine", APP_ENGINES)
def test_inspect_reads_the_engine_over_http(clock: ManualClock, engine: str) -> None:
    server = _started(clock, engine)
    try:
        _advance(server)
        result = subprocess.run(
            [sys.executable, "-m", "agent", "inspect", server.url, "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["engine"] == engine
    counts = doc["models"][MODEL]
    assert {k: counts[k] for k in ("input_tokens", "output_tokens", "cached_input_tokens")} == {
        "input_tokens": 1_234_567,
        "output_tokens": 345_679,
        "cached_input_tokens": 400_001,
    }


def _agent_tokens(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(url, timeout=5).text
    return {
        (s.labels["server"], s.labels["type"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "tokenergy_tokens_total"
    }


@pytest.mark.parametrize("engine", APP_ENGINES)
def test_run_counts_the_engine_over_http(clock: ManualClock, tmp_path: Path, engine: str) -> None:
    servers = [_started(clock, engine)]
    config = tmp_path / "agent.toml"
    config.write_text(
        "[sampling]\ninterval_seconds = 0.3\nwindow_seconds = 5\n"
        + "".join(
            f'[[servers]]\nname = "{s.engine}"\nurl = "{s.url}"\nengine = "auto"\ngpus = [0]\n'
            for s in servers
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "agent", "run", "--config", str(config),
            "--simulate-gpus", "1", "--listen", "127.0.0.1:0",
        ],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            match = re.search(r"listen=(\S+)", line)
            if match and "started" in line:
                found.append(match.group(1))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60) and found, "".join(lines)
        url = f"http://{found[0]}/metrics"
        # The agent took its baseline at start: it counts from here on.
        for s in servers:
            _advance(s)
        want = {
            (s.engine, t): v
            for s in servers
            for t, v in (("input", 1_234_567), ("output", 345_679))
        }
        deadline = time.monotonic() + 30
        got: dict[tuple[str, str], float] = {}
        while time.monotonic() < deadline:
            got = _agent_tokens(url)
            if all(got.get(k) == v for k, v in want.items()):
                break
            time.sleep(0.2)
        assert {k: got.get(k) for k in want} == want, "".join(lines[-20:])
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        reader.join(5)
        for s in servers:
            s.stop()


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_in_process_registry_serves_what_multiprocess_mode_serves(
    clock: ManualClock, tmp_path: Path, engine: str
) -> None:
    # The demo's engines run in-process, where multiprocess mode cannot be switched on: their
    # engine series must be the ones a real multiprocess registry serves for the same counts.
    server = _started(clock, engine)
    try:
        _advance(server)
        in_process = httpx.get(server.url, headers={"Accept": "text/plain"}, timeout=5).text
        state = server.state()
    finally:
        server.stop()
    shown = [
        (
            r,
            SimModelCounters(
                model=MODEL,
                prompt_tokens=c.prompt_tokens,
                generation_tokens=c.generation_tokens,
                cached_prompt_tokens=c.cached_prompt_tokens,
                requests_finished=c.requests_finished,
                requests_running=7 // 2 + (1 if r == 0 else 0),
            ),
        )
        for r, c in enumerate(state.ranks[MODEL])
    ]
    with EngineSubprocess(engine, ranks=2, multiprocess_dir=str(tmp_path), cwd=str(ROOT)) as child:
        child.apply(shown)
        multi = httpx.get(child.url, headers={"Accept": "text/plain"}, timeout=10).text

    def engine_series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name.startswith(f"{engine}:") and not s.name.endswith("_created")
        }

    assert engine_series(in_process) == engine_series(multi)
