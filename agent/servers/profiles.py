"""Engine profiles: turn one server's exposition into normalized token readings.

Pure module: no I/O, no clock, no threads. Profiles and their compiled scanners are immutable
constants built at import.

Each profile maps an engine's metric names (with their renames across versions) to a
:class:`~agent.readings.TokenReading` per served model. The rules shared by every profile:

* **Sources in order of preference.** Each field lists candidate series; the first candidate
  with at least one series in the body is used, for every model (so one scrape never mixes
  two sources of the same field). A candidate whose family is declared (HELP/TYPE) but has no
  series yet reads as 0. With none of them present the field is None (not exposed).
  Engines whose token series are created lazily, on the first request (SGLang, TGI, Triton,
  Dynamo), read 0 rather than None for a detected engine with no token series yet, so a
  restart shows as a counter going down.
* **Aggregation.** Series of one model are summed over every other label (vLLM/LMDeploy
  ``engine`` = data-parallel rank, SGLang ``dp_rank``, Triton ``version``). Replica labels
  whose series repeat the same values (SGLang ``tp_rank``, ``pp_rank``, ``moe_ep_rank``) are
  never summed: the lowest rank is kept. KV-cache usage is the mean over ranks (each rank has
  its own cache of the same size).
* **Never tokens:** ``_created``, ``_bucket`` and ``_count`` series and breakdowns such as
  vLLM ``prompt_tokens_by_source`` are not read as token counts.
* **Bad values.** A token counter series that is NaN, infinite or negative makes that model's
  field None (summing the other ranks would fake a counter reset) and adds a warning. A gauge
  series that is NaN, infinite or negative is ignored; a gauge with no valid series is None.
* **Duplicates.** A repeated series keeps its first value (the parser drops the rest) and adds
  a warning.
* **Model label.** The engine's model label (``model_name`` or ``model``); "" for servers
  without one (llama.cpp, TGI).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from agent.readings import ServerReading, TokenReading
from agent.servers.parser import (
    DEFAULT_LIMITS,
    Exposition,
    ExpositionError,
    ParseError,
    ParseLimits,
    Sample,
    Scanner,
    family_candidates,
)

__all__ = [
    "ENGINE_NAMES",
    "PROFILES",
    "EngineProfile",
    "ExpositionError",
    "ExpositionResult",
    "ParseError",
    "Source",
    "UnknownEngineError",
    "detect_engine",
    "interpret",
    "read_exposition",
    "read_exposition_detailed",
]


class UnknownEngineError(ExpositionError):
    """The exposition matches no engine profile (or not the one asked for)."""


@dataclass(frozen=True, slots=True)
class Source:
    """Series of one sample name, optionally filtered by label values.

    Attributes:
        name: Exact sample name, e.g. ``vllm:prompt_tokens_total``.
        where: ``(label, accepted values)`` pairs a series must match.
        without: Labels a series must not carry.
        help_excludes: Skip this source when the family's HELP text contains this word
            (vLLM's old ``gpu_prefix_cache_hits`` counted blocks, not tokens).
    """

    name: str
    where: tuple[tuple[str, frozenset[str]], ...] = ()
    without: tuple[str, ...] = ()
    help_excludes: str = ""

    def matches(self, sample: Sample) -> bool:
        """True when the series passes the label filters."""
        for label, accepted in self.where:
            if sample.label(label) not in accepted:
                return False
        return all(sample.label(label) is None for label in self.without)


def _src(name: str, **where: str | Iterable[str]) -> Source:
    pairs = tuple(
        (k, frozenset([v]) if isinstance(v, str) else frozenset(v)) for k, v in where.items()
    )
    return Source(name, pairs)


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """How one engine's exposition maps to token readings.

    Attributes:
        name: Engine name as in the configuration (``vllm``, ``sglang``...).
        markers: Sample names whose presence (series or HELP/TYPE) identifies the engine.
        model_labels: Labels holding the model name, tried in order; none = model "".
        input_tokens: Candidate sources of prompt tokens (counters or histogram ``_sum``).
        output_tokens: Candidate sources of generated tokens.
        cached_input_tokens: Candidate sources of prompt tokens served from a cache.
        requests_running: Candidate sources of the running-requests gauge.
        requests_waiting: Candidate sources of the waiting-requests gauge.
        kv_cache_usage: Candidate sources of the KV-cache usage gauge (0..1).
        start_time: Candidate sources of the process start time (Unix s).
        created: ``_created`` series whose minimum stands in for the start time.
        replica_labels: Labels whose series repeat the same values (keep the lowest rank).
        total_only: ``(label, value)``: when series carry the label, keep only that value.
        lazy_tokens: Token series appear on the first request: absent reads as 0.
        note: One line for people: what is read and the quirks handled.
    """

    name: str
    markers: tuple[str, ...]
    model_labels: tuple[str, ...]
    input_tokens: tuple[tuple[Source, ...], ...]
    output_tokens: tuple[tuple[Source, ...], ...]
    cached_input_tokens: tuple[tuple[Source, ...], ...] = ()
    requests_running: tuple[tuple[Source, ...], ...] = ()
    requests_waiting: tuple[tuple[Source, ...], ...] = ()
    kv_cache_usage: tuple[tuple[Source, ...], ...] = ()
    start_time: tuple[Source, ...] = (Source("process_start_time_seconds"),)
    created: tuple[Source, ...] = ()
    replica_labels: tuple[str, ...] = ()
    total_only: tuple[str, str] | None = None
    lazy_tokens: bool = False
    note: str = ""
    names: frozenset[str] = field(default=frozenset(), init=False)

    def __post_init__(self) -> None:
        groups = (
            self.input_tokens,
            self.output_tokens,
            self.cached_input_tokens,
            self.requests_running,
            self.requests_waiting,
            self.kv_cache_usage,
        )
        names = {s.name for g in groups for cand in g for s in cand}
        names |= {s.name for s in self.start_time} | {s.name for s in self.created}
        names |= set(self.markers)
        object.__setattr__(self, "names", frozenset(names))


# A candidate is a tuple of sources whose series are added (SGLang prefill = compute + cache).
def _one(*sources: Source) -> tuple[tuple[Source, ...], ...]:
    return tuple((s,) for s in sources)


_VLLM_NOTE = (
    "vllm:prompt_tokens_total, vllm:generation_tokens_total summed over `engine` (DP rank); "
    "cached from prompt_tokens_cached_total, else prefix_cache_hits_total, else "
    "gpu_prefix_cache_hits_total when counted in tokens; kv_cache_usage_perc or "
    "gpu_cache_usage_perc; V0 names; `vllm_` names from colon-rewriting bridges; "
    "start time from process_start_time_seconds or the earliest _created"
)


def _vllm(prefix: str) -> EngineProfile:
    """Profile of vLLM V1 and V0 under ``vllm:``, or ``vllm_`` behind a rewriting bridge."""
    p = prefix
    return EngineProfile(
        name="vllm",
        markers=(
            f"{p}prompt_tokens_total",
            f"{p}generation_tokens_total",
            f"{p}num_requests_running",
        ),
        model_labels=("model_name",),
        input_tokens=_one(Source(f"{p}prompt_tokens_total")),
        output_tokens=_one(Source(f"{p}generation_tokens_total")),
        cached_input_tokens=_one(
            Source(f"{p}prompt_tokens_cached_total"),
            Source(f"{p}prefix_cache_hits_total"),
            Source(f"{p}gpu_prefix_cache_hits_total", help_excludes="blocks"),
        ),
        requests_running=_one(Source(f"{p}num_requests_running")),
        requests_waiting=_one(Source(f"{p}num_requests_waiting")),
        kv_cache_usage=_one(Source(f"{p}kv_cache_usage_perc"), Source(f"{p}gpu_cache_usage_perc")),
        created=(Source(f"{p}prompt_tokens_created"), Source(f"{p}generation_tokens_created")),
        note=_VLLM_NOTE,
    )


_PROFILE_LIST: tuple[EngineProfile, ...] = (
    _vllm("vllm:"),
    _vllm("vllm_"),
    EngineProfile(
        name="sglang",
        markers=(
            "sglang:prompt_tokens_total",
            "sglang:generation_tokens_total",
            "sglang:realtime_tokens_total",
            "sglang:num_running_reqs",
            "sglang:token_usage",
        ),
        model_labels=("model_name",),
        input_tokens=(
            (
                _src("sglang:realtime_tokens_total", mode="prefill_compute"),
                _src("sglang:realtime_tokens_total", mode="prefill_cache"),
            ),
            (Source("sglang:prompt_tokens_total"),),
        ),
        output_tokens=_one(
            _src("sglang:realtime_tokens_total", mode="decode"),
            Source("sglang:generation_tokens_total"),
        ),
        cached_input_tokens=_one(
            _src("sglang:realtime_tokens_total", mode="prefill_cache"),
            _src("sglang:cached_tokens_total", cache_source="total"),
            Source("sglang:cached_tokens_total", without=("cache_source",)),
            Source("sglang:cached_tokens_total"),
        ),
        requests_running=_one(Source("sglang:num_running_reqs")),
        requests_waiting=_one(Source("sglang:num_queue_reqs")),
        kv_cache_usage=_one(Source("sglang:token_usage")),
        replica_labels=("tp_rank", "pp_rank", "moe_ep_rank", "attn_tp_rank"),
        total_only=("priority", ""),
        lazy_tokens=True,
        note=(
            "sglang:realtime_tokens_total{mode} when present (prefill_compute + prefill_cache, "
            "decode), else prompt_tokens_total / generation_tokens_total; cached_tokens_total "
            '(cache_source="total"); dp_rank summed, tp/pp/moe_ep ranks never summed; '
            'priority="" totals only'
        ),
    ),
    EngineProfile(
        name="tgi",
        markers=(
            "tgi_request_input_length_sum",
            "tgi_request_generated_tokens_sum",
            "tgi_queue_size",
            "tgi_batch_current_size",
            "tgi_request_count",
        ),
        model_labels=(),
        input_tokens=_one(Source("tgi_request_input_length_sum")),
        output_tokens=_one(Source("tgi_request_generated_tokens_sum")),
        requests_running=_one(Source("tgi_batch_current_size")),
        requests_waiting=_one(Source("tgi_queue_size")),
        start_time=(),
        lazy_tokens=True,
        note=(
            "tokens only as histogram sums: tgi_request_input_length_sum (at validation), "
            "tgi_request_generated_tokens_sum (on completion); no model label"
        ),
    ),
    EngineProfile(
        name="llamacpp",
        markers=(
            "llamacpp:prompt_tokens_total",
            "llamacpp:tokens_predicted_total",
            "llamacpp:requests_processing",
        ),
        model_labels=(),
        input_tokens=_one(Source("llamacpp:prompt_tokens_total")),
        output_tokens=_one(Source("llamacpp:tokens_predicted_total")),
        requests_running=_one(Source("llamacpp:requests_processing")),
        requests_waiting=_one(Source("llamacpp:requests_deferred")),
        kv_cache_usage=_one(Source("llamacpp:kv_cache_usage_ratio")),
        start_time=(),
        note=(
            "llamacpp:prompt_tokens_total, llamacpp:tokens_predicted_total (6 significant "
            "digits); no labels; start time from the Process-Start-Time-Unix header"
        ),
    ),
    EngineProfile(
        name="triton",
        markers=(
            "nv_llm_input_token_len_sum",
            "nv_llm_output_token_len_sum",
            "nv_trt_llm_request_metrics",
        ),
        model_labels=("model",),
        input_tokens=_one(Source("nv_llm_input_token_len_sum")),
        output_tokens=_one(Source("nv_llm_output_token_len_sum")),
        requests_running=_one(_src("nv_trt_llm_request_metrics", request_type="scheduled")),
        requests_waiting=_one(
            _src("nv_trt_llm_request_metrics", request_type="waiting"),
            Source("nv_inference_pending_request_count"),
        ),
        kv_cache_usage=_one(
            _src("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction")
        ),
        start_time=(),
        lazy_tokens=True,
        note=(
            "histogram sums nv_llm_input_token_len_sum / nv_llm_output_token_len_sum per "
            "`model` (summed over `version`); TRT-LLM request and KV-block gauges by type label"
        ),
    ),
    EngineProfile(
        name="lmdeploy",
        markers=(
            "lmdeploy:prompt_tokens_total",
            "lmdeploy:generation_tokens_total",
            "lmdeploy:num_requests_running",
        ),
        model_labels=("model_name",),
        input_tokens=_one(Source("lmdeploy:prompt_tokens_total")),
        output_tokens=_one(Source("lmdeploy:generation_tokens_total")),
        cached_input_tokens=_one(Source("lmdeploy:cached_tokens_total")),
        requests_running=_one(Source("lmdeploy:num_requests_running")),
        requests_waiting=_one(Source("lmdeploy:num_requests_waiting")),
        kv_cache_usage=_one(Source("lmdeploy:gpu_cache_usage_perc")),
        note=(
            "lmdeploy:prompt_tokens_total, generation_tokens_total, cached_tokens_total "
            "summed over `engine` (DP rank)"
        ),
    ),
    EngineProfile(
        name="dynamo",
        markers=(
            "dynamo_frontend_output_tokens_total",
            "dynamo_frontend_input_sequence_tokens_sum",
            "dynamo_frontend_inflight_requests",
        ),
        model_labels=("model",),
        input_tokens=_one(Source("dynamo_frontend_input_sequence_tokens_sum")),
        output_tokens=_one(
            Source("dynamo_frontend_output_tokens_total"),
            Source("dynamo_frontend_output_sequence_tokens_sum"),
        ),
        cached_input_tokens=_one(
            Source("dynamo_frontend_cached_tokens_sum"),
            Source("dynamo_frontend_cached_sequence_length_sum"),
        ),
        requests_running=_one(Source("dynamo_frontend_inflight_requests")),
        requests_waiting=_one(Source("dynamo_frontend_queued_requests")),
        start_time=(),
        lazy_tokens=True,
        note=(
            "frontend: dynamo_frontend_output_tokens_total (real time), input as histogram "
            "sum dynamo_frontend_input_sequence_tokens_sum; cached_tokens or "
            "cached_sequence_length histogram sum"
        ),
    ),
    EngineProfile(
        name="nim",
        markers=("prompt_tokens_total", "generation_tokens_total", "num_requests_running"),
        model_labels=("model_name", "model"),
        input_tokens=_one(Source("prompt_tokens_total")),
        output_tokens=_one(Source("generation_tokens_total")),
        requests_running=_one(Source("num_requests_running")),
        requests_waiting=_one(Source("num_requests_waiting")),
        kv_cache_usage=_one(Source("gpu_cache_usage_perc"), Source("kv_cache_usage_perc")),
        note="unprefixed prompt_tokens_total, generation_tokens_total (path /v1/metrics)",
    ),
)

PROFILES: Mapping[str, tuple[EngineProfile, ...]] = MappingProxyType(
    {
        name: tuple(p for p in _PROFILE_LIST if p.name == name)
        for name in dict.fromkeys(p.name for p in _PROFILE_LIST)
    }
)
"""Engine name -> its profiles (vLLM has two: native names and bridge-rewritten names)."""

ENGINE_NAMES: tuple[str, ...] = tuple(PROFILES)

# Unprefixed NIM names are generic; NIM wins only when no prefixed engine matches.
_GENERIC = frozenset({"nim"})

_SCANNERS: Mapping[str, Scanner] = MappingProxyType(
    {name: Scanner(n for p in profiles for n in p.names) for name, profiles in PROFILES.items()}
)
_AUTO_SCANNER = Scanner(n for p in _PROFILE_LIST for n in p.names)


@dataclass(frozen=True, slots=True)
class ExpositionResult:
    """A reading with what was noticed on the way.

    Attributes:
        reading: The normalized reading.
        warnings: Values dropped and why (NaN counters, duplicate series...).
    """

    reading: ServerReading
    warnings: tuple[str, ...] = ()


def _looked_for(profiles: Iterable[EngineProfile]) -> str:
    return "; ".join(f"{p.name}: {', '.join(p.markers)}" for p in profiles)


def _matching(exp: Exposition, profiles: Iterable[EngineProfile]) -> list[EngineProfile]:
    return [p for p in profiles if any(exp.declared(m) for m in p.markers)]


def detect_engine(exp: Exposition) -> EngineProfile:
    """Pick the profile whose families are present.

    Args:
        exp: An exposition scanned for every profile's names.

    Returns:
        The matching profile.

    Raises:
        UnknownEngineError: When no profile matches, listing the names looked for, or when
            families of several engines are present.
    """
    found = _matching(exp, _PROFILE_LIST)
    specific = [p for p in found if p.name not in _GENERIC]
    if specific:
        found = specific
    engines = sorted({p.name for p in found})
    if not found:
        raise UnknownEngineError(
            "no known inference-server metrics found; looked for " + _looked_for(_PROFILE_LIST)
        )
    if len(engines) > 1:
        raise UnknownEngineError(
            f"metrics of several engines found ({', '.join(engines)}); set the engine explicitly"
        )
    return found[0]


def read_exposition(
    body: bytes | str,
    engine: str = "auto",
    limits: ParseLimits = DEFAULT_LIMITS,
    content_type: str | None = None,
) -> ServerReading:
    """Read one server's exposition into a normalized reading.

    Args:
        body: The ``/metrics`` body, bytes (UTF-8) or text.
        engine: An engine name from :data:`ENGINE_NAMES`, or ``auto`` to detect it.
        limits: Parser limits.
        content_type: The response's Content-Type (format and name escaping), or None to
            sniff; see :meth:`~agent.servers.parser.Scanner.parse`.

    Returns:
        The reading: engine name, one TokenReading per model, start time where exposed.

    Raises:
        ParseError: When the body is not a valid exposition.
        UnknownEngineError: When the engine is unknown, cannot be detected, or its metrics
            are absent.
    """
    return read_exposition_detailed(body, engine, limits, content_type).reading


def read_exposition_detailed(
    body: bytes | str,
    engine: str = "auto",
    limits: ParseLimits = DEFAULT_LIMITS,
    content_type: str | None = None,
) -> ExpositionResult:
    """Like :func:`read_exposition`, and also return the warnings.

    Args:
        body: The ``/metrics`` body, bytes (UTF-8) or text.
        engine: An engine name from :data:`ENGINE_NAMES`, or ``auto``.
        limits: Parser limits.
        content_type: The response's Content-Type, or None to sniff.

    Returns:
        The reading and the warnings.

    Raises:
        ParseError: When the body is not a valid exposition.
        UnknownEngineError: As :func:`read_exposition`.
    """
    if engine == "auto":
        exp = _AUTO_SCANNER.parse(body, limits, content_type)
        return interpret(exp, detect_engine(exp))
    if engine not in PROFILES:
        raise UnknownEngineError(
            f"unknown engine {engine!r}; known: auto, {', '.join(ENGINE_NAMES)}"
        )
    exp = _SCANNERS[engine].parse(body, limits, content_type)
    found = _matching(exp, PROFILES[engine])
    if not found:
        raise UnknownEngineError(
            f"no {engine} metrics found; looked for " + _looked_for(PROFILES[engine])
        )
    return interpret(exp, found[0])


def _model_of(sample: Sample, labels: Sequence[str]) -> str:
    for label in labels:
        value = sample.label(label)
        if value is not None:
            return value
    return ""


def _rank(value: str | None) -> tuple[int, str]:
    if value is None:
        return (-1, "")
    return (int(value), "") if value.isdigit() else (1 << 30, value)


def _select(exp: Exposition, source: Source, profile: EngineProfile) -> list[Sample]:
    """Series of one source after label filters, total-only and replica de-duplication."""
    if _help_excluded(exp, source):
        return []
    series = [s for s in exp.get(source.name) if source.matches(s)]
    if profile.total_only is not None:
        label, value = profile.total_only
        series = [s for s in series if s.label(label) in (None, value)]
    if profile.replica_labels and any(
        s.label(r) is not None for s in series for r in profile.replica_labels
    ):
        series = _dedupe_replicas(series, profile.replica_labels)
    return series


def _help_excluded(exp: Exposition, source: Source) -> bool:
    if not source.help_excludes:
        return False
    help_text = next((exp.helps[f] for f in family_candidates(source.name) if f in exp.helps), "")
    return source.help_excludes in help_text


def _dedupe_replicas(series: list[Sample], replicas: tuple[str, ...]) -> list[Sample]:
    """Keep, per label set without the replica labels, the series of the lowest rank."""
    best: dict[tuple[tuple[str, str], ...], Sample] = {}
    order: list[tuple[tuple[str, str], ...]] = []
    for s in series:
        key = tuple((k, v) for k, v in s.labels if k not in replicas)
        current = best.get(key)
        if current is None:
            order.append(key)
            best[key] = s
        elif [_rank(s.label(r)) for r in replicas] < [_rank(current.label(r)) for r in replicas]:
            best[key] = s
    return [best[k] for k in order]


def _valid_counter(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def _counter_field(
    exp: Exposition,
    profile: EngineProfile,
    candidates: tuple[tuple[Source, ...], ...],
    what: str,
    warnings: list[str],
) -> tuple[dict[str, float | None], bool]:
    """Sum a counter per model from the first candidate present.

    Returns:
        Model -> value (None where a series was invalid), and whether any candidate was
        present or declared (False = the engine does not expose this field).
    """
    for candidate in candidates:
        chosen = [s for src in candidate for s in _select(exp, src, profile)]
        if not chosen:
            continue
        totals: dict[str, float | None] = {}
        for s in chosen:
            model = _model_of(s, profile.model_labels)
            if not _valid_counter(s.value):
                if totals.get(model, 0.0) is not None:
                    warnings.append(
                        f"{what} of model {model!r}: {candidate[0].name} has the invalid "
                        f"counter value {s.value!r}; reported as unknown"
                    )
                totals[model] = None
                continue
            previous = totals.get(model, 0.0)
            totals[model] = None if previous is None else previous + s.value
        return totals, True
    declared = any(
        exp.declared(src.name) and not _help_excluded(exp, src)
        for cand in candidates
        for src in cand
    )
    return {}, declared


def _gauge_field(
    exp: Exposition,
    profile: EngineProfile,
    candidates: tuple[tuple[Source, ...], ...],
    combine: Callable[[list[float]], float],
) -> dict[str, float]:
    for candidate in candidates:
        chosen = [s for src in candidate for s in _select(exp, src, profile)]
        if not chosen:
            continue
        values: dict[str, list[float]] = {}
        for s in chosen:
            model = _model_of(s, profile.model_labels)
            bucket = values.setdefault(model, [])
            if math.isfinite(s.value) and s.value >= 0:
                bucket.append(s.value)
        return {m: combine(v) for m, v in values.items() if v}
    return {}


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _sum(values: list[float]) -> float:
    return math.fsum(values)


def _start_time(exp: Exposition, profile: EngineProfile) -> float | None:
    for source in profile.start_time:
        values = [s.value for s in exp.get(source.name) if math.isfinite(s.value) and s.value > 0]
        if values:
            return min(values)
    created = [
        s.value
        for source in profile.created
        for s in exp.get(source.name)
        if math.isfinite(s.value) and s.value > 0
    ]
    return min(created) if created else None


def interpret(exp: Exposition, profile: EngineProfile) -> ExpositionResult:
    """Apply one profile to a scanned exposition.

    Args:
        exp: The exposition, scanned for at least the profile's names.
        profile: The engine profile.

    Returns:
        The reading and warnings (see the module docstring for the rules).
    """
    warnings: list[str] = []
    if exp.duplicates:
        warnings.append(f"{exp.duplicates} duplicate series dropped (the first one is kept)")
    inputs, has_in = _counter_field(exp, profile, profile.input_tokens, "input tokens", warnings)
    outputs, has_out = _counter_field(
        exp, profile, profile.output_tokens, "output tokens", warnings
    )
    cached, has_cached = _counter_field(
        exp, profile, profile.cached_input_tokens, "cached input tokens", warnings
    )
    running = _gauge_field(exp, profile, profile.requests_running, _sum)
    waiting = _gauge_field(exp, profile, profile.requests_waiting, _sum)
    kv = _gauge_field(exp, profile, profile.kv_cache_usage, _mean)

    models = dict.fromkeys([*inputs, *outputs, *cached, *running, *waiting, *kv])
    if not profile.model_labels and not models:
        models[""] = None  # an unlabelled server serves one model, named ""
    lazy = profile.lazy_tokens

    def counter(values: dict[str, float | None], present: bool, model: str) -> float | None:
        if model in values:
            return values[model]
        return 0.0 if (present or lazy) else None

    readings = tuple(
        TokenReading(
            model=model,
            input_tokens=counter(inputs, has_in, model),
            output_tokens=counter(outputs, has_out, model),
            cached_input_tokens=(
                counter(cached, has_cached, model) if profile.cached_input_tokens else None
            ),
            requests_running=running.get(model),
            requests_waiting=waiting.get(model),
            kv_cache_usage_ratio=kv.get(model),
        )
        for model in sorted(models)
    )
    reading = ServerReading(
        engine=profile.name, models=readings, start_time_seconds=_start_time(exp, profile)
    )
    return ExpositionResult(reading=reading, warnings=tuple(warnings))
