"""Engine profiles: turn one server's exposition into normalized token readings.

Pure module: no I/O, no clock, no threads. Profiles and their compiled scanners are immutable
constants built at import.

Each profile maps an engine's metric names (with their renames across versions) to a
:class:`~agent.readings.TokenReading` per served model. One meaning per field, for every
engine (see ``agent/servers/README.md``):

* ``input_tokens``: every prompt token the server accepted, prompt-cache hits included.
* ``cached_input_tokens``: the prompt tokens served from a cache, read from the same family
  as ``input_tokens`` (so ``cached <= input`` holds within one scrape).
* ``output_tokens``: generated tokens.
* ``None``: the server does not expose it. Never 0 as a stand-in.

The rules shared by every profile:

* **Sources in order of preference.** Each field lists candidate series; the first candidate
  with at least one series in the body is used, for every model (so one scrape never mixes
  two sources of the same field). A candidate whose family is declared (HELP/TYPE) but has no
  series yet reads as 0: the server exposes the counter and has counted nothing. With none of
  them present or declared the field is None.
* **Input families.** Each input candidate names the cached candidates of its own family
  (SGLang ``realtime_tokens_total{mode="prefill_cache"}`` with the realtime input, llama.cpp
  ``prompt_tokens_cached_total``, which its ``prompt_tokens_total`` excludes and input adds).
* **Aggregation.** Series of one model are summed over every other label (vLLM/LMDeploy
  ``engine`` = data-parallel rank, SGLang ``dp_rank``, Triton ``version``). Replica labels
  whose series repeat the same values (SGLang ``tp_rank``, ``pp_rank``, ``moe_ep_rank``) are
  never summed: the lowest rank is kept. KV-cache usage is the mean over ranks (each rank has
  its own cache of the same size). Every raw series added into a counter field is also
  reported in :attr:`~agent.readings.TokenReading.series`, so resets are detected per rank.
* **Never tokens:** ``_created``, ``_bucket`` and ``_count`` series and breakdowns such as
  vLLM ``prompt_tokens_by_source`` are not read as token counts.
* **Bad values.** A counter series that is NaN, infinite or negative makes that model's field
  None (summing the other ranks would fake a counter reset) and adds a warning. A gauge
  series that is NaN, infinite or negative is ignored; a gauge with no valid series is None.
* **Duplicates.** A repeated series keeps its first value (the parser drops the rest) and adds
  a warning.
* **Model label.** Whichever model label the engine uses (``model_name``, ``model``,
  ``name``), tried in order; "" for servers without one (llama.cpp, TGI). Names are kept
  whole: shortening a path-like name is for display only.
* **Detection.** Among the profiles whose marker families appear, the one whose token series
  are present wins, then one whose token families are declared, then one with markers only;
  a generic profile (NIM's unprefixed names) must show its required markers and loses ties
  to a prefixed one. A detected engine with no token counters at all reads None everywhere, with
  a ``no token counters`` warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from itertools import chain, repeat
from operator import add, attrgetter
from types import MappingProxyType

from agent.readings import CounterKind, CounterSeries, ServerReading, TokenReading
from agent.servers.parser import (
    DEFAULT_LIMITS,
    Exposition,
    ExpositionError,
    Labels,
    ParseError,
    ParseLimits,
    ParseMemo,
    Sample,
    Scanner,
    body_bytes,
    family_candidates,
)

__all__ = [
    "ENGINE_NAMES",
    "NO_TOKEN_COUNTERS",
    "PROFILES",
    "EngineProfile",
    "ExpositionError",
    "ExpositionResult",
    "ExpositionStream",
    "InputSource",
    "ParseError",
    "ReadMemo",
    "Source",
    "UnknownEngineError",
    "detect_engine",
    "interpret",
    "read_exposition",
    "read_exposition_detailed",
    "series_key",
]

NO_TOKEN_COUNTERS = "no token counters"
"""How the warning of a server that exposes no token counter at all begins."""


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
        if self.without:  # rare: skip building the generator for every series
            return all(sample.label(label) is None for label in self.without)
        return True


def _src(name: str, **where: str | Iterable[str]) -> Source:
    pairs = tuple(
        (k, frozenset([v]) if isinstance(v, str) else frozenset(v)) for k, v in where.items()
    )
    return Source(name, pairs)


Candidates = tuple[tuple[Source, ...], ...]
"""Candidates in order of preference; the series of one candidate's sources are added."""


