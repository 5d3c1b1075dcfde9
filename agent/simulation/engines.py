"""Simulated vLLM, SGLang and LMDeploy ``/metrics`` built the way the real servers build them.

Each engine's metrics live in ``prometheus_client`` objects (Counter, Gauge, Histogram, Info)
with the engine's real names, HELP texts, types and label names, in a
:class:`~prometheus_client.CollectorRegistry` of its own (never the global ``REGISTRY``), and
are served by the app the engine mounts:

- vLLM: a FastAPI app where ``prometheus_fastapi_instrumentator.Instrumentator(...).expose``
  owns ``GET /metrics`` (classic text whatever the Accept header), with prometheus_client's ASGI
  app mounted behind it (``vllm/entrypoints/serve/instrumentator/metrics.py``,
  ``attach_router``). The default registry's gc, platform and process collectors are present
  and counters carry ``_created``; with ``--api-server-count > 1`` the registry holds only a
  ``MultiProcessCollector`` (``vllm/v1/metrics/prometheus.py``).
- SGLang: prometheus_client's ASGI app mounted on ``/metrics`` over a registry that holds only
  a ``MultiProcessCollector`` (``python/sglang/srt/utils/common.py``,
  ``add_prometheus_middleware``): always multiprocess mode. prometheus_client 0.23 and later
  answer OpenMetrics, with escaped names, when the Accept header lists it.
- LMDeploy: prometheus_client's ASGI app mounted on ``/metrics`` over the default registry,
  with ``disable_created_metrics()`` (``lmdeploy/serve/openai/api_server.py``
  ``mount_metrics``, ``lmdeploy/metrics/loggers.py``).

Multiprocess mode is chosen by ``PROMETHEUS_MULTIPROC_DIR`` when prometheus_client is
imported, for the whole process, and ``disable_created_metrics()`` is process-wide too. So
the in-process engines (the demo's, and most tests') use neither: in-process SGLang serves its
metrics alone and without ``_created``, which is what its MultiProcessCollector registry
shows (``tests/simulation/test_engines.py`` checks that the two serve the same engine series,
value for value); in-process LMDeploy keeps the default registry's collectors and drops
``_created``. Real multiprocess output comes from :class:`EngineSubprocess`, which runs an
engine in a child process with the variable set (and, for tests, with another
prometheus_client release first on its path).

Values move the way an engine moves them: counters by increments (a counter that would go
down means the rank restarted: its series are removed and created again, with a new
``_created``), gauges by ``set``, histograms by observations. A rank missing from an update
has its series removed (it drops out of the exposition) until it comes back.
"""

# The metric tables keep each real HELP string on one line, next to its name.
# ruff: noqa: E501

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    make_asgi_app,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.simulation.expositions import (
    _SGLANG_E2E,
    _SGLANG_ITL,
    _SGLANG_TTFT,
    _VLLM_COUNTERS,
    _VLLM_HISTOGRAMS,
    _VLLM_ITERATION,
    _VLLM_ITL,
    _VLLM_KV_RESIDENCY,
    _VLLM_LATENCY,
    _VLLM_PARAMS_N,
    _VLLM_TTFT,
    SimModelCounters,
    build_1_2_5_buckets,
)

__all__ = [
    "APP_ENGINES",
    "AsgiListener",
    "EngineApp",
    "EngineSubprocess",
    "RankCounters",
    "build_engine_app",
]

APP_ENGINES: tuple[str, ...] = ("vllm", "sglang", "lmdeploy")
"""Engines whose ``/metrics`` is served by a prometheus_client registry and an ASGI app."""

RankCounters = tuple[int, SimModelCounters]
"""``(data-parallel rank, that rank's counters of one model)``."""

MAX_OBSERVATIONS = 16
"""Histogram observations per update and series: their ``_sum`` moves exactly, their
``_count`` by at most this many (a bound on the CPU one update costs)."""

_ZERO = SimModelCounters(model="")


def _went_down(before: SimModelCounters, after: SimModelCounters) -> bool:
    return (
        after.prompt_tokens < before.prompt_tokens
        or after.generation_tokens < before.generation_tokens
        or after.cached_prompt_tokens < before.cached_prompt_tokens
        or after.requests_finished < before.requests_finished
    )


