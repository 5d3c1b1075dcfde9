"""Benchmark: reading token counters from a large vLLM V1 exposition.

Compares, on the same body and in the same run:

* tokenergy: ``read_exposition(body)`` (engine auto-detected, every profile's names wanted)
  and ``read_exposition(body, "vllm")``;
* baseline: ``prometheus_client.parser.text_string_to_metric_families`` over the whole body,
  then the same extraction (prompt, generation and cached tokens summed per model, running,
  waiting and KV gauges).

The body is rendered by ``agent.simulation.expositions`` as vLLM V1 with 8 data-parallel
engines, every V1 histogram with its real buckets (``max_model_len`` 131072), ``_created``
series and process/HTTP noise; 1, 3 and 5 served models give about 0.4, 1.2 and 2.1 MB.
It also times the renderer, which the demo's simulated servers call on every request.

Rerun: ``.venv/bin/python tests/benchmarks/bench_parser.py`` (about 15 s on 2 cores).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from agent.servers.profiles import read_exposition
from agent.simulation.expositions import SimModelCounters, render_exposition

ENGINES = 8
REPEATS = 9


def _models(n: int) -> list[SimModelCounters]:
    return [
        SimModelCounters(
            model=f"meta-llama/Llama-3.1-70B-Instruct-shard-{i}",
            prompt_tokens=123_456_789 + i,
            generation_tokens=9_876_543 + i,
            cached_prompt_tokens=5_555_555,
            requests_running=17,
            requests_waiting=3,
            kv_cache_usage=0.42,
            requests_finished=123_457,
        )
        for i in range(n)
    ]


def _baseline(body: bytes) -> dict[str, tuple[float, float, float, float, float, float]]:
    """prometheus_client's parser, then the same extraction the vLLM profile does."""
    sums: dict[str, list[float]] = {}
    kv: dict[str, list[float]] = {}
    index = {
        "vllm:prompt_tokens_total": 0,
        "vllm:generation_tokens_total": 1,
        "vllm:prompt_tokens_cached_total": 2,
        "vllm:num_requests_running": 3,
        "vllm:num_requests_waiting": 4,
    }
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            model = sample.labels.get("model_name", "")
            if sample.name in index:
                sums.setdefault(model, [0.0] * 5)[index[sample.name]] += sample.value
            elif sample.name == "vllm:kv_cache_usage_perc":
                kv.setdefault(model, []).append(sample.value)
    return {m: (*v, statistics.fmean(kv[m])) for m, v in sums.items()}  # type: ignore[misc]


def _time(fn: Callable[[], object]) -> tuple[float, float]:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000, statistics.median(times) * 1000


def main() -> None:
    """Run the benchmark and print the table."""
    print(f"vLLM V1 exposition, {ENGINES} data-parallel engines; best / median of {REPEATS} runs")
    header = (
        f"{'models':>6} {'size MB':>8} {'lines':>7} {'render ms':>10} "
        f"{'prometheus_client ms':>21} {'tokenergy auto ms':>18} {'tokenergy vllm ms':>18} "
        f"{'speed-up auto':>14} {'speed-up vllm':>14}"
    )
    print(header)
    print("-" * len(header))
    for n in (1, 3, 5):
        models = _models(n)

        def render(models: list[SimModelCounters] = models) -> str:
            return render_exposition("vllm", models, ranks=ENGINES, start_time_seconds=1.7e9)

        render_best, _ = _time(render)
        body = render().encode("utf-8")
        # Same numbers from both paths, or the comparison means nothing.
        ours = {m.model: m for m in read_exposition(body).models}
        theirs = _baseline(body)
        for model, values in theirs.items():
            r = ours[model]
            assert (r.input_tokens, r.output_tokens, r.cached_input_tokens) == values[:3]
            assert (r.requests_running, r.requests_waiting) == values[3:5]
        base, base_med = _time(functools.partial(_baseline, body))
        auto, auto_med = _time(functools.partial(read_exposition, body))
        vllm, vllm_med = _time(functools.partial(read_exposition, body, "vllm"))
        lines = body.count(b"\n")
        print(
            f"{n:>6} {len(body) / 1e6:>8.2f} {lines:>7} {render_best:>10.1f} "
            f"{base:>9.1f} / {base_med:>9.1f} {auto:>7.1f} / {auto_med:>7.1f} "
            f"{vllm:>7.1f} / {vllm_med:>7.1f} {base / auto:>13.0f}x {base / vllm:>13.0f}x"
        )
    print("speed-up = prometheus_client best time / tokenergy best time (same body, same run)")


if __name__ == "__main__":
    main()
