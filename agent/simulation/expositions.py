"""Realistic Prometheus expositions of the inference servers tokenergy reads.

Pure module: builds text from counters; no I/O, no clock, no threads.

Each renderer writes what the real server writes, as far as the reference
(``/work/shared/reference/inference-metrics.md``) and the servers' source tell: the real
metric names, HELP and TYPE lines, label names and their order, number formatting, the real
vLLM V1 histogram bucket boundaries (``vllm/v1/metrics/loggers.py``), ``_created`` series where
the server's registry emits them, and ``process_*``/``python_*`` noise. The demo's simulated
servers render on every request, so the renderers are written for speed (a 2 MB vLLM body in a
few tens of milliseconds; see ``tests/benchmarks/bench_parser.py``).

Token totals are split across ranks (vLLM ``engine``, SGLang ``dp_rank``, LMDeploy ``engine``)
so that the matching engine profile's sum equals the input exactly. The one exception is
llama.cpp, whose values are printed with six significant digits like the real server: from
1e6 tokens up the rendered counter is rounded (to 10 tokens at 1e6, 100 at 1e7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

__all__ = [
    "ENGINES",
    "SimModelCounters",
    "build_1_2_5_buckets",
    "escape_label_value",
    "render_exposition",
]


@dataclass(frozen=True, slots=True)
class SimModelCounters:
    """Cumulative counters and current gauges of one simulated served model.

    Attributes:
        model: Served model name ("" for servers without a model label).
        prompt_tokens: Prompt tokens processed, cumulative (cache hits included).
        generation_tokens: Generated tokens, cumulative.
        cached_prompt_tokens: Prompt tokens served from the prefix cache, cumulative.
        requests_running: Requests running now.
        requests_waiting: Requests queued now.
        kv_cache_usage: KV-cache usage now, 0..1.
        requests_finished: Requests finished, cumulative.
    """

    model: str
    prompt_tokens: int = 0
    generation_tokens: int = 0
    cached_prompt_tokens: int = 0
    requests_running: int = 0
    requests_waiting: int = 0
    kv_cache_usage: float = 0.0
    requests_finished: int = 0


ENGINES: tuple[str, ...] = (
    "vllm",
    "sglang",
    "tgi",
    "llamacpp",
    "triton",
    "lmdeploy",
    "dynamo",
    "nim",
)


def build_1_2_5_buckets(max_value: int) -> list[float]:
    """The 1-2-5 series up to ``max_value``, as vLLM's ``build_1_2_5_buckets``.

    Args:
        max_value: Largest boundary allowed (vLLM passes ``max_model_len``).

    Returns:
        ``[1, 2, 5, 10, 20, 50, ...]`` with every value <= ``max_value``.
    """
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return out
            out.append(float(value))
        exponent += 1


# Bucket boundaries from vllm/v1/metrics/loggers.py (PrometheusStatLogger).
_VLLM_TTFT = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
]  # fmt: skip
_VLLM_ITL = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
]  # fmt: skip
_VLLM_LATENCY = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
]  # fmt: skip
_VLLM_ITERATION = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
_VLLM_PARAMS_N = [1, 2, 5, 10, 20]
_VLLM_KV_RESIDENCY = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300,
    600, 1200, 1800,
]  # fmt: skip
# V0 (vllm/engine/metrics.py): fewer latency buckets.
_VLLM_V0_TTFT = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
]  # fmt: skip
_VLLM_V0_TPOT = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
]  # fmt: skip
_SGLANG_TTFT = [
    0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400,
]  # fmt: skip
_SGLANG_ITL = [
    0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1,
    0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8,
]  # fmt: skip
_SGLANG_E2E = [
    0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600, 1200,
    1800, 2400,
]  # fmt: skip
_TRITON_TOKENS = [10, 50, 100, 500, 1000]


def escape_label_value(value: str) -> str:
    """Escape a label value for the text format (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _num(value: float) -> str:
    """Format like prometheus_client (Go style), with a fast path for small integers."""
    if type(value) is int and -1_000_000 < value < 1_000_000:
        return f"{value}.0"
    return str(floatToGoString(value))


def _int_text(value: float) -> str:
    """Format as Rust/C++ exporters print whole numbers: ``3``, not ``3.0``."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _split(total: int, parts: int) -> list[int]:
    """Split an integer into ``parts`` integers that sum to it exactly."""
    base, extra = divmod(int(total), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _cumulative(count: int, n_buckets: int) -> list[int]:
    """Plausible, monotone cumulative bucket counts that end at ``count``."""
    if count <= 0:
        return [0] * n_buckets
    knee = max(1, int(n_buckets * 0.7))
    return [min(count, (count * (i + 1)) // knee) for i in range(n_buckets)]


def _labels(pairs: Sequence[tuple[str, str]], sort: bool = True) -> str:
    items = sorted(pairs) if sort else list(pairs)
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in items)


class _Out:
    """An append-only list of text chunks."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[str] = []

    def meta(self, name: str, kind: str, help_text: str) -> None:
        self.parts.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

    def text(self) -> str:
        return "".join(self.parts)


class _PromClient:
    """Writes families the way prometheus_client's ``generate_latest`` does.

    Labels are sorted, values Go-formatted, and counters and histograms are followed by a
    ``_created`` gauge family unless ``created`` is False (multiprocess mode or
    ``disable_created_metrics``).
    """

    def __init__(self, out: _Out, created: bool, created_at: float) -> None:
        self.out = out
        self.created = created
        self.created_at = created_at

    def scalar(
        self,
        name: str,
        kind: str,
        help_text: str,
        series: Sequence[tuple[Sequence[tuple[str, str]], float]],
    ) -> None:
        full = f"{name}_total" if kind == "counter" else name
        self.out.meta(full, kind, help_text)
        parts = self.out.parts
        label_texts = []
        for labels, value in series:
            text = _labels(labels)
            label_texts.append(text)
            parts.append(f"{full}{{{text}}} {_num(value)}\n" if text else f"{full} {_num(value)}\n")
        if kind == "counter" and self.created:
            self.out.meta(f"{name}_created", "gauge", help_text)
            stamp = _num(self.created_at)
            for text in label_texts:
                parts.append(
                    f"{name}_created{{{text}}} {stamp}\n" if text else f"{name}_created {stamp}\n"
                )

    def histogram(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        series: Sequence[tuple[Sequence[tuple[str, str]], int, float]],
    ) -> None:
        self.out.meta(name, "histogram", help_text)
        parts = self.out.parts
        les = [floatToGoString(b) for b in buckets] + ["+Inf"]
        label_texts = []
        for labels, count, total in series:
            before = _labels([(k, v) for k, v in labels if k < "le"])
            after = _labels([(k, v) for k, v in labels if k > "le"])
            head = f"{name}_bucket{{{before}," if before else f"{name}_bucket{{"
            tail = f",{after}}} " if after else "} "
            cum = _cumulative(count, len(les))
            cum[-1] = count
            parts.extend(f'{head}le="{le}"{tail}{_num(c)}\n' for le, c in zip(les, cum))
            text = _labels(labels)
            label_texts.append(text)
            parts.append(f"{name}_count{{{text}}} {_num(count)}\n")
            parts.append(f"{name}_sum{{{text}}} {_num(total)}\n")
        if self.created:
            self.out.meta(f"{name}_created", "gauge", help_text)
            stamp = _num(self.created_at)
            parts.extend(f"{name}_created{{{t}}} {stamp}\n" for t in label_texts)


def _process_noise(out: _Out, start_time_seconds: float, python: bool = True) -> None:
    """The default registry's process and Python collectors."""
    if python:
        out.parts.append(
            "# HELP python_gc_objects_collected_total Objects collected during gc\n"
            "# TYPE python_gc_objects_collected_total counter\n"
            'python_gc_objects_collected_total{generation="0"} 13852.0\n'
            'python_gc_objects_collected_total{generation="1"} 4197.0\n'
            'python_gc_objects_collected_total{generation="2"} 812.0\n'
            "# HELP python_gc_objects_uncollectable_total Uncollectable objects found during GC\n"
            "# TYPE python_gc_objects_uncollectable_total counter\n"
            'python_gc_objects_uncollectable_total{generation="0"} 0.0\n'
            'python_gc_objects_uncollectable_total{generation="1"} 0.0\n'
            'python_gc_objects_uncollectable_total{generation="2"} 0.0\n'
            "# HELP python_gc_collections_total Number of times this generation was collected\n"
            "# TYPE python_gc_collections_total counter\n"
            'python_gc_collections_total{generation="0"} 1021.0\n'
            'python_gc_collections_total{generation="1"} 92.0\n'
            'python_gc_collections_total{generation="2"} 7.0\n'
            "# HELP python_info Python platform information\n"
            "# TYPE python_info gauge\n"
            'python_info{implementation="CPython",major="3",minor="12",patchlevel="9",'
            'version="3.12.9"} 1.0\n'
        )
    out.parts.append(
        "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
        "# TYPE process_virtual_memory_bytes gauge\n"
        "process_virtual_memory_bytes 8.2530074624e+010\n"
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "# TYPE process_resident_memory_bytes gauge\n"
        "process_resident_memory_bytes 3.904626688e+09\n"
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
        "# TYPE process_start_time_seconds gauge\n"
        f"process_start_time_seconds {_num(round(start_time_seconds, 2))}\n"
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 1325.77\n"
        "# HELP process_open_fds Number of open file descriptors.\n"
        "# TYPE process_open_fds gauge\n"
        "process_open_fds 87.0\n"
        "# HELP process_max_fds Maximum number of open file descriptors.\n"
        "# TYPE process_max_fds gauge\n"
        "process_max_fds 1.048576e+06\n"
    )


def _http_noise(out: _Out, prefix: str = "") -> None:
    """prometheus-fastapi-instrumentator families of an OpenAI-compatible API server."""
    handlers = ["/v1/chat/completions", "/v1/completions", "/health", "/metrics", "/v1/models"]
    pc = _PromClient(out, created=True, created_at=1.7e9)
    pc.scalar(
        f"{prefix}http_requests",
        "counter",
        "Total number of requests by method, status and handler.",
        [
            (
                (
                    ("handler", h),
                    ("method", "GET" if h in ("/health", "/metrics", "/v1/models") else "POST"),
                    ("status", "2xx"),
                ),
                10 + i,
            )
            for i, h in enumerate(handlers)
        ],
    )
    pc.histogram(
        f"{prefix}http_request_duration_seconds",
        "Latency with only few buckets by handler. Made to be only used if aggregation by "
        "handler is important.",
        [0.1, 0.5, 1.0],
        [((("handler", h), ("method", "POST")), 10, 3.5) for h in handlers],
    )


def render_exposition(
    engine: str,
    models: Sequence[SimModelCounters],
    *,
    ranks: int = 1,
    start_time_seconds: float,
    variant: str = "",
    max_model_len: int = 131072,
    tp_duplicates: int = 1,
) -> str:
    """Render one server's ``/metrics`` body.

    Args:
        engine: One of :data:`ENGINES`.
        models: The served models and their counters.
        ranks: Data-parallel ranks: vLLM ``engine`` label values, SGLang ``dp_rank`` values,
            LMDeploy ``engine`` values. Token totals are split across them exactly.
        start_time_seconds: Server process start, Unix seconds (``process_start_time_seconds``
            and the base of ``_created`` values, where the server exposes them).
        variant: Version flavour: vLLM ``v1`` (default), ``v0`` or ``bridge`` (V1 names with
            colons rewritten to underscores, as OTel/StatsD bridges do); SGLang ``2026``
            (default: ``realtime_tokens_total``, ``cache_source``) or ``2025``.
        max_model_len: vLLM ``max_model_len``; sets the 1-2-5 token-histogram buckets.
        tp_duplicates: SGLang tensor-parallel ranks that repeat the scheduler series
            (``--enable-metrics-for-all-schedulers``); 1 = only rank 0 reports.

    Returns:
        The exposition text, newline-terminated.

    Raises:
        ValueError: For an unknown engine or variant, or ``ranks`` < 1.
    """
    if ranks < 1 or tp_duplicates < 1:
        raise ValueError("ranks and tp_duplicates must be at least 1")
    if engine == "vllm":
        if variant in ("", "v1"):
            return _vllm_v1(models, ranks, start_time_seconds, max_model_len)
        if variant == "v0":
            return _vllm_v0(models, start_time_seconds, max_model_len)
        if variant == "bridge":
            text = _vllm_v1(models, ranks, start_time_seconds, max_model_len)
            return text.replace("vllm:", "vllm_")
        raise ValueError(f"unknown vllm variant {variant!r}: use v1, v0 or bridge")
    if engine == "sglang":
        if variant not in ("", "2026", "2025"):
            raise ValueError(f"unknown sglang variant {variant!r}: use 2026 or 2025")
        return _sglang(models, ranks, variant != "2025", tp_duplicates)
    renderers = {
        "tgi": lambda: _tgi(models),
        "llamacpp": lambda: _llamacpp(models),
        "triton": lambda: _triton(models),
        "lmdeploy": lambda: _lmdeploy(models, ranks, start_time_seconds),
        "dynamo": lambda: _dynamo(models),
        "nim": lambda: _nim(models, start_time_seconds),
    }
    if engine not in renderers:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    return renderers[engine]()


def _vllm_v1(
    models: Sequence[SimModelCounters], ranks: int, start: float, max_model_len: int
) -> str:
    out = _Out()
    _process_noise(out, start)
    _http_noise(out)
    pc = _PromClient(out, created=True, created_at=start + 31.5)
    tok_buckets = build_1_2_5_buckets(max_model_len)
    per_rank: list[tuple[tuple[tuple[str, str], ...], SimModelCounters, int]] = []
    splits = []
    for m in models:
        prompt = _split(m.prompt_tokens, ranks)
        gen = _split(m.generation_tokens, ranks)
        cached = _split(m.cached_prompt_tokens, ranks)
        running = _split(m.requests_running, ranks)
        waiting = _split(m.requests_waiting, ranks)
        finished = _split(m.requests_finished, ranks)
        for r in range(ranks):
            labels = (("engine", str(r)), ("model_name", m.model))
            per_rank.append((labels, m, r))
            splits.append((prompt[r], gen[r], cached[r], running[r], waiting[r], finished[r]))
    pc.scalar(
        "vllm:cpu_active_seconds",
        "counter",
        "Numerator of system-wide CPU utilization.",
        [((), 812.25)],
    )
    pc.scalar(
        "vllm:cpu_elapsed_seconds",
        "counter",
        "Denominator of system-wide CPU utilization.",
        [((), 2411.5)],
    )
    pc.scalar(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        [(lab, s[3]) for (lab, _, _), s in zip(per_rank, splits)],
    )
    pc.scalar(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [(lab, s[4]) for (lab, _, _), s in zip(per_rank, splits)],
    )
    pc.scalar(
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
        "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, "
        "KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
        [
            ((*lab, ("reason", reason)), s[4] if reason == "capacity" else 0)
            for (lab, _, _), s in zip(per_rank, splits)
            for reason in ("capacity", "deferred")
        ],
    )
    pc.scalar(
        "vllm:engine_sleep_state",
        "gauge",
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
        "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
        [
            ((*lab, ("sleep_state", st)), 1 if st == "awake" else 0)
            for lab, _, _ in per_rank
            for st in ("awake", "weights_offloaded", "discard_all")
        ],
    )
    pc.scalar(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        [(lab, m.kv_cache_usage) for lab, m, _ in per_rank],
    )
    counters = [
        (
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            lambda s: s[0],
        ),
        (
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            lambda s: s[2],
        ),
        (
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.",
            lambda s: 0,
        ),
        (
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.",
            lambda s: 0,
        ),
        (
            "vllm:mm_cache_queries",
            "Multi-modal cache queries, in terms of number of queried items.",
            lambda s: 0,
        ),
        (
            "vllm:mm_cache_hits",
            "Multi-modal cache hits, in terms of number of cached items.",
            lambda s: 0,
        ),
        (
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            lambda s: s[5] // 50,
        ),
        ("vllm:prompt_tokens", "Number of prefill tokens processed.", lambda s: s[0]),
    ]
    for name, help_text, pick in counters:
        pc.scalar(
            name, "counter", help_text, [(lab, pick(s)) for (lab, _, _), s in zip(per_rank, splits)]
        )
    pc.scalar(
        "vllm:prompt_tokens_by_source",
        "counter",
        "Number of prompt tokens by source.",
        [
            ((*lab, ("source", src)), val)
            for (lab, _, _), s in zip(per_rank, splits)
            for src, val in (
                ("local_compute", s[0] - s[2]),
                ("local_cache_hit", s[2]),
                ("external_kv_transfer", 0),
            )
        ],
    )
    pc.scalar(
        "vllm:prompt_tokens_cached",
        "counter",
        "Number of cached prompt tokens (local + external).",
        [(lab, s[2]) for (lab, _, _), s in zip(per_rank, splits)],
    )
    pc.scalar(
        "vllm:generation_tokens",
        "counter",
        "Number of generation tokens processed.",
        [(lab, s[1]) for (lab, _, _), s in zip(per_rank, splits)],
    )
    pc.scalar(
        "vllm:request_success",
        "counter",
        "Count of successfully processed requests.",
        [
            ((*lab, ("finished_reason", reason)), share)
            for (lab, _, _), s in zip(per_rank, splits)
            for reason, share in (("stop", s[5] - s[5] // 10), ("length", s[5] // 10), ("abort", 0))
        ],
    )

    def hist(
        name: str, help_text: str, buckets: Sequence[float], total: int = -1, scale: float = 0.0
    ) -> None:
        series = []
        for (lab, _, _), s in zip(per_rank, splits):
            count = s[5]
            value = float(s[total]) if total >= 0 else count * scale
            series.append((lab, count, value))
        pc.histogram(name, help_text, buckets, series)

    hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tok_buckets, total=0)
    hist(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        tok_buckets,
        total=1,
    )
    hist(
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        _VLLM_ITERATION,
        total=1,
    )
    hist(
        "vllm:request_max_num_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
        tok_buckets,
        scale=512.0,
    )
    hist(
        "vllm:request_params_n", "Histogram of the n request parameter.", _VLLM_PARAMS_N, scale=1.0
    )
    hist(
        "vllm:request_params_max_tokens",
        "Histogram of the max_tokens request parameter.",
        tok_buckets,
        scale=512.0,
    )
    hist(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        _VLLM_TTFT,
        scale=0.21,
    )
    hist(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        _VLLM_ITL,
        scale=0.018,
    )
    hist(
        "vllm:request_time_per_output_token_seconds",
        "Histogram of time_per_output_token_seconds per request.",
        _VLLM_ITL,
        scale=0.019,
    )
    hist(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        _VLLM_LATENCY,
        scale=4.2,
    )
    hist(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        _VLLM_LATENCY,
        scale=0.05,
    )
    hist(
        "vllm:request_inference_time_seconds",
        "Histogram of time spent in RUNNING phase for request.",
        _VLLM_LATENCY,
        scale=4.1,
    )
    hist(
        "vllm:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        _VLLM_LATENCY,
        scale=0.2,
    )
    hist(
        "vllm:request_decode_time_seconds",
        "Histogram of time spent in DECODE phase for request.",
        _VLLM_LATENCY,
        scale=3.9,
    )
    hist(
        "vllm:request_prefill_kv_computed_tokens",
        "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
        tok_buckets,
        scale=300.0,
    )
    hist(
        "vllm:kv_block_lifetime_seconds",
        "Histogram of KV cache block lifetime from allocation to eviction. Sampled metrics (controlled by --kv-cache-metrics-sample).",
        _VLLM_KV_RESIDENCY,
        scale=12.0,
    )
    hist(
        "vllm:kv_block_idle_before_evict_seconds",
        "Histogram of idle time before KV cache block eviction. Sampled metrics (controlled by --kv-cache-metrics-sample).",
        _VLLM_KV_RESIDENCY,
        scale=3.0,
    )
    hist(
        "vllm:kv_block_reuse_gap_seconds",
        "Histogram of time gaps between consecutive KV cache block accesses. Only the most recent accesses are recorded (ring buffer). Sampled metrics (controlled by --kv-cache-metrics-sample).",
        _VLLM_KV_RESIDENCY,
        scale=1.0,
    )
    out.meta("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
    for r in range(ranks):
        cfg = _labels(
            [
                ("block_size", "16"),
                ("cache_dtype", "auto"),
                ("calculate_kv_scales", "False"),
                ("cpu_offload_gb", "0"),
                ("enable_prefix_caching", "True"),
                ("engine", str(r)),
                ("gpu_memory_utilization", "0.9"),
                ("is_attention_free", "False"),
                ("num_cpu_blocks", "None"),
                ("num_gpu_blocks", "27521"),
                ("num_gpu_blocks_override", "None"),
                ("prefix_caching_hash_algo", "sha256"),
                ("sliding_window", "None"),
                ("swap_space", "4"),
                ("swap_space_bytes", "4294967296"),
            ]
        )
        out.parts.append(f"vllm:cache_config_info{{{cfg}}} 1.0\n")
    return out.text()


def _vllm_v0(models: Sequence[SimModelCounters], start: float, max_model_len: int) -> str:
    out = _Out()
    _process_noise(out, start)
    pc = _PromClient(out, created=False, created_at=start)
    labs = [((("model_name", m.model),), m) for m in models]
    pc.scalar(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests currently running on GPU.",
        [(lab, m.requests_running) for lab, m in labs],
    )
    pc.scalar(
        "vllm:num_requests_swapped",
        "gauge",
        "Number of requests swapped to CPU.",
        [(lab, 0) for lab, _ in labs],
    )
    pc.scalar(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [(lab, m.requests_waiting) for lab, m in labs],
    )
    pc.scalar(
        "vllm:gpu_cache_usage_perc",
        "gauge",
        "GPU KV-cache usage. 1 means 100 percent usage.",
        [(lab, m.kv_cache_usage) for lab, m in labs],
    )
    pc.scalar(
        "vllm:cpu_cache_usage_perc",
        "gauge",
        "CPU KV-cache usage. 1 means 100 percent usage.",
        [(lab, 0.0) for lab, _ in labs],
    )
    pc.scalar(
        "vllm:gpu_prefix_cache_hit_rate",
        "gauge",
        "GPU prefix cache block hit rate.",
        [
            (lab, (m.cached_prompt_tokens / m.prompt_tokens) if m.prompt_tokens else 0.0)
            for lab, m in labs
        ],
    )
    pc.scalar(
        "vllm:num_preemptions",
        "counter",
        "Cumulative number of preemption from the engine.",
        [(lab, 0) for lab, _ in labs],
    )
    pc.scalar(
        "vllm:prompt_tokens",
        "counter",
        "Number of prefill tokens processed.",
        [(lab, m.prompt_tokens) for lab, m in labs],
    )
    pc.scalar(
        "vllm:generation_tokens",
        "counter",
        "Number of generation tokens processed.",
        [(lab, m.generation_tokens) for lab, m in labs],
    )
    pc.scalar(
        "vllm:request_success",
        "counter",
        "Count of successfully processed requests.",
        [((*lab, ("finished_reason", "stop")), m.requests_finished) for lab, m in labs],
    )
    tok = build_1_2_5_buckets(max_model_len)
    pc.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        _VLLM_V0_TTFT,
        [(lab, m.requests_finished, m.requests_finished * 0.2) for lab, m in labs],
    )
    pc.histogram(
        "vllm:time_per_output_token_seconds",
        "Histogram of time per output token in seconds.",
        _VLLM_V0_TPOT,
        [(lab, m.generation_tokens, m.generation_tokens * 0.02) for lab, m in labs],
    )
    pc.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of end to end request latency in seconds.",
        [1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0],
        [(lab, m.requests_finished, m.requests_finished * 4.0) for lab, m in labs],
    )
    pc.histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        tok,
        [(lab, m.requests_finished, float(m.prompt_tokens)) for lab, m in labs],
    )
    pc.histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        tok,
        [(lab, m.requests_finished, float(m.generation_tokens)) for lab, m in labs],
    )
    return out.text()