class _EngineMetrics:
    """One engine's metric objects, moved to absolute counter values by increments.

    Thread-safe: :meth:`apply` runs under a lock (two scrapes may pull at once).
    """

    def __init__(
        self, registry: CollectorRegistry | None, *, ranks: int, max_model_len: int
    ) -> None:
        self._lock = threading.Lock()
        self._ranks = ranks
        self._max_model_len = max_model_len
        self._last: dict[tuple[str, int], SimModelCounters] = {}
        self._last_model: dict[str, SimModelCounters] = {}
        self._children: dict[tuple[str, int], set[tuple[Any, tuple[str, ...]]]] = {}
        self._declare(registry)

    # -- engine-specific -----------------------------------------------------------------------

    def _declare(self, registry: CollectorRegistry | None) -> None:
        raise NotImplementedError

    def _move_rank(self, rank: int, before: SimModelCounters, after: SimModelCounters) -> None:
        """Move one (model, rank)'s series from ``before`` to ``after``."""
        raise NotImplementedError

    def _move_model(self, before: SimModelCounters, after: SimModelCounters) -> None:
        """Move the series kept per model only (SGLang's tokenizer process); default none."""

    # -- helpers -------------------------------------------------------------------------------

    def _child(self, key: tuple[str, int], metric: Any, labels: Sequence[str]) -> Any:
        self._children.setdefault(key, set()).add((metric, tuple(labels)))
        return metric.labels(*labels)

    def _inc(
        self,
        key: tuple[str, int],
        metric: Counter,
        labels: Sequence[str],
        before: float,
        after: float,
    ) -> None:
        child = self._child(key, metric, labels)
        if after > before:
            child.inc(after - before)

    def _set(
        self, key: tuple[str, int], metric: Gauge, labels: Sequence[str], value: float
    ) -> None:
        self._child(key, metric, labels).set(value)

    def _observe(
        self,
        key: tuple[str, int],
        metric: Histogram,
        labels: Sequence[str],
        counts: tuple[int, int],
        sums: tuple[float, float],
    ) -> None:
        child = self._child(key, metric, labels)
        n = counts[1] - counts[0]
        total = sums[1] - sums[0]
        if n <= 0 or total < 0:
            return
        k = min(n, MAX_OBSERVATIONS)
        for _ in range(k):
            child.observe(total / k)

    def _remove(self, key: tuple[str, int]) -> None:
        for metric, labels in self._children.pop(key, set()):
            with contextlib.suppress(KeyError):
                metric.remove(*labels)

    # -- the update ----------------------------------------------------------------------------

    def apply(self, counts: Iterable[RankCounters]) -> None:
        """Move every series to the given per-rank counters.

        Args:
            counts: ``(rank, counters)`` per model and rank present now. A (model, rank) seen
                before and missing now drops out (its series are removed); one whose counters
                went down restarted (its series start again from 0).
        """
        with self._lock:
            present: set[tuple[str, int]] = set()
            totals: dict[str, SimModelCounters] = {}
            for rank, now in counts:
                key = (now.model, rank)
                present.add(key)
                before = self._last.get(key)
                if before is not None and _went_down(before, now):
                    self._remove(key)
                    before = None
                self._move_rank(rank, before or SimModelCounters(model=now.model), now)
                self._last[key] = now
                totals[now.model] = _plus(totals.get(now.model), now)
            for key in [k for k in self._last if k not in present]:
                self._remove(key)
                del self._last[key]
            for model, now in totals.items():
                # Per-model counters only go up: a rank that drops out or restarts does not
                # take the tokenizer's counts back.
                before = self._last_model.get(model) or SimModelCounters(model=model)
                now = _at_least(now, before)
                self._move_model(before, now)
                self._last_model[model] = now


def _plus(a: SimModelCounters | None, b: SimModelCounters) -> SimModelCounters:
    if a is None:
        return b
    return SimModelCounters(
        model=b.model,
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        generation_tokens=a.generation_tokens + b.generation_tokens,
        cached_prompt_tokens=a.cached_prompt_tokens + b.cached_prompt_tokens,
        requests_running=a.requests_running + b.requests_running,
        requests_waiting=a.requests_waiting + b.requests_waiting,
        kv_cache_usage=max(a.kv_cache_usage, b.kv_cache_usage),
        requests_finished=a.requests_finished + b.requests_finished,
    )


def _at_least(now: SimModelCounters, floor: SimModelCounters) -> SimModelCounters:
    return SimModelCounters(
        model=now.model,
        prompt_tokens=max(now.prompt_tokens, floor.prompt_tokens),
        generation_tokens=max(now.generation_tokens, floor.generation_tokens),
        cached_prompt_tokens=max(now.cached_prompt_tokens, floor.cached_prompt_tokens),
        requests_running=now.requests_running,
        requests_waiting=now.requests_waiting,
        kv_cache_usage=now.kv_cache_usage,
        requests_finished=max(now.requests_finished, floor.requests_finished),
    )