@dataclass(frozen=True, slots=True)
class InputSource:
    """One family of prompt-token counters: the input and the cache hits it includes.

    Attributes:
        sources: Sources added into ``input_tokens`` (SGLang prefill compute + cache,
            llama.cpp evaluated + cached).
        cached: Candidates for ``cached_input_tokens`` from the same family, in order.
    """

    sources: tuple[Source, ...]
    cached: Candidates = ()


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """How one engine's exposition maps to token readings.

    Attributes:
        name: Engine name as in the configuration (``vllm``, ``sglang``...).
        markers: Sample names whose presence (series or HELP/TYPE) identifies the engine.
        model_labels: Labels holding the model name, tried in order; none = model "".
        input_tokens: Candidate input families (counters or histogram ``_sum``), in order.
        output_tokens: Candidate sources of generated tokens.
        requests_running: Candidate sources of the running-requests gauge.
        requests_waiting: Candidate sources of the waiting-requests gauge.
        kv_cache_usage: Candidate sources of the KV-cache usage gauge (0..1).
        prefill_seconds: Candidate sources of cumulative time in prefill, s.
        decode_seconds: Candidate sources of cumulative time in decode, s.
        start_time: Candidate sources of the process start time (Unix s).
        created: ``_created`` series whose minimum stands in for the start time.
        replica_labels: Labels whose series repeat the same values (keep the lowest rank).
        total_only: ``(label, value)``: when series carry the label, keep only that value.
        required: Markers that must all appear for the profile to match (besides any one
            marker): the distinctive set of a profile whose names are generic.
        generic: Unprefixed names that other software uses too: on equal evidence a
            prefixed profile wins.
        no_tokens_hint: Said with the ``no token counters`` warning: where the tokens are.
        note: One line for people: what is read and the quirks handled.
    """

    name: str
    markers: tuple[str, ...]
    model_labels: tuple[str, ...]
    input_tokens: tuple[InputSource, ...]
    output_tokens: Candidates
    requests_running: Candidates = ()
    requests_waiting: Candidates = ()
    kv_cache_usage: Candidates = ()
    prefill_seconds: Candidates = ()
    decode_seconds: Candidates = ()
    start_time: tuple[Source, ...] = (Source("process_start_time_seconds"),)
    created: tuple[Source, ...] = ()
    replica_labels: tuple[str, ...] = ()
    total_only: tuple[str, str] | None = None
    required: tuple[str, ...] = ()
    generic: bool = False
    no_tokens_hint: str = ""
    note: str = ""
    names: frozenset[str] = field(default=frozenset(), init=False)

    def __post_init__(self) -> None:
        groups = (
            tuple(fam.sources for fam in self.input_tokens),
            *(fam.cached for fam in self.input_tokens),
            self.output_tokens,
            self.requests_running,
            self.requests_waiting,
            self.kv_cache_usage,
            self.prefill_seconds,
            self.decode_seconds,
        )
        names = {s.name for g in groups for cand in g for s in cand}
        names |= {s.name for s in self.start_time} | {s.name for s in self.created}
        names |= set(self.markers)
        object.__setattr__(self, "names", frozenset(names))

    @property
    def token_sources(self) -> tuple[Source, ...]:
        """Every source of input or output tokens (cached ones are part of input)."""
        return tuple(s for fam in self.input_tokens for s in fam.sources) + tuple(
            s for cand in self.output_tokens for s in cand
        )


# A candidate is a tuple of sources whose series are added (SGLang prefill = compute + cache).
def _one(*sources: Source) -> Candidates:
    return tuple((s,) for s in sources)


def _input(*sources: Source, cached: Candidates = ()) -> InputSource:
    return InputSource(sources, cached)


_VLLM_NOTE = (
    "vllm:prompt_tokens_total (cache hits included), vllm:generation_tokens_total summed over "
    "`engine` (DP rank); cached from prompt_tokens_cached_total, else prefix_cache_hits_total, "
    "else gpu_prefix_cache_hits_total when counted in tokens; phase times from the "
    "request_prefill/decode_time_seconds histogram sums; kv_cache_usage_perc or "
    "gpu_cache_usage_perc; V0 names; `vllm_` names from colon-rewriting bridges; model from "
    "`model_name` or (Triton's vLLM backend) `model`; start time from "
    "process_start_time_seconds or the earliest _created"
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
        model_labels=("model_name", "model"),
        input_tokens=(
            _input(
                Source(f"{p}prompt_tokens_total"),
                cached=_one(
                    Source(f"{p}prompt_tokens_cached_total"),
                    Source(f"{p}prefix_cache_hits_total"),
                    Source(f"{p}gpu_prefix_cache_hits_total", help_excludes="blocks"),
                ),
            ),
        ),
        output_tokens=_one(Source(f"{p}generation_tokens_total")),
        requests_running=_one(Source(f"{p}num_requests_running")),
        requests_waiting=_one(Source(f"{p}num_requests_waiting")),
        kv_cache_usage=_one(Source(f"{p}kv_cache_usage_perc"), Source(f"{p}gpu_cache_usage_perc")),
        prefill_seconds=_one(Source(f"{p}request_prefill_time_seconds_sum")),
        decode_seconds=_one(Source(f"{p}request_decode_time_seconds_sum")),
        created=(Source(f"{p}prompt_tokens_created"), Source(f"{p}generation_tokens_created")),
        note=_VLLM_NOTE,
    )