def _sglang(
    models: Sequence[SimModelCounters], ranks: int, realtime: bool, tp_duplicates: int
) -> str:
    # Always multiprocess: no process_*, no python_*, no _created.
    out = _Out()
    pc = _PromClient(out, created=False, created_at=0.0)
    tokenizer = [((("model_name", m.model),), m) for m in models]
    pc.scalar(
        "sglang:prompt_tokens",
        "counter",
        "Number of prefill tokens processed.",
        [(lab, m.prompt_tokens) for lab, m in tokenizer],
    )
    pc.scalar(
        "sglang:generation_tokens",
        "counter",
        "Number of generation tokens processed.",
        [(lab, m.generation_tokens) for lab, m in tokenizer],
    )
    if realtime:
        pc.scalar(
            "sglang:cached_tokens",
            "counter",
            "Number of cached prompt tokens.",
            [
                ((*lab, ("cache_source", src)), m.cached_prompt_tokens)
                for lab, m in tokenizer
                for src in ("device", "total")
            ],
        )
    else:
        pc.scalar(
            "sglang:cached_tokens",
            "counter",
            "Number of cached prompt tokens.",
            [(lab, m.cached_prompt_tokens) for lab, m in tokenizer],
        )
    pc.scalar(
        "sglang:num_requests",
        "counter",
        "Number of requests processed.",
        [(lab, m.requests_finished) for lab, m in tokenizer],
    )
    pc.scalar(
        "sglang:num_aborted_requests",
        "counter",
        "Number of requests aborted.",
        [(lab, 0) for lab, _ in tokenizer],
    )

    # Scheduler series: one per (model, dp rank); repeated for TP ranks when asked.
    sched: list[tuple[tuple[tuple[str, str], ...], SimModelCounters, tuple[int, ...]]] = []
    for m in models:
        prompt = _split(m.prompt_tokens, ranks)
        cached = _split(m.cached_prompt_tokens, ranks)
        gen = _split(m.generation_tokens, ranks)
        running = _split(m.requests_running, ranks)
        waiting = _split(m.requests_waiting, ranks)
        for r in range(ranks):
            for tp in range(tp_duplicates):
                lab: list[tuple[str, str]] = [
                    ("engine_type", "unified"),
                    ("model_name", m.model),
                    ("pp_rank", "0"),
                    ("tp_rank", str(tp)),
                ]
                if realtime:
                    lab.append(("moe_ep_rank", "0"))
                if ranks > 1:
                    lab.append(("dp_rank", str(r)))
                sched.append(
                    (tuple(lab), m, (prompt[r], cached[r], gen[r], running[r], waiting[r]))
                )
    if realtime:
        pc.scalar(
            "sglang:realtime_tokens",
            "counter",
            "Total number of tokens processed, updated on each log interval.",
            [
                ((*lab, ("mode", mode)), val)
                for lab, _, s in sched
                for mode, val in (
                    ("prefill_compute", s[0] - s[1]),
                    ("prefill_cache", s[1]),
                    ("decode", s[2]),
                )
            ],
        )
    pc.scalar(
        "sglang:num_running_reqs",
        "gauge",
        "The number of running requests.",
        [(lab, s[3]) for lab, _, s in sched],
    )
    pc.scalar(
        "sglang:num_used_tokens",
        "gauge",
        "The number of used tokens.",
        [(lab, int(m.kv_cache_usage * 500_000)) for lab, m, _ in sched],
    )
    pc.scalar(
        "sglang:token_usage",
        "gauge",
        "The token usage.",
        [(lab, m.kv_cache_usage) for lab, m, _ in sched],
    )
    pc.scalar(
        "sglang:gen_throughput",
        "gauge",
        "The generation throughput (token/s).",
        [(lab, 1234.5 if s[3] else 0.0) for lab, _, s in sched],
    )
    pc.scalar(
        "sglang:num_queue_reqs",
        "gauge",
        "The number of requests in the waiting queue.",
        [(lab, s[4]) for lab, _, s in sched],
    )
    pc.scalar(
        "sglang:cache_hit_rate",
        "gauge",
        "The prefix cache hit rate.",
        [
            (lab, (m.cached_prompt_tokens / m.prompt_tokens) if m.prompt_tokens else 0.0)
            for lab, m, _ in sched
        ],
    )
    pc.histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        _SGLANG_TTFT,
        [(lab, m.requests_finished, m.requests_finished * 0.3) for lab, m in tokenizer],
    )
    pc.histogram(
        "sglang:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        _SGLANG_ITL,
        [(lab, m.generation_tokens, m.generation_tokens * 0.015) for lab, m in tokenizer],
    )
    pc.histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        _SGLANG_E2E,
        [(lab, m.requests_finished, m.requests_finished * 3.5) for lab, m in tokenizer],
    )
    return out.text()