def _split_of(c: SimModelCounters) -> tuple[int, int, int, int, int, int]:
    """The tuple the vLLM tables of :mod:`agent.simulation.expositions` read."""
    return (
        c.prompt_tokens,
        c.generation_tokens,
        c.cached_prompt_tokens,
        c.requests_running,
        c.requests_waiting,
        c.requests_finished,
    )


# vLLM's CacheConfig labels on vllm:cache_config_info (vllm/v1/metrics/loggers.py, log_metrics_info).
_CACHE_CONFIG: tuple[tuple[str, str], ...] = (
    ("block_size", "16"), ("cache_dtype", "auto"), ("calculate_kv_scales", "False"),
    ("cpu_offload_gb", "0"), ("enable_prefix_caching", "True"),
    ("gpu_memory_utilization", "0.9"), ("is_attention_free", "False"),
    ("num_cpu_blocks", "None"), ("num_gpu_blocks", "27521"),
    ("num_gpu_blocks_override", "None"), ("prefix_caching_hash_algo", "sha256"),
    ("sliding_window", "None"), ("swap_space", "4"), ("swap_space_bytes", "4294967296"),
)  # fmt: skip


class _VllmMetrics(_EngineMetrics):
    """vLLM V1 ``PrometheusStatLogger``: labels ``model_name`` and ``engine`` (the DP rank)."""

    def _declare(self, registry: CollectorRegistry | None) -> None:
        ln = ["model_name", "engine"]
        mp: Final = "mostrecent"  # vLLM's gauges in multiprocess mode
        self.running = Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            ln,
            registry=registry,
            multiprocess_mode=mp,
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            ln,
            registry=registry,
            multiprocess_mode=mp,
        )
        self.sleep = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            [*ln, "sleep_state"],
            registry=registry,
            multiprocess_mode=mp,
        )
        self.kv = Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            ln,
            registry=registry,
            multiprocess_mode=mp,
        )
        self.counters = [
            (Counter(f"vllm:{name}", help_text, ln, registry=registry), pick)
            for name, help_text, pick in _VLLM_COUNTERS
        ]
        self.by_source = Counter(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            [*ln, "source"],
            registry=registry,
        )
        self.cached = Counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local + external).",
            ln,
            registry=registry,
        )
        self.generation = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            ln,
            registry=registry,
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*ln, "finished_reason"],
            registry=registry,
        )
        buckets: dict[str, Sequence[float]] = {
            "tokens": build_1_2_5_buckets(self._max_model_len),
            "iteration": [float(b) for b in _VLLM_ITERATION],
            "n": [float(b) for b in _VLLM_PARAMS_N],
            "ttft": _VLLM_TTFT,
            "itl": _VLLM_ITL,
            "latency": _VLLM_LATENCY,
            "kv": [float(b) for b in _VLLM_KV_RESIDENCY],
        }
        self.histograms = [
            (
                Histogram(f"vllm:{name}", help_text, ln, registry=registry, buckets=buckets[kind]),
                total,
            )
            for name, help_text, kind, total in _VLLM_HISTOGRAMS
        ]
        self.cache_config = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            [*(k for k, _ in _CACHE_CONFIG), "engine"],
            registry=registry,
            multiprocess_mode=mp,
        )

    def _move_rank(self, rank: int, before: SimModelCounters, after: SimModelCounters) -> None:
        key = (after.model, rank)
        lv = (after.model, str(rank))
        b, a = _split_of(before), _split_of(after)
        self._set(key, self.running, lv, after.requests_running)
        self._set(key, self.waiting, lv, after.requests_waiting)
        for state in ("awake", "weights_offloaded", "discard_all"):
            self._set(key, self.sleep, (*lv, state), 1 if state == "awake" else 0)
        self._set(key, self.kv, lv, after.kv_cache_usage)
        for metric, pick in self.counters:
            self._inc(key, metric, lv, pick(b), pick(a))
        for source, pick in (
            ("local_compute", lambda s: s[0] - s[2]),
            ("local_cache_hit", lambda s: s[2]),
            ("external_kv_transfer", lambda s: 0),
        ):
            self._inc(key, self.by_source, (*lv, source), pick(b), pick(a))
        self._inc(key, self.cached, lv, b[2], a[2])
        self._inc(key, self.generation, lv, b[1], a[1])
        for reason, pick in (
            ("stop", lambda s: s[5] - s[5] // 10),
            ("length", lambda s: s[5] // 10),
            ("abort", lambda s: 0),
        ):
            self._inc(key, self.success, (*lv, reason), pick(b), pick(a))
        for hist, total in self.histograms:
            self._observe(key, hist, lv, (b[5], a[5]), (float(total(b)), float(total(a))))
        self._set(key, self.cache_config, (*(v for _, v in _CACHE_CONFIG), str(rank)), 1)


class _SglangMetrics(_EngineMetrics):
    """SGLang's ``TokenizerMetricsCollector`` (per model) and ``SchedulerMetricsCollector``."""

    def _declare(self, registry: CollectorRegistry | None) -> None:
        tok = ["model_name"]
        sched = ["model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank"]
        if self._ranks > 1:
            sched.append("dp_rank")  # only with DP attention
        mp: Final = "mostrecent"
        self.prompt = Counter(
            "sglang:prompt_tokens_total",
            "Number of prefill tokens processed.",
            tok,
            registry=registry,
        )
        self.generation = Counter(
            "sglang:generation_tokens_total",
            "Number of generation tokens processed.",
            tok,
            registry=registry,
        )
        self.cached = Counter(
            "sglang:cached_tokens_total",
            "Number of cached prompt tokens.",
            [*tok, "cache_source"],
            registry=registry,
        )
        self.requests = Counter(
            "sglang:num_requests_total", "Number of requests processed.", tok, registry=registry
        )
        self.aborted = Counter(
            "sglang:num_aborted_requests_total",
            "Number of requests aborted.",
            tok,
            registry=registry,
        )
        self.ttft = Histogram(
            "sglang:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            tok,
            registry=registry,
            buckets=[float(b) for b in _SGLANG_TTFT],
        )
        self.itl = Histogram(
            "sglang:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            tok,
            registry=registry,
            buckets=_SGLANG_ITL,
        )
        self.e2e = Histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            tok,
            registry=registry,
            buckets=[float(b) for b in _SGLANG_E2E],
        )
        self.realtime = Counter(
            "sglang:realtime_tokens_total",
            "Total number of tokens processed, updated on each log interval.",
            [*sched, "mode"],
            registry=registry,
        )
        self.gauges: list[tuple[Gauge, Callable[[SimModelCounters], float]]] = [
            (
                Gauge(
                    "sglang:num_running_reqs",
                    "The number of running requests.",
                    sched,
                    registry=registry,
                    multiprocess_mode=mp,
                ),
                lambda c: c.requests_running,
            ),
            (
                Gauge(
                    "sglang:num_used_tokens",
                    "The number of used tokens.",
                    sched,
                    registry=registry,
                    multiprocess_mode=mp,
                ),
                lambda c: int(c.kv_cache_usage * 500_000),
            ),
            (
                Gauge(
                    "sglang:token_usage",
                    "The token usage.",
                    sched,
                    registry=registry,
                    multiprocess_mode=mp,
                ),
                lambda c: c.kv_cache_usage,
            ),
            (
                Gauge(
                    "sglang:gen_throughput",
                    "The generation throughput (token/s).",
                    sched,
                    registry=registry,
                    multiprocess_mode=mp,
                ),
                lambda c: 1234.5 if c.requests_running else 0.0,
            ),
            (
                Gauge(
                    "sglang:num_queue_reqs",
                    "The number of requests in the waiting queue.",
                    sched,
                    registry=registry,
                    multiprocess_mode=mp,
                ),
                lambda c: c.requests_waiting,
            ),
            (
                Gauge(
                    "sglang:cache_hit_rate",
                    "The prefix cache hit rate.",
                    sched,
                    registry=registry,
                    multiprocess_mode=mp,
                ),
                lambda c: c.cached_prompt_tokens / c.prompt_tokens if c.prompt_tokens else 0.0,
            ),
        ]

    def _move_rank(self, rank: int, before: SimModelCounters, after: SimModelCounters) -> None:
        key = (after.model, rank)
        lv: tuple[str, ...] = (after.model, "unified", "0", "0", "0")
        if self._ranks > 1:
            lv = (*lv, str(rank))
        modes: tuple[tuple[str, Callable[[SimModelCounters], int]], ...] = (
            ("prefill_compute", lambda c: c.prompt_tokens - c.cached_prompt_tokens),
            ("prefill_cache", lambda c: c.cached_prompt_tokens),
            ("decode", lambda c: c.generation_tokens),
        )
        for mode, pick in modes:
            self._inc(key, self.realtime, (*lv, mode), pick(before), pick(after))
        for gauge, value in self.gauges:
            self._set(key, gauge, lv, value(after))

    def _move_model(self, before: SimModelCounters, after: SimModelCounters) -> None:
        key = (after.model, -1)
        lv = (after.model,)
        self._inc(key, self.prompt, lv, before.prompt_tokens, after.prompt_tokens)
        self._inc(key, self.generation, lv, before.generation_tokens, after.generation_tokens)
        if after.cached_prompt_tokens:  # each cache_source series appears on its first hit
            for source in ("device", "total"):
                self._inc(
                    key,
                    self.cached,
                    (*lv, source),
                    before.cached_prompt_tokens,
                    after.cached_prompt_tokens,
                )
        self._inc(key, self.requests, lv, before.requests_finished, after.requests_finished)
        self._inc(key, self.aborted, lv, 0, 0)
        fin = (before.requests_finished, after.requests_finished)
        self._observe(key, self.ttft, lv, fin, (0.3 * fin[0], 0.3 * fin[1]))
        self._observe(
            key,
            self.itl,
            lv,
            (before.generation_tokens, after.generation_tokens),
            (0.015 * before.generation_tokens, 0.015 * after.generation_tokens),
        )
        self._observe(key, self.e2e, lv, fin, (3.5 * fin[0], 3.5 * fin[1]))


# lmdeploy.messages.ResponseType members, as str(reason) labels them.
_LMDEPLOY_REASONS = (
    "SUCCESS", "FINISH", "ENGINE_STOP_ERROR", "SESSION_REPEAT", "SESSION_NOT_EXIST",
    "HANDLER_NOT_EXIST", "INPUT_LENGTH_ERROR", "INTERNAL_ENGINE_ERROR", "CANCEL",
    "PREFIX_CACHE_CONFLICT", "NO_QUEUE", "NOT_SUPPORTED", "OUT_OF_MEMORY",
)  # fmt: skip


class _LmdeployMetrics(_EngineMetrics):
    """LMDeploy's ``PrometheusStatLogger``: labels ``model_name`` and ``engine`` (the DP rank)."""

    def _declare(self, registry: CollectorRegistry | None) -> None:
        ln = ["model_name", "engine"]
        self.info = Info(
            "lmdeploy:backend_config", "information of backend_config", registry=registry
        )
        self.info.info(
            {"backend": "pytorch", "max_batch_size": "256", "session_len": str(self._max_model_len)}
        )
        self.running = Gauge(
            "lmdeploy:num_requests_running",
            "Number of requests in model execution batches.",
            ln,
            registry=registry,
        )
        self.waiting = Gauge(
            "lmdeploy:num_requests_waiting",
            "Number of requests waiting to be processed.",
            ln,
            registry=registry,
        )
        self.kv = Gauge(
            "lmdeploy:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            ln,
            registry=registry,
        )
        self.hit_rate = Gauge(
            "lmdeploy:prefix_cache_hit_rate",
            "Prefix-cache hit rate. 1 means 100 percent of queried prefix tokens hit.",
            ln,
            registry=registry,
        )
        self.prompt = Counter(
            "lmdeploy:prompt_tokens_total",
            "Number of prefill tokens processed.",
            ln,
            registry=registry,
        )
        self.generation = Counter(
            "lmdeploy:generation_tokens_total",
            "Number of generation tokens processed.",
            ln,
            registry=registry,
        )
        self.success = Counter(
            "lmdeploy:request_success_total",
            "Count of successfully processed requests.",
            [*ln, "finished_reason"],
            registry=registry,
        )
        tokens = build_1_2_5_buckets(self._max_model_len)
        self.h_prompt = Histogram(
            "lmdeploy:request_prompt_tokens",
            "Number of prefill tokens processed.",
            ln,
            registry=registry,
            buckets=tokens,
        )
        self.h_generation = Histogram(
            "lmdeploy:request_generation_tokens",
            "Number of generation tokens processed.",
            ln,
            registry=registry,
            buckets=tokens,
        )
        self.cached = Counter(
            "lmdeploy:cached_tokens_total",
            "Total prefix-cached input tokens served.",
            ln,
            registry=registry,
        )
        self.ttft = Histogram(
            "lmdeploy:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            ln,
            registry=registry,
            buckets=_VLLM_TTFT,
        )

    def _move_rank(self, rank: int, before: SimModelCounters, after: SimModelCounters) -> None:
        key = (after.model, rank)
        lv = (after.model, str(rank))
        self._set(key, self.running, lv, after.requests_running)
        self._set(key, self.waiting, lv, after.requests_waiting)
        self._set(key, self.kv, lv, after.kv_cache_usage)
        rate = after.cached_prompt_tokens / after.prompt_tokens if after.prompt_tokens else 0.0
        self._set(key, self.hit_rate, lv, rate)
        self._inc(key, self.prompt, lv, before.prompt_tokens, after.prompt_tokens)
        self._inc(key, self.generation, lv, before.generation_tokens, after.generation_tokens)
        for reason in _LMDEPLOY_REASONS:
            done = (
                (before.requests_finished, after.requests_finished)
                if reason == "FINISH"
                else (0, 0)
            )
            self._inc(key, self.success, (*lv, f"ResponseType.{reason}"), *done)
        fin = (before.requests_finished, after.requests_finished)
        self._observe(key, self.h_prompt, lv, fin, (before.prompt_tokens, after.prompt_tokens))
        self._observe(
            key, self.h_generation, lv, fin, (before.generation_tokens, after.generation_tokens)
        )
        self._inc(key, self.cached, lv, before.cached_prompt_tokens, after.cached_prompt_tokens)
        self._observe(key, self.ttft, lv, fin, (0.2 * fin[0], 0.2 * fin[1]))


_METRICS: Mapping[str, type[_EngineMetrics]] = {
    "vllm": _VllmMetrics,
    "sglang": _SglangMetrics,
    "lmdeploy": _LmdeployMetrics,
}


# -- collectors ----------------------------------------------------------------------------------


class _ProcessCollector(Collector):
    """prometheus_client's ``ProcessCollector`` families, with the simulated start time.

    The real collector reads ``/proc/self``: the test process's start time, which a simulated
    restart cannot move.
    """

    def __init__(self, start_time_seconds: Callable[[], float]) -> None:
        self._start = start_time_seconds

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "process_virtual_memory_bytes", "Virtual memory size in bytes.", value=8.2530074624e10
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory size in bytes.", value=3.904626688e9
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            value=round(self._start(), 2),
        )
        yield CounterMetricFamily(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            value=1325.77,
        )
        yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", value=87.0)
        yield GaugeMetricFamily(
            "process_max_fds", "Maximum number of open file descriptors.", value=1048576.0
        )