_SGLANG_CACHED = _one(
    _src("sglang:cached_tokens_total", cache_source="total"),
    Source("sglang:cached_tokens_total", without=("cache_source",)),
    Source("sglang:cached_tokens_total"),
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
        model_labels=("model_name", "name"),
        input_tokens=(
            _input(
                _src("sglang:realtime_tokens_total", mode="prefill_compute"),
                _src("sglang:realtime_tokens_total", mode="prefill_cache"),
                cached=_one(_src("sglang:realtime_tokens_total", mode="prefill_cache")),
            ),
            _input(Source("sglang:prompt_tokens_total"), cached=_SGLANG_CACHED),
        ),
        output_tokens=_one(
            _src("sglang:realtime_tokens_total", mode="decode"),
            Source("sglang:generation_tokens_total"),
        ),
        requests_running=_one(Source("sglang:num_running_reqs")),
        requests_waiting=_one(Source("sglang:num_queue_reqs")),
        kv_cache_usage=_one(Source("sglang:token_usage")),
        replica_labels=("tp_rank", "pp_rank", "moe_ep_rank", "attn_tp_rank"),
        total_only=("priority", ""),
        note=(
            "sglang:realtime_tokens_total{mode} when present (input = prefill_compute + "
            "prefill_cache, cached = prefill_cache, output = decode), else prompt_tokens_total "
            '/ generation_tokens_total with cached_tokens_total (cache_source="total"); '
            'dp_rank summed, tp/pp/moe_ep ranks never summed; priority="" totals only; model '
            "from `model_name` or (early releases) `name`"
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
        input_tokens=(_input(Source("tgi_request_input_length_sum")),),
        output_tokens=_one(Source("tgi_request_generated_tokens_sum")),
        requests_running=_one(Source("tgi_batch_current_size")),
        requests_waiting=_one(Source("tgi_queue_size")),
        start_time=(),
        no_tokens_hint=(
            "TGI counts tokens only in the tgi_request_input_length and "
            "tgi_request_generated_tokens histograms, which appear after the first request"
        ),
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
        input_tokens=(
            _input(
                Source("llamacpp:prompt_tokens_total"),
                Source("llamacpp:prompt_tokens_cached_total"),
                cached=_one(Source("llamacpp:prompt_tokens_cached_total")),
            ),
        ),
        output_tokens=_one(Source("llamacpp:tokens_predicted_total")),
        requests_running=_one(Source("llamacpp:requests_processing")),
        requests_waiting=_one(Source("llamacpp:requests_deferred")),
        kv_cache_usage=_one(Source("llamacpp:kv_cache_usage_ratio")),
        prefill_seconds=_one(Source("llamacpp:prompt_seconds_total")),
        decode_seconds=_one(Source("llamacpp:tokens_predicted_seconds_total")),
        start_time=(),
        note=(
            "input = llamacpp:prompt_tokens_total (evaluated only) + prompt_tokens_cached_total "
            "(cache hits, where exposed); output llamacpp:tokens_predicted_total (6 significant "
            "digits); phase times prompt_seconds_total / tokens_predicted_seconds_total; no "
            "labels"
        ),
    ),
    EngineProfile(
        name="triton",
        markers=(
            "nv_llm_input_token_len_sum",
            "nv_llm_output_token_len_sum",
            "nv_trt_llm_request_metrics",
            "nv_inference_request_success",
        ),
        model_labels=("model",),
        input_tokens=(_input(Source("nv_llm_input_token_len_sum")),),
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
        no_tokens_hint=(
            "Triton counts tokens only in the nv_llm_input_token_len / nv_llm_output_token_len "
            "histograms of the TensorRT-LLM and Python LLM backends"
        ),
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
        input_tokens=(
            _input(
                Source("lmdeploy:prompt_tokens_total"),
                cached=_one(Source("lmdeploy:cached_tokens_total")),
            ),
        ),
        output_tokens=_one(Source("lmdeploy:generation_tokens_total")),
        requests_running=_one(Source("lmdeploy:num_requests_running")),
        requests_waiting=_one(Source("lmdeploy:num_requests_waiting")),
        kv_cache_usage=_one(Source("lmdeploy:gpu_cache_usage_perc")),
        prefill_seconds=_one(Source("lmdeploy:request_prefill_time_seconds_sum")),
        decode_seconds=_one(Source("lmdeploy:request_decode_time_seconds_sum")),
        note=(
            "lmdeploy:prompt_tokens_total, generation_tokens_total, cached_tokens_total "
            "summed over `engine` (DP rank); phase times from the "
            "request_prefill/decode_time_seconds histogram sums"
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
        input_tokens=(
            _input(
                Source("dynamo_frontend_input_sequence_tokens_sum"),
                cached=_one(
                    Source("dynamo_frontend_cached_tokens_sum"),
                    Source("dynamo_frontend_cached_sequence_length_sum"),
                ),
            ),
        ),
        output_tokens=_one(
            Source("dynamo_frontend_output_tokens_total"),
            Source("dynamo_frontend_output_sequence_tokens_sum"),
        ),
        requests_running=_one(Source("dynamo_frontend_inflight_requests")),
        requests_waiting=_one(Source("dynamo_frontend_queued_requests")),
        start_time=(),
        no_tokens_hint=("the Dynamo frontend's token series appear after its first request"),
        note=(
            "frontend: dynamo_frontend_output_tokens_total (real time), input as histogram "
            "sum dynamo_frontend_input_sequence_tokens_sum; cached_tokens or "
            "cached_sequence_length histogram sum (absent on releases without one: null)"
        ),
    ),
    EngineProfile(
        name="dynamo",
        markers=(
            "dynamo_component_requests_total",
            "dynamo_component_inflight_requests",
            "dynamo_component_uptime_seconds",
        ),
        model_labels=("model",),
        input_tokens=(),
        output_tokens=(),
        requests_running=_one(Source("dynamo_component_inflight_requests")),
        start_time=(),
        no_tokens_hint=(
            "a Dynamo worker shows tokens only through its engine's own metrics (vllm:, "
            "sglang:), and this engine passes none through; scrape the Dynamo frontend "
            "(dynamo_frontend_*) instead"
        ),
        note=(
            "worker (dynamo_component_*): no token counters of its own; the engine metrics it "
            "passes through (vllm:, sglang:) are read by that engine's profile"
        ),
    ),
    EngineProfile(
        name="nim",
        markers=("prompt_tokens_total", "generation_tokens_total", "num_requests_running"),
        model_labels=("model_name", "model"),
        input_tokens=(_input(Source("prompt_tokens_total")),),
        output_tokens=_one(Source("generation_tokens_total")),
        requests_running=_one(Source("num_requests_running")),
        requests_waiting=_one(Source("num_requests_waiting")),
        kv_cache_usage=_one(Source("gpu_cache_usage_perc"), Source("kv_cache_usage_perc")),
        required=("prompt_tokens_total", "generation_tokens_total"),
        generic=True,
        note=(
            "unprefixed prompt_tokens_total, generation_tokens_total (path /v1/metrics); both "
            "required, since other servers (ScaleLLM) have an unprefixed prompt_tokens_total too"
        ),
    ),
)

PROFILES: Mapping[str, tuple[EngineProfile, ...]] = MappingProxyType(
    {
        name: tuple(p for p in _PROFILE_LIST if p.name == name)
        for name in dict.fromkeys(p.name for p in _PROFILE_LIST)
    }
)
"""Engine name -> its profiles (vLLM: native and bridge-rewritten names; Dynamo: frontend
and worker)."""

ENGINE_NAMES: tuple[str, ...] = tuple(PROFILES)

_SCANNERS: Mapping[str, Scanner] = MappingProxyType(
    {name: Scanner(n for p in profiles for n in p.names) for name, profiles in PROFILES.items()}
)
_AUTO_SCANNER = Scanner(n for p in _PROFILE_LIST for n in p.names)


@dataclass(frozen=True, slots=True)
class ExpositionResult:
    """A reading with what was noticed on the way.

    Attributes:
        reading: The normalized reading.
        warnings: Values dropped and why (NaN counters, duplicate series...), and a
            ``no token counters`` warning when the server exposes none.
        has_token_counters: False when the server exposes no input and no output token
            counter at all (every token field is None).
    """

    reading: ServerReading
    warnings: tuple[str, ...] = ()
    has_token_counters: bool = True


def _looked_for(profiles: Iterable[EngineProfile]) -> str:
    by_engine: dict[str, list[str]] = {}
    for p in profiles:
        names = by_engine.setdefault(p.name, [])
        names.extend(m for m in p.markers if m not in names)
    return "; ".join(f"{name}: {', '.join(markers)}" for name, markers in by_engine.items())


def _matches(exp: Exposition, profile: EngineProfile) -> bool:
    return any(exp.declared(m) for m in profile.markers) and all(
        exp.declared(m) for m in profile.required
    )


def _evidence(exp: Exposition, profile: EngineProfile) -> tuple[int, bool]:
    """How strongly the exposition is this profile's.

    Returns:
        2 when token series are present, 1 when a token family is only declared, 0 for
        markers only; then True for prefixed names over generic ones.
    """
    sources = profile.token_sources
    if any(_select(exp, s, profile) for s in sources):
        score = 2
    elif _declared(exp, sources):
        score = 1
    else:
        score = 0
    return score, not profile.generic


def _best(exp: Exposition, profiles: Iterable[EngineProfile]) -> list[EngineProfile]:
    """The matching profiles with the strongest evidence (empty when none matches)."""
    found = [p for p in profiles if _matches(exp, p)]
    if not found:
        return []
    evidence = {id(p): _evidence(exp, p) for p in found}
    top = max(evidence.values())
    return [p for p in found if evidence[id(p)] == top]


def detect_engine(exp: Exposition) -> EngineProfile:
    """Pick the profile whose token series are present (see the module docstring).

    Args:
        exp: An exposition scanned for every profile's names.

    Returns:
        The matching profile.

    Raises:
        UnknownEngineError: When no profile matches, listing the names looked for, or when
            several engines match with the same evidence.
    """
    best = _best(exp, _PROFILE_LIST)
    if not best:
        raise UnknownEngineError(
            "no known inference-server metrics found; looked for " + _looked_for(_PROFILE_LIST)
        )
    engines = sorted({p.name for p in best})
    if len(engines) > 1:
        raise UnknownEngineError(
            f"metrics of several engines found ({', '.join(engines)}); set the engine explicitly"
        )
    return best[0]


_SeriesKeys = dict[tuple[str, Labels, tuple[str, ...]], tuple[str, str]]
"""(sample name, labels, model labels) -> (model, :func:`series_key`)."""


class ReadMemo:
    """What reading one server's bodies derived, kept across its scrapes by the scraper.

    Parsed label sets and family keys (:class:`~agent.servers.parser.ParseMemo`), each
    series' model and key text, and which series each candidate chose from the last body's
    label sets: a server repeats them at every scrape. Bounded like the parse memo.

    Args:
        max_entries: Largest size of one table kept between scrapes.
        max_bytes: Most bytes of text kept between scrapes in the parse memo's keys, and
            again in the series keys.
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.parse = ParseMemo(max_entries, max_bytes)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.series_keys: _SeriesKeys = {}
        self._series_entries = 0  # at the last trim: the keys are weighed only after growth
        # What each candidate chose from the series of the last body (see _pick): one entry
        # per candidate of the profiles, so bounded by them.
        self.picks: dict[int, _Pick] = {}

    def trim(self) -> None:
        """Clear the tables that grew past ``max_entries`` or ``max_bytes``."""
        self.parse.trim()
        keys = self.series_keys
        if len(keys) > self.max_entries:
            keys.clear()
        if len(keys) != self._series_entries:
            if sum(len(key) for _, key in keys.values()) > self.max_bytes:
                keys.clear()
            self._series_entries = len(keys)


class ExpositionStream:
    """Reads one server's body as it arrives and interprets it with an engine profile.

    The scraper feeds each network read; only the current piece is kept (see
    :class:`~agent.servers.parser.ExpositionReader`).

    Args:
        engine: An engine name from :data:`ENGINE_NAMES`, or ``auto`` to detect it.
        limits: Parser limits.
        content_type: The response's Content-Type (format and name escaping), or None to
            sniff.
        whole: True when the body is fed in one piece (every parse error names its line).
        memo: The server's memo, kept by the caller across scrapes; None = none.
        buffer: The receive buffer, kept by the caller across scrapes; None = a new one.

    Raises:
        UnknownEngineError: When ``engine`` is not a known engine name.
    """

    def __init__(
        self,
        engine: str = "auto",
        limits: ParseLimits = DEFAULT_LIMITS,
        content_type: str | None = None,
        whole: bool = False,
        memo: ReadMemo | None = None,
        buffer: bytearray | None = None,
    ) -> None:
        if engine != "auto" and engine not in PROFILES:
            raise UnknownEngineError(
                f"unknown engine {engine!r}; known: auto, {', '.join(ENGINE_NAMES)}"
            )
        self._engine = engine
        self._memo = memo if memo is not None else ReadMemo()
        self._memo.trim()
        scanner = _AUTO_SCANNER if engine == "auto" else _SCANNERS[engine]
        self._reader = scanner.reader(limits, content_type, whole, self._memo.parse, buffer)

    def space(self) -> memoryview:
        """Room for the next bytes (:meth:`~agent.servers.parser.ExpositionReader.space`)."""
        return self._reader.space()

    def commit(self, count: int) -> None:
        """Read the ``count`` bytes just written into :meth:`space`.

        Raises:
            ParseError: When the body read so far is not a valid exposition.
        """
        self._reader.commit(count)

    def feed(self, data: bytes) -> None:
        """Read the next bytes of the body (copied).

        Raises:
            ParseError: When the body read so far is not a valid exposition.
        """
        self._reader.feed(data)

    def feed_whole(self, body: bytes) -> None:
        """Read a whole body at once (every parse error names its line).

        Raises:
            ParseError: When the body is not a valid exposition.
        """
        self._reader.read_whole(body)

    def result(self) -> ExpositionResult:
        """Finish the body and interpret it.

        Returns:
            The reading and the warnings.

        Raises:
            ParseError: When the body is empty or not a valid exposition.
            UnknownEngineError: As :func:`read_exposition`.
        """
        exp = self._reader.close()
        if self._reader.blank:
            raise ParseError("empty body: no metrics at all")
        engine = self._engine
        if engine == "auto":
            return interpret(exp, detect_engine(exp), self._memo)
        best = _best(exp, PROFILES[engine])
        if not best:
            raise UnknownEngineError(
                f"no {engine} metrics found; looked for " + _looked_for(PROFILES[engine])
            )
        return interpret(exp, best[0], self._memo)


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
        ParseError: When the body is empty or not a valid exposition.
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
        ParseError: When the body is empty or not a valid exposition.
        UnknownEngineError: As :func:`read_exposition`.
    """
    stream = ExpositionStream(engine, limits, content_type, whole=True)
    stream.feed_whole(body_bytes(body))
    return stream.result()


def _model_of(sample: Sample, labels: Sequence[str]) -> str:
    for label in labels:
        value = sample.label(label)
        if value is not None:
            return value
    return ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series_key(name: str, labels: Iterable[tuple[str, str]], model_labels: Iterable[str]) -> str:
    """The identity of one raw series within its model, as exposition text.

    Args:
        name: The sample name, e.g. ``vllm:prompt_tokens_total``.
        labels: The series' label pairs.
        model_labels: Label names that hold the model (left out: the model is known).

    Returns:
        ``name{label="value",...}`` with the labels sorted and escaped as in the text
        format, or the bare name when no label is left, e.g.
        ``vllm:prompt_tokens_total{engine="3"}``.
    """
    skip = frozenset(model_labels)
    kept = sorted((k, v) for k, v in labels if k not in skip)
    if not kept:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in kept) + "}"


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