def _tgi(models: Sequence[SimModelCounters]) -> str:
    # metrics-exporter-prometheus: no model label, whole numbers, blank lines between families.
    m = models[0] if models else SimModelCounters(model="")
    n = m.requests_finished
    parts: list[str] = []

    def family(name: str, kind: str, help_text: str | None, lines: list[str]) -> None:
        if help_text is not None:
            parts.append(f"# HELP {name} {help_text}\n")
        parts.append(f"# TYPE {name} {kind}\n")
        parts.extend(lines)
        parts.append("\n")

    def hist(name: str, help_text: str, buckets: list[float], count: int, total: float) -> None:
        cum = _cumulative(count, len(buckets) + 1)
        lines = [f'{name}_bucket{{le="{_int_text(b)}"}} {c}\n' for b, c in zip(buckets, cum)]
        lines.append(f'{name}_bucket{{le="+Inf"}} {count}\n')
        lines.append(f"{name}_sum {_int_text(total)}\n{name}_count {count}\n")
        family(name, "histogram", help_text, lines)

    family(
        "tgi_request_count",
        "counter",
        "Total number of requests",
        [f"tgi_request_count {n + m.requests_running}\n"],
    )
    family(
        "tgi_request_success",
        "counter",
        "Number of successful requests",
        [f"tgi_request_success {n}\n"],
    )
    family("tgi_request_failure", "counter", None, ['tgi_request_failure{err="validation"} 0\n'])
    family(
        "tgi_queue_size", "gauge", "Current queue size", [f"tgi_queue_size {m.requests_waiting}\n"]
    )
    family(
        "tgi_batch_current_size",
        "gauge",
        "Current batch size",
        [f"tgi_batch_current_size {m.requests_running}\n"],
    )
    family(
        "tgi_batch_current_max_tokens",
        "gauge",
        "Maximum tokens for the current batch",
        ["tgi_batch_current_max_tokens 4096\n"],
    )
    family(
        "tgi_batch_inference_count",
        "counter",
        "Inference calls per method (prefill or decode)",
        [
            f'tgi_batch_inference_count{{method="prefill"}} {n}\n',
            f'tgi_batch_inference_count{{method="decode"}} {m.generation_tokens}\n',
        ],
    )
    hist(
        "tgi_request_input_length",
        "Input token length per request",
        [float(40 * (i + 1)) for i in range(100)],
        n,
        m.prompt_tokens,
    )
    hist(
        "tgi_request_generated_tokens",
        "Generated tokens per request",
        [float(41 * (i + 1)) for i in range(100)],
        n,
        m.generation_tokens,
    )
    hist(
        "tgi_request_duration",
        "End-to-end generate request duration",
        [1.5e-4 * 1.5**k for k in range(35)],
        n,
        n * 3.2,
    )
    quantiles = "".join(
        f'tgi_request_skipped_tokens{{quantile="{q}"}} 0\n'
        for q in ("0", "0.5", "0.9", "0.95", "0.99", "0.999", "1")
    )
    family(
        "tgi_request_skipped_tokens",
        "summary",
        "Speculated tokens per request",
        [
            quantiles,
            f"tgi_request_skipped_tokens_sum 0\ntgi_request_skipped_tokens_count {m.generation_tokens}\n",
        ],
    )
    return "".join(parts)