class _WithoutCreated(Collector):
    """Another registry's families without ``_created`` samples.

    The per-registry equivalent of ``prometheus_client.disable_created_metrics()``, which is
    process-wide (it would also change the agent's own exposition in the demo's process).
    """

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterable[Metric]:
        for family in self._inner.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class _Pull(Collector):
    """Registered first: before a scrape reads the registry, pull the server's counters in.

    Also times, per thread, the rendering CPU of each scrape (with :class:`_PullEnd`).
    """

    def __init__(self, pull: Callable[[], Iterable[RankCounters]], metrics: _EngineMetrics) -> None:
        self._pull = pull
        self._metrics = metrics
        self.local = threading.local()

    def collect(self) -> Iterable[Metric]:
        self.local.started = time.thread_time()
        self._metrics.apply(self._pull())
        return ()


class _PullEnd(Collector):
    """Registered last: adds the thread CPU of the scrape since :class:`_Pull` ran."""

    def __init__(self, start: _Pull, account: Callable[[float], None]) -> None:
        self._start = start
        self._account = account

    def collect(self) -> Iterable[Metric]:
        started = getattr(self._start.local, "started", None)
        if started is not None:
            self._account(time.thread_time() - started)
            self._start.local.started = None
        return ()


# -- apps ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineApp:
    """An engine's ASGI app and the registry it serves.

    Attributes:
        engine: ``vllm``, ``sglang`` or ``lmdeploy``.
        app: The ASGI application (``GET /metrics`` and ``/health``).
        registry: The registry ``/metrics`` renders.
        metrics: The engine's metric objects (call ``apply`` to move them).
    """

    engine: str
    app: Any
    registry: CollectorRegistry
    metrics: _EngineMetrics


