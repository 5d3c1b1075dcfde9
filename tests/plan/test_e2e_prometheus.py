"""`tokenergy plan` against a real Prometheus that scraped two demo agents.

The ratios `plan` prints must be what PromQL gives for the same range (within 1 %), with
the rates from the agents' counters and with the recording rules' series; and the HTML report
must render its charts in headless Chromium.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RANGE = "20s"
TOLERANCE = 0.01


def _plan(stack: Any, *extra: str) -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "plan", "--prometheus", stack.url, "--range", RANGE,
         "--at", f"{stack.t:.3f}", *extra],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


def _by_model(stack: Any, expr: str) -> dict[tuple[str, str], float]:
    return {
        (s["metric"].get("server", ""), s["metric"].get("model", "")): float(s["value"][1])
        for s in stack.query(f"sum by (server, model) ({expr})")
    }


def _promql_ratios(stack: Any, num: str, den: str) -> dict[tuple[str, str], float]:
    top, bottom = _by_model(stack, num), _by_model(stack, den)
    return {k: top[k] / bottom[k] for k in top if bottom.get(k)}


def _sample_increase(stack: Any, selector: str) -> dict[tuple[str, str], float]:
    """Sum by (server, model) of last - first raw sample in the range: no extrapolation."""
    out: dict[tuple[str, str], float] = {}
    for series in stack.query(f"{selector}[{RANGE}]"):
        values = [float(v) for _, v in series["values"]]
        assert values == sorted(values), "a counter went backwards"
        key = (series["metric"].get("server", ""), series["metric"].get("model", ""))
        out[key] = out.get(key, 0.0) + values[-1] - values[0]
    return out


def _rows(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["server"], m["model"]): m for m in data["models"]}


def test_raw_counters_reproduce_promql(prom_stack: Any) -> None:
    code, out, err = _plan(prom_stack, "--source", "raw", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "prometheus (raw counters)" and data["currency"] == "USD"
    rows = _rows(data)
    assert {s for s, _ in rows} == {"vllm", "sglang", "llamacpp"}
    r = f"[{RANGE}]"
    per_joule = _promql_ratios(
        prom_stack,
        f'increase(tokenergy_tokens_total{{type="output"}}{r})',
        f"increase(tokenergy_energy_joules_total{r})",
    )
    cost = _promql_ratios(
        prom_stack,
        f"1e6 * increase(tokenergy_cost_total{r})",
        f'increase(tokenergy_tokens_total{{type="output"}}{r})',
    )
    cache = _promql_ratios(
        prom_stack,
        f"increase(tokenergy_cached_input_tokens_total{r})",
        f'increase(tokenergy_tokens_total{{type="input"}}{r})',
    )
    assert set(per_joule) == set(rows)
    worst = max(abs(rows[k]["ratios"]["tokens_per_joule"] / v - 1) for k, v in per_joule.items())
    print(f"raw: worst tokens/J deviation from PromQL {worst:.2e}")
    for key, row in rows.items():
        ratios = row["ratios"]
        assert ratios["tokens_per_joule"] == pytest.approx(per_joule[key], rel=TOLERANCE), key
        assert ratios["measured_cost_per_million"] == pytest.approx(cost[key], rel=TOLERANCE)
        if key in cache:
            assert ratios["cache_hit_ratio"] == pytest.approx(cache[key], rel=TOLERANCE), key
    # Independently of rate()'s extrapolation: the stored samples themselves.
    made = _sample_increase(prom_stack, 'tokenergy_tokens_total{type="output"}')
    energy = _sample_increase(prom_stack, "tokenergy_energy_joules_total")
    for key, row in rows.items():
        from_samples = made[key] / energy[key]
        assert row["ratios"]["tokens_per_joule"] == pytest.approx(from_samples, rel=TOLERANCE)
    fleet = data["fleet"]["ratios"]
    assert fleet["tokens_per_joule"] == pytest.approx(
        sum(made.values()) / sum(energy.values()), rel=TOLERANCE
    )
    [total] = prom_stack.query(
        f'sum(increase(tokenergy_tokens_total{{type="output"}}{r})) '
        f"/ sum(increase(tokenergy_energy_joules_total{r}))"
    )
    assert fleet["tokens_per_joule"] == pytest.approx(float(total["value"][1]), rel=TOLERANCE)
    # Two nodes, each with four GPUs serving a server (the L4 serves none).
    assert data["fleet"]["measured"]["gpus"] == pytest.approx(8.0, rel=TOLERANCE)
    # The cost anatomy: input (prefill) energy per input token, as PromQL gives it.
    [per_input] = prom_stack.query(
        f'sum(increase(tokenergy_phase_energy_joules_total{{phase="input"}}{r})) '
        f'/ sum(increase(tokenergy_tokens_total{{type="input"}}{r}))'
    )
    assert fleet["joules_per_input_token"] == pytest.approx(
        float(per_input["value"][1]), rel=TOLERANCE
    )


def test_recording_rules_reproduce_promql(prom_stack: Any) -> None:
    code, out, err = _plan(prom_stack, "--source", "recorded", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "prometheus (recording rules)"
    r = f"[{RANGE}]"
    per_joule = _promql_ratios(
        prom_stack,
        f"avg_over_time(server_model:tokenergy_output_tokens:rate5m{r})",
        f"avg_over_time(server_model:tokenergy_energy_joules:rate5m{r})",
    )
    rows = _rows(data)
    assert set(per_joule) == set(rows)
    worst = max(abs(rows[k]["ratios"]["tokens_per_joule"] / v - 1) for k, v in per_joule.items())
    print(f"recorded: worst tokens/J deviation from PromQL {worst:.2e}")
    for key, row in rows.items():
        assert row["ratios"]["tokens_per_joule"] == pytest.approx(per_joule[key], rel=TOLERANCE)
    # Both routes measure the same steady fleet.
    code, raw_out, _ = _plan(prom_stack, "--source", "raw", "--json")
    raw_fleet = json.loads(raw_out)["fleet"]["ratios"]["tokens_per_joule"]
    recorded_fleet = data["fleet"]["ratios"]["tokens_per_joule"]
    print(f"fleet tokens/J: recorded {recorded_fleet:.4f}, raw {raw_fleet:.4f}")
    assert recorded_fleet == pytest.approx(raw_fleet, rel=0.05)


def test_an_empty_range_is_one_line(prom_stack: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "plan", "--prometheus", prom_stack.url, "--range", "1m",
         "--at", f"{prom_stack.t - 3600:.3f}"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("tokenergy plan: no tokenergy data in Prometheus at ")
    assert result.stderr.count("\n") == 1


def test_html_report_renders_its_charts_in_chromium(
    prom_stack: Any,
    tmp_path: Path,
    png_reader: Callable[[bytes], tuple[int, int, list[bytes]]],
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (Debian package chromium)")
    report = tmp_path / "plan.html"
    code, out, err = _plan(
        prom_stack, "--html", str(report), "--electricity", "0.05,0.10,0.20", "--pue", "1.1,1.3",
        "--demand", "2e9/day", "--growth", "15%/month", "--months", "12",
    )  # fmt: skip
    assert code == 0, err
    assert f"report written to {report}" in out
    page = report.read_text()
    assert page.count("<svg") == 3
    shot = tmp_path / "plan.png"
    run = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1000,1800", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.exists(), run.stderr[-2000:]
    width, height, rows = png_reader(shot.read_bytes())
    assert (width, height) == (1000, 1800)
    # Charts are coloured (pygal's palette); tables and text are black, grey and white.
    coloured = 0
    for row in rows:
        for i in range(0, len(row), 3):
            r, g, b = row[i], row[i + 1], row[i + 2]
            if max(r, g, b) - min(r, g, b) > 60:
                coloured += 1
    print(f"screenshot: {coloured} coloured pixels of {width * height}")
    assert coloured > 20_000, f"only {coloured} coloured pixels: charts not rendered"
    # The DOM Chromium built has the charts' drawn elements (bars, lines).
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert dom.count("<svg") == 3
    assert dom.count('class="rect reactive tooltip-trigger"') >= 6 * 4 + 13 * 2