def _g6(value: float) -> str:
    """C++ ``std::stringstream << double`` with the default precision of 6 (``%g``)."""
    return f"{value:g}"


def _llamacpp(models: Sequence[SimModelCounters]) -> str:
    m = models[0] if models else SimModelCounters(model="")
    rows = [
        ("prompt_tokens_total", "counter", "Number of prompt tokens processed.", m.prompt_tokens),
        ("prompt_seconds_total", "counter", "Prompt process time", m.prompt_tokens / 2500.0),
        (
            "tokens_predicted_total",
            "counter",
            "Number of generation tokens processed.",
            m.generation_tokens,
        ),
        (
            "tokens_predicted_seconds_total",
            "counter",
            "Predict process time",
            m.generation_tokens / 45.0,
        ),
        (
            "n_decode_total",
            "counter",
            "Total number of llama_decode() calls",
            m.generation_tokens // 2,
        ),
        ("n_tokens_max", "counter", "Largest observed n_tokens.", 8192),
        (
            "n_busy_slots_per_decode",
            "counter",
            "Average number of busy slots per llama_decode() call",
            1.73,
        ),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.", 2500.0),
        ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.", 45.0),
        ("requests_processing", "gauge", "Number of requests processing.", m.requests_running),
        ("requests_deferred", "gauge", "Number of requests deferred.", m.requests_waiting),
    ]
    return "".join(
        f"# HELP llamacpp:{name} {help_text}\n# TYPE llamacpp:{name} {kind}\nllamacpp:{name} {_g6(value)}\n"
        for name, kind, help_text, value in rows
    )


