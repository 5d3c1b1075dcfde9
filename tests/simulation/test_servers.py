"""Simulated inference servers: real HTTP on 127.0.0.1, restart, down/up, bounded requests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from agent.clock import ManualClock
from agent.simulation.expositions import SimModelCounters
from agent.simulation.servers import MAX_CONCURRENT_REQUESTS, SimulatedServer

# Token counter sample names per engine (see agent/servers/README.md).
PROMPT_SAMPLES = {
    "vllm": "vllm:prompt_tokens_total",
    "sglang": "sglang:prompt_tokens_total",
    "llamacpp": "llamacpp:prompt_tokens_total",
}
GENERATION_SAMPLES = {
    "vllm": "vllm:generation_tokens_total",
    "sglang": "sglang:generation_tokens_total",
    "llamacpp": "llamacpp:tokens_predicted_total",
}
ENGINES = [
    ("vllm", "meta-llama/Llama-3.1-8B-Instruct", 2),
    ("sglang", "Qwen/Qwen2.5-7B", 1),
    ("llamacpp", "", 1),
]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _server(clock: ManualClock, engine: str, model: str, ranks: int) -> SimulatedServer:
    return SimulatedServer(f"sim-{engine}", engine, [model], wall=clock.wall, ranks=ranks)


@pytest.fixture
def vllm(clock: ManualClock) -> Iterator[SimulatedServer]:
    server = _server(clock, "vllm", "m", 2)
    server.start()
    yield server
    server.stop()


def _sum(text: str, sample_name: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample_name
    )


@pytest.mark.parametrize(("engine", "model", "ranks"), ENGINES)
def test_serves_a_parseable_exposition_whose_sums_match(
    clock: ManualClock, engine: str, model: str, ranks: int
) -> None:
    server = _server(clock, engine, model, ranks)
    server.start()
    try:
        server.advance(
            model,
            prompt_tokens=345_677,
            generation_tokens=300_001,
            cached_prompt_tokens=5,
            requests_finished=9,
            requests_running=3,
        )
        response = httpx.get(server.url, timeout=5)
        assert response.status_code == 200
        # prometheus-fastapi-instrumentator answers with prometheus_client's newest text type.
        expected = CONTENT_TYPE_LATEST if engine == "vllm" else "text/plain; version=0.0.4"
        assert response.headers["content-type"].startswith(expected)
        text = response.text
        prompt = _sum(text, PROMPT_SAMPLES[engine])
        if engine == "llamacpp":  # llama-server counts the cache hits apart
            prompt += _sum(text, "llamacpp:prompt_tokens_cached_total")
        assert prompt == 345_677
        assert _sum(text, GENERATION_SAMPLES[engine]) == 300_001
    finally:
        server.stop()


def test_vllm_exposition_has_one_series_per_rank(vllm: SimulatedServer) -> None:
    vllm.advance("m", generation_tokens=11)
    text = httpx.get(vllm.url, timeout=5).text
    engines = {
        s.labels.get("engine")
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == GENERATION_SAMPLES["vllm"]
    }
    assert engines == {"0", "1"}


@pytest.fixture
def llamacpp(clock: ManualClock) -> Iterator[SimulatedServer]:
    server = _server(clock, "llamacpp", "", 1)
    server.start()
    yield server
    server.stop()


def test_unknown_path_is_404(vllm: SimulatedServer, llamacpp: SimulatedServer) -> None:
    for server in (vllm, llamacpp):
        response = httpx.get(server.url.replace("/metrics", "/v1/models"), timeout=5)
        assert response.status_code == 404


def test_llamacpp_sends_its_start_as_monotonic_microseconds(clock: ManualClock) -> None:
    server = SimulatedServer("l", "llamacpp", [""], wall=clock.wall, monotonic=clock.monotonic)
    server.start()
    try:
        header = httpx.get(server.url, timeout=5).headers["Process-Start-Time-Unix"]
        assert int(header) == int(clock.monotonic() * 1e6)
        clock.advance(7)
        server.restart()
        header = httpx.get(server.url, timeout=5).headers["Process-Start-Time-Unix"]
        assert int(header) == int(clock.monotonic() * 1e6)
    finally:
        server.stop()


def test_restart_resets_served_counters_but_not_lifetime(
    clock: ManualClock, vllm: SimulatedServer
) -> None:
    vllm.advance("m", prompt_tokens=100, generation_tokens=40)
    before = vllm.state()
    clock.advance(30)
    vllm.restart()
    vllm.advance("m", prompt_tokens=7, generation_tokens=3)
    after = vllm.state()
    assert after.served["m"].prompt_tokens == 7
    assert after.served["m"].generation_tokens == 3
    assert after.lifetime["m"].prompt_tokens == 107
    assert after.lifetime["m"].generation_tokens == 43
    assert after.start_time_seconds == before.start_time_seconds + 30
    assert after.restarts == 1
    assert _sum(httpx.get(vllm.url, timeout=5).text, GENERATION_SAMPLES["vllm"]) == 3


def test_restart_moves_start_time_forward_even_without_clock_movement(
    vllm: SimulatedServer,
) -> None:
    first = vllm.state().start_time_seconds
    vllm.restart()
    assert vllm.state().start_time_seconds > first


def test_down_refuses_connections_then_recovers_on_the_same_port(vllm: SimulatedServer) -> None:
    vllm.advance("m", generation_tokens=5)
    port = vllm.port
    vllm.set_down(True)
    assert vllm.state().down
    with pytest.raises(httpx.ConnectError):
        httpx.get(vllm.url, timeout=2)
    vllm.advance("m", generation_tokens=6)  # counters keep what happens while unreachable
    vllm.set_down(False)
    assert vllm.port == port
    response = httpx.get(vllm.url, timeout=5)
    assert response.status_code == 200
    assert _sum(response.text, GENERATION_SAMPLES["vllm"]) == 11


def test_set_down_before_start_keeps_it_closed_until_up(clock: ManualClock) -> None:
    server = _server(clock, "sglang", "m", 1)
    server.set_down(True)
    server.start()
    try:
        assert server.port == 0  # never bound
        server.set_down(False)
        assert server.port != 0
        assert httpx.get(server.url, timeout=5).status_code == 200
    finally:
        server.stop()


def test_stop_then_up_does_not_reopen(vllm: SimulatedServer) -> None:
    vllm.stop()
    vllm.set_down(False)
    with pytest.raises(httpx.ConnectError):
        httpx.get(vllm.url, timeout=2)


def test_a_failing_renderer_gives_500_and_the_server_lives_on(clock: ManualClock) -> None:
    calls = []

    def render(
        engine: str,
        models: Sequence[SimModelCounters],
        *,
        ranks: int = 1,
        start_time_seconds: float,
    ) -> str:
        calls.append(engine)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return "ok 1\n"

    server = SimulatedServer("x", "vllm", ["m"], wall=clock.wall, render=render)
    server.start()
    try:
        assert httpx.get(server.url, timeout=5).status_code == 500
        second = httpx.get(server.url, timeout=5)
        assert second.status_code == 200
        assert second.text == "ok 1\n"
    finally:
        server.stop()


def test_requests_over_the_cap_are_dropped_not_queued(llamacpp: SimulatedServer) -> None:
    # Idle connections hold every request slot (each handler waits for a request line).
    idle = [
        socket.create_connection(("127.0.0.1", llamacpp.port))
        for _ in range(MAX_CONCURRENT_REQUESTS)
    ]
    try:
        # Give the accept loop time to hand each to a handler thread.
        deadline = threading.Event()
        deadline.wait(0.3)
        with pytest.raises(httpx.TransportError) as caught:
            httpx.get(llamacpp.url, timeout=3)
        assert not isinstance(caught.value, httpx.TimeoutException)
    finally:
        for s in idle:
            s.close()
    # Closed clients free their slots at once.
    for _ in range(50):
        try:
            if httpx.get(llamacpp.url, timeout=3).status_code == 200:
                break
        except httpx.TransportError:
            threading.Event().wait(0.05)
    else:
        pytest.fail("the server did not recover after idle clients left")


def test_engine_apps_answer_503_over_the_cap_at_once(vllm: SimulatedServer) -> None:
    # uvicorn's limit_concurrency: idle connections count, the next request is refused now.
    idle = [
        socket.create_connection(("127.0.0.1", vllm.port)) for _ in range(MAX_CONCURRENT_REQUESTS)
    ]
    try:
        threading.Event().wait(0.3)
        assert httpx.get(vllm.url, timeout=3).status_code == 503
    finally:
        for s in idle:
            s.close()
    for _ in range(50):
        if httpx.get(vllm.url, timeout=3).status_code == 200:
            break
        threading.Event().wait(0.05)
    else:
        pytest.fail("the server did not recover after idle clients left")


def test_bad_increments_are_refused(vllm: SimulatedServer) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        vllm.advance("m", generation_tokens=-1)
    with pytest.raises(KeyError, match="other"):
        vllm.advance("other", generation_tokens=1)


@pytest.mark.parametrize(
    ("models", "ranks", "match"),
    [([], 1, "at least one model"), (["a", "a"], 1, "repeat"), (["a"], 0, "ranks")],
)
def test_bad_construction_is_refused(
    clock: ManualClock, models: list[str], ranks: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        SimulatedServer("x", "vllm", models, wall=clock.wall, ranks=ranks)


def test_concurrent_updates_and_scrapes_keep_exact_totals(vllm: SimulatedServer) -> None:
    def writer() -> None:
        for _ in range(2000):
            vllm.advance("m", prompt_tokens=3, generation_tokens=1)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    seen = []
    with httpx.Client(timeout=5) as client:
        while True:
            alive = any(t.is_alive() for t in threads)
            text = client.get(vllm.url).text
            prompt = _sum(text, PROMPT_SAMPLES["vllm"])
            generation = _sum(text, GENERATION_SAMPLES["vllm"])
            assert prompt == 3 * generation  # each scrape sees a consistent state
            seen.append(generation)
            if not alive:
                break
    for t in threads:
        t.join()
    assert seen == sorted(seen)
    assert seen[-1] == 8000
    assert vllm.state().served["m"].generation_tokens == 8000
    requests, cpu = vllm.request_cpu()
    assert requests >= len(seen)
    assert cpu > 0
