import pytest

from agent.plan.exposition import rates, read_agent
from agent.servers.parser import ExpositionError


def body(out: float, energy: float, *, idle: float = 0.0, cost: float = 0.0) -> str:
    return f"""# HELP tokenergy_tokens_total Tokens.
# TYPE tokenergy_tokens_total counter
tokenergy_tokens_total{{model="m1",server="vllm",type="input"}} {out * 4}
tokenergy_tokens_total{{model="m1",server="vllm",type="output"}} {out}
tokenergy_tokens_total{{model="m2",server="vllm",type="input"}} {out * 2}
tokenergy_tokens_total{{model="m2",server="vllm",type="output"}} {out / 2}
tokenergy_tokens_total{{model="",server="llamacpp",type="output"}} 7
tokenergy_cached_input_tokens_total{{model="m1",server="vllm"}} {out}
tokenergy_energy_joules_total{{model="m1",server="vllm"}} {energy}
tokenergy_energy_joules_total{{model="m2",server="vllm"}} {energy / 2}
tokenergy_energy_joules_total{{model="",server="llamacpp"}} 100
tokenergy_idle_energy_joules_total{{model="m1",server="vllm"}} {idle}
tokenergy_cost_total{{component="energy",model="m1",server="vllm"}} {cost / 4}
tokenergy_cost_total{{component="hardware",model="m1",server="vllm"}} {cost * 3 / 4}
tokenergy_server_gpu_share{{gpu="0",server="vllm",uuid="a"}} 1
tokenergy_server_gpu_share{{gpu="1",server="vllm",uuid="b"}} 0.5
tokenergy_server_up{{server="vllm"}} 1
tokenergy_server_up{{server="llamacpp"}} 0
tokenergy_server_requests{{model="m1",server="vllm",state="waiting"}} 3
tokenergy_server_kv_cache_usage_ratio{{model="m1",server="vllm"}} 0.5
tokenergy_pricing_info{{currency="EUR",electricity_per_kwh="0.1",pue="1.3"}} 1
"""


def test_reads_counters_and_gauges() -> None:
    reading = read_agent(body(1000, 500, idle=50, cost=2.0))
    m1 = reading.models[("vllm", "m1")]
    assert (m1.input_tokens, m1.output_tokens, m1.cached_tokens) == (4000, 1000, 1000)
    assert (m1.energy_joules, m1.idle_joules) == (500, 50)
    assert m1.cost == pytest.approx(2.0) and m1.hardware_cost == pytest.approx(1.5)
    # Not exported: unknown, never 0.
    assert m1.input_phase_joules is None and m1.cache_saved_joules is None
    assert reading.models[("vllm", "m2")].idle_joules is None
    assert reading.gpus == {"vllm": 1.5}
    assert reading.server_up == {"vllm": True, "llamacpp": False}
    assert reading.waiting == {("vllm", "m1"): 3} and reading.kv_cache == {("vllm", "m1"): 0.5}
    assert reading.currency == "EUR"


def test_rates_between_two_reads_split_gpus_by_energy() -> None:
    old = read_agent(body(1000, 500, idle=50, cost=2.0))
    new = read_agent(body(3000, 1500, idle=150, cost=4.0))
    rows = {(r.server, r.model): r for r in rates(old, new, 10.0)}
    m1, m2 = rows[("vllm", "m1")], rows[("vllm", "m2")]
    assert m1.output_tps == 200 and m1.watts == 100 and m1.idle_watts == 10
    assert m1.input_tps == 800 and m1.cached_tps == 200
    assert m1.cost_per_s == pytest.approx(0.2) and m1.hardware_cost_per_s == pytest.approx(0.15)
    # vllm's 1.5 GPUs split 2:1 as its energy is.
    assert m1.gpus == pytest.approx(1.0) and m2.gpus == pytest.approx(0.5)
    assert m2.idle_watts is None
    # llamacpp made no tokens and used no energy in the interval; it has no GPUs listed.
    assert rows[("llamacpp", "")].output_tps == 0 and rows[("llamacpp", "")].gpus is None


def test_a_restarted_agent_counts_from_zero() -> None:
    old = read_agent(body(1000, 500))
    new = read_agent(body(100, 50))
    m1 = next(r for r in rates(old, new, 10.0) if r.model == "m1")
    assert m1.output_tps == 10 and m1.watts == 5


def test_openmetrics_is_read_too() -> None:
    # OpenMetrics names the counter family without _total and ends with # EOF.
    text = (
        body(10, 5)
        .replace("# HELP tokenergy_tokens_total", "# HELP tokenergy_tokens")
        .replace("# TYPE tokenergy_tokens_total", "# TYPE tokenergy_tokens")
        + "# EOF\n"
    )
    assert "# TYPE tokenergy_tokens counter" in text
    assert read_agent(text).models[("vllm", "m1")].output_tokens == 10


def test_bad_bodies_are_refused_with_a_reason() -> None:
    # The parser's own wording is its business; it refuses the page.
    with pytest.raises(ExpositionError):
        read_agent("<html><body>502 Bad Gateway</body></html>\n")
    with pytest.raises(ValueError, match="not a tokenergy agent"):
        read_agent("# TYPE up gauge\nup 1\n")
    with pytest.raises(ValueError, match="positive interval"):
        rates(read_agent(body(1, 1)), read_agent(body(1, 1)), 0.0)