def _triton(models: Sequence[SimModelCounters]) -> str:
    # prometheus-cpp: labels in declaration order, `le` last, whole numbers without ".0".
    parts: list[str] = []
    composing = ["ensemble", "preprocessing", "tensorrt_llm", "postprocessing"]
    trt = [m for m in models]
    parts.append(
        "# HELP nv_inference_request_success Number of successful inference requests, all batch sizes\n# TYPE nv_inference_request_success counter\n"
    )
    for m in trt:
        for name in composing:
            model = m.model if name == "tensorrt_llm" else f"{name}"
            parts.append(
                f'nv_inference_request_success{{model="{escape_label_value(model)}",version="1"}} {m.requests_finished}\n'
            )
    parts.append(
        "# HELP nv_inference_count Number of inferences performed (does not include cached requests)\n# TYPE nv_inference_count counter\n"
    )
    for m in trt:
        parts.append(
            f'nv_inference_count{{model="{escape_label_value(m.model)}",version="1"}} {m.requests_finished}\n'
        )
    parts.append(
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.\n# TYPE nv_inference_pending_request_count gauge\n"
    )
    for m in trt:
        parts.append(
            f'nv_inference_pending_request_count{{model="{escape_label_value(m.model)}",version="1"}} {m.requests_waiting}\n'
        )
    for fam, kind_label, attr in (
        ("nv_llm_input_token_len", "total_input_tokens", "prompt_tokens"),
        ("nv_llm_output_token_len", "total_output_tokens", "generation_tokens"),
    ):
        parts.append(f"# HELP {fam} TRT LLM response metrics\n# TYPE {fam} histogram\n")
        for m in trt:
            base = f'model="{escape_label_value(m.model)}",response_metric_type="{kind_label}",version="1"'
            count = m.requests_finished
            parts.append(f"{fam}_count{{{base}}} {count}\n{fam}_sum{{{base}}} {getattr(m, attr)}\n")
            cum = _cumulative(count, len(_TRITON_TOKENS) + 1)
            parts.extend(
                f'{fam}_bucket{{{base},le="{b}"}} {c}\n' for b, c in zip(_TRITON_TOKENS, cum)
            )
            parts.append(f'{fam}_bucket{{{base},le="+Inf"}} {count}\n')
    parts.append(
        "# HELP nv_trt_llm_request_metrics TRT LLM request metrics\n# TYPE nv_trt_llm_request_metrics gauge\n"
    )
    for m in trt:
        for rtype, val in (
            ("context", 0),
            ("scheduled", m.requests_running),
            ("max", 256),
            ("active", m.requests_running + m.requests_waiting),
            ("waiting", m.requests_waiting),
        ):
            parts.append(
                f'nv_trt_llm_request_metrics{{model="{escape_label_value(m.model)}",request_type="{rtype}",version="1"}} {val}\n'
            )
    parts.append(
        "# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics\n# TYPE nv_trt_llm_kv_cache_block_metrics gauge\n"
    )
    for m in trt:
        for btype, val in (
            ("max", 4096),
            ("free", int(4096 * (1 - m.kv_cache_usage))),
            ("used", int(4096 * m.kv_cache_usage)),
            ("tokens_per", 64),
            ("fraction", m.kv_cache_usage),
        ):
            parts.append(
                f'nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type="{btype}",model="{escape_label_value(m.model)}",version="1"}} {val}\n'
            )
    parts.append(
        "# HELP nv_gpu_power_usage GPU power usage in watts\n# TYPE nv_gpu_power_usage gauge\n"
        'nv_gpu_power_usage{gpu_uuid="GPU-6a7c1f7e-7d0e-4c2a-9d2b-2f8e3a1c0b11"} 412.5\n'
        "# HELP nv_energy_consumption GPU energy consumption in joules since the Triton Server started\n"
        "# TYPE nv_energy_consumption counter\n"
        'nv_energy_consumption{gpu_uuid="GPU-6a7c1f7e-7d0e-4c2a-9d2b-2f8e3a1c0b11"} 1.5e+06\n'
    )
    return "".join(parts)