@dataclass(slots=True)
class _Counter:
    """One counter field of every model.

    Attributes:
        values: Model -> sum of its series (None where a series was invalid).
        series: Model -> the raw series added into its value.
        exposed: Whether the server exposes the field (series present or family declared).
    """

    values: dict[str, float | None] = field(default_factory=dict)
    series: dict[str, list[CounterSeries]] = field(default_factory=dict)
    exposed: bool = False

    def value(self, model: str) -> float | None:
        if model in self.values:
            return self.values[model]
        return 0.0 if self.exposed else None

    def series_of(self, model: str) -> list[CounterSeries]:
        return self.series.get(model, []) if self.values.get(model) is not None else []


def _declared(exp: Exposition, sources: Iterable[Source]) -> bool:
    return any(exp.declared(s.name) and not _help_excluded(exp, s) for s in sources)


def _chosen(
    exp: Exposition, profile: EngineProfile, candidate: tuple[Source, ...]
) -> list[tuple[Source, Sample]]:
    return [(src, s) for src in candidate for s in _select(exp, src, profile)]


def _sum_counter(
    profile: EngineProfile,
    chosen: list[tuple[Source, Sample]],
    kind: CounterKind,
    what: str,
    warnings: list[str],
    keys: _SeriesKeys,
) -> _Counter:
    """Sum the chosen series per model, keeping each one as a CounterSeries."""
    out = _Counter(exposed=True)
    values = out.values
    by_model = out.series
    model_labels = profile.model_labels
    for src, s in chosen:
        known = keys.get((src.name, s.labels, model_labels))
        model, key = known or _model_and_key(src.name, s, model_labels, keys)
        value = s.value
        if not 0.0 <= value < math.inf:  # negative, infinite or NaN
            if values.get(model, 0.0) is not None:
                warnings.append(
                    f"{what} of model {model!r}: {src.name} has the invalid counter value "
                    f"{value!r}; reported as unknown"
                )
            values[model] = None
            continue
        previous = values.get(model, 0.0)
        values[model] = None if previous is None else previous + value
        series = by_model.get(model)
        if series is None:
            series = by_model[model] = []
        series.append(_new_tuple(CounterSeries, (kind, key, value)))
    return out


