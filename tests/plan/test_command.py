"""`tokenergy plan` in-process: fake Prometheus and agent, real HTTP to a closed port.

The fakes are httpx MockTransports handed in through the client factory; every bad input must
give one line on stderr.
"""

import io
import json
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.cli import build_parser
from agent.clock import ManualClock
from agent.plan.client import ClientConfig, make_http_client
from agent.plan.command import run_plan

Series = list[tuple[dict[str, str], float]]


MakeClient = Callable[[ClientConfig | None, float], httpx.Client]


def fake_prometheus(
    answers: Mapping[str, Series], seen: list[str] | None = None
) -> httpx.MockTransport:
    """Answer /api/v1/query: the first key found in the query picks the series."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query"
        query = request.url.params["query"]
        if seen is not None:
            seen.append(query)
        result: Series = []
        for key, series in answers.items():
            if key in query:
                result = series
                break
        body = {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [{"metric": m, "value": [0, str(v)]} for m, v in result],
            },
        }
        return httpx.Response(200, json=body)

    return httpx.MockTransport(handler)


def factory(transport: httpx.BaseTransport) -> MakeClient:
    def make(config: ClientConfig | None, timeout: float) -> httpx.Client:
        return httpx.Client(transport=transport, base_url="http://fake")

    return make


def run(argv: list[str], make: MakeClient) -> tuple[int, str, str]:
    args = build_parser().parse_args(["plan", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = run_plan(args, make, ManualClock(), out, err)
    return code, out.getvalue(), err.getvalue()


M1 = {"server": "vllm", "model": "m1"}
M2 = {"server": "sglang", "model": "m2"}
RAW: dict[str, Series] = {
    'type="output"': [(M1, 2000.0), (M2, 0.0)],
    'type="input"': [(M1, 8000.0), (M2, 0.0)],
    "tokenergy_cached_input_tokens_total": [(M1, 2000.0), (M2, 0.0)],
    "tokenergy_energy_joules_total": [(M1, 800.0), (M2, 300.0)],
    "tokenergy_idle_energy_joules_total": [(M1, 80.0), (M2, 300.0)],
    'component="hardware"': [(M1, 0.002)],
    "tokenergy_cost_total": [(M1, 0.0025), (M2, 0.001)],
    "tokenergy_server_gpu_share": [({"server": "vllm"}, 2.0), ({"server": "sglang"}, 1.0)],
    "tokenergy_pricing_info": [({"currency": "USD"}, 1.0)],
}


def test_json_from_prometheus_raw_counters() -> None:
    seen: list[str] = []
    code, out, err = run(
        ["--prometheus", "http://fake", "--range", "7d", "--at", "1800000000", "--json",
         "--electricity", "0.1,0.2", "--gpu-hourly", "measured,3.6",
         "--demand", "1.728e9/day", "--growth", "10%/month", "--months", "2",
         "--utilization", "100%", "--margin", "50%"],
        factory(fake_prometheus(RAW, seen)),
    )  # fmt: skip
    assert code == 0, err
    # sglang made no output tokens: left out with one line, no ratio computed from it.
    assert err == "tokenergy plan: sglang/m2: no output tokens in the range; left out\n"
    data = json.loads(out)
    assert data["source"] == "prometheus (raw counters)" and data["currency"] == "USD"
    assert any("[604800s]" in q and "sum by (server, model)" in q for q in seen)
    [m1] = data["models"]
    assert m1["ratios"]["tokens_per_joule"] == pytest.approx(2.5)
    assert m1["ratios"]["idle_share"] == pytest.approx(0.1)
    assert m1["ratios"]["cache_hit_ratio"] == pytest.approx(0.25)
    # Cost-anatomy series are absent: null, not 0.
    assert m1["ratios"]["joules_per_input_token"] is None
    assert m1["ratios"]["joules_per_output_token"] is None
    costs = m1["costs"]
    assert len(costs) == 4
    # 0.1/kWh, PUE 1.3, measured hardware: energy 800 W -> 1e6*(0.8*1.3*0.1/3600)/2000.
    assert costs[0]["energy_per_million"] == pytest.approx(1e6 * 0.8 * 1.3 * 0.1 / 3600 / 2000)
    assert costs[0]["hardware_per_million"] == pytest.approx(1e6 * 0.002 / 2000)
    assert costs[1]["hardware_per_million"] == pytest.approx(1e6 * 2 * 3.6 / 3600 / 2000)
    assert costs[0]["price_at_margin"] == pytest.approx(2 * costs[0]["total_per_million"])
    # Capacity: 20,000 tok/s at 1,000 tok/s per GPU.
    months = data["capacity"]["months"]
    assert [m["gpus"] for m in months] == [20, 22, 25]
    assert data["capacity"]["problem"] is None


def test_recorded_series_when_no_counters() -> None:
    recorded: dict[str, Series] = {
        "server_model:tokenergy_output_tokens:rate5m": [(M1, 100.0)],
        "server_model:tokenergy_energy_joules:rate5m": [(M1, 50.0)],
    }
    seen: list[str] = []
    make = factory(fake_prometheus(recorded, seen))
    code, out, err = run(["--prometheus", "http://fake", "--json"], make)
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "prometheus (recording rules)"
    assert data["fleet"]["ratios"]["tokens_per_joule"] == pytest.approx(2.0)
    assert "avg_over_time(server_model:tokenergy_output_tokens:rate5m[604800s])" in " ".join(seen)
    # No GPU count in this Prometheus: no per-GPU numbers, and cost needs a rate.
    assert data["fleet"]["ratios"]["tokens_per_s_per_gpu"] is None
    assert data["fleet"]["costs"][0]["total_per_million"] is None


def test_tables_and_html(tmp_path: Path) -> None:
    report = tmp_path / "plan.html"
    code, out, err = run(
        ["--prometheus", "http://fake", "--demand", "2e9/day", "--html", str(report),
         "--idle-share", "5%", "--cache-hit", "50%"],
        factory(fake_prometheus(RAW)),
    )  # fmt: skip
    assert code == 0, err
    assert "Measured efficiency" in out and "vllm/m1" in out and "fleet" in out
    assert "Capacity for fleet" in out and "cache savings not measured" in out
    page = report.read_text()
    assert page.count("<svg") == 3
    # Self-contained: nothing fetched at view time (pygal's inline config script stays; its
    # CDN tooltip script is switched off).
    import re

    assert not re.search(r"<script[^>]*\bsrc=|<link\b|<img\b|@import|url\(\s*['\"]?http", page)
    code_only = re.sub(r"<!--.*?-->", "", page, flags=re.S)
    assert not re.search(r"(?<!xmlns=\")(?<!xmlns:xlink=\")https?://(?!www\.w3\.org)", code_only)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("tokenergy plan: "), err
    assert "Traceback" not in err
    return err


def test_unreachable_prometheus_is_one_line() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    code, out, err = run(["--prometheus", url, "--timeout", "2"], make_http_client)
    assert code == 1 and out == ""
    assert f"cannot reach Prometheus at {url}" in _one_line(err)


def test_unreachable_agent_is_one_line() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    code, out, err = run(["--agent", url, "--timeout", "2"], make_http_client)
    assert code == 1 and out == ""
    assert f"cannot reach {url}/metrics" in _one_line(err)


@pytest.mark.parametrize(
    ("answers", "needle"),
    [
        ({}, "no tokenergy data in Prometheus"),
        ({'type="output"': [(M1, 0.0)], "tokenergy_energy_joules_total": [(M1, 10.0)]},
         "no model produced output tokens in the range (vllm/m1: no output tokens"),
    ],
)  # fmt: skip
def test_no_data_is_one_line(answers: dict[str, Series], needle: str) -> None:
    code, out, err = run(["--prometheus", "http://fake"], factory(fake_prometheus(answers)))
    assert code == 1 and out == ""
    assert needle in _one_line(err)


def test_prometheus_errors_are_one_line() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"status": "error", "error": "parse error at char 3"})

    code, _, err = run(["--prometheus", "http://fake"], factory(httpx.MockTransport(refuse)))
    assert code == 1 and "refused the query: parse error at char 3" in _one_line(err)

    def html(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="<html>not found</html>")

    code, _, err = run(["--prometheus", "http://fake"], factory(httpx.MockTransport(html)))
    assert code == 1 and "without a JSON body" in _one_line(err)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--demand", "2e9"], "--demand: '2e9' is not a demand"),
        (["--growth", "15%"], "--growth: '15%' is not a growth rate"),
        (["--electricity", "0.1,,0.2"], "--electricity: '' is not a number"),
        (["--pue", "0.9"], "--pue: a PUE is at least 1.0"),
        (["--margin", "100%"], "--margin: '100%' must be between 0% and below 100%"),
        (["--range", "7days"], "--range: '7days' is not a duration"),
        (["--gpu-hourly", "cheap"], "--gpu-hourly: 'cheap' is not a number"),
        (["--utilization", "0%"], "--utilization: must be more than 0%"),
    ],
)
def test_malformed_options_are_one_line(argv: list[str], needle: str) -> None:
    called: list[bool] = []

    def never(config: ClientConfig | None, timeout: float) -> httpx.Client:
        called.append(True)
        raise AssertionError("no client for a bad option")

    code, out, err = run(["--prometheus", "http://fake", *argv], never)
    assert code == 2 and out == "" and not called
    assert needle in _one_line(err)


def test_bad_http_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "client.yml"
    config.write_text("basic_auth:\n  username: u\n  pasword: x\n")
    argv = ["--prometheus", "http://fake", "--http-config", str(config)]
    code, _, err = run(argv, make_http_client)
    assert code == 2 and "basic_auth.pasword: Extra inputs are not permitted" in _one_line(err)


def _agent_body(out: float, energy: float) -> str:
    return (
        "# TYPE tokenergy_tokens_total counter\n"
        f'tokenergy_tokens_total{{model="m",server="s",type="output"}} {out}\n'
        f'tokenergy_energy_joules_total{{model="m",server="s"}} {energy}\n'
        'tokenergy_server_gpu_share{gpu="0",server="s",uuid="u"} 1\n'
    )


def test_agent_window_from_two_reads() -> None:
    bodies = iter([_agent_body(1000, 400), _agent_body(3000, 1200)])

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        return httpx.Response(200, text=next(bodies))

    code, out, err = run(
        ["--agent", "http://node:10110", "--window", "10s", "--json", "--gpu-hourly", "2"],
        factory(httpx.MockTransport(handler)),
    )
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    assert data["source"] == "agent" and data["seconds"] == 10
    assert data["fleet"]["measured"]["output_tps"] == pytest.approx(200)
    assert data["fleet"]["ratios"]["tokens_per_joule"] == pytest.approx(2.5)
    assert data["currency"] is None


def test_agent_without_tokens_is_one_line() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=_agent_body(1000, 400))

    code, out, err = run(["--agent", "http://node:10110"], factory(httpx.MockTransport(handler)))
    assert code == 1 and out == ""
    assert "no model produced output tokens in the 10 s window" in _one_line(err)


def test_cli_main_wires_plan(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    assert main(["plan", "--prometheus", "http://x", "--demand", "lots"]) == 2
    assert capsys.readouterr().err == (
        "tokenergy plan: --demand: 'lots' is not a demand; use tokens per period, "
        "e.g. 2e9/day, 2.5e7/h or 5000/s\n"
    )


def test_capacity_for_one_model() -> None:
    base = ["--prometheus", "http://fake", "--json", "--demand", "3600/h", "--utilization", "1"]
    code, out, err = run([*base, "--capacity-model", "m1"], factory(fake_prometheus(RAW)))
    assert code == 0, err
    capacity = json.loads(out)["capacity"]
    # m1: 2,000 tok/s on 2 GPUs; 1 tok/s demanded needs one GPU.
    assert capacity["for"] == "m1" and capacity["months"][0]["gpus"] == 1
    code, out, err = run([*base, "--capacity-model", "nope"], factory(fake_prometheus(RAW)))
    assert code == 0
    assert json.loads(out)["capacity"]["problem"] == "--capacity-model 'nope' not measured (m1)"
    assert "tokenergy plan: capacity: --capacity-model 'nope' not measured (m1)" in err
