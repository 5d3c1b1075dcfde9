"""Realistic Prometheus expositions of the inference servers tokenergy reads.

Pure module: builds text from counters; no I/O, no clock, no threads.

Each renderer writes what the real server writes, as far as the reference
and the servers' source tell: real metric
names, HELP and TYPE lines, label names, number formatting, the real vLLM V1 histogram bucket
boundaries (``vllm/v1/metrics/loggers.py``, ``PrometheusStatLogger``), ``_created`` series
where the server's registry emits them, and ``process_*``/``python_*``/``http_*`` noise. The
demo's simulated servers render on every request, so the renderers are written for speed
(see ``tests/benchmarks/bench_parser.py``: a 1.2 MB vLLM body renders in about 10 ms).

Token totals are split across ranks (vLLM ``engine``, SGLang ``dp_rank``, LMDeploy
``engine``) so that the matching engine profile's sum equals the input exactly. The one
exception is llama.cpp, which prints values with six significant digits like the real server:
from 1e6 tokens up the rendered counter is rounded (to 10 tokens at 1e6, 100 at 1e7). Its
``prompt_tokens_total`` excludes the prompt-cache hits, which ``prompt_tokens_cached_total``
counts (as llama-server does).

vLLM, SGLang and LMDeploy are also built from prometheus_client registries served by the
engines' own apps (:mod:`agent.simulation.engines`); the demo's servers use those. The text
renderers here stay for fixtures and the parser benchmarks.
"""

# The metric tables below keep each real HELP string on one line, next to its name.
# ruff: noqa: E501

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "ENGINES",
    "SimModelCounters",
    "build_1_2_5_buckets",
    "escape_label_value",
    "go_float",
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

Labels = tuple[tuple[str, str], ...]