# Builds a CounterSeries in C (the named tuple's own __new__ is a Python function).
_new_tuple = tuple.__new__


def _model_and_key(
    name: str, sample: Sample, model_labels: tuple[str, ...], keys: _SeriesKeys
) -> tuple[str, str]:
    """The series' model and :func:`series_key`, from the server's memo when known."""
    memo_key = (name, sample.labels, model_labels)
    known = keys.get(memo_key)
    if known is None:
        known = keys[memo_key] = (
            _model_of(sample, model_labels),
            series_key(name, sample.labels, model_labels),
        )
    return known


@dataclass(frozen=True, slots=True)
class _Pick:
    """The series one candidate chose from a body, by their labels (see :func:`_pick`).

    Attributes:
        profile: The profile read with (its model labels, replica labels...).
        candidate: The candidate.
        excluded: Per source, whether its HELP text excluded it.
        sizes: Per source, its number of series.
        labels: The label sets of every series of the candidate's sources, in order.
        index: Positions (in ``labels``) of the chosen series, in the order chosen; None
            when every series is chosen, in order.
        groups: Per model, in the order first chosen: the model, the positions of its
            series among the chosen ones, and their series keys.
    """

    profile: EngineProfile
    candidate: tuple[Source, ...]
    excluded: tuple[bool, ...]
    sizes: tuple[int, ...]
    labels: tuple[Labels, ...]
    index: tuple[int, ...] | None
    groups: tuple[tuple[str, tuple[int, ...], tuple[str, ...]], ...]