def _mount_metrics(app: Any, registry: CollectorRegistry) -> None:
    """prometheus_client's ASGI app on ``/metrics``, as vLLM, SGLang and LMDeploy mount it."""
    from starlette.routing import Mount, compile_path

    route = Mount("/metrics", make_asgi_app(registry=registry))
    # The engines' workaround for the 307 redirect of /metrics to /metrics/: they set the
    # pattern ^/metrics(?P<path>.*)$, which starlette's own path compiler gives.
    route.path_regex, _, _ = compile_path("/metrics{path:path}")
    app.routes.append(route)


def build_engine_app(
    engine: str,
    *,
    start_time_seconds: Callable[[], float],
    ranks: int = 1,
    max_model_len: int = 131072,
    pull: Callable[[], Iterable[RankCounters]] | None = None,
    account_cpu: Callable[[float], None] | None = None,
    multiprocess_dir: str | None = None,
) -> EngineApp:
    """Build one engine's registry, metrics and ASGI app, as the real server builds them.

    Args:
        engine: ``vllm``, ``sglang`` or ``lmdeploy``.
        start_time_seconds: The simulated process start, Unix s (``process_start_time_seconds``).
        ranks: Data-parallel ranks (SGLang adds a ``dp_rank`` label when > 1).
        max_model_len: Sets the 1-2-5 token-histogram buckets, tokens.
        pull: Called on each scrape for the counters to show (in-process servers); None when
            the caller moves the metrics itself with ``metrics.apply``.
        account_cpu: Receives the rendering CPU of each scrape, s (with ``pull``).
        multiprocess_dir: prometheus_client's multiprocess directory; only in a process whose
            ``PROMETHEUS_MULTIPROC_DIR`` was set before prometheus_client was imported.

    Returns:
        The app, its registry and the metric objects.

    Raises:
        ValueError: For an engine without an app, or a multiprocess directory that is not
            this process's ``PROMETHEUS_MULTIPROC_DIR``.
    """
    if engine not in _METRICS:
        raise ValueError(
            f"no prometheus_client app for engine {engine!r}; have {', '.join(APP_ENGINES)}"
        )
    if (
        multiprocess_dir is not None
        and os.environ.get("PROMETHEUS_MULTIPROC_DIR") != multiprocess_dir
    ):
        raise ValueError(
            "multiprocess mode needs PROMETHEUS_MULTIPROC_DIR set before prometheus_client is imported"
        )
    from fastapi import FastAPI

    served = CollectorRegistry()
    puller: _Pull | None = None
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {}

    if multiprocess_dir is not None:
        from prometheus_client import multiprocess

        # The metric objects write their values to files; /metrics reads them all back.
        metrics = _METRICS[engine](CollectorRegistry(), ranks=ranks, max_model_len=max_model_len)
        multiprocess.MultiProcessCollector(served, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    else:
        inner = CollectorRegistry() if engine != "vllm" else served
        if engine != "sglang":  # the default registry's collectors (SGLang serves none)
            GCCollector(registry=inner)
            PlatformCollector(registry=inner)
            inner.register(_ProcessCollector(start_time_seconds))
        metrics = _METRICS[engine](inner, ranks=ranks, max_model_len=max_model_len)
        if inner is not served:
            served.register(_WithoutCreated(inner))
    if pull is not None:
        puller = _Pull(pull, metrics)
        # Registration order is collection order: pull first, so the scrape reads new values.
        _register_first(served, puller)
        if account_cpu is not None:
            served.register(_PullEnd(puller, account_cpu))

    if engine == "vllm":
        import prometheus_client
        from fastapi import Response
        from prometheus_fastapi_instrumentator import Instrumentator

        class PrometheusResponse(Response):
            media_type = prometheus_client.CONTENT_TYPE_LATEST

        Instrumentator(
            excluded_handlers=["/metrics", "/health", "/load", "/ping", "/version", "/server_info"],
            registry=served,
        ).add().instrument(app).expose(app, response_class=PrometheusResponse)
    _mount_metrics(app, served)
    return EngineApp(engine=engine, app=app, registry=served, metrics=metrics)


def _register_first(registry: CollectorRegistry, collector: Collector) -> None:
    """Register ``collector`` so that it is collected before everything already there."""
    existing = list(registry._collector_to_names)
    for c in existing:
        registry.unregister(c)
    registry.register(collector)
    for c in existing:
        registry.register(c)


# -- serving -------------------------------------------------------------------------------------


class AsgiListener:
    """An ASGI app served by uvicorn on its own thread, on a socket bound here.

    Args:
        app: The ASGI app.
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        max_concurrency: Connections or tasks at once; more are answered 503 at once.
        timeout_seconds: Keep-alive timeout of idle connections, s.

    Raises:
        OSError: When the port cannot be bound.
        RuntimeError: When the server does not start within 10 s.
    """

    def __init__(
        self, app: Any, host: str, port: int, *, max_concurrency: int, timeout_seconds: float
    ) -> None:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.port: int = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,  # leave the host process's logging alone
            log_level="warning",
            access_log=False,
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            loop="asyncio",
            http="h11",
            ws="none",
            limit_concurrency=max_concurrency,
            timeout_keep_alive=max(1, int(timeout_seconds)),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"sim-asgi-{self.port}",
            daemon=True,
        )
        self._sock = sock
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the simulated server on port {self.port} did not start")
            time.sleep(0.005)

    def close(self) -> None:
        """Stop serving, close the socket and wait for the thread (idempotent)."""
        self._server.should_exit = True
        self._thread.join(timeout=5.0)
        self._sock.close()