def _lmdeploy(models: Sequence[SimModelCounters], ranks: int, start: float) -> str:
    # Default registry with disable_created_metrics(): process_* present, no _created.
    out = _Out()
    _process_noise(out, start)
    pc = _PromClient(out, created=False, created_at=start)
    rows = []
    for m in models:
        p, g, c = (
            _split(m.prompt_tokens, ranks),
            _split(m.generation_tokens, ranks),
            _split(m.cached_prompt_tokens, ranks),
        )
        run, wait, fin = (
            _split(m.requests_running, ranks),
            _split(m.requests_waiting, ranks),
            _split(m.requests_finished, ranks),
        )
        for r in range(ranks):
            rows.append(
                (
                    (("engine", str(r)), ("model_name", m.model)),
                    m,
                    (p[r], g[r], c[r], run[r], wait[r], fin[r]),
                )
            )
    pc.scalar(
        "lmdeploy:num_requests_running",
        "gauge",
        "Number of requests currently running.",
        [(lab, s[3]) for lab, _, s in rows],
    )
    pc.scalar(
        "lmdeploy:num_requests_waiting",
        "gauge",
        "Number of requests waiting.",
        [(lab, s[4]) for lab, _, s in rows],
    )
    pc.scalar(
        "lmdeploy:gpu_cache_usage_perc",
        "gauge",
        "GPU KV-cache usage. 1 means 100 percent usage.",
        [(lab, m.kv_cache_usage) for lab, m, _ in rows],
    )
    pc.scalar(
        "lmdeploy:prompt_tokens",
        "counter",
        "Number of prefill tokens processed.",
        [(lab, s[0]) for lab, _, s in rows],
    )
    pc.scalar(
        "lmdeploy:generation_tokens",
        "counter",
        "Number of generation tokens processed.",
        [(lab, s[1]) for lab, _, s in rows],
    )
    pc.scalar(
        "lmdeploy:cached_tokens",
        "counter",
        "Total prefix-cached input tokens served.",
        [(lab, s[2]) for lab, _, s in rows],
    )
    pc.scalar(
        "lmdeploy:request_success",
        "counter",
        "Count of successfully processed requests.",
        [((*lab, ("finished_reason", "stop")), s[5]) for lab, _, s in rows],
    )
    pc.histogram(
        "lmdeploy:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        _VLLM_TTFT,
        [(lab, s[5], s[5] * 0.2) for lab, _, s in rows],
    )
    pc.histogram(
        "lmdeploy:request_prompt_tokens",
        "Number of prefill tokens processed.",
        build_1_2_5_buckets(32768),
        [(lab, s[5], float(s[0])) for lab, _, s in rows],
    )
    return out.text()


