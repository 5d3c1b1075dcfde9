import pytest

from agent.plan.exposition import read_agent
from agent.top.view import Node, plain_lines, sort_rows, sparkline, table, top_rows


def body(out_a: float, out_b: float, energy: float, *, b_up: int = 1) -> str:
    return f"""# TYPE tokenergy_tokens_total counter
tokenergy_tokens_total{{model="ma",server="a",type="input"}} {out_a * 3}
tokenergy_tokens_total{{model="ma",server="a",type="output"}} {out_a}
tokenergy_tokens_total{{model="mb",server="b",type="output"}} {out_b}
tokenergy_energy_joules_total{{model="ma",server="a"}} {energy}
tokenergy_energy_joules_total{{model="mb",server="b"}} {energy}
tokenergy_idle_energy_joules_total{{model="ma",server="a"}} {energy / 10}
tokenergy_cost_total{{component="energy",model="ma",server="a"}} {out_a / 1e6}
tokenergy_server_up{{server="a"}} 1
tokenergy_server_up{{server="b"}} {b_up}
tokenergy_server_requests{{model="ma",server="a",state="waiting"}} 4
tokenergy_server_kv_cache_usage_ratio{{model="ma",server="a"}} 0.25
"""


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 4, 8]) == "▁▂▃▅█"
    assert sparkline([None, 0.0, 0.0]) == " ▁▁"
    # The last `width` values, on a scale from 0 to their largest.
    assert sparkline([100.0, 0.0, 50.0, 100.0], width=3) == "▁▅█"
    assert sparkline([]) == ""


def test_first_read_has_no_rates_then_rates_per_interval() -> None:
    node = Node("http://n1:10110")
    node.observe(read_agent(body(0, 0, 0)), t=0.0)
    first = top_rows([node], now=0.0)
    assert [(r.server, r.status, r.out_tps) for r in first] == [
        ("a", "up", None),
        ("b", "up", None),
    ]
    assert first[0].waiting == 4 and first[0].kv_cache == 0.25
    node.observe(read_agent(body(2000, 500, 1000)), t=2.0)
    a, b = top_rows([node], now=2.0)
    assert a.out_tps == 1000 and a.in_tps == 3000 and a.watts == 500
    assert a.tokens_per_joule == pytest.approx(2.0)
    assert a.cost_per_million == pytest.approx(1.0)
    assert a.idle_share == pytest.approx(0.1)
    assert b.out_tps == 250 and b.cost_per_million is None and b.idle_share is None
    assert a.history == (1000.0,)


def test_a_node_that_stops_answering_is_shown_down_not_dropped() -> None:
    node = Node("http://n1:10110")
    node.observe(read_agent(body(0, 0, 0)), t=0.0)
    node.observe(read_agent(body(2000, 500, 1000)), t=2.0)
    node.fail("cannot reach http://n1:10110/metrics: refused", t=4.0)
    rows = top_rows([node], now=10.0)
    assert [r.server for r in rows] == ["a", "b"]
    assert all(r.status == "DOWN 6s" for r in rows)
    assert all(r.detail.startswith("cannot reach http://n1:10110/metrics") for r in rows)
    assert all(r.out_tps is None for r in rows)
    assert rows[0].history == (1000.0, None)
    # Back: the first read after the outage is a new baseline, no rate across the gap.
    node.observe(read_agent(body(9000, 900, 5000)), t=12.0)
    assert top_rows([node], now=12.0)[0].out_tps is None
    assert top_rows([node], now=12.0)[0].status == "up"
    never = Node("http://n2:10110")
    never.fail("cannot reach http://n2:10110/metrics: refused", t=0.0)
    [row] = top_rows([never], now=1.0)
    assert row.node == "http://n2:10110" and row.status.startswith("DOWN")


def test_a_down_server_on_an_up_node() -> None:
    node = Node("n")
    node.observe(read_agent(body(0, 0, 0, b_up=0)), t=0.0)
    statuses = {r.server: r.status for r in top_rows([node], now=0.0)}
    assert statuses == {"a": "up", "b": "server down"}


def test_sorting_with_unknowns_last() -> None:
    n1, n2 = Node("n1"), Node("n2")
    for node, scale in ((n1, 1), (n2, 3)):
        node.observe(read_agent(body(0, 0, 0)), t=0.0)
        node.observe(read_agent(body(100 * scale, 1000 * scale, 100)), t=1.0)
    down = Node("n3")
    down.fail("refused", 0.0)
    rows = top_rows([n1, n2, down], now=1.0)
    by_out = sort_rows(rows, "out")
    assert [(r.node, r.server) for r in by_out] == [
        ("n2", "b"), ("n1", "b"), ("n2", "a"), ("n1", "a"), ("n3", "-"),
    ]  # fmt: skip
    ascending = [(r.node, r.server) for r in sort_rows(rows, "out", reverse=True)]
    assert ascending[:2] == [("n1", "a"), ("n2", "a")]
    assert sort_rows(rows, "out", reverse=True)[-1].node == "n3"
    assert [r.server for r in sort_rows(rows, "idle")][:2] == ["a", "a"]
    assert [r.node for r in sort_rows(rows, "name")] == ["n1", "n1", "n2", "n2", "n3"]
    with pytest.raises(ValueError, match="unknown sort key"):
        sort_rows(rows, "speed")


def test_plain_lines_are_logfmt() -> None:
    node = Node("http://n1:10110")
    node.fail('cannot reach "x"', 0.0)
    [line] = plain_lines(top_rows([node], now=3.0), "2026-01-01T00:00:00")
    assert line.startswith("2026-01-01T00:00:00 node=http://n1:10110 server=- model=- ")
    assert 'status="DOWN 3s"' in line and line.endswith('error="cannot reach \\"x\\""')
    assert table(top_rows([node], 3.0), "out", False, "EUR").columns[8].header == "EUR/Mtok"