def build_1_2_5_buckets(max_value: int) -> list[float]:
    """The 1-2-5 series up to ``max_value``, as vLLM's ``build_1_2_5_buckets``.

    Args:
        max_value: Largest boundary allowed (vLLM passes ``max_model_len``, in tokens).

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


# Bucket boundaries from vllm/v1/metrics/loggers.py (PrometheusStatLogger), in seconds.
_VLLM_TTFT = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_VLLM_ITL = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
_VLLM_LATENCY = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_VLLM_ITERATION = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_VLLM_PARAMS_N = (1, 2, 5, 10, 20)
_VLLM_KV_RESIDENCY = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300,
    600, 1200, 1800,
)  # fmt: skip
# V0 (vllm/engine/metrics.py): fewer latency buckets (TTFT up to 10 s, TPOT up to 2.5 s).
_VLLM_V0_TTFT = _VLLM_TTFT[:16]
_VLLM_V0_TPOT = _VLLM_ITL[:13]
_SGLANG_TTFT = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
_SGLANG_ITL = (
    0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1,
    0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8,
)  # fmt: skip
_SGLANG_E2E = (*_SGLANG_TTFT, 600, 1200, 1800, 2400)
_TRITON_TOKENS = (10, 50, 100, 500, 1000)
# Bucket boundaries of the Dynamo frontend's histograms, as its /metrics shows them
# (ai-dynamo/dynamo : docs/observability/metrics_examples/fe.log).
_DYNAMO_INPUT = (0, 100, 210, 430, 870, 1800, 3600, 7400, 15000, 31000, 63000, 130000)
_DYNAMO_OUTPUT = (0, 100, 210, 430, 880, 1800, 3700, 7600, 16000, 32000)
_DYNAMO_ITL = (0, 0.0019, 0.0035, 0.0067, 0.013, 0.024, 0.045, 0.084, 0.16, 0.3, 0.56, 1.1, 2)
_DYNAMO_DURATION = (0, 1.9, 3.4, 6.3, 12, 22, 40, 75, 140, 260)
_DYNAMO_TTFT = (
    0, 0.0022, 0.0047, 0.01, 0.022, 0.047, 0.1, 0.22, 0.47, 1, 2.2, 4.7, 10, 22, 48, 100, 220, 480,
)  # fmt: skip

# Per-rank values handed to the vLLM tables below.
_P, _G, _C, _RUN, _WAIT, _FIN = range(6)
_Split = tuple[int, int, int, int, int, int]

# (name, HELP, value from the rank's split) of the vLLM V1 counters, in registration order.
_VLLM_COUNTERS: tuple[tuple[str, str, Callable[[_Split], int]], ...] = (
    (
        "prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        lambda s: s[_P],
    ),
    (
        "prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        lambda s: s[_C],
    ),
    (
        "external_prefix_cache_queries",
        "External prefix cache queries from KV connector cross-instance cache sharing, "
        "in terms of number of queried tokens.",
        lambda s: 0,
    ),
    (
        "external_prefix_cache_hits",
        "External prefix cache hits from KV connector cross-instance cache sharing, "
        "in terms of number of cached tokens.",
        lambda s: 0,
    ),
    ("mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items.", lambda s: 0),
    ("mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.", lambda s: 0),
    ("num_preemptions", "Cumulative number of preemption from the engine.", lambda s: s[_FIN] // 50),
    ("prompt_tokens", "Number of prefill tokens processed.", lambda s: s[_P]),
)  # fmt: skip

_SAMPLED = "Sampled metrics (controlled by --kv-cache-metrics-sample)."
# (name, HELP, buckets, _sum from the rank's split) of the vLLM V1 histograms.
_VLLM_HISTOGRAMS: tuple[tuple[str, str, str, Callable[[_Split], float]], ...] = (
    ("request_prompt_tokens", "Number of prefill tokens processed.", "tokens", lambda s: s[_P]),
    ("request_generation_tokens", "Number of generation tokens processed.", "tokens", lambda s: s[_G]),
    ("iteration_tokens_total", "Histogram of number of tokens per engine_step.", "iteration", lambda s: s[_P] + s[_G]),
    ("request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.", "tokens", lambda s: 512 * s[_FIN]),
    ("request_params_n", "Histogram of the n request parameter.", "n", lambda s: s[_FIN]),
    ("request_params_max_tokens", "Histogram of the max_tokens request parameter.", "tokens", lambda s: 512 * s[_FIN]),
    ("time_to_first_token_seconds", "Histogram of time to first token in seconds.", "ttft", lambda s: 0.21 * s[_FIN]),
    ("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", "itl", lambda s: 0.018 * s[_G]),
    ("request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.", "itl", lambda s: 0.019 * s[_FIN]),
    ("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", "latency", lambda s: 4.2 * s[_FIN]),
    ("request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", "latency", lambda s: 0.05 * s[_FIN]),
    ("request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", "latency", lambda s: 4.1 * s[_FIN]),
    ("request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", "latency", lambda s: 0.2 * s[_FIN]),
    ("request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", "latency", lambda s: 3.9 * s[_FIN]),
    ("request_prefill_kv_computed_tokens", "Histogram of new KV tokens computed during prefill (excluding cached tokens).", "tokens", lambda s: s[_P] - s[_C]),
    ("kv_block_lifetime_seconds", "Histogram of KV cache block lifetime from allocation to eviction. " + _SAMPLED, "kv", lambda s: 12.0 * s[_FIN]),
    ("kv_block_idle_before_evict_seconds", "Histogram of idle time before KV cache block eviction. " + _SAMPLED, "kv", lambda s: 3.0 * s[_FIN]),
    ("kv_block_reuse_gap_seconds", "Histogram of time gaps between consecutive KV cache block accesses. Only the most recent accesses are recorded (ring buffer). " + _SAMPLED, "kv", lambda s: 1.0 * s[_FIN]),
)  # fmt: skip

_CACHE_CONFIG: Labels = (
    ("block_size", "16"), ("cache_dtype", "auto"), ("calculate_kv_scales", "False"),
    ("cpu_offload_gb", "0"), ("enable_prefix_caching", "True"),
    ("gpu_memory_utilization", "0.9"), ("is_attention_free", "False"),
    ("num_cpu_blocks", "None"), ("num_gpu_blocks", "27521"),
    ("num_gpu_blocks_override", "None"), ("prefix_caching_hash_algo", "sha256"),
    ("sliding_window", "None"), ("swap_space", "4"), ("swap_space_bytes", "4294967296"),
)  # fmt: skip


def escape_label_value(value: str) -> str:
    """Escape a label value for the text format (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def go_float(value: float) -> str:
    """Format a number as prometheus_client does (Go style: ``12.0``, ``1.048576e+06``)."""
    if type(value) is int and -1_000_000 < value < 1_000_000:
        return f"{value}.0"  # the common case, without float formatting
    d = float(value)
    if d != d:
        return "NaN"
    if d in (float("inf"), float("-inf")):
        return "+Inf" if d > 0 else "-Inf"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _whole(value: float) -> str:
    """Format as Rust and C++ exporters print whole numbers: ``3``, not ``3.0``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _split(total: int, parts: int) -> list[int]:
    """Split an integer into ``parts`` integers that sum to it exactly."""
    base, extra = divmod(int(total), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _cumulative(count: int, n_buckets: int) -> list[int]:
    """Plausible, monotone cumulative bucket counts ending at ``count`` (+Inf included)."""
    if count <= 0:
        return [0] * n_buckets
    knee = max(1, int(n_buckets * 0.7))
    out = [min(count, (count * (i + 1)) // knee) for i in range(n_buckets)]
    out[-1] = count
    return out


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(pairs))


class _Writer:
    """Writes families the way prometheus_client's ``generate_latest`` does.

    Labels are sorted, values Go-formatted, and counters and histograms are followed by a
    ``_created`` gauge family unless ``created_at`` is None (multiprocess mode or
    ``disable_created_metrics()``).
    """

    def __init__(self, created_at: float | None) -> None:
        self.parts: list[str] = []
        self.created_at = created_at

    def text(self) -> str:
        return "".join(self.parts)

    def meta(self, name: str, kind: str, help_text: str) -> None:
        self.parts.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

    def _created(self, name: str, help_text: str, label_texts: list[str]) -> None:
        if self.created_at is None:
            return
        self.meta(f"{name}_created", "gauge", help_text)
        stamp = go_float(self.created_at)
        self.parts.extend(
            f"{name}_created{{{t}}} {stamp}\n" if t else f"{name}_created {stamp}\n"
            for t in label_texts
        )

    def scalar(
        self, name: str, kind: str, help_text: str, series: Sequence[tuple[Labels, float]]
    ) -> None:
        full = f"{name}_total" if kind == "counter" else name
        self.meta(full, kind, help_text)
        texts = [_labels(labels) for labels, _ in series]
        self.parts.extend(
            f"{full}{{{t}}} {go_float(v)}\n" if t else f"{full} {go_float(v)}\n"
            for t, (_, v) in zip(texts, series, strict=True)
        )
        if kind == "counter":
            self._created(name, help_text, texts)

    def histogram(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        series: Sequence[tuple[Labels, int, float]],
    ) -> None:
        self.meta(name, "histogram", help_text)
        les = [go_float(float(b)) for b in buckets] + ["+Inf"]
        texts = []
        for labels, count, total in series:
            before = _labels([(k, v) for k, v in labels if k < "le"])
            after = _labels([(k, v) for k, v in labels if k > "le"])
            head = f"{name}_bucket{{{before}," if before else f"{name}_bucket{{"
            tail = f",{after}}} " if after else "} "
            cum = _cumulative(count, len(les))
            self.parts.extend(
                f'{head}le="{le}"{tail}{go_float(c)}\n' for le, c in zip(les, cum, strict=True)
            )
            text = _labels(labels)
            texts.append(text)
            self.parts.append(f"{name}_count{{{text}}} {go_float(count)}\n")
            self.parts.append(f"{name}_sum{{{text}}} {go_float(total)}\n")
        self._created(name, help_text, texts)


def _python_noise(w: _Writer) -> None:
    """The default registry's gc and platform collectors (absent in multiprocess mode)."""
    w.parts.append(
        "# HELP python_gc_objects_collected_total Objects collected during gc\n"
        "# TYPE python_gc_objects_collected_total counter\n"
        'python_gc_objects_collected_total{generation="0"} 13852.0\n'
        'python_gc_objects_collected_total{generation="1"} 4197.0\n'
        'python_gc_objects_collected_total{generation="2"} 812.0\n'
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


def _process_noise(w: _Writer, start_time_seconds: float) -> None:
    """The default registry's process collector."""
    w.parts.append(
        "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
        "# TYPE process_virtual_memory_bytes gauge\n"
        "process_virtual_memory_bytes 8.2530074624e+010\n"
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "# TYPE process_resident_memory_bytes gauge\n"
        "process_resident_memory_bytes 3.904626688e+09\n"
        "# HELP process_start_time_seconds Start time of the process since unix epoch in "
        "seconds.\n"
        "# TYPE process_start_time_seconds gauge\n"
        f"process_start_time_seconds {go_float(round(start_time_seconds, 2))}\n"
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


def _http_noise(w: _Writer) -> None:
    """prometheus-fastapi-instrumentator families of an OpenAI-compatible API server."""
    get = ("/health", "/metrics", "/v1/models")
    post = ("/v1/chat/completions", "/v1/completions")
    w.scalar(
        "http_requests",
        "counter",
        "Total number of requests by method, status and handler.",
        [
            ((("handler", h), ("method", "GET" if h in get else "POST"), ("status", "2xx")), n)
            for n, h in enumerate(get + post, start=10)
        ],
    )
    w.histogram(
        "http_request_duration_seconds",
        "Latency with only few buckets by handler. Made to be only used if aggregation by "
        "handler is important.",
        (0.1, 0.5, 1.0),
        [((("handler", h), ("method", "POST")), 10, 3.5) for h in post],
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
        start_time_seconds: Server process start, Unix s (``process_start_time_seconds`` and
            the base of ``_created`` values, where the server exposes them).
        variant: Version flavour: vLLM ``v1`` (default), ``v0`` or ``bridge`` (V1 names with
            colons rewritten to underscores, as OTel and StatsD bridges do); SGLang ``2026``
            (default: ``realtime_tokens_total``, ``cache_source``) or ``2025``.
        max_model_len: vLLM ``max_model_len``, tokens; sets the 1-2-5 token-histogram buckets.
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
    if engine == "tgi":
        return _tgi(models)
    if engine == "llamacpp":
        return _llamacpp(models)
    if engine == "triton":
        return _triton(models)
    if engine == "lmdeploy":
        return _lmdeploy(models, ranks, start_time_seconds)
    if engine == "dynamo":
        return _dynamo(models)
    if engine == "nim":
        return _nim(models, start_time_seconds)
    raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def _rank_splits(
    models: Sequence[SimModelCounters], ranks: int, rank_label: str
) -> list[tuple[Labels, SimModelCounters, _Split]]:
    """One row per (model, rank), with that rank's share of every counter."""
    rows: list[tuple[Labels, SimModelCounters, _Split]] = []
    for m in models:
        columns = [
            _split(v, ranks)
            for v in (
                m.prompt_tokens,
                m.generation_tokens,
                m.cached_prompt_tokens,
                m.requests_running,
                m.requests_waiting,
                m.requests_finished,
            )
        ]
        for r in range(ranks):
            split: _Split = (
                columns[0][r],
                columns[1][r],
                columns[2][r],
                columns[3][r],
                columns[4][r],
                columns[5][r],
            )
            rows.append((((rank_label, str(r)), ("model_name", m.model)), m, split))
    return rows


def _vllm_v1(
    models: Sequence[SimModelCounters], ranks: int, start: float, max_model_len: int
) -> str:
    w = _Writer(created_at=start + 31.5)
    _python_noise(w)
    _process_noise(w, start)
    _http_noise(w)
    rows = _rank_splits(models, ranks, "engine")
    buckets: dict[str, Sequence[float]] = {
        "tokens": build_1_2_5_buckets(max_model_len),
        "iteration": _VLLM_ITERATION,
        "n": _VLLM_PARAMS_N,
        "ttft": _VLLM_TTFT,
        "itl": _VLLM_ITL,
        "latency": _VLLM_LATENCY,
        "kv": _VLLM_KV_RESIDENCY,
    }
    w.scalar("vllm:cpu_active_seconds", "counter", "Numerator of system-wide CPU utilization.", [((), 812.25)])  # fmt: skip
    w.scalar("vllm:cpu_elapsed_seconds", "counter", "Denominator of system-wide CPU utilization.", [((), 2411.5)])  # fmt: skip
    w.scalar(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        [(lab, s[_RUN]) for lab, _, s in rows],
    )
    w.scalar(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [(lab, s[_WAIT]) for lab, _, s in rows],
    )
    w.scalar(
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
        "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, "
        "KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
        [
            ((*lab, ("reason", reason)), s[_WAIT] if reason == "capacity" else 0)
            for lab, _, s in rows
            for reason in ("capacity", "deferred")
        ],
    )
    w.scalar(
        "vllm:engine_sleep_state",
        "gauge",
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
        "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
        [
            ((*lab, ("sleep_state", state)), 1 if state == "awake" else 0)
            for lab, _, _ in rows
            for state in ("awake", "weights_offloaded", "discard_all")
        ],
    )
    w.scalar(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        [(lab, m.kv_cache_usage) for lab, m, _ in rows],
    )
    for name, help_text, pick in _VLLM_COUNTERS:
        w.scalar(f"vllm:{name}", "counter", help_text, [(lab, pick(s)) for lab, _, s in rows])
    w.scalar(
        "vllm:prompt_tokens_by_source",
        "counter",
        "Number of prompt tokens by source.",
        [
            ((*lab, ("source", source)), value)
            for lab, _, s in rows
            for source, value in (
                ("local_compute", s[_P] - s[_C]),
                ("local_cache_hit", s[_C]),
                ("external_kv_transfer", 0),
            )
        ],
    )
    w.scalar(
        "vllm:prompt_tokens_cached",
        "counter",
        "Number of cached prompt tokens (local + external).",
        [(lab, s[_C]) for lab, _, s in rows],
    )
    w.scalar(
        "vllm:generation_tokens",
        "counter",
        "Number of generation tokens processed.",
        [(lab, s[_G]) for lab, _, s in rows],
    )
    w.scalar(
        "vllm:request_success",
        "counter",
        "Count of successfully processed requests.",
        [
            ((*lab, ("finished_reason", reason)), value)
            for lab, _, s in rows
            for reason, value in (
                ("stop", s[_FIN] - s[_FIN] // 10),
                ("length", s[_FIN] // 10),
                ("abort", 0),
            )
        ],
    )
    for name, help_text, kind, total in _VLLM_HISTOGRAMS:
        w.histogram(
            f"vllm:{name}",
            help_text,
            buckets[kind],
            [(lab, s[_FIN], float(total(s))) for lab, _, s in rows],
        )
    w.meta("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
    w.parts.extend(
        f"vllm:cache_config_info{{{_labels((*_CACHE_CONFIG, ('engine', str(r))))}}} 1.0\n"
        for r in range(ranks)
    )
    return w.text()


def _per_model(models: Sequence[SimModelCounters]) -> list[tuple[Labels, SimModelCounters]]:
    return [((("model_name", m.model),), m) for m in models]


def _hit_rate(m: SimModelCounters) -> float:
    return m.cached_prompt_tokens / m.prompt_tokens if m.prompt_tokens else 0.0


def _vllm_v0(models: Sequence[SimModelCounters], start: float, max_model_len: int) -> str:
    # V0 called disable_created_metrics(): no _created series.
    w = _Writer(created_at=None)
    _python_noise(w)
    _process_noise(w, start)
    rows = _per_model(models)
    gauges: tuple[tuple[str, str, Callable[[SimModelCounters], float]], ...] = (
        ("num_requests_running", "Number of requests currently running on GPU.", lambda m: m.requests_running),
        ("num_requests_swapped", "Number of requests swapped to CPU.", lambda m: 0),
        ("num_requests_waiting", "Number of requests waiting to be processed.", lambda m: m.requests_waiting),
        ("gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", lambda m: m.kv_cache_usage),
        ("cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.", lambda m: 0.0),
        ("gpu_prefix_cache_hit_rate", "GPU prefix cache block hit rate.", _hit_rate),
    )  # fmt: skip
    for name, help_text, pick in gauges:
        w.scalar(f"vllm:{name}", "gauge", help_text, [(lab, pick(m)) for lab, m in rows])
    counters: tuple[tuple[str, str, Callable[[SimModelCounters], float]], ...] = (
        ("num_preemptions", "Cumulative number of preemption from the engine.", lambda m: 0),
        ("prompt_tokens", "Number of prefill tokens processed.", lambda m: m.prompt_tokens),
        ("generation_tokens", "Number of generation tokens processed.", lambda m: m.generation_tokens),
    )  # fmt: skip
    for name, help_text, pick in counters:
        w.scalar(f"vllm:{name}", "counter", help_text, [(lab, pick(m)) for lab, m in rows])
    w.scalar(
        "vllm:request_success",
        "counter",
        "Count of successfully processed requests.",
        [((*lab, ("finished_reason", "stop")), m.requests_finished) for lab, m in rows],
    )
    tokens = build_1_2_5_buckets(max_model_len)
    histograms: tuple[tuple[str, str, Sequence[float], Callable[[SimModelCounters], float]], ...] = (
        ("time_to_first_token_seconds", "Histogram of time to first token in seconds.", _VLLM_V0_TTFT, lambda m: 0.2 * m.requests_finished),
        ("time_per_output_token_seconds", "Histogram of time per output token in seconds.", _VLLM_V0_TPOT, lambda m: 0.02 * m.generation_tokens),
        ("request_prompt_tokens", "Number of prefill tokens processed.", tokens, lambda m: m.prompt_tokens),
        ("request_generation_tokens", "Number of generation tokens processed.", tokens, lambda m: m.generation_tokens),
    )  # fmt: skip
    for name, help_text, bounds, total in histograms:
        w.histogram(
            f"vllm:{name}",
            help_text,
            bounds,
            [(lab, m.requests_finished, float(total(m))) for lab, m in rows],
        )
    return w.text()


def _sglang(
    models: Sequence[SimModelCounters], ranks: int, realtime: bool, tp_duplicates: int
) -> str:
    # Always multiprocess mode: no process_*, no python_*, no _created.
    w = _Writer(created_at=None)
    tokenizer = _per_model(models)
    w.scalar("sglang:prompt_tokens", "counter", "Number of prefill tokens processed.", [(lab, m.prompt_tokens) for lab, m in tokenizer])  # fmt: skip
    w.scalar("sglang:generation_tokens", "counter", "Number of generation tokens processed.", [(lab, m.generation_tokens) for lab, m in tokenizer])  # fmt: skip
    sources = ("device", "total") if realtime else ()
    w.scalar(
        "sglang:cached_tokens",
        "counter",
        "Number of cached prompt tokens.",
        [
            ((*lab, ("cache_source", src)), m.cached_prompt_tokens)
            for lab, m in tokenizer
            for src in sources
        ]
        if realtime
        else [(lab, m.cached_prompt_tokens) for lab, m in tokenizer],
    )
    w.scalar("sglang:num_requests", "counter", "Number of requests processed.", [(lab, m.requests_finished) for lab, m in tokenizer])  # fmt: skip
    w.scalar("sglang:num_aborted_requests", "counter", "Number of requests aborted.", [(lab, 0) for lab, _ in tokenizer])  # fmt: skip

    # Scheduler series: one per (model, dp rank), repeated per TP rank when asked.
    sched: list[tuple[Labels, SimModelCounters, _Split]] = []
    for lab, m, split in _rank_splits(models, ranks, "dp_rank"):
        for tp in range(tp_duplicates):
            labels: list[tuple[str, str]] = [
                ("engine_type", "unified"),
                ("model_name", m.model),
                ("pp_rank", "0"),
                ("tp_rank", str(tp)),
            ]
            if realtime:
                labels.append(("moe_ep_rank", "0"))
            if ranks > 1:
                labels.append(lab[0])
            sched.append((tuple(labels), m, split))
    if realtime:
        w.scalar(
            "sglang:realtime_tokens",
            "counter",
            "Total number of tokens processed, updated on each log interval.",
            [
                ((*lab, ("mode", mode)), value)
                for lab, _, s in sched
                for mode, value in (
                    ("prefill_compute", s[_P] - s[_C]),
                    ("prefill_cache", s[_C]),
                    ("decode", s[_G]),
                )
            ],
        )
    gauges: tuple[tuple[str, str, Callable[[SimModelCounters, _Split], float]], ...] = (
        ("num_running_reqs", "The number of running requests.", lambda m, s: s[_RUN]),
        ("num_used_tokens", "The number of used tokens.", lambda m, s: int(m.kv_cache_usage * 500_000)),
        ("token_usage", "The token usage.", lambda m, s: m.kv_cache_usage),
        ("gen_throughput", "The generation throughput (token/s).", lambda m, s: 1234.5 if s[_RUN] else 0.0),
        ("num_queue_reqs", "The number of requests in the waiting queue.", lambda m, s: s[_WAIT]),
        ("cache_hit_rate", "The prefix cache hit rate.", lambda m, s: _hit_rate(m)),
    )  # fmt: skip
    for name, help_text, pick in gauges:
        w.scalar(f"sglang:{name}", "gauge", help_text, [(lab, pick(m, s)) for lab, m, s in sched])
    w.histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", _SGLANG_TTFT, [(lab, m.requests_finished, 0.3 * m.requests_finished) for lab, m in tokenizer])  # fmt: skip
    w.histogram("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", _SGLANG_ITL, [(lab, m.generation_tokens, 0.015 * m.generation_tokens) for lab, m in tokenizer])  # fmt: skip
    w.histogram("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds", _SGLANG_E2E, [(lab, m.requests_finished, 3.5 * m.requests_finished) for lab, m in tokenizer])  # fmt: skip
    return w.text()


def _tgi(models: Sequence[SimModelCounters]) -> str:
    # metrics-exporter-prometheus: no model label, whole numbers, blank line after a family,
    # HELP only for described metrics, counters without _total.
    m = models[0] if models else SimModelCounters(model="")
    n = m.requests_finished
    parts: list[str] = []

    def family(name: str, kind: str, help_text: str | None, lines: Sequence[str]) -> None:
        if help_text is not None:
            parts.append(f"# HELP {name} {help_text}\n")
        parts.append(f"# TYPE {name} {kind}\n")
        parts.extend(lines)
        parts.append("\n")

    def histogram(
        name: str, help_text: str, bounds: Sequence[float], count: int, total: float
    ) -> None:
        cum = _cumulative(count, len(bounds) + 1)
        lines = [
            f'{name}_bucket{{le="{_whole(b)}"}} {c}\n'
            for b, c in zip(bounds, cum[:-1], strict=True)
        ]
        lines.append(f'{name}_bucket{{le="+Inf"}} {count}\n')
        lines.append(f"{name}_sum {_whole(total)}\n{name}_count {count}\n")
        family(name, "histogram", help_text, lines)

    family("tgi_request_count", "counter", "Total number of requests", [f"tgi_request_count {n + m.requests_running}\n"])  # fmt: skip
    family("tgi_request_success", "counter", "Number of successful requests", [f"tgi_request_success {n}\n"])  # fmt: skip
    family("tgi_request_failure", "counter", None, ['tgi_request_failure{err="validation"} 0\n'])
    family("tgi_queue_size", "gauge", "Current queue size", [f"tgi_queue_size {m.requests_waiting}\n"])  # fmt: skip
    family("tgi_batch_current_size", "gauge", "Current batch size", [f"tgi_batch_current_size {m.requests_running}\n"])  # fmt: skip
    family("tgi_batch_current_max_tokens", "gauge", "Maximum tokens for the current batch", ["tgi_batch_current_max_tokens 4096\n"])  # fmt: skip
    family(
        "tgi_batch_inference_count",
        "counter",
        "Inference calls per method (prefill or decode)",
        [
            f'tgi_batch_inference_count{{method="prefill"}} {n}\n',
            f'tgi_batch_inference_count{{method="decode"}} {m.generation_tokens}\n',
        ],
    )
    histogram("tgi_request_input_length", "Input token length per request", [40.0 * (i + 1) for i in range(100)], n, m.prompt_tokens)  # fmt: skip
    histogram("tgi_request_generated_tokens", "Generated tokens per request", [41.0 * (i + 1) for i in range(100)], n, m.generation_tokens)  # fmt: skip
    histogram("tgi_request_duration", "End-to-end generate request duration", [1.5e-4 * 1.5**k for k in range(35)], n, 3.2 * n)  # fmt: skip
    quantiles = [
        f'tgi_request_skipped_tokens{{quantile="{q}"}} 0\n'
        for q in ("0", "0.5", "0.9", "0.95", "0.99", "0.999", "1")
    ]
    quantiles.append(
        f"tgi_request_skipped_tokens_sum 0\ntgi_request_skipped_tokens_count {m.generation_tokens}\n"
    )
    family("tgi_request_skipped_tokens", "summary", "Speculated tokens per request", quantiles)
    return "".join(parts)


def _llamacpp(models: Sequence[SimModelCounters]) -> str:
    # tools/server/server-context.cpp, the metrics handler: no labels at all; values through a
    # default C++ stream (six significant digits, like %g); prompt_tokens_total counts the
    # prompt tokens evaluated, the cache hits apart in prompt_tokens_cached_total.
    m = models[0] if models else SimModelCounters(model="")
    evaluated = m.prompt_tokens - m.cached_prompt_tokens
    rows: tuple[tuple[str, str, str, float], ...] = (
        ("prompt_tokens_total", "counter", "Number of prompt tokens processed, excluding cached tokens", evaluated),
        ("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache", m.cached_prompt_tokens),
        ("prompt_seconds_total", "counter", "Total time spent processing prompts", evaluated / 2500.0),
        ("tokens_predicted_total", "counter", "Number of generation tokens processed", m.generation_tokens),
        ("tokens_predicted_seconds_total", "counter", "Total time spent generating tokens", m.generation_tokens / 45.0),
        ("n_decode_total", "counter", "Total number of llama_decode() calls, excluding speculative decoding and multimodal decoding", m.generation_tokens // 2),
        ("n_tokens_max", "counter", "Largest observed sequence length (prompt + generation)", 8192 if m.prompt_tokens else 0),
        ("spec_decode_num_draft_tokens_total", "counter", "Speculative: Total draft tokens generated", 0),
        ("spec_decode_num_accepted_tokens_total", "counter", "Speculative: Total draft tokens accepted by the target model", 0),
        ("spec_decode_num_drafts_total", "counter", "Speculative: Total speculative decoding verification steps", 0),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s", 2500.0),
        ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s", 45.0),
        ("requests_processing", "gauge", "Number of requests processing", m.requests_running),
        ("requests_deferred", "gauge", "Number of requests deferred", m.requests_waiting),
        ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call", 1.67362),
    )  # fmt: skip
    return "".join(
        f"# HELP llamacpp:{name} {help_text}\n# TYPE llamacpp:{name} {kind}\n"
        f"llamacpp:{name} {value:g}\n"
        for name, kind, help_text, value in rows
    )


def _triton(models: Sequence[SimModelCounters]) -> str:
    # prometheus-cpp: whole numbers without ".0"; `le` written last. The ensemble's composing
    # models report nv_inference_* too, which is why the profile reads only nv_llm_*.
    parts: list[str] = []
    esc = [(escape_label_value(m.model), m) for m in models]
    parts.append(
        "# HELP nv_inference_request_success Number of successful inference requests, all "
        "batch sizes\n# TYPE nv_inference_request_success counter\n"
    )
    for model, m in esc:
        for name in (f"{model}_ensemble", "preprocessing", model, "postprocessing"):
            parts.append(
                f'nv_inference_request_success{{model="{name}",version="1"}} '
                f"{m.requests_finished}\n"
            )
    parts.append(
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests "
        "awaiting execution per-model.\n# TYPE nv_inference_pending_request_count gauge\n"
    )
    parts.extend(
        f'nv_inference_pending_request_count{{model="{model}",version="1"}} {m.requests_waiting}\n'
        for model, m in esc
    )
    for family, kind, attr in (
        ("nv_llm_input_token_len", "total_input_tokens", "prompt_tokens"),
        ("nv_llm_output_token_len", "total_output_tokens", "generation_tokens"),
    ):
        parts.append(f"# HELP {family} TRT LLM response metrics\n# TYPE {family} histogram\n")
        for model, m in esc:
            base = f'model="{model}",response_metric_type="{kind}",version="1"'
            n = m.requests_finished
            parts.append(f"{family}_count{{{base}}} {n}\n")
            parts.append(f"{family}_sum{{{base}}} {getattr(m, attr)}\n")
            cum = _cumulative(n, len(_TRITON_TOKENS) + 1)
            parts.extend(
                f'{family}_bucket{{{base},le="{b}"}} {c}\n'
                for b, c in zip(_TRITON_TOKENS, cum[:-1], strict=True)
            )
            parts.append(f'{family}_bucket{{{base},le="+Inf"}} {n}\n')
    parts.append(
        "# HELP nv_trt_llm_request_metrics TRT LLM request metrics\n"
        "# TYPE nv_trt_llm_request_metrics gauge\n"
    )
    for model, m in esc:
        for rtype, value in (
            ("context", 0),
            ("scheduled", m.requests_running),
            ("max", 256),
            ("active", m.requests_running + m.requests_waiting),
            ("waiting", m.requests_waiting),
        ):
            parts.append(
                f'nv_trt_llm_request_metrics{{model="{model}",request_type="{rtype}",'
                f'version="1"}} {value}\n'
            )
    parts.append(
        "# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics\n"
        "# TYPE nv_trt_llm_kv_cache_block_metrics gauge\n"
    )
    for model, m in esc:
        used = int(4096 * m.kv_cache_usage)
        for btype, fvalue in (
            ("max", 4096.0),
            ("free", 4096.0 - used),
            ("used", float(used)),
            ("tokens_per", 64.0),
            ("fraction", m.kv_cache_usage),
        ):
            parts.append(
                f'nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type="{btype}",'
                f'model="{model}",version="1"}} {_whole(fvalue)}\n'
            )
    parts.append(
        "# HELP nv_gpu_power_usage GPU power usage in watts\n# TYPE nv_gpu_power_usage gauge\n"
        'nv_gpu_power_usage{gpu_uuid="GPU-6a7c1f7e-7d0e-4c2a-9d2b-2f8e3a1c0b11"} 412.5\n'
        "# HELP nv_energy_consumption GPU energy consumption in joules since the Triton Server "
        "started\n# TYPE nv_energy_consumption counter\n"
        'nv_energy_consumption{gpu_uuid="GPU-6a7c1f7e-7d0e-4c2a-9d2b-2f8e3a1c0b11"} 1.5e+06\n'
    )
    return "".join(parts)


def _lmdeploy(models: Sequence[SimModelCounters], ranks: int, start: float) -> str:
    # Default registry with disable_created_metrics(): process_* present, no _created.
    w = _Writer(created_at=None)
    _python_noise(w)
    _process_noise(w, start)
    rows = _rank_splits(models, ranks, "engine")
    scalars: tuple[tuple[str, str, str, Callable[[SimModelCounters, _Split], float]], ...] = (
        ("num_requests_running", "gauge", "Number of requests currently running.", lambda m, s: s[_RUN]),
        ("num_requests_waiting", "gauge", "Number of requests waiting.", lambda m, s: s[_WAIT]),
        ("gpu_cache_usage_perc", "gauge", "GPU KV-cache usage. 1 means 100 percent usage.", lambda m, s: m.kv_cache_usage),
        ("prompt_tokens", "counter", "Number of prefill tokens processed.", lambda m, s: s[_P]),
        ("generation_tokens", "counter", "Number of generation tokens processed.", lambda m, s: s[_G]),
        ("cached_tokens", "counter", "Total prefix-cached input tokens served.", lambda m, s: s[_C]),
    )  # fmt: skip
    for name, kind, help_text, pick in scalars:
        w.scalar(f"lmdeploy:{name}", kind, help_text, [(lab, pick(m, s)) for lab, m, s in rows])
    w.scalar(
        "lmdeploy:request_success",
        "counter",
        "Count of successfully processed requests.",
        [((*lab, ("finished_reason", "stop")), s[_FIN]) for lab, _, s in rows],
    )
    w.histogram(
        "lmdeploy:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        _VLLM_TTFT,
        [(lab, s[_FIN], 0.2 * s[_FIN]) for lab, _, s in rows],
    )
    w.histogram(
        "lmdeploy:request_prompt_tokens",
        "Number of prefill tokens processed.",
        build_1_2_5_buckets(32768),
        [(lab, s[_FIN], float(s[_P])) for lab, _, s in rows],
    )
    return w.text()


def _rust_float(value: float) -> str:
    """Format as Rust's ``f64`` Display: ``33``, ``0.6126917290000005``, never an exponent."""
    v = float(value)
    if v.is_integer():
        return str(int(v))
    text = repr(v)
    return format(Decimal(text), "f") if "e" in text else text


def _dynamo(models: Sequence[SimModelCounters]) -> str:
    # The Rust prometheus crate's gather(): families sorted by name, labels sorted with `le`
    # last, Rust number formatting; the frontend's families (label `model`).
    esc = [(escape_label_value(m.model), m) for m in models]
    families: list[tuple[str, str, str, list[str]]] = []

    def scalar(name: str, kind: str, help_text: str, rows: Sequence[tuple[str, float]]) -> None:
        lines = [
            f"{name}{{{labels}}} {_rust_float(v)}\n" if labels else f"{name} {_rust_float(v)}\n"
            for labels, v in rows
        ]
        families.append((name, kind, help_text, lines))

    def histogram(
        name: str,
        help_text: str,
        bounds: Sequence[float],
        pick: Callable[[SimModelCounters], tuple[int, float]],
    ) -> None:
        lines: list[str] = []
        for mo, m in esc:
            n, total = pick(m)
            cum = _cumulative(n, len(bounds) + 1)
            lines.extend(
                f'{name}_bucket{{model="{mo}",le="{_rust_float(b)}"}} {c}\n'
                for b, c in zip(bounds, cum[:-1], strict=True)
            )
            lines.append(f'{name}_bucket{{model="{mo}",le="+Inf"}} {n}\n')
            lines.append(f'{name}_sum{{model="{mo}"}} {_rust_float(total)}\n')
            lines.append(f'{name}_count{{model="{mo}"}} {n}\n')
        families.append((name, "histogram", help_text, lines))

    f = "dynamo_frontend_"
    scalar(f"{f}disconnected_clients", "gauge", "Number of disconnected clients", [("", 0)])
    scalar(
        f"{f}inflight_requests",
        "gauge",
        "Number of inflight requests",
        [(f'model="{mo}"', m.requests_running) for mo, m in esc],
    )
    scalar(
        f"{f}queued_requests",
        "gauge",
        "Number of requests in HTTP processing queue",
        [(f'model="{mo}"', m.requests_waiting) for mo, m in esc],
    )
    histogram(
        f"{f}input_sequence_tokens",
        "Input sequence length in tokens",
        _DYNAMO_INPUT,
        lambda m: (m.requests_finished, m.prompt_tokens),
    )
    histogram(
        f"{f}output_sequence_tokens",
        "Output sequence length in tokens",
        _DYNAMO_OUTPUT,
        lambda m: (m.requests_finished, m.generation_tokens),
    )
    histogram(
        f"{f}inter_token_latency_seconds",
        "Inter-token latency in seconds",
        _DYNAMO_ITL,
        lambda m: (m.generation_tokens, 0.002 * m.generation_tokens),
    )
    histogram(
        f"{f}request_duration_seconds",
        "Duration of LLM requests",
        _DYNAMO_DURATION,
        lambda m: (m.requests_finished, 2.2 * m.requests_finished),
    )
    histogram(
        f"{f}time_to_first_token_seconds",
        "Time to first token in seconds",
        _DYNAMO_TTFT,
        lambda m: (m.requests_finished, 0.16 * m.requests_finished),
    )
    scalar(
        f"{f}output_tokens_total",
        "counter",
        "Total number of output tokens generated (updates in real-time)",
        [(f'model="{mo}"', m.generation_tokens) for mo, m in esc],
    )
    scalar(
        f"{f}requests_total",
        "counter",
        "Total number of LLM requests processed",
        [
            (
                f'endpoint="chat_completions",model="{mo}",request_type="stream",status="success"',
                m.requests_finished,
            )
            for mo, m in esc
        ],
    )
    for name, help_text, value in (
        (
            "model_context_length",
            "Maximum context length in tokens for a worker serving the model",
            40960,
        ),
        (
            "model_kv_cache_block_size",
            "KV cache block size in tokens for a worker serving the model",
            16,
        ),
        (
            "model_max_num_batched_tokens",
            "Maximum number of batched tokens for a worker serving the model",
            16384,
        ),
        ("model_max_num_seqs", "Maximum number of sequences for a worker serving the model", 256),
        ("model_migration_limit", "Maximum number of request migrations allowed for the model", 0),
        (
            "model_total_kv_blocks",
            "Total KV cache blocks available for a worker serving the model",
            92962,
        ),
    ):
        scalar(f"{f}{name}", "gauge", help_text, [(f'model="{mo}"', value) for mo, _ in esc])
    return "".join(
        f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n" + "".join(lines)
        for name, kind, help_text, lines in sorted(families)
    )


def _nim(models: Sequence[SimModelCounters], start: float) -> str:
    # vLLM-based, but the names carry no `vllm:` prefix.
    w = _Writer(created_at=None)
    _process_noise(w, start)
    rows = _per_model(models)
    scalars: tuple[tuple[str, str, str, Callable[[SimModelCounters], float]], ...] = (
        ("num_requests_running", "gauge", "Number of requests currently running on GPU.", lambda m: m.requests_running),
        ("num_requests_waiting", "gauge", "Number of requests waiting to be processed.", lambda m: m.requests_waiting),
        ("num_request_max", "gauge", "Max number of concurrently running requests.", lambda m: 256),
        ("gpu_cache_usage_perc", "gauge", "GPU KV-cache usage. 1 means 100 percent usage.", lambda m: m.kv_cache_usage),
        ("prompt_tokens", "counter", "Number of prefill tokens processed.", lambda m: m.prompt_tokens),
        ("generation_tokens", "counter", "Number of generation tokens processed.", lambda m: m.generation_tokens),
        ("request_success", "counter", "Count of successfully processed requests.", lambda m: m.requests_finished),
    )  # fmt: skip
    for name, kind, help_text, pick in scalars:
        w.scalar(name, kind, help_text, [(lab, pick(m)) for lab, m in rows])
    w.histogram(
        "time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        _VLLM_V0_TTFT,
        [(lab, m.requests_finished, 0.2 * m.requests_finished) for lab, m in rows],
    )
    w.histogram(
        "request_prompt_tokens",
        "Number of prefill tokens processed.",
        build_1_2_5_buckets(32768),
        [(lab, m.requests_finished, float(m.prompt_tokens)) for lab, m in rows],
    )
    return w.text()