def _dynamo(models: Sequence[SimModelCounters]) -> str:
    out = _Out()
    parts = out.parts
    out.meta("dynamo_frontend_inflight_requests", "gauge", "Number of inflight requests")
    parts.extend(
        f'dynamo_frontend_inflight_requests{{model="{escape_label_value(m.model)}"}} {m.requests_running}\n'
        for m in models
    )
    out.meta(
        "dynamo_frontend_queued_requests", "gauge", "Number of requests in HTTP processing queue"
    )
    parts.extend(
        f'dynamo_frontend_queued_requests{{model="{escape_label_value(m.model)}"}} {m.requests_waiting}\n'
        for m in models
    )
    out.meta("dynamo_frontend_requests_total", "counter", "Total number of LLM requests processed")
    parts.extend(
        f'dynamo_frontend_requests_total{{endpoint="chat_completions",model="{escape_label_value(m.model)}",request_type="stream",status="success"}} {m.requests_finished}\n'
        for m in models
    )
    out.meta(
        "dynamo_frontend_output_tokens_total",
        "counter",
        "Total number of output tokens generated (updates in real-time)",
    )
    parts.extend(
        f'dynamo_frontend_output_tokens_total{{model="{escape_label_value(m.model)}"}} {m.generation_tokens}\n'
        for m in models
    )
    for fam, help_text, attr in (
        (
            "dynamo_frontend_input_sequence_tokens",
            "Input sequence length in tokens",
            "prompt_tokens",
        ),
        (
            "dynamo_frontend_output_sequence_tokens",
            "Output sequence length in tokens",
            "generation_tokens",
        ),
        (
            "dynamo_frontend_cached_tokens",
            "Number of cached tokens (prefix cache hits) per request",
            "cached_prompt_tokens",
        ),
    ):
        out.meta(fam, "histogram", help_text)
        buckets = [0, 100, 210, 430, 870, 1700, 3500, 7000, 14000, 28000, 56000, 110000, 220000]
        for m in models:
            model = escape_label_value(m.model)
            cum = _cumulative(m.requests_finished, len(buckets) + 1)
            parts.extend(
                f'{fam}_bucket{{model="{model}",le="{b}"}} {c}\n' for b, c in zip(buckets, cum)
            )
            parts.append(f'{fam}_bucket{{model="{model}",le="+Inf"}} {m.requests_finished}\n')
            parts.append(
                f'{fam}_sum{{model="{model}"}} {getattr(m, attr)}\n{fam}_count{{model="{model}"}} {m.requests_finished}\n'
            )
    return out.text()