# -- a simulated engine in a child process -------------------------------------------------------


class EngineSubprocess:
    """One engine app served from a child process, for what one process cannot hold.

    The child imports prometheus_client itself, so it can run in multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR`` set in its environment only) and with another
    prometheus_client release first on its path. The parent sends counters with
    :meth:`apply`; the child answers once its metrics moved, so a scrape after :meth:`apply`
    sees them.

    Args:
        engine: ``vllm``, ``sglang`` or ``lmdeploy``.
        ranks: Data-parallel ranks.
        multiprocess_dir: A fresh directory for multiprocess mode, or None.
        python_path: Directories put first on the child's ``PYTHONPATH`` (another release).
        cwd: Where the child starts (the directory that holds the ``agent`` package).
        start_time_seconds: Simulated process start, Unix s.

    Raises:
        RuntimeError: When the child does not report its port within 60 s.
    """

    def __init__(
        self,
        engine: str,
        *,
        ranks: int = 1,
        multiprocess_dir: str | None = None,
        python_path: Sequence[str] = (),
        cwd: str | None = None,
        start_time_seconds: float | None = None,
    ) -> None:
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if multiprocess_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
        root = cwd or os.getcwd()
        env["PYTHONPATH"] = os.pathsep.join([*python_path, root, env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        cmd = [
            sys.executable,
            "-m",
            "agent.simulation.engines",
            "--engine",
            engine,
            "--ranks",
            str(ranks),
        ]
        if multiprocess_dir is not None:
            cmd += ["--multiprocess-dir", multiprocess_dir]
        if start_time_seconds is not None:
            cmd += ["--start-time", repr(start_time_seconds)]
        self._proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        hello = self._reply(60.0)
        if not hello.startswith("port="):
            self.close()
            raise RuntimeError(f"simulated {engine} child failed to start: {hello!r}")
        parts = dict(p.split("=", 1) for p in hello.split())
        self.port = int(parts["port"])
        self.prometheus_client_version = parts.get("prometheus_client", "")
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    def _reply(self, timeout: float) -> str:
        stdout = self._proc.stdout
        assert stdout is not None
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return out[0].strip() if out else ""

    def apply(self, counts: Iterable[RankCounters]) -> None:
        """Move the child's metrics to these counters and wait until it has.

        Raises:
            RuntimeError: When the child does not confirm within 30 s.
        """
        assert self._proc.stdin is not None
        line = json.dumps([[rank, asdict(c)] for rank, c in counts])
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        if self._reply(30.0) != "ok":
            raise RuntimeError("the simulated engine child did not apply the counters")

    def close(self) -> None:
        """End the child (closing its stdin ends it; killed after 10 s)."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> EngineSubprocess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child(argv: Sequence[str], stdin: IO[str], stdout: IO[str]) -> int:
    """The child of :class:`EngineSubprocess`: serve, then apply each line of counters."""
    import prometheus_client

    parser = argparse.ArgumentParser(prog="agent.simulation.engines")
    parser.add_argument("--engine", required=True, choices=APP_ENGINES)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--multiprocess-dir")
    parser.add_argument("--start-time", type=float, default=None)
    args = parser.parse_args(argv)
    start = args.start_time if args.start_time is not None else time.time()
    if args.engine == "lmdeploy":
        # What LMDeploy's PrometheusStatLogger does; process-wide, and this process is its own.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    built = build_engine_app(
        args.engine,
        start_time_seconds=lambda: start,
        ranks=args.ranks,
        multiprocess_dir=args.multiprocess_dir,
    )
    listener = AsgiListener(built.app, "127.0.0.1", 0, max_concurrency=16, timeout_seconds=5.0)
    version = getattr(prometheus_client, "__version__", "") or _dist_version("prometheus_client")
    stdout.write(f"port={listener.port} prometheus_client={version}\n")
    stdout.flush()
    try:
        for line in stdin:
            rows = json.loads(line)
            built.metrics.apply((int(rank), SimModelCounters(**fields)) for rank, fields in rows)
            stdout.write("ok\n")
            stdout.flush()
    finally:
        listener.close()
    return 0


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:], sys.stdin, sys.stdout))