_labels_of = attrgetter("labels")
_value_of = attrgetter("value")


def _pick(
    exp: Exposition, profile: EngineProfile, candidate: tuple[Source, ...], memo: ReadMemo
) -> tuple[_Pick, list[float]] | None:
    """The candidate's chosen series and their values, in the order :func:`_chosen` gives.

    What a candidate chooses (label filters, replica de-duplication) and each series' model
    and key depend on the series' label sets only. A server repeats them at every scrape,
    as the same objects (the parse memo's), so the choice of the last body is reused when
    the label sets are those of the last body: compared by identity first, in C.

    Returns:
        None when the candidate chooses no series.
    """
    sources = [exp.get(src.name) for src in candidate]
    samples = sources[0] if len(sources) == 1 else tuple(s for found in sources for s in found)
    if not samples:
        return None
    excluded = tuple(_help_excluded(exp, src) for src in candidate)
    sizes = tuple(map(len, sources))
    labels = tuple(map(_labels_of, samples))
    pick = memo.picks.get(id(candidate))
    if (
        pick is None
        or pick.candidate is not candidate
        or pick.profile is not profile
        or pick.excluded != excluded
        or pick.sizes != sizes
        or pick.labels != labels
    ):
        pick = memo.picks[id(candidate)] = _new_pick(
            exp, profile, candidate, sources, excluded, sizes, labels, memo.series_keys
        )
    if not pick.groups:
        return None
    values = list(map(_value_of, samples))
    if pick.index is not None:
        values = [values[i] for i in pick.index]
    return pick, values