def _nim(models: Sequence[SimModelCounters], start: float) -> str:
    out = _Out()
    _process_noise(out, start)
    pc = _PromClient(out, created=False, created_at=start)
    labs = [((("model_name", m.model),), m) for m in models]
    pc.scalar(
        "num_requests_running",
        "gauge",
        "Number of requests currently running on GPU.",
        [(lab, m.requests_running) for lab, m in labs],
    )
    pc.scalar(
        "num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [(lab, m.requests_waiting) for lab, m in labs],
    )
    pc.scalar(
        "num_request_max",
        "gauge",
        "Max number of concurrently running requests.",
        [(lab, 256) for lab, _ in labs],
    )
    pc.scalar(
        "gpu_cache_usage_perc",
        "gauge",
        "GPU KV-cache usage. 1 means 100 percent usage.",
        [(lab, m.kv_cache_usage) for lab, m in labs],
    )
    pc.scalar(
        "prompt_tokens",
        "counter",
        "Number of prefill tokens processed.",
        [(lab, m.prompt_tokens) for lab, m in labs],
    )
    pc.scalar(
        "generation_tokens",
        "counter",
        "Number of generation tokens processed.",
        [(lab, m.generation_tokens) for lab, m in labs],
    )
    pc.scalar(
        "request_success",
        "counter",
        "Count of successfully processed requests.",
        [(lab, m.requests_finished) for lab, m in labs],
    )
    pc.histogram(
        "time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        _VLLM_V0_TTFT,
        [(lab, m.requests_finished, m.requests_finished * 0.2) for lab, m in labs],
    )
    pc.histogram(
        "request_prompt_tokens",
        "Number of prefill tokens processed.",
        build_1_2_5_buckets(32768),
        [(lab, m.requests_finished, float(m.prompt_tokens)) for lab, m in labs],
    )
    return out.text()