def _new_pick(
    exp: Exposition,
    profile: EngineProfile,
    candidate: tuple[Source, ...],
    sources: list[tuple[Sample, ...]],
    excluded: tuple[bool, ...],
    sizes: tuple[int, ...],
    labels: tuple[Labels, ...],
    keys: _SeriesKeys,
) -> _Pick:
    """What ``candidate`` chooses from ``sources`` (its sources' series), as _chosen does."""
    index: list[int] = []
    groups: dict[str, tuple[list[int], list[str]]] = {}
    offset = 0
    for src, found in zip(candidate, sources, strict=True):
        # Sources may share a name (SGLang's realtime input by `mode`): positions per source.
        at = {id(s): offset + i for i, s in enumerate(found)}
        for s in _select(exp, src, profile):
            model, key = _model_and_key(src.name, s, profile.model_labels, keys)
            positions, series_keys = groups.setdefault(model, ([], []))
            positions.append(len(index))
            series_keys.append(key)
            index.append(at[id(s)])
        offset += len(found)
    return _Pick(
        profile=profile,
        candidate=candidate,
        excluded=excluded,
        sizes=sizes,
        labels=labels,
        index=None if index == list(range(len(labels))) else tuple(index),
        groups=tuple((m, tuple(p), tuple(k)) for m, (p, k) in groups.items()),
    )


def _counter_of(
    exp: Exposition,
    profile: EngineProfile,
    candidate: tuple[Source, ...],
    kind: CounterKind,
    what: str,
    warnings: list[str],
    memo: ReadMemo,
) -> _Counter | None:
    """The candidate's counter per model, or None when it chooses no series."""
    picked = _pick(exp, profile, candidate, memo)
    if picked is None:
        return None
    pick, values = picked
    # Every value valid (NaN fails the first test, a negative one the second): summed per
    # model in C, in the order _sum_counter adds them (the same sums, to the bit).
    if not (math.fsum(values) < math.inf and min(values) >= 0.0):
        return _sum_counter(
            profile, _chosen(exp, profile, candidate), kind, what, warnings, memo.series_keys
        )
    out = _Counter(exposed=True)
    for model, positions, series_keys in pick.groups:
        own = [values[i] for i in positions]
        out.values[model] = reduce(add, own, 0.0)
        out.series[model] = list(
            map(_new_tuple, repeat(CounterSeries), zip(repeat(kind), series_keys, own))
        )
    return out


def _counter_field(
    exp: Exposition,
    profile: EngineProfile,
    candidates: Candidates,
    kind: CounterKind,
    what: str,
    warnings: list[str],
    memo: ReadMemo,
) -> _Counter:
    """A counter per model from the first candidate present (see the module docstring)."""
    for candidate in candidates:
        counter = _counter_of(exp, profile, candidate, kind, what, warnings, memo)
        if counter is not None:
            return counter
    return _Counter(exposed=_declared(exp, (s for cand in candidates for s in cand)))


def _input_fields(
    exp: Exposition, profile: EngineProfile, warnings: list[str], memo: ReadMemo
) -> tuple[_Counter, _Counter]:
    """Input tokens from the first family present, and cached tokens from that family."""
    for family in profile.input_tokens:
        inputs = _counter_of(exp, profile, family.sources, "input", "input tokens", warnings, memo)
        if inputs is not None:
            cached = _counter_field(
                exp, profile, family.cached, "cached", "cached input tokens", warnings, memo
            )
            return inputs, cached
    for family in profile.input_tokens:
        if _declared(exp, family.sources):
            cached = _counter_field(
                exp, profile, family.cached, "cached", "cached input tokens", warnings, memo
            )
            return _Counter(exposed=True), cached
    return _Counter(), _Counter()


def _gauge_field(
    exp: Exposition,
    profile: EngineProfile,
    candidates: Candidates,
    combine: Callable[[list[float]], float],
    memo: ReadMemo,
) -> dict[str, float]:
    """A gauge per model from the first candidate present; invalid series are ignored."""
    for candidate in candidates:
        picked = _pick(exp, profile, candidate, memo)
        if picked is None:
            continue
        pick, values = picked
        out: dict[str, float] = {}
        for model, positions, _ in pick.groups:
            valid = [v for v in (values[i] for i in positions) if 0.0 <= v < math.inf]
            if valid:
                out[model] = combine(valid)
        return out
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


def _no_tokens_warning(profile: EngineProfile) -> str:
    names = list(dict.fromkeys(s.name for s in profile.token_sources))
    parts = [f"none of {', '.join(names)} is in this {profile.name} exposition"] if names else []
    if profile.no_tokens_hint:
        parts.append(profile.no_tokens_hint)
    return f"{NO_TOKEN_COUNTERS}: " + "; ".join(parts)


def interpret(
    exp: Exposition,
    profile: EngineProfile,
    memo: ReadMemo | None = None,
) -> ExpositionResult:
    """Apply one profile to a scanned exposition.

    Args:
        exp: The exposition, scanned for at least the profile's names.
        profile: The engine profile.
        memo: The server's memo (each series' model and :func:`series_key`, and what each
            candidate chose from the last body's label sets), kept across its scrapes;
            None = computed afresh.

    Returns:
        The reading and warnings (see the module docstring for the rules).
    """
    warnings: list[str] = []
    if memo is None:
        memo = ReadMemo()
    if exp.duplicates:
        warnings.append(f"{exp.duplicates} duplicate series dropped (the first one is kept)")
    inputs, cached = _input_fields(exp, profile, warnings, memo)
    outputs = _counter_field(
        exp, profile, profile.output_tokens, "output", "output tokens", warnings, memo
    )
    prefill = _counter_field(
        exp,
        profile,
        profile.prefill_seconds,
        "prefill_seconds",
        "prefill seconds",
        warnings,
        memo,
    )
    decode = _counter_field(
        exp, profile, profile.decode_seconds, "decode_seconds", "decode seconds", warnings, memo
    )
    counters = (inputs, cached, outputs, prefill, decode)
    running = _gauge_field(exp, profile, profile.requests_running, _sum, memo)
    waiting = _gauge_field(exp, profile, profile.requests_waiting, _sum, memo)
    kv = _gauge_field(exp, profile, profile.kv_cache_usage, _mean, memo)

    models = dict.fromkeys([*(m for c in counters for m in c.values), *running, *waiting, *kv])
    if not profile.model_labels and not models:
        models[""] = None  # an unlabelled server serves one model, named ""
    has_tokens = inputs.exposed or outputs.exposed
    if not has_tokens:
        warnings.append(_no_tokens_warning(profile))

    readings = tuple(
        TokenReading(
            model=model,
            input_tokens=inputs.value(model),
            output_tokens=outputs.value(model),
            cached_input_tokens=cached.value(model),
            requests_running=running.get(model),
            requests_waiting=waiting.get(model),
            kv_cache_usage_ratio=kv.get(model),
            prefill_seconds=prefill.value(model),
            decode_seconds=decode.value(model),
            series=tuple(chain.from_iterable(c.series_of(model) for c in counters)),
        )
        for model in sorted(models)
    )
    reading = ServerReading(
        engine=profile.name, models=readings, start_time_seconds=_start_time(exp, profile)
    )
    return ExpositionResult(reading, tuple(warnings), has_tokens)
